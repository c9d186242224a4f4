//! The first stage measured on sources it has never seen: leave one source out.
//!
//! `loso DATA_DIR` (after `train/prepare.py` and `train/documents.py`; run by
//! `bench/guard_loso.sh`). For each source (the `source` of `train.jsonl` and `dev.jsonl`
//! rows; each project's snippets and passages (`train/documents.py`: Django, pytest,
//! tokio, lodash) are one source, Sphinx's calibration pieces another), the first stage
//! is fitted as `train_injection` fits the shipped one, on every other source (its
//! thresholds chosen on their tuning split and long benign texts), and scores the
//! held-out source's texts at that blocking threshold (and at the flag threshold, three
//! quarters of it). Every text is thus scored by a model that never saw its source.
//! The shipped model, trained on every source, scores them too: the in-sample figure,
//! for the gap.
//!
//! Prints Markdown tables (per source, per language, per kind) on stdout; with
//! `LOSO_OUT=FILE`, one JSON line per text (source, lang, kind, label, score, threshold)
//! for reading the misses. `LOSO_ONLY=a,b` holds out only those sources.

use std::collections::BTreeMap;
use std::time::Instant;

use bulwark_guard::{Guard, Thresholds};
use serde_json::json;

mod common;
use common::fit::{self, scores};
use common::{is_tuning, read, Example};

/// What one text got: its model's score, that model's blocking threshold, and the
/// shipped guard's verdict.
struct Scored<'a> {
    e: &'a Example,
    score: f32,
    threshold: f32,
    shipped: bool,
}

/// Counts behind one row of a table.
#[derive(Default)]
struct Tally {
    attacks: u32,
    blocked: u32,
    flagged: u32,
    benign: u32,
    false_blocks: u32,
    false_flags: u32,
    shipped_blocked: u32,
    shipped_false: u32,
}

impl Tally {
    fn add(&mut self, s: &Scored) {
        let t = Thresholds::blocking_at(s.threshold);
        let (block, flag) = (s.score >= t.block, s.score >= t.flag);
        if s.e.label {
            self.attacks += 1;
            self.blocked += u32::from(block);
            self.flagged += u32::from(flag);
            self.shipped_blocked += u32::from(s.shipped);
        } else {
            self.benign += 1;
            self.false_blocks += u32::from(block);
            self.false_flags += u32::from(flag);
            self.shipped_false += u32::from(s.shipped);
        }
    }

    fn row(&self, name: &str) -> String {
        let rate = |k: u32, n: u32| {
            if n == 0 {
                "–".to_owned()
            } else {
                format!("{:.3}", f64::from(k) / f64::from(n))
            }
        };
        let pct = |k: u32, n: u32| {
            if n == 0 {
                "–".to_owned()
            } else {
                format!("{:.1}%", 100.0 * f64::from(k) / f64::from(n))
            }
        };
        format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            self.attacks,
            rate(self.blocked, self.attacks),
            rate(self.flagged, self.attacks),
            self.benign,
            pct(self.false_blocks, self.benign),
            pct(self.false_flags, self.benign),
            rate(self.shipped_blocked, self.attacks),
            pct(self.shipped_false, self.benign),
        )
    }
}

const HEADER: &str = "| {} | attacks | recall (block) | recall (block or flag) | benign | false blocks | false flags | in-sample (shipped): recall | in-sample: false blocks |\n|---|---|---|---|---|---|---|---|---|";

fn table(title: &str, rows: &BTreeMap<String, Tally>) {
    println!("\n{}", HEADER.replace("{}", title));
    for (k, t) in rows {
        println!("{}", t.row(k));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir] = args.as_slice() else {
        panic!("usage: loso DATA_DIR");
    };
    let file = |name: &str| format!("{dir}/{name}");
    let relabel = |mut v: Vec<Example>, source: &str| {
        for e in &mut v {
            if e.source.is_empty() {
                e.source = source.to_owned();
            }
            if e.lang.is_empty() {
                e.lang = "en".to_owned();
            }
            if e.kind.is_empty() {
                e.kind = if e.label {
                    "indirect"
                } else {
                    "benign documents"
                }
                .to_owned();
            }
        }
        v
    };
    let mut rows = read(&file("train.jsonl"));
    rows.extend(read(&file("dev.jsonl")));
    let snippets = relabel(read(&file("snippets.jsonl")), "documents");
    let docs = relabel(read(&file("docs.jsonl")), "documents");
    let cal = relabel(read(&file("documents_calibration.jsonl")), "sphinx");
    let sources = rows.iter().chain(&snippets).chain(&docs).chain(&cal);
    let mut sources: Vec<String> = sources.map(|e| e.source.clone()).collect();
    sources.sort_unstable();
    sources.dedup();
    if let Ok(only) = std::env::var("LOSO_ONLY") {
        sources.retain(|s| only.split(',').any(|o| o == s));
    }
    let shipped = Guard::default();
    let hyper = fit::hyper();
    let mut scored: Vec<Scored> = Vec::new();
    let started = Instant::now();
    for held in &sources {
        // A document that hides an attack of the held-out source goes with it.
        let keep = |e: &&Example| &e.source != held && &e.origin != held;
        let rest: Vec<&Example> = rows.iter().filter(keep).collect();
        let (tune, fit_rows): (Vec<&Example>, Vec<&Example>) =
            rest.iter().partition(|e| is_tuning(&e.text));
        let fitted = fit::fit(
            &fit_rows,
            &snippets.iter().filter(keep).collect::<Vec<_>>(),
            &docs.iter().filter(keep).collect::<Vec<_>>(),
            &tune,
            &cal.iter().filter(keep).collect::<Vec<_>>(),
            hyper,
        );
        let out: Vec<&Example> = rows
            .iter()
            .chain(&snippets)
            .chain(&docs)
            .chain(&cal)
            .filter(|e| &e.source == held)
            .collect();
        // (A document of another source hiding one of this source's attacks is neither
        // trained on nor scored in this fold: it is scored with its own source.)
        let got = scores(&fitted.guard(), &out);
        let before = scores(&shipped, &out);
        eprintln!(
            "{held}: {} texts, threshold {:.3}, {:.0} s so far",
            out.len(),
            fitted.threshold,
            started.elapsed().as_secs_f64()
        );
        for ((e, (s, _)), (b, _)) in out.iter().zip(got).zip(before) {
            scored.push(Scored {
                e,
                score: s,
                threshold: fitted.threshold,
                shipped: b >= shipped.thresholds.block,
            });
        }
    }
    if let Ok(path) = std::env::var("LOSO_OUT") {
        let lines: String = scored
            .iter()
            .map(|s| {
                json!({"source": s.e.source, "lang": s.e.lang, "kind": s.e.kind, "label": u8::from(s.e.label),
                       "score": s.score, "threshold": s.threshold, "text": s.e.text})
                .to_string()
                    + "\n"
            })
            .collect();
        std::fs::write(&path, lines).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let mut by: [BTreeMap<String, Tally>; 3] = Default::default();
    let mut all = Tally::default();
    for s in &scored {
        for (map, k) in by.iter_mut().zip([&s.e.source, &s.e.lang, &s.e.kind]) {
            map.entry(k.clone()).or_default().add(s);
        }
        all.add(s);
    }
    table("held-out source", &by[0]);
    println!("{}", all.row("**all, pooled**"));
    table("language", &by[1]);
    table("kind", &by[2]);
    eprintln!(
        "{} folds in {:.0} s",
        sources.len(),
        started.elapsed().as_secs_f64()
    );
}
