//! The symbolic pickle machine on any bytes (and as a protocol-4 pickle).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bulwark_supply::pickle::scan_bytes(data, "fuzz.pkl");
    let mut p = vec![0x80, 4];
    p.extend_from_slice(data);
    let _ = bulwark_supply::pickle::scan_bytes(&p, "fuzz.pkl");
});
