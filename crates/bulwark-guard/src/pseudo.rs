//! Redaction and reversible pseudonymisation, and restoring originals in an answer,
//! streamed or not.
//!
//! A value is replaced by a placeholder `[KIND_N]` (`[EMAIL_1]`, `[IBAN_2]`), the same
//! value by the same placeholder everywhere in a request, so the model still sees who is
//! who. Text that already looks like a placeholder is itself replaced (as `[LITERAL_N]`),
//! so restoring is exact for any input: `restore(pseudonymise(x)) == x`.
//!
//! [`Restorer`] restores a stream: it holds back only a tail that could still become a
//! placeholder (at most [`MAX_PLACEHOLDER`] bytes), so a placeholder split across chunks
//! is restored and everything else passes at once.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use regex::Regex;

use crate::Finding;

/// Longest placeholder this module writes or restores.
pub const MAX_PLACEHOLDER: usize = 48;

fn placeholder_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(r"\[[A-Z][A-Z0-9_]{0,38}_[0-9]{1,6}\]")
            .unwrap_or_else(|e| panic!("placeholder pattern: {e}"))
    })
}

/// The placeholders of one request and the originals they stand for.
#[derive(Debug, Default, Clone)]
pub struct Vault {
    by_value: HashMap<(String, String), String>,
    originals: HashMap<String, String>,
    counters: HashMap<String, u32>,
    /// Placeholders taken over from another vault ([`Vault::adopt`]): where they
    /// appear in a text they stand for their originals, and are kept as they are.
    adopted: std::collections::HashSet<String>,
}

impl Vault {
    pub fn is_empty(&self) -> bool {
        self.originals.is_empty()
    }

    pub fn len(&self) -> usize {
        self.originals.len()
    }

    fn placeholder(&mut self, kind: &str, value: &str) -> String {
        let tag: String = kind
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .take(32)
            .collect();
        if let Some(p) = self.by_value.get(&(tag.clone(), value.to_owned())) {
            return p.clone();
        }
        let n = self.counters.entry(tag.clone()).or_insert(0);
        *n += 1;
        let p = format!("[{tag}_{n}]");
        self.by_value.insert((tag, value.to_owned()), p.clone());
        self.originals.insert(p.clone(), value.to_owned());
        p
    }

    /// Takes over `other`'s placeholders (issued earlier, elsewhere: the MCP gateway's
    /// for a caller's tool results), so that a text carrying them keeps them, new
    /// values get new numbers, and restoring puts their originals back too.
    pub fn adopt(&mut self, other: &Vault) {
        for (p, v) in &other.originals {
            if p.starts_with("[LITERAL_") || self.originals.contains_key(p) {
                continue;
            }
            self.originals.insert(p.clone(), v.clone());
            self.adopted.insert(p.clone());
        }
        for (k, p) in other
            .by_value
            .iter()
            .filter(|(_, p)| self.adopted.contains(*p))
        {
            self.by_value.entry(k.clone()).or_insert_with(|| p.clone());
        }
        for (tag, n) in &other.counters {
            let c = self.counters.entry(tag.clone()).or_insert(0);
            *c = (*c).max(*n);
        }
    }

    /// Replaces each finding's span (non-overlapping, sorted) by its placeholder.
    pub fn pseudonymise(&mut self, text: &str, findings: &[Finding]) -> String {
        self.rewrite(text, findings, |_| false)
    }

    /// Like [`Vault::pseudonymise`], but findings for which `redact` says so become
    /// `[REDACTED_KIND]` (nothing to restore) instead of a placeholder.
    pub fn rewrite(
        &mut self,
        text: &str,
        findings: &[Finding],
        redact: impl Fn(&Finding) -> bool,
    ) -> String {
        let edits: Vec<Edit<'_>> = findings
            .iter()
            .map(|f| Edit {
                start: f.start,
                end: f.end,
                kind: f.kind,
                value: None,
                how: if redact(f) {
                    How::Redact
                } else {
                    How::Placeholder
                },
            })
            .collect();
        self.edit(text, &edits)
    }

    /// Applies `edits` (non-overlapping) to `text`; placeholder-shaped text outside them
    /// becomes `[LITERAL_N]`, so that restoring is exact.
    pub fn edit(&mut self, text: &str, edits: &[Edit<'_>]) -> String {
        let mut spans: Vec<(usize, usize, &str, Option<&str>, How)> = edits
            .iter()
            .map(|e| (e.start, e.end, e.kind, e.value, e.how))
            .collect();
        for m in placeholder_re().find_iter(text) {
            if !self.adopted.contains(m.as_str())
                && !spans.iter().any(|&(s, e, ..)| s < m.end() && m.start() < e)
            {
                spans.push((m.start(), m.end(), "literal", None, How::Placeholder));
            }
        }
        spans.sort_by_key(|s| s.0);
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (s, e, kind, value, how) in spans {
            if s < at || e > text.len() || !text.is_char_boundary(s) || !text.is_char_boundary(e) {
                continue;
            }
            out.push_str(&text[at..s]);
            match how {
                How::Redact => {
                    out.push_str("[REDACTED_");
                    out.push_str(&kind.to_ascii_uppercase());
                    out.push(']');
                }
                How::Placeholder => {
                    let p = self.placeholder(kind, value.unwrap_or(&text[s..e]));
                    out.push_str(&p);
                }
                How::Drop => {}
            }
            at = e;
        }
        out.push_str(&text[at..]);
        out
    }

    /// The placeholders this vault issued for personal data and credentials.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.originals
            .keys()
            .filter(|p| !p.starts_with("[LITERAL_"))
            .map(String::as_str)
    }

    /// The original a placeholder this vault issued stands for.
    pub fn original(&self, placeholder: &str) -> Option<&str> {
        self.originals
            .get(placeholder)
            .filter(|_| !placeholder.starts_with("[LITERAL_"))
            .map(String::as_str)
    }

    /// Every placeholder-shaped span in `text`, as (start, end).
    pub fn placeholder_spans(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
        placeholder_re()
            .find_iter(text)
            .map(|m| (m.start(), m.end()))
    }

    /// The original values this vault holds (what an answer must not carry out).
    pub fn originals(&self) -> impl Iterator<Item = &str> {
        self.originals
            .iter()
            .filter(|(p, _)| !p.starts_with("[LITERAL_"))
            .map(|(_, v)| v.as_str())
    }

    /// Puts the originals back for every placeholder this vault issued.
    pub fn restore(&self, text: &str) -> String {
        self.restore_as(text, false)
    }

    /// As [`Vault::restore`]; with `json`, each original is escaped as inside a JSON
    /// string (for text that is itself JSON, such as a tool call's arguments: a PEM
    /// key's line breaks must not break it).
    pub fn restore_as(&self, text: &str, json: bool) -> String {
        if self.originals.is_empty() || !text.contains('[') {
            return text.to_owned();
        }
        placeholder_re()
            .replace_all(text, |c: &regex::Captures<'_>| {
                let p = &c[0];
                match self.originals.get(p) {
                    None => p.to_owned(),
                    Some(v) if json => {
                        let quoted = serde_json::to_string(v).unwrap_or_default();
                        quoted
                            .get(1..quoted.len().saturating_sub(1))
                            .unwrap_or("")
                            .to_owned()
                    }
                    Some(v) => v.clone(),
                }
            })
            .into_owned()
    }
}

/// How [`Vault::edit`] replaces a span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// By the placeholder of the value.
    Placeholder,
    /// By `[REDACTED_KIND]`.
    Redact,
    /// By nothing: the rest of a value split across texts, whose first piece carries
    /// its placeholder.
    Drop,
}

/// One replacement for [`Vault::edit`].
#[derive(Debug, Clone, Copy)]
pub struct Edit<'a> {
    pub start: usize,
    pub end: usize,
    pub kind: &'a str,
    /// The value the placeholder stands for, when it is not `text[start..end]` (the
    /// first piece of a value split across texts stands for all of it).
    pub value: Option<&'a str>,
    pub how: How,
}

/// Replaces each finding's span by `[REDACTED_KIND]`; nothing to restore.
pub fn redact(text: &str, findings: &[Finding]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in findings {
        if f.start < at || f.end > text.len() {
            continue;
        }
        out.push_str(&text[at..f.start]);
        out.push_str("[REDACTED_");
        out.push_str(&f.kind.to_ascii_uppercase());
        out.push(']');
        at = f.end;
    }
    out.push_str(&text[at..]);
    out
}

/// Restores a stream of text pieces.
#[derive(Debug)]
pub struct Restorer {
    vault: Arc<Vault>,
    pending: String,
    json: bool,
}

/// Where a tail that could still grow into a placeholder starts, if any.
fn open_tail(s: &str) -> Option<usize> {
    let start = s.rfind('[')?;
    let tail = &s[start..];
    if tail.len() > MAX_PLACEHOLDER || tail.contains(']') {
        return None;
    }
    let mut chars = tail[1..].chars();
    match chars.next() {
        None => return Some(start),
        Some(c) if c.is_ascii_uppercase() => {}
        Some(_) => return None,
    }
    chars
        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        .then_some(start)
}

impl Restorer {
    pub fn new(vault: Arc<Vault>) -> Self {
        Restorer {
            vault,
            pending: String::new(),
            json: false,
        }
    }

    /// A restorer for text that is itself JSON ([`Vault::restore_as`]).
    pub fn json(vault: Arc<Vault>) -> Self {
        Restorer {
            json: true,
            ..Restorer::new(vault)
        }
    }

    /// Restored text that can be sent now.
    pub fn push(&mut self, piece: &str) -> String {
        self.pending.push_str(piece);
        let cut = open_tail(&self.pending).unwrap_or(self.pending.len());
        let ready: String = self.pending.drain(..cut).collect();
        self.vault.restore_as(&ready, self.json)
    }

    /// Whatever is held back, at the end of the stream.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.vault.restore_as(&rest, self.json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Category;
    use proptest::prelude::*;

    fn email_findings(text: &str) -> Vec<Finding> {
        let mut f = Vec::new();
        crate::pii::scan(text, &mut f);
        crate::resolve_overlaps(f)
    }

    #[test]
    fn same_value_same_placeholder() {
        let text = "a@x.io wrote to b@y.io; a@x.io again. Not [EMAIL_1] itself.";
        let mut v = Vault::default();
        let p = v.pseudonymise(text, &email_findings(text));
        assert_eq!(
            p,
            "[EMAIL_1] wrote to [EMAIL_2]; [EMAIL_1] again. Not [LITERAL_1] itself."
        );
        assert_eq!(v.restore(&p), text);
        assert_eq!(
            v.restore("Dear [EMAIL_2], see [EMAIL_9]."),
            "Dear b@y.io, see [EMAIL_9]."
        );
        let f = vec![Finding::new(
            Category::Pii,
            "email",
            (0, 6),
            1.0,
            String::new(),
        )];
        assert_eq!(redact(text, &f)[..16], *"[REDACTED_EMAIL]");
    }

    #[test]
    fn adopted_placeholders_stand_for_their_originals() {
        // Earlier, a tool result: its e-mail became [EMAIL_1].
        let mut earlier = Vault::default();
        let result = "Customer: ann@shop.eu";
        assert_eq!(
            earlier.pseudonymise(result, &email_findings(result)),
            "Customer: [EMAIL_1]"
        );
        // Now a chat request carries that placeholder, a new e-mail and the old one.
        let mut v = Vault::default();
        v.adopt(&earlier);
        let text = "Write to [EMAIL_1], copy bob@x.io and ann@shop.eu. Not [EMAIL_7].";
        let p = v.pseudonymise(text, &email_findings(text));
        assert_eq!(
            p,
            "Write to [EMAIL_1], copy [EMAIL_2] and [EMAIL_1]. Not [LITERAL_1]."
        );
        assert_eq!(
            v.restore(&p),
            "Write to ann@shop.eu, copy bob@x.io and ann@shop.eu. Not [EMAIL_7]."
        );
        assert!(v.originals().any(|o| o == "ann@shop.eu"));
    }

    #[test]
    fn stream_restore_at_every_split() {
        let mut v = Vault::default();
        let original = "mail jane@corp.eu now";
        let p = v.pseudonymise(original, &email_findings(original));
        let v = Arc::new(v);
        let answer = format!("Sure: {p} and [x] and [{p}] done [EMAIL");
        let want = v.restore(&answer);
        for i in 0..=answer.len() {
            for j in i..=answer.len() {
                if !answer.is_char_boundary(i) || !answer.is_char_boundary(j) {
                    continue;
                }
                let mut r = Restorer::new(Arc::clone(&v));
                let mut got = r.push(&answer[..i]);
                got += &r.push(&answer[i..j]);
                got += &r.push(&answer[j..]);
                got += &r.finish();
                assert_eq!(got, want, "split at {i},{j}");
            }
        }
    }

    fn pieces() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                "[a-zA-Z0-9 .,\\[\\]_]{0,12}",
                Just("jo@ex.com".to_owned()),
                Just("[EMAIL_1]".to_owned()),
                Just("[LITERAL_2]".to_owned()),
                Just("4111 1111 1111 1111".to_owned()),
                "\\PC{0,4}",
            ],
            0..12,
        )
        .prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn restore_inverts_pseudonymise(text in pieces()) {
            let mut v = Vault::default();
            let f = email_findings(&text);
            let p = v.pseudonymise(&text, &f);
            prop_assert_eq!(v.restore(&p), text.clone());
            let v = Arc::new(v);
            // And streamed, cut anywhere.
            let cuts: Vec<usize> = (0..=p.len()).filter(|&i| p.is_char_boundary(i)).collect();
            for &c in cuts.iter().step_by(3) {
                let mut r = Restorer::new(Arc::clone(&v));
                let got = r.push(&p[..c]) + &r.push(&p[c..]) + &r.finish();
                prop_assert_eq!(&got, &text);
            }
        }
    }
}
