//! Personal data and credentials, also where they are disguised.
//!
//! [`pii`](crate::pii) and [`secrets`](crate::secrets) read a text as it is. Someone who
//! wants a value past them only has to disguise it: a zero-width space inside an e-mail
//! address, `＠`, `&#64;` or `%40` for `@`, an IBAN in Arabic-Indic digits, a token in
//! base64. [`scan`] reads the text as it is, then a folded copy (invisible characters
//! dropped, NFKC, HTML character references and percent escapes of printable ASCII
//! decoded, digits of other scripts as ASCII) and the base64 runs decoded, and reports
//! every finding as a span of the original text, so that redacting or pseudonymising
//! that span removes the disguised value whole. Pure computation.

use base64::Engine as _;
use unicode_normalization::UnicodeNormalization;

use crate::Finding;

/// Longest base64 run decoded (an image in a data URL is longer and is not text).
const MAX_BASE64_RUN: usize = 64 * 1024;

/// Personal data and credentials in `text`, also disguised; spans in `text`, overlaps
/// not resolved (the caller resolves them with everything else it found).
pub fn scan(text: &str, findings: &mut Vec<Finding>) {
    crate::pii::scan(text, findings);
    crate::secrets::scan(text, findings);
    if needs_folding(text) {
        let folded = fold(text);
        if folded.text != text {
            let mut found = Vec::new();
            crate::pii::scan(&folded.text, &mut found);
            crate::secrets::scan(&folded.text, &mut found);
            for mut f in found {
                let (s, e) = folded.span(f.start, f.end);
                f.start = s;
                f.end = e;
                f.reason = format!("{} (disguised)", f.reason);
                findings.push(f);
            }
        }
    }
    base64_runs(text, findings);
}

/// Whether the text has anything [`fold`] changes: non-ASCII, `&` or `%`.
fn needs_folding(text: &str) -> bool {
    text.bytes().any(|b| b >= 0x80 || b == b'&' || b == b'%')
}

/// A folded text and, for every byte of it, the span of the original it came from.
pub struct Folded {
    pub text: String,
    from: Vec<(u32, u32)>,
}

impl Folded {
    /// The original span of `text[start..end]`.
    pub fn span(&self, start: usize, end: usize) -> (usize, usize) {
        let s = self.from.get(start).map_or(0, |x| x.0 as usize);
        let e = end
            .checked_sub(1)
            .and_then(|i| self.from.get(i))
            .map_or(s, |x| x.1 as usize);
        (s, e.max(s))
    }
}

/// Characters that show nothing: zero-width, bidi controls, tag characters.
fn invisible(c: char) -> bool {
    use crate::normalise::{is_bidi_control, is_tag, is_zero_width};
    is_zero_width(c) || is_bidi_control(c) || is_tag(c)
}

/// The zero of the decimal digits of scripts other than Latin whose digits NFKC leaves
/// alone (Arabic-Indic, Extended Arabic-Indic, N'Ko, Devanagari, Bengali, Gurmukhi,
/// Gujarati, Oriya, Tamil, Telugu, Kannada, Malayalam, Thai, Lao, Tibetan, Myanmar).
const DIGIT_ZEROS: [u32; 16] = [
    0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6, 0x0D66,
    0x0E50, 0x0ED0, 0x0F20, 0x1040,
];

fn ascii_digit(c: char) -> Option<char> {
    let u = c as u32;
    DIGIT_ZEROS
        .iter()
        .find(|&&z| (z..z + 10).contains(&u))
        .and_then(|&z| char::from_digit(u - z, 10))
}

/// `&#64;`, `&#x40;` and a few named references at the start of `s`: the character and
/// the reference's length.
fn entity(s: &str) -> Option<(char, usize)> {
    let end = s.as_bytes().iter().take(12).position(|&b| b == b';')?;
    let body = &s[1..end];
    let c = if let Some(num) = body.strip_prefix('#') {
        let v = match num.strip_prefix(['x', 'X']) {
            Some(h) => u32::from_str_radix(h, 16).ok()?,
            None => num.parse().ok()?,
        };
        char::from_u32(v)?
    } else {
        match body {
            "commat" => '@',
            "period" => '.',
            "amp" => '&',
            "lowbar" => '_',
            "hyphen" | "dash" => '-',
            "plus" => '+',
            "colon" => ':',
            "sol" => '/',
            "equals" => '=',
            "nbsp" => ' ',
            _ => return None,
        }
    };
    Some((c, end + 1))
}

/// `%40` at the start of `s`, when it encodes printable ASCII.
fn percent(s: &str) -> Option<(char, usize)> {
    let h = s.get(1..3)?;
    let v = u8::from_str_radix(h, 16).ok()?;
    (0x20..0x7F).contains(&v).then_some((char::from(v), 3))
}

/// The text with disguises taken off (see the module's documentation).
pub fn fold(text: &str) -> Folded {
    let mut out = String::with_capacity(text.len());
    let mut from = Vec::with_capacity(text.len());
    let mut push = |out: &mut String, c: char, s: usize, e: usize| {
        let before = out.len();
        out.push(c);
        from.extend(std::iter::repeat_n(
            (s as u32, e as u32),
            out.len() - before,
        ));
    };
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let Some(c) = rest.chars().next() else { break };
        let decoded = match c {
            '&' => entity(rest),
            '%' => percent(rest),
            _ => None,
        };
        if let Some((d, len)) = decoded {
            if !invisible(d) {
                push(&mut out, d, i, i + len);
            }
            i += len;
            continue;
        }
        let end = i + c.len_utf8();
        if c.is_ascii() {
            push(&mut out, c, i, end);
        } else if invisible(c) {
        } else if let Some(d) = ascii_digit(c) {
            push(&mut out, d, i, end);
        } else {
            for n in std::iter::once(c).nfkc() {
                push(&mut out, n, i, end);
            }
        }
        i = end;
    }
    Folded { text: out, from }
}

/// Base64 runs that decode to text holding personal data or a credential: the whole
/// run is the finding.
fn base64_runs(text: &str, findings: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let ok = |x: u8| x.is_ascii_alphanumeric() || matches!(x, b'+' | b'/' | b'-' | b'_');
    let mut i = 0;
    while i < b.len() {
        if !ok(b[i]) {
            i += 1;
            continue;
        }
        let s = i;
        while i < b.len() && ok(b[i]) {
            i += 1;
        }
        let mut e = i;
        while e < b.len() && e - i < 2 && b[e] == b'=' {
            e += 1;
        }
        let run = &text[s..i];
        if run.len() < 12 || e - s > MAX_BASE64_RUN {
            continue;
        }
        // A run of letters only is a word, not an encoding.
        if !run
            .bytes()
            .any(|x| x.is_ascii_digit() || matches!(x, b'+' | b'/' | b'-' | b'_'))
            && !run.bytes().any(|x| x.is_ascii_uppercase())
        {
            continue;
        }
        let trimmed = run.trim_end_matches('=');
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed));
        let Ok(bytes) = decoded else { continue };
        let Ok(plain) = String::from_utf8(bytes) else {
            continue;
        };
        let mut found = Vec::new();
        crate::pii::scan(&plain, &mut found);
        crate::secrets::scan(&plain, &mut found);
        if let Some(f) = crate::resolve_overlaps(found).into_iter().next() {
            findings.push(Finding::new(
                f.category,
                f.kind,
                (s, e),
                f.score,
                format!("{} (base64-encoded)", f.reason),
            ));
        }
        i = e;
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
            .map(|f| format!("{} {:?}", f.kind, &text[f.start..f.end]))
            .collect();
        expect.assert_eq(&got.join("\n"));
    }

    #[test]
    fn disguised_values_are_found_whole() {
        check(
            "mail ali\u{200B}ce@example.com now",
            expect![[r#"email "ali\u{200b}ce@example.com""#]],
        );
        check(
            "a alice＠example.com b bob&#64;example.org c carol%40example.net d dan&commat;example.io",
            expect![[r#"
                email "alice＠example.com"
                email "bob&#64;example.org"
                email "carol%40example.net"
                email "dan&commat;example.io""#]],
        );
        check(
            "iban de89-3704-0044-0532-0130-00 and DE89 3704 0044 0532 0130 0\u{200B}0",
            expect![[r#"
                iban "de89-3704-0044-0532-0130-00"
                iban "DE89 3704 0044 0532 0130 0\u{200b}0""#]],
        );
        check(
            "DE٨٩٣٧٠٤٠٠٤٤٠٥٣٢٠١٣٠٠٠ paid",
            expect![[r#"iban "DE٨٩٣٧٠٤٠٠٤٤٠٥٣٢٠١٣٠٠٠""#]],
        );
        check(
            "token ghp_\u{200B}aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789 ok",
            expect![[r#"github_token "ghp_\u{200b}aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789""#]],
        );
        check(
            "b64 YWxpY2VAZXhhbXBsZS5jb20= and Z2hwX2FCY0RlRmdIaUprTG1Ob1BxUnNUdVZ3WHlaMDEyMzQ1Njc4OQ",
            expect![[r#"
                email "YWxpY2VAZXhhbXBsZS5jb20="
                github_token "Z2hwX2FCY0RlRmdIaUprTG1Ob1BxUnNUdVZ3WHlaMDEyMzQ1Njc4OQ""#]],
        );
    }

    #[test]
    fn ordinary_text_is_quiet() {
        check(
            "R&D costs 40% more; see &amp; and 100%; Straße, naïve café, ΑΒΓ, internationalization, PaymentProcessorFactory",
            expect![[""]],
        );
    }

    proptest::proptest! {
        /// Folding maps every byte back to a span of the original on char boundaries.
        #[test]
        fn spans_are_char_boundaries(s in "\\PC{0,40}") {
            let f = fold(&s);
            for i in 0..=f.text.len() {
                for j in i..=f.text.len() {
                    let (a, b) = f.span(i, j);
                    proptest::prop_assert!(s.is_char_boundary(a) && s.is_char_boundary(b) && a <= b && b <= s.len());
                }
            }
        }
    }
}
