//! Server-sent events framing: splitting a byte stream from an untrusted peer into whole
//! events, with a bound on how much is held. No IO.

use bytes::Bytes;

/// Splits a byte stream into whole SSE events (each with its blank-line terminator),
/// whatever the chunking. An event longer than `max` bytes is given up on: everything
/// buffered is passed on as is and the framer becomes a pass-through, so a hostile or
/// broken stream can neither grow memory without bound nor be held back.
pub struct Framer {
    buf: Vec<u8>,
    max: usize,
    passthrough: bool,
}

/// A piece of the stream: a whole event, or raw bytes the framer gave up on.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Event(Bytes),
    Raw(Bytes),
}

impl Framer {
    pub fn new(max: usize) -> Self {
        Framer {
            buf: Vec::new(),
            max,
            passthrough: false,
        }
    }

    /// End of the first event terminator at or after `from`, if any.
    fn boundary(&self, from: usize) -> Option<usize> {
        let b = &self.buf;
        let mut i = from;
        while i + 1 < b.len() {
            if b[i] == b'\n' && b[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if b[i] == b'\r' && b.get(i + 1..i + 4) == Some(b"\n\r\n") {
                return Some(i + 4);
            }
            i += 1;
        }
        None
    }

    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Piece>) {
        if self.passthrough {
            out.push(Piece::Raw(Bytes::copy_from_slice(chunk)));
            return;
        }
        // A terminator may straddle the previous chunk's end: look back 3 bytes.
        let from = self.buf.len().saturating_sub(3);
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        let mut scan = from;
        while let Some(end) = self.boundary(scan) {
            out.push(Piece::Event(Bytes::copy_from_slice(&self.buf[start..end])));
            start = end;
            scan = end;
        }
        self.buf.drain(..start);
        if self.buf.len() > self.max {
            self.passthrough = true;
            out.push(Piece::Raw(Bytes::from(std::mem::take(&mut self.buf))));
        }
    }

    /// Whatever is left when the stream ends (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.buf)))
    }
}

/// The JSON of an event's `data:` line, if it has one that parses.
pub fn data_json(event: &[u8]) -> Option<serde_json::Value> {
    let text = std::str::from_utf8(event).ok()?;
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data:"))?
        .trim_start();
    serde_json::from_str(data).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(input: &[u8], cuts: &[usize], max: usize) -> Vec<u8> {
        let mut f = Framer::new(max);
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            let c = c.clamp(last, input.len());
            f.push(&input[last..c], &mut out);
            last = c;
        }
        let mut bytes = Vec::new();
        for p in out {
            match p {
                Piece::Event(b) | Piece::Raw(b) => bytes.extend_from_slice(&b),
            }
        }
        bytes.extend(f.finish().unwrap_or_default());
        bytes
    }

    #[test]
    fn splits_events_across_chunks() {
        let mut f = Framer::new(1024);
        let mut out = Vec::new();
        f.push(b"data: {\"a\":1}\n", &mut out);
        assert!(out.is_empty());
        f.push(b"\ndata: [DONE]\r\n\r\ndata: x", &mut out);
        assert_eq!(
            out,
            vec![
                Piece::Event(Bytes::from_static(b"data: {\"a\":1}\n\n")),
                Piece::Event(Bytes::from_static(b"data: [DONE]\r\n\r\n")),
            ]
        );
        assert_eq!(f.finish(), Some(Bytes::from_static(b"data: x")));
        assert_eq!(
            data_json(b"data: {\"a\":1}\n\n"),
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(data_json(b"data: [DONE]\n\n"), None);
    }

    #[test]
    fn gives_up_on_an_endless_event() {
        let mut f = Framer::new(8);
        let mut out = Vec::new();
        f.push(b"data: 0123456789", &mut out);
        f.push(b"\n\n", &mut out);
        assert_eq!(
            out,
            vec![
                Piece::Raw(Bytes::from_static(b"data: 0123456789")),
                Piece::Raw(Bytes::from_static(b"\n\n")),
            ]
        );
    }

    proptest! {
        /// Every byte comes out once and in order, whatever the chunking and limit.
        #[test]
        fn lossless_under_any_chunking(
            input in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'd'), any::<u8>()], 0..300),
            mut cuts in proptest::collection::vec(0usize..300, 0..20),
            max in 1usize..400,
        ) {
            cuts.sort_unstable();
            prop_assert_eq!(frame(&input, &cuts, max), input);
        }
    }
}
