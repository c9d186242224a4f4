//! Personal data: structured identifiers found by pattern and confirmed by their
//! checksum where they have one, plus best-effort names, addresses and dates of birth.
//!
//! | kind | pattern | confirmed by |
//! |---|---|---|
//! | `email` | RFC 5322-ish local@domain.tld | a dot in the domain |
//! | `phone` | `+CC …` international, or national groups like `(555) 123-4567`, `06 12 34 56 78` | 9–15 digits |
//! | `iban` | 2 letters, 2 check digits, 11–30 alphanumerics (spaces or dashes allowed, any case) | ISO 13616 mod 97 |
//! | `payment_card` | 13–19 digits (spaces/dashes allowed) | Luhn |
//! | `us_ssn` | `AAA-GG-SSSS` | area not 000/666/9xx, group not 00, serial not 0000 |
//! | `uk_nino` | `AB 12 34 56 C` | allowed prefix letters |
//! | `fr_insee` | 13 digits + 2-digit key (NIR) | key = 97 − (number mod 97) |
//! | `de_tax_id` | 11 digits (Steuer-IdNr) | ISO 7064 MOD 11,10 check digit |
//! | `in_aadhaar` | 12 digits, `XXXX XXXX XXXX` | Verhoeff |
//! | `ip_address` | IPv4 dotted quad, IPv6 | parses as an address; not loopback/unspecified |
//! | `date_of_birth` | a date near "born", "DOB", "date of birth", "né(e) le", "geboren" | context |
//! | `person_name` | "my name is …", "Mr/Mrs/Ms/Dr …" followed by capitalised words | context (best effort) |
//! | `postal_address` | number + up to 4 words + a street type (street, avenue, rue, straße…) | context (best effort) |
//!
//! Limits: names and addresses without those cues are not found; national identifiers
//! without a checksum (many countries) are not covered; phone numbers need a separator
//! pattern or a `+` to avoid flagging arbitrary digit runs.

use std::sync::OnceLock;

use regex::Regex;

use crate::{Category, Finding};

struct Detector {
    kind: &'static str,
    re: Regex,
    check: fn(&str) -> bool,
    score: f32,
    reason: &'static str,
}

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// A payment card number: 13–19 digits, a major network's first digit (2–6: Mastercard
/// 2-series, Amex/Diners/JCB, Visa, Mastercard, Discover/UnionPay), and the Luhn check.
pub fn card_ok(s: &str) -> bool {
    matches!(s.chars().next(), Some('2'..='6')) && luhn(s)
}

pub fn luhn(s: &str) -> bool {
    let d = digits(s);
    if !(13..=19).contains(&d.len()) || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The length of a country's IBANs (SWIFT's IBAN registry).
fn iban_length(country: &str) -> Option<usize> {
    Some(match country {
        "NO" => 15,
        "BE" => 16,
        "DK" | "FI" | "FO" | "GL" | "NL" => 18,
        "MK" | "SI" => 19,
        "AT" | "BA" | "EE" | "KZ" | "LT" | "LU" | "XK" => 20,
        "CH" | "CR" | "HR" | "LI" | "LV" => 21,
        "BG" | "BH" | "DE" | "GB" | "GE" | "IE" | "ME" | "RS" => 22,
        "AE" | "GI" | "IL" | "IQ" | "TL" => 23,
        "AD" | "CZ" | "ES" | "MD" | "PK" | "RO" | "SA" | "SE" | "SK" | "TN" | "VG" => 24,
        "LY" | "PT" | "ST" => 25,
        "IS" | "TR" => 26,
        "FR" | "GR" | "IT" | "MC" | "MR" | "SM" => 27,
        "AL" | "AZ" | "BY" | "CY" | "DO" | "GT" | "HU" | "LB" | "PL" | "SV" => 28,
        "BR" | "EG" | "PS" | "QA" | "UA" => 29,
        "JO" | "KW" | "MU" => 30,
        "MT" | "SC" => 31,
        "LC" => 32,
        "RU" => 33,
        _ => return None,
    })
}

pub fn iban_ok(s: &str) -> bool {
    let compact: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    // The country's own length (ISO 13616 registry): with dashes and any case allowed,
    // mod 97 alone would pass one random alphanumeric run in 97.
    if compact.get(..2).and_then(iban_length) != Some(compact.len()) {
        return false;
    }
    let rearranged = format!("{}{}", &compact[4..], &compact[..4]);
    let mut rem: u32 = 0;
    for c in rearranged.chars() {
        let v = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn ssn_ok(s: &str) -> bool {
    let d: String = s.chars().filter(char::is_ascii_digit).collect();
    let (area, group, serial) = (&d[0..3], &d[3..5], &d[5..9]);
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

fn nino_ok(s: &str) -> bool {
    let p: String = s.chars().take(2).collect();
    !matches!(p.as_str(), "BG" | "GB" | "NK" | "KN" | "TN" | "NT" | "ZZ")
}

fn insee_ok(s: &str) -> bool {
    let d: String = s.chars().filter(char::is_ascii_digit).collect();
    if d.len() != 15 {
        return false;
    }
    match (d[..13].parse::<u64>(), d[13..].parse::<u64>()) {
        (Ok(n), Ok(key)) => 97 - n % 97 == key,
        _ => false,
    }
}

fn de_tax_ok(s: &str) -> bool {
    let d = digits(s);
    if d.len() != 11 || d[0] == 0 {
        return false;
    }
    let mut product = 10;
    for &x in &d[..10] {
        let mut sum = (x + product) % 10;
        if sum == 0 {
            sum = 10;
        }
        product = (sum * 2) % 11;
    }
    let check = (11 - product) % 10;
    check == d[10]
}

pub fn verhoeff(s: &str) -> bool {
    const D: [[u8; 10]; 10] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
        [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
        [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
        [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
        [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
        [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
        [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
        [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    ];
    const P: [[u8; 10]; 8] = [
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
        [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
        [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
        [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
        [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
        [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
        [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
        [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
    ];
    let d = digits(s);
    if d.len() != 12 || d[0] < 2 {
        return false;
    }
    let mut c = 0u8;
    for (i, &x) in d.iter().rev().enumerate() {
        c = D[c as usize][P[i % 8][x as usize] as usize];
    }
    c == 0
}

fn phone_ok(s: &str) -> bool {
    let n = digits(s).len();
    (9..=15).contains(&n)
}

fn ip_ok(s: &str) -> bool {
    match s.parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.is_loopback() && !ip.is_unspecified(),
        Err(_) => false,
    }
}

fn yes(_: &str) -> bool {
    true
}

fn detectors() -> &'static [Detector] {
    static D: OnceLock<Vec<Detector>> = OnceLock::new();
    D.get_or_init(|| {
        let d = |kind, re: &str, check, score, reason| Detector {
            kind,
            // The patterns are constants of this file, covered by its tests.
            re: Regex::new(re).unwrap_or_else(|e| panic!("pii pattern {kind}: {e}")),
            check,
            score,
            reason,
        };
        vec![
            d("email", r"(?i)\b[a-z0-9._%+-]{1,64}@(?:[a-z0-9-]{1,63}\.)+[a-z]{2,24}\b", yes, 0.99, "an e-mail address"),
            d("iban", r"(?i)\b[A-Z]{2}\d{2}(?:[ -]?[A-Z0-9]){11,30}\b", iban_ok, 0.99, "an IBAN with a valid checksum"),
            d("payment_card", r"\b\d(?:[ -]?\d){12,18}\b", card_ok, 0.95, "a payment card number that passes the Luhn check"),
            d("us_ssn", r"\b\d{3}-\d{2}-\d{4}\b", ssn_ok, 0.9, "a US Social Security number"),
            d("uk_nino", r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b", nino_ok, 0.9, "a UK National Insurance number"),
            d("fr_insee", r"\b[12] ?\d{2} ?(?:0[1-9]|1[0-2]|[2-9]\d) ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}\b", insee_ok, 0.95, "a French social security number (NIR) with a valid key"),
            d("in_aadhaar", r"\b[2-9]\d{3} ?\d{4} ?\d{4}\b", verhoeff, 0.9, "an Indian Aadhaar number with a valid Verhoeff check digit"),
            d("de_tax_id", r"\b[1-9]\d{10}\b", de_tax_ok, 0.8, "a German tax identification number with a valid check digit"),
            d("phone", r"(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}|\(\d{3}\) ?\d{3}[ .-]\d{4}|\b\d{3}[.-]\d{3}[.-]\d{4}|\b0\d(?:[ .]\d{2}){4})\b", phone_ok, 0.85, "a phone number"),
            d("ip_address", r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b|(?i)\b(?:[0-9a-f]{1,4}:){2,7}[0-9a-f]{1,4}\b", ip_ok, 0.7, "an IP address"),
            d("date_of_birth", r"(?i)\b(?:born(?: on)?|date of birth|d\.?o\.?b\.?|birthday|né(?:e)? le|geboren(?: am)?)[:\s]+(?:\d{1,2}[./-]\d{1,2}[./-]\d{2,4}|\d{4}-\d{2}-\d{2}|\d{1,2} [A-Za-zéû]+ \d{4}|[A-Za-z]+ \d{1,2},? \d{4})", yes, 0.8, "a date of birth"),
            d("person_name", r"\b(?:[Mm]y name is|I am|I'm|[Nn]ame:|Mr\.?|Mrs\.?|Ms\.?|Dr\.?) ([A-Z][a-z]+(?: [A-Z][a-z]+){1,2})\b", yes, 0.6, "a person's name (from context; best effort)"),
            d("postal_address", r"(?i)\b\d{1,5},? (?:[a-zà-ÿ'.-]+ ){0,4}(?:street|st\.|avenue|ave\.|road|rd\.|boulevard|blvd|lane|drive|way|place|rue|quai|allée|chemin|straße|strasse|weg|platz)\b(?: [A-Za-zà-ÿ'-]+){0,3}", yes, 0.6, "a postal address (best effort)"),
        ]
    })
}

/// Personal data in `text`, spans in `text`. Overlaps are resolved by the caller.
/// IBANs: the pattern runs on past the number into the words after it (`DE89 3704 ...
/// 00 and`), so each match is cut to its country's length and the search goes on from
/// there.
fn ibans(d: &Detector, text: &str, findings: &mut Vec<Finding>) {
    let mut at = 0;
    while let Some(m) = d.re.find_at(text, at) {
        let s = m.as_str();
        let country: String = s.chars().take(2).map(|c| c.to_ascii_uppercase()).collect();
        let mut next = m.start() + s.chars().next().map_or(1, char::len_utf8);
        if let Some(len) = iban_length(&country) {
            let mut seen = 0;
            let end = s.char_indices().find_map(|(i, c)| {
                if c.is_ascii_alphanumeric() {
                    seen += 1;
                }
                (seen == len).then(|| i + c.len_utf8())
            });
            if let Some(end) = end {
                let candidate = &s[..end];
                let whole_word = !s[end..].starts_with(|c: char| c.is_ascii_alphanumeric());
                if whole_word && iban_ok(candidate) {
                    findings.push(Finding::new(
                        Category::Pii,
                        d.kind,
                        (m.start(), m.start() + end),
                        d.score,
                        d.reason.into(),
                    ));
                    next = m.start() + end;
                }
            }
        }
        at = next;
    }
}

pub fn scan(text: &str, findings: &mut Vec<Finding>) {
    for d in detectors() {
        if d.kind == "iban" {
            ibans(d, text, findings);
            continue;
        }
        for m in d.re.find_iter(text) {
            let s = m.as_str();
            // A dotted quad inside a longer dotted number (a version) is not an address.
            let dotted = |a: Option<char>, b: Option<char>| {
                a == Some('.') && b.is_some_and(|c| c.is_ascii_digit())
            };
            if d.kind == "ip_address"
                && (dotted(
                    text[m.end()..].chars().next(),
                    text[m.end()..].chars().nth(1),
                ) || dotted(
                    text[..m.start()].chars().next_back(),
                    text[..m.start()].chars().nth_back(1),
                ))
            {
                continue;
            }
            if (d.check)(s) {
                // For names, only the name itself, not the cue before it.
                let (start, end) = if d.kind == "person_name" {
                    d.re.captures(s)
                        .and_then(|c| c.get(1))
                        .map_or((m.start(), m.end()), |g| {
                            (m.start() + g.start(), m.start() + g.end())
                        })
                } else {
                    (m.start(), m.end())
                };
                findings.push(Finding::new(
                    Category::Pii,
                    d.kind,
                    (start, end),
                    d.score,
                    d.reason.into(),
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
            .map(|f| format!("{} {:?}", f.kind, &text[f.start..f.end]))
            .collect();
        expect.assert_eq(&got.join("\n"));
    }

    #[test]
    fn structured_identifiers() {
        check(
            "Mail jane.doe@example.co.uk or call +44 20 7946 0958; IBAN GB82 WEST 1234 5698 7654 32, card 4111 1111 1111 1111.",
            expect![[r#"
                email "jane.doe@example.co.uk"
                phone "+44 20 7946 0958"
                iban "GB82 WEST 1234 5698 7654 32"
                payment_card "4111 1111 1111 1111""#]],
        );
        check(
            "SSN 123-45-6789, NINO AB 12 34 56 C, NIR 1 84 12 76 451 089 46, Aadhaar 2341 2341 2346, Steuer-ID 86095742719, from 192.168.1.20",
            expect![[r#"
                us_ssn "123-45-6789"
                uk_nino "AB 12 34 56 C"
                fr_insee "1 84 12 76 451 089 46"
                in_aadhaar "2341 2341 2346"
                de_tax_id "86095742719"
                ip_address "192.168.1.20""#]],
        );
        check(
            "My name is Marie Curie, born on 7 November 1867, living at 36 quai de Béthune Paris. Call (555) 123-4567.",
            expect![[r#"
                person_name "Marie Curie"
                date_of_birth "born on 7 November 1867"
                postal_address "36 quai de Béthune Paris"
                phone "(555) 123-4567""#]],
        );
    }

    #[test]
    fn checksums_reject_near_misses() {
        check(
            "card 4111 1111 1111 1112, IBAN GB82 WEST 1234 5698 7654 33, SSN 000-12-3456, order 12345678901, version 1.2.3.4.5, 127.0.0.1",
            expect![[""]],
        );
    }

    #[test]
    fn checksum_functions() {
        assert!(luhn("4242424242424242"));
        assert!(!luhn("4242424242424241"));
        assert!(iban_ok("DE89 3704 0044 0532 0130 00"));
        assert!(iban_ok("FR1420041010050500013M02606"));
        assert!(!iban_ok("DE89 3704 0044 0532 0130 01"));
        assert!(verhoeff("234123412346"));
        assert!(!verhoeff("234123412347"));
        assert!(insee_ok("184127645108946"));
        assert!(de_tax_ok("86095742719"));
        assert!(!de_tax_ok("86095742718"));
    }
}
