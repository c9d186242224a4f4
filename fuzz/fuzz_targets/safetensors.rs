//! A safetensors header (the JSON after the length) against 1 MiB of data.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bulwark_supply::safetensors::parse_header(data, 1 << 20, "fuzz.safetensors");
});
