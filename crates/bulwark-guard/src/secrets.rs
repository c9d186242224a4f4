//! Credentials: the key formats of the major providers, private keys, JWTs, and
//! high-entropy tokens next to words like "token" or "password".
//!
//! Provider formats are distinctive prefixes with fixed alphabets and lengths, so they
//! are matched exactly. The generic detector needs both an assignment-like context and
//! enough entropy, which keeps it quiet on hashes in prose and on ordinary words.

use std::sync::OnceLock;

use regex::Regex;

use crate::{Category, Finding};

struct Detector {
    kind: &'static str,
    re: Regex,
    reason: &'static str,
}

fn detectors() -> &'static [Detector] {
    static D: OnceLock<Vec<Detector>> = OnceLock::new();
    D.get_or_init(|| {
        let d = |kind, re: &str, reason| Detector {
            kind,
            re: Regex::new(re).unwrap_or_else(|e| panic!("secret pattern {kind}: {e}")),
            reason,
        };
        vec![
            d("private_key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\z)", "a PEM private key"),
            d("anthropic_key", r"\bsk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_-]{80,}", "an Anthropic API key"),
            d("openai_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,}|\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}|\bsk-[A-Za-z0-9]{48}\b", "an OpenAI API key"),
            d("aws_access_key_id", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b", "an AWS access key id"),
            d("aws_secret_access_key", r#"(?i)aws.{0,20}?(?:secret|private)?.{0,20}?(?:key|token)["']?\s*[:=]\s*["']?[A-Za-z0-9/+]{40}\b"#, "an AWS secret access key"),
            d("gcp_api_key", r"\bAIza[0-9A-Za-z_-]{35}\b", "a Google Cloud API key"),
            d("gcp_service_account", r#""private_key_id"\s*:\s*"[0-9a-f]{40}""#, "a Google Cloud service-account key file"),
            d("azure_storage_key", r"(?i)AccountKey=[A-Za-z0-9+/]{86}==", "an Azure storage account key"),
            d("azure_sas_token", r"(?i)[?&]sig=[A-Za-z0-9%+/]{40,}(?:%3D|=)", "an Azure shared access signature"),
            d("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b", "a GitHub token"),
            d("gitlab_token", r"\bglpat-[A-Za-z0-9_-]{20,}\b", "a GitLab personal access token"),
            d("slack_token", r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b", "a Slack token"),
            d("slack_webhook", r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]+", "a Slack webhook URL"),
            d("stripe_key", r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{24,}\b", "a Stripe secret key"),
            d("huggingface_token", r"\bhf_[A-Za-z0-9]{34,}\b", "a Hugging Face token"),
            d("bulwark_key", r"\bbk_[0-9a-f]{12}_[0-9a-f]{64}\b", "a Bulwark API key"),
            d("jwt", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", "a JSON Web Token"),
            d("url_credentials", r"\b[a-z][a-z0-9+.-]*://[^\s:/@]{1,64}:[^\s:/@]{3,128}@[^\s/]+", "a URL with a password in it"),
        ]
    })
}

fn generic() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(r#"(?i)\b(?:api[_-]?key|apikey|secret|token|passw(?:or)?d|pwd|access[_-]?key|auth|credentials?|client[_-]?secret)\b["']?\s*(?:[:=]|is|=>)\s*["']?([A-Za-z0-9_\-+/=.!@#$%^&*]{12,})"#)
            .unwrap_or_else(|e| panic!("generic secret pattern: {e}"))
    })
}

/// Shannon entropy in bits per character.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Credentials in `text`, spans in `text`.
pub fn scan(text: &str, findings: &mut Vec<Finding>) {
    for d in detectors() {
        for m in d.re.find_iter(text) {
            findings.push(Finding::new(
                Category::Secret,
                d.kind,
                (m.start(), m.end()),
                0.99,
                d.reason.into(),
            ));
        }
    }
    for c in generic().captures_iter(text) {
        if let Some(v) = c.get(1) {
            let value = v.as_str();
            let varied = value.bytes().any(|b| b.is_ascii_digit())
                && value.bytes().any(|b| b.is_ascii_alphabetic());
            if varied && entropy(value) >= 3.0 {
                findings.push(Finding::new(
                    Category::Secret,
                    "generic_secret",
                    (v.start(), v.end()),
                    0.8,
                    "a high-entropy value assigned to a key, token or password".into(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn check(text: &str, expect: Expect) {
        let mut f = Vec::new();
        scan(text, &mut f);
        let f = crate::resolve_overlaps(f);
        let got: Vec<String> = f
            .iter()
            .map(|f| format!("{} {}", f.kind, &text[f.start..f.end]))
            .collect();
        expect.assert_eq(&got.join("\n"));
    }

    #[test]
    fn provider_keys() {
        // Fake keys in the providers' formats (not real credentials).
        let text = [
            "openai sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMn",
            "aws AKIAIOSFODNN7EXAMPLE",
            "github ghp_0123456789abcdefghijABCDEFGHIJ012345",
            "gitlab glpat-AbCdEfGhIjKlMnOpQrSt",
            "slack xoxb-123456789012-abcdefABCDEF",
            "stripe sk_live_0123456789abcdefABCDEFGH",
            "hf hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567",
            "gcp AIzaSyA-0123456789abcdefghijABCDEFGHIJK",
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ]
        .join("\n");
        check(
            &text,
            expect![[r#"
                openai_key sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMn
                aws_access_key_id AKIAIOSFODNN7EXAMPLE
                github_token ghp_0123456789abcdefghijABCDEFGHIJ012345
                gitlab_token glpat-AbCdEfGhIjKlMnOpQrSt
                slack_token xoxb-123456789012-abcdefABCDEF
                stripe_key sk_live_0123456789abcdefABCDEFGH
                huggingface_token hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567
                gcp_api_key AIzaSyA-0123456789abcdefghijABCDEFGHIJK
                jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"#]],
        );
    }

    #[test]
    fn private_keys_and_generic_tokens() {
        check(
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\npassword: Tr0ub4dor&3xyz\nurl postgres://app:s3cretpw@db.internal/app",
            expect![[r#"
                private_key -----BEGIN RSA PRIVATE KEY-----
                MIIEpAIBAAKCAQEA
                -----END RSA PRIVATE KEY-----
                generic_secret Tr0ub4dor&3xyz
                url_credentials postgres://app:s3cretpw@db.internal"#]],
        );
    }

    #[test]
    fn ordinary_text_is_quiet() {
        check(
            "The token economy is growing. My password policy requires 12 characters. Commit 3f2a9c1 fixed it; sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855.",
            expect![[""]],
        );
    }
}
