//! A request body: JSON, then validation into a chat or completion request.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = bulwark_api::chat::ChatRequest::from_json(&v);
        let _ = bulwark_api::completions::CompletionRequest::from_json(&v);
    }
});
