//! The guard's full input pipeline (normalisation, decoded views, rules, model, PII,
//! secrets) on any text: never a panic, spans inside the text, scores in [0, 1].
#![no_main]
use std::sync::OnceLock;

static GUARD: OnceLock<bulwark_guard::Guard> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let guard = GUARD.get_or_init(bulwark_guard::Guard::default);
    let r = guard.scan(&text);
    assert!((0.0..=1.0).contains(&r.injection_score));
    for f in &r.findings {
        assert!(f.start <= f.end && f.end <= text.len(), "{f:?}");
        assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
    }
});
