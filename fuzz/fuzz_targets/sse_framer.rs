//! The SSE framer every upstream stream passes through: any bytes, cut anywhere, with
//! any event limit, come out whole and in order; events end in a blank line and never
//! exceed the limit; a `data:` line that parses gives JSON.
#![no_main]
use bulwark_api::sse::{data_json, Framer, Piece};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let max = usize::from(head) * 4 + 1;
    let mut f = Framer::new(max);
    let mut out = Vec::new();
    // Cut the input into chunks whose lengths come from its own bytes.
    let mut i = 0;
    while i < rest.len() {
        let n = (usize::from(rest[i]) % 64 + 1).min(rest.len() - i);
        f.push(&rest[i..i + n], &mut out);
        i += n;
    }
    let mut all = Vec::new();
    let mut raw = false;
    for p in out {
        match p {
            Piece::Event(b) => {
                assert!(!raw, "an event after the framer gave up");
                assert!(b.ends_with(b"\n\n") || b.ends_with(b"\r\n\r\n"), "{b:?}");
                let _ = data_json(&b);
                all.extend_from_slice(&b);
            }
            Piece::Raw(b) => {
                raw = true;
                all.extend_from_slice(&b);
            }
        }
    }
    all.extend(f.finish().unwrap_or_default());
    assert_eq!(all, rest);
});
