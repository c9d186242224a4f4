//! The Anthropic protocol both ways, on any JSON: a Messages request translated into the
//! chat form (which then validates or fails, never panics) and back; an Anthropic
//! upstream's answer read into the chat form; and its stream events, one per line of
//! the input, through the translator into chat chunks.
#![no_main]
use bulwark_api::{anthropic, chat::ChatRequest, to_anthropic};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(chat) = anthropic::to_chat(&v) {
            let _ = ChatRequest::from_json(&chat);
        }
        let _ = anthropic::message_from_chat(&v, "m");
        let _ = to_anthropic::request_from_chat(&v);
        let _ = to_anthropic::chat_from_message(&v, "m");
    }
    let mut t = to_anthropic::ChatStream::new("m", true);
    for line in data.split(|&b| b == b'\n') {
        if let Ok(event) = serde_json::from_slice::<serde_json::Value>(line) {
            let _ = t.push(&event);
        }
    }
    t.end();
});
