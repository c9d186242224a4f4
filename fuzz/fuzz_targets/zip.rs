//! Zip archives (PyTorch checkpoints), scanned entry by entry.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bulwark_supply::pickle::scan_zip(std::io::Cursor::new(data), "fuzz.pt", 0);
});
