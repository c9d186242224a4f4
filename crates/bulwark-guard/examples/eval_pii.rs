//! Precision and recall of the structured PII detectors on a generated, labelled set:
//! `cargo run --release -p bulwark-guard --example eval_pii`, one JSON line per kind.
//!
//! The set is written by this program (deterministic seed): sentences in English, French
//! and German with valid values in the formats people write (spaces, dashes, none), and
//! near misses that must not be found (broken checksums, order numbers, versions, dates,
//! amounts, ISBNs, hashes). Nothing here was used to write the detectors' patterns.

use bulwark_guard::{pii, Category, Guard};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn digit(&mut self) -> char {
        char::from(b'0' + (self.next() % 10) as u8)
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n).map(|_| self.digit()).collect()
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

fn luhn_complete(prefix: &str) -> String {
    for d in 0..10 {
        let s = format!("{prefix}{d}");
        if pii::luhn(&s) {
            return s;
        }
    }
    prefix.to_owned()
}

fn iban(country: &str, bban: &str) -> String {
    let mut rem = 0u32;
    for c in format!("{bban}{country}00").chars() {
        let v = c.to_digit(36).unwrap_or(0);
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    format!("{country}{:02}{bban}", 98 - rem)
}

fn grouped(s: &str, sep: &str) -> String {
    s.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(sep)
}

fn value(kind: &str, r: &mut Rng) -> String {
    match kind {
        "email" => {
            let user = r.pick(&[
                "jane.doe",
                "m.rossi",
                "k_tanaka",
                "olivier+news",
                "h.muller",
                "a.b.c",
            ]);
            let dom = r.pick(&[
                "example.com",
                "corp.example.fr",
                "mail.example.de",
                "uni.example.ac.uk",
            ]);
            format!("{user}{}@{dom}", r.next() % 100)
        }
        "phone" => match r.next() % 5 {
            0 => format!("+44 20 {} {}", r.digits(4), r.digits(4)),
            1 => format!("+1 415-{}-{}", r.digits(3), r.digits(4)),
            2 => format!(
                "({}) {}-{}",
                r.digits(3).replacen('0', "5", 1),
                r.digits(3),
                r.digits(4)
            ),
            3 => format!(
                "06 {} {} {} {}",
                r.digits(2),
                r.digits(2),
                r.digits(2),
                r.digits(2)
            ),
            _ => format!("+49 30 {}", r.digits(7)),
        },
        "iban" => {
            let v = match r.next() % 3 {
                0 => iban("DE", &r.digits(18)),
                1 => iban("FR", &r.digits(23)),
                _ => iban("NL", &format!("ABNA{}", r.digits(10))),
            };
            if r.next().is_multiple_of(2) {
                grouped(&v, " ")
            } else {
                v
            }
        }
        "payment_card" => {
            let brand = r.pick(&["4", "51", "52", "6011"]);
            let n = luhn_complete(&format!("{brand}{}", r.digits(15 - brand.len())));
            match r.next() % 3 {
                0 => grouped(&n, " "),
                1 => grouped(&n, "-"),
                _ => n,
            }
        }
        "us_ssn" => format!(
            "{:03}-{:02}-{:04}",
            100 + r.next() % 565,
            1 + r.next() % 98,
            1 + r.next() % 9998
        ),
        _ => String::new(),
    }
}

/// Texts that contain none of these kinds but look a bit like them.
fn near_miss(r: &mut Rng) -> String {
    match r.next() % 10 {
        0 => format!("Order number {} shipped.", r.digits(12)),
        1 => format!(
            "Upgrade to version {}.{}.{}.",
            r.next() % 10,
            r.next() % 30,
            r.next() % 100
        ),
        2 => format!(
            "The meeting is on 2024-{:02}-{:02} at 10:30.",
            1 + r.next() % 12,
            1 + r.next() % 28
        ),
        3 => format!(
            "Revenue was {},{:03},{:03}.{:02} EUR.",
            r.next() % 900,
            r.next() % 1000,
            r.next() % 1000,
            r.next() % 100
        ),
        4 => format!(
            "ISBN 978-{}-{}-{}-{}",
            r.digit(),
            r.digits(3),
            r.digits(5),
            r.digit()
        ),
        5 => {
            let mut n = luhn_complete(&format!("4{}", r.digits(14)));
            let last = n.pop().and_then(|c| c.to_digit(10)).unwrap_or(0);
            format!(
                "Card {} was declined.",
                grouped(&format!("{n}{}", (last + 1) % 10), " ")
            )
        }
        6 => format!(
            "Reference DE{}{} is not an IBAN.",
            10 + r.next() % 89,
            r.digits(18)
        ),
        7 => format!("Commit {:x}{:x} fixed it.", r.next(), r.next()),
        8 => format!(
            "SSN 000-{:02}-{:04} is invalid.",
            1 + r.next() % 98,
            1 + r.next() % 9998
        ),
        _ => format!(
            "Room {} on floor {}, ticket #{}.",
            r.digits(3),
            r.next() % 20,
            r.digits(6)
        ),
    }
}

const TEMPLATES: &[&str] = &[
    "Please send the invoice to {} by Friday.",
    "My details: {}. Thanks!",
    "Merci d'utiliser {} pour le remboursement.",
    "Bitte verwenden Sie {} für die Zahlung.",
    "{}",
    "Customer record — {} — verified yesterday.",
];

fn main() {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let guard = Guard::default();
    let kinds = ["email", "phone", "iban", "payment_card", "us_ssn"];
    // (kind, tp, fp, fn)
    let mut stats: Vec<(&str, u32, u32, u32)> = kinds.iter().map(|k| (*k, 0, 0, 0)).collect();
    let mut negatives = 0;
    for i in 0..3000 {
        let planted = if i % 3 == 2 {
            None
        } else {
            Some(kinds[i % kinds.len()])
        };
        let (text, span) = match planted {
            Some(k) => {
                let v = value(k, &mut r);
                let t = r.pick(TEMPLATES);
                let at = t.find("{}").unwrap_or(0);
                (t.replacen("{}", &v, 1), Some((k, at, at + v.len())))
            }
            None => {
                negatives += 1;
                (near_miss(&mut r), None)
            }
        };
        let found: Vec<_> = guard
            .scan(&text)
            .findings
            .into_iter()
            .filter(|f| f.category == Category::Pii)
            .collect();
        for s in stats.iter_mut() {
            let hit = found.iter().any(|f| {
                f.kind == s.0 && span.is_some_and(|(k, a, b)| k == s.0 && f.start < b && a < f.end)
            });
            let false_pos = found
                .iter()
                .filter(|f| {
                    f.kind == s.0
                        && !span.is_some_and(|(k, a, b)| k == s.0 && f.start < b && a < f.end)
                })
                .count();
            s.2 += false_pos as u32;
            if false_pos > 0 && s.2 <= 3 {
                eprintln!("FALSE {}: {text}", s.0);
            }
            match span {
                Some((k, _, _)) if k == s.0 => {
                    if hit {
                        s.1 += 1;
                    } else {
                        s.3 += 1;
                        if s.3 <= 3 {
                            eprintln!("MISS {k}: {text}");
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for (k, tp, fp, fnn) in stats {
        let p = f64::from(tp) / f64::from((tp + fp).max(1));
        let rc = f64::from(tp) / f64::from((tp + fnn).max(1));
        let f1 = if p + rc > 0.0 {
            2.0 * p * rc / (p + rc)
        } else {
            0.0
        };
        println!("{{\"kind\":\"{k}\",\"planted\":{},\"tp\":{tp},\"fp\":{fp},\"fn\":{fnn},\"precision\":{p:.4},\"recall\":{rc:.4},\"f1\":{f1:.4}}}", tp + fnn);
    }
    println!("{{\"near_miss_texts\":{negatives}}}");
}
