//! Turning a stream of token bytes into text deltas: UTF-8 reassembly and stop sequences.
//!
//! Pure code, no IO and no llama.cpp: a token may end in the middle of a multi-byte
//! character, and a stop sequence may span tokens, so nothing is emitted that could
//! still turn out to be part of either.

/// Reassembles UTF-8 characters split across token boundaries.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Adds bytes and returns the text that is complete. Invalid bytes become U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Safe to unwrap-free: the prefix is valid by construction.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// The end of generation. What is left is the start of a character that generation
    /// stopped inside (`max_tokens` cut it): it is dropped, so that an answer holds only
    /// whole characters, never U+FFFD for one the model did not finish.
    pub fn finish(&mut self) -> String {
        self.pending.clear();
        String::new()
    }
}

/// Holds back text that may be the start of a stop sequence.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// The result of pushing text into a [`StopMatcher`].
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed {
    /// Text that is safe to send to the client now.
    pub emit: String,
    /// A stop sequence matched; generation must end and nothing after it is sent.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> Pushed {
        if self.stops.is_empty() {
            return Pushed {
                emit: text.to_owned(),
                stopped: false,
            };
        }
        self.pending.push_str(text);
        let first_match = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first_match {
            let emit = self.pending[..at].to_owned();
            self.pending.clear();
            return Pushed {
                emit,
                stopped: true,
            };
        }
        let hold = self.holdback();
        let cut = self.pending.len() - hold;
        let emit = self.pending[..cut].to_owned();
        self.pending.drain(..cut);
        Pushed {
            emit,
            stopped: false,
        }
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop sequence.
    fn holdback(&self) -> usize {
        let p = &self.pending;
        p.char_indices()
            .map(|(i, _)| i)
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&p[i..])))
            .map_or(0, |i| p.len() - i)
    }

    /// Releases held-back text when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_tokens() {
        let mut d = Utf8Decoder::default();
        let bytes = "héllo €".as_bytes();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&d.push(&[*b]));
        }
        out.push_str(&d.finish());
        assert_eq!(out, "héllo €");
    }

    #[test]
    fn a_character_cut_by_the_end_of_generation_is_dropped_not_replaced() {
        let mut d = Utf8Decoder::default();
        // "é€" with the euro sign's last byte never generated.
        assert_eq!(d.push(&[0xc3, 0xa9, 0xe2, 0x82]), "é");
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn utf8_invalid_bytes_are_replaced() {
        let mut d = Utf8Decoder::default();
        assert_eq!(d.push(b"a\xffb"), "a\u{fffd}b");
    }

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let r = m.push(p);
            out.push_str(&r.emit);
            if r.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_sequence_split_across_pieces() {
        assert_eq!(
            run(&["END"], &["ab", "cE", "N", "Dxyz"]),
            ("abc".to_owned(), true)
        );
    }

    #[test]
    fn partial_match_is_released_when_it_diverges() {
        assert_eq!(run(&["END"], &["aEN", "x"]), ("aENx".to_owned(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["zz", "b"], &["abzz"]), ("a".to_owned(), true));
    }

    #[test]
    fn holdback_respects_char_boundaries() {
        assert_eq!(
            run(&["é!"], &["caf", "é", "?"]),
            ("café?".to_owned(), false)
        );
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".to_owned(), false));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Splits `s` at the given byte positions (clamped, sorted, deduplicated).
    fn split_bytes(s: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (s.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut out = Vec::new();
        let mut prev = 0;
        for c in cuts.into_iter().chain([s.len()]) {
            out.push(s[prev..c].to_vec());
            prev = c;
        }
        out
    }

    proptest! {
        /// However a valid string is cut into tokens, the decoder gives it back intact.
        #[test]
        fn utf8_decoder_is_chunking_invariant(s in "\\PC{0,40}", cuts in proptest::collection::vec(0usize..200, 0..8)) {
            let mut d = Utf8Decoder::default();
            let mut out = String::new();
            for piece in split_bytes(s.as_bytes(), &cuts) {
                out.push_str(&d.push(&piece));
            }
            out.push_str(&d.finish());
            prop_assert_eq!(out, s);
        }

        /// Arbitrary bytes never panic and never lose the valid text around invalid bytes;
        /// a character cut at the very end is dropped, not replaced.
        #[test]
        fn utf8_decoder_matches_lossy_conversion(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut d = Utf8Decoder::default();
            let mut out = d.push(&bytes);
            out.push_str(&d.finish());
            let mut end = bytes.len();
            let mut rest = &bytes[..];
            while let Err(e) = std::str::from_utf8(rest) {
                match e.error_len() {
                    Some(n) => rest = &rest[e.valid_up_to() + n..],
                    None => {
                        end = bytes.len() - (rest.len() - e.valid_up_to());
                        break;
                    }
                }
            }
            prop_assert_eq!(out, String::from_utf8_lossy(&bytes[..end]).into_owned());
        }

        /// Streaming stop matching gives exactly what matching the whole text would give.
        #[test]
        fn stop_matcher_equals_whole_text_search(
            text in "[ab c]{0,30}",
            stop in "[ab c]{1,4}",
            cuts in proptest::collection::vec(0usize..40, 0..8),
        ) {
            let mut m = StopMatcher::new(vec![stop.clone()]);
            let mut out = String::new();
            let mut stopped = false;
            for piece in split_bytes(text.as_bytes(), &cuts) {
                let r = m.push(std::str::from_utf8(&piece).unwrap_or(""));
                out.push_str(&r.emit);
                if r.stopped { stopped = true; break; }
            }
            if !stopped { out.push_str(&m.finish()); }
            let expected = match text.find(&stop) { Some(i) => &text[..i], None => &text[..] };
            prop_assert_eq!(stopped, text.contains(&stop));
            prop_assert_eq!(out, expected);
        }
    }
}
