//! GGUF header, metadata and tensor table: parse and check any bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(g) = bulwark_supply::gguf::read_from(data, data.len() as u64) {
        for f in bulwark_supply::gguf::check(&g, "fuzz.gguf") {
            assert!(!f.reason.is_empty());
        }
    }
});
