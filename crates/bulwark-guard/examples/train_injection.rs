//! Trains the learned injection detector and reports its quality.
//!
//! `train_injection TRAIN.jsonl DEV.jsonl OUT.bin SNIPPETS.jsonl DOCS.jsonl DOCS_CAL.jsonl
//! OUT_DOCS.bin` (run by `train/train.sh`). Each line: `{"text": ..., "label": 0|1}`. Deterministic:
//! fixed seed, fixed split, so the same data gives the same bytes.
//!
//! 1. One text in ten of TRAIN (by a hash of the text) is held out as the tuning split.
//! 2. Logistic regression over the hashed features, by SGD with L2, on the rest and
//!    SNIPPETS (`train/documents.py`: short benign pieces of source and documentation);
//!    a long text is read in windows, as the gateway reads it (`Model::locate`).
//! 3. The blocking threshold on the combined score (rules, model, decoded views — what
//!    the gateway computes) is the lowest whose false-positive rate on the tuning split
//!    is at most 1%.
//! 4. The documents model, which reads long texts: the same training on the rest of TRAIN
//!    (not SNIPPETS, which are short) plus DOCS (`train/documents.py`: passages of one project's documentation and code,
//!    a third with an attack hidden inside). Its threshold is the lowest that lets at
//!    most 1% of the long benign texts through: DOCS_CAL's pieces of another project's
//!    documentation and code, and the tuning split's long texts.
//! 5. DEV, never trained or tuned on, is scored at that threshold: rules alone, the model
//!    alone, and both; one JSON line each on stdout.

use std::time::Instant;

use bulwark_guard::Guard;
use serde_json::json;

mod common;
use common::fit::{self, long, rules, scores};
use common::{categories, confusion, is_tuning, read, report, Example};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, train, dev, out, snippets, docs, docs_cal, out_docs] = args.as_slice() else {
        panic!(
            "usage: train_injection TRAIN.jsonl DEV.jsonl OUT.bin SNIPPETS.jsonl DOCS.jsonl DOCS_CAL.jsonl OUT_DOCS.bin"
        );
    };
    let all = read(train);
    let dev = read(dev);
    let (tune, fit_rows): (Vec<&Example>, Vec<&Example>) =
        all.iter().partition(|e| is_tuning(&e.text));

    let snippets = read(snippets);
    let docs = read(docs);
    let cal = read(docs_cal);
    let hyper = fit::hyper();
    let epochs = hyper.0;
    let fitted = fit::fit(
        &fit_rows,
        &snippets.iter().collect::<Vec<_>>(),
        &docs.iter().collect::<Vec<_>>(),
        &tune,
        &cal.iter().collect::<Vec<_>>(),
        hyper,
    );
    let threshold = fitted.threshold;
    std::fs::write(out, &fitted.bytes).unwrap_or_else(|e| panic!("{out}: {e}"));
    std::fs::write(out_docs, &fitted.doc_bytes).unwrap_or_else(|e| panic!("{out_docs}: {e}"));
    let model = fitted.model;
    let both = Guard {
        model: Some(model),
        ..rules()
    };
    let without_docs = Guard {
        model: Some(fitted.short_only),
        ..rules()
    };
    let mut scratch = Vec::new();

    let dev_refs: Vec<&Example> = dev.iter().collect();
    let started = Instant::now();
    let dev_both = scores(&both, &dev_refs);
    let per_text_us = started.elapsed().as_secs_f64() * 1e6 / dev.len().max(1) as f64;
    let dev_rules = scores(&rules(), &dev_refs);
    let dev_model: Vec<(f32, bool)> = dev
        .iter()
        .map(|e| (model.score(&e.norm, &mut scratch), e.label))
        .collect();

    println!(
        "{}",
        json!({"train": fit_rows.len() + snippets.len(), "tune": tune.len(), "dev": dev.len(), "epochs": epochs,
        "train_secs": fitted.train_secs, "threshold": threshold, "scan_us_per_dev_text": per_text_us,
        "model_bytes": fitted.bytes.len()})
    );
    println!(
        "{}",
        report("tune: rules + model", &fitted.tune_scores, threshold)
    );
    println!(
        "{}",
        json!({"documents model": {"train": fit_rows.len() + docs.len(), "train_secs": fitted.doc_secs,
               "long benign texts": fitted.long_benign, "threshold": fitted.doc_threshold,
               "threshold_logit": fitted.doc_logit}})
    );
    // Long texts: the tuning split's and the calibration documents (by kind), with and
    // without the documents model. (The calibration's benign documents chose its
    // threshold; the attacks hidden in its other pieces did not.)
    let long_tune: Vec<&Example> = tune.iter().copied().filter(long).collect();
    let mut kinds: Vec<&str> = cal.iter().map(|e| e.category.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let tune_all = scores(&both, &tune);
    println!("{}", report("tune: rules + models", &tune_all, threshold));
    for (name, g) in [("without", &without_docs), ("with", &both)] {
        let s = scores(g, &long_tune);
        println!(
            "{}",
            report(
                &format!("tune, long texts: {name} the documents model"),
                &s,
                threshold
            )
        );
        for &c in &kinds {
            let set: Vec<&Example> = cal.iter().filter(|e| e.category == c && long(e)).collect();
            let blocked = scores(g, &set).iter().filter(|s| s.0 >= threshold).count();
            println!(
                "{}",
                json!({"documents calibration": c, "documents model": name, "long pieces": set.len(), "blocked": blocked})
            );
        }
    }
    println!("{}", report("dev: rules alone", &dev_rules, 0.5));
    println!("{}", report("dev: model alone", &dev_model, threshold));
    println!("{}", report("dev: rules + model", &dev_both, threshold));
    // Recall per attack category on dev (neuralchemy labels them).
    for c in categories(dev.iter()) {
        let s: Vec<(f32, bool)> = dev
            .iter()
            .zip(&dev_both)
            .filter(|(e, _)| e.category == c)
            .map(|(_, s)| *s)
            .collect();
        let (tp, _, _, fnn) = confusion(&s, threshold);
        println!(
            "{}",
            json!({"dev category": c, "attacks": tp + fnn, "recall": f64::from(tp) / f64::from((tp + fnn).max(1))})
        );
    }
    // Misses and false alarms on the tuning split, a few of each, to read: the place to
    // look for what training lacks. Dev stays unread, so that its figures stay honest.
    for (e, (s, _)) in tune
        .iter()
        .zip(&tune_all)
        .filter(|(e, (s, _))| e.label != (*s >= threshold))
        .take(12)
    {
        let t: String = e.text.chars().take(120).collect();
        eprintln!(
            "{} {:.2} {t}",
            if e.label { "MISS" } else { "FALSE ALARM" },
            s
        );
    }
}
