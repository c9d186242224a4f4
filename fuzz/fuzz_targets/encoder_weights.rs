//! The guard encoder's base weights (`model.safetensors`): any bytes are an error or a
//! model, never a panic; a model that loads scores any text in [0, 1].
#![no_main]

/// The smallest tokenizer `tokenizers` accepts, so each run spends its time on the weights.
const TOKENIZER: &[u8] = br#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"a":1},"unk_token":"[UNK]"}}"#;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(encoder) = bulwark_guard::encoder::Encoder::from_bytes(data, TOKENIZER) {
        let (p, _) = encoder.score("a a a");
        assert!((0.0..=1.0).contains(&p), "{p}");
    }
});
