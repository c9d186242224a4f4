//! Shared by the guard's training and evaluation examples: the data files
//! (`train/prepare.py` writes them), the tuning split and the counts.

#![allow(dead_code)]

use bulwark_guard::normalise;
use serde_json::{json, Value};

pub mod fit;

pub struct Example {
    pub text: String,
    pub norm: String,
    pub label: bool,
    pub category: String,
    /// Where it comes from (`train/prepare.py`), its rough language and its kind, for
    /// the reports; empty where the file does not say.
    pub source: String,
    pub lang: String,
    pub kind: String,
    /// For a document with an attack hidden in it (`train/documents.py`), the source of
    /// that attack.
    pub origin: String,
}

pub fn read(path: &str) -> Vec<Example> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}: {e}"));
            let text = v["text"].as_str().unwrap_or_default().to_owned();
            let norm = normalise::normalise(&text, &mut Vec::new()).text;
            let field = |k: &str| v[k].as_str().unwrap_or("").to_owned();
            Example {
                norm,
                label: v["label"].as_i64() == Some(1),
                category: field("category"),
                source: field("source"),
                lang: field("lang"),
                kind: field("kind"),
                origin: field("from"),
                text,
            }
        })
        .collect()
}

pub fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// One text in ten of train (by this hash of the text) is the tuning split.
pub fn is_tuning(text: &str) -> bool {
    fnv(text).is_multiple_of(10)
}

/// The false-positive rate the thresholds are chosen for.
pub const MAX_FPR: f64 = 0.01;

/// How many of `neg` benign texts a threshold may let through. A threshold just above
/// the (k+1)-th highest of n benign scores blocks a new benign text with probability
/// (k+1)/(n+1) (the new text is as likely to rank anywhere among the n+1), so
/// k = floor(MAX_FPR·(n+1)) − 1 keeps the expected rate on texts not seen here within
/// MAX_FPR. (Letting floor(MAX_FPR·n) through expects 1.07% on 842 texts.) Negative
/// when even one would be too many.
pub fn allowed(neg: usize) -> i64 {
    (MAX_FPR * (neg as f64 + 1.0)).floor() as i64 - 1
}

/// The (k+1)-th highest of the `neg` benign scores, k = [`allowed`]: a threshold just
/// above it lets k of them through. `None` when even one would be too many, or there are
/// too few.
pub fn budget_edge(mut neg: Vec<f32>) -> Option<f32> {
    neg.sort_by(|a, b| b.total_cmp(a));
    usize::try_from(allowed(neg.len()))
        .ok()
        .and_then(|k| neg.get(k).copied())
}

/// Counts at a threshold: (tp, fp, tn, fn).
pub fn confusion(scores: &[(f32, bool)], t: f32) -> (u32, u32, u32, u32) {
    let mut c = (0, 0, 0, 0);
    for &(s, y) in scores {
        match (s >= t, y) {
            (true, true) => c.0 += 1,
            (true, false) => c.1 += 1,
            (false, false) => c.2 += 1,
            (false, true) => c.3 += 1,
        }
    }
    c
}

pub fn report(name: &str, scores: &[(f32, bool)], t: f32) -> Value {
    let (tp, fp, tn, fnn) = confusion(scores, t);
    let p = f64::from(tp) / f64::from((tp + fp).max(1));
    let r = f64::from(tp) / f64::from((tp + fnn).max(1));
    let fpr = f64::from(fp) / f64::from((fp + tn).max(1));
    let f1 = if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    };
    json!({"detector": name, "threshold": t, "n": scores.len(), "tp": tp, "fp": fp, "tn": tn, "fn": fnn,
           "precision": p, "recall": r, "fpr": fpr, "f1": f1})
}

/// The attack categories present (neuralchemy labels them), sorted.
pub fn categories<'a>(rows: impl Iterator<Item = &'a Example>) -> Vec<&'a str> {
    let mut cats: Vec<&str> = rows
        .filter(|e| e.label && !e.category.is_empty())
        .map(|e| e.category.as_str())
        .collect();
    cats.sort_unstable();
    cats.dedup();
    cats
}
