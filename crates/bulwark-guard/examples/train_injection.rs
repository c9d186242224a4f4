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

use bulwark_guard::{features, injection::Model, log_odds, sigmoid, Guard, Thresholds};
use serde_json::json;

mod common;
use common::{budget_edge, categories, confusion, is_tuning, read, report, Example};

/// The lowest threshold that lets at most `allowed` (k = ⌊1%·(n+1)⌋ − 1) of the n
/// negatives through, an expected 1% on new texts (as `calibrate_encoder`).
fn pick(scores: &[(f32, bool)]) -> f32 {
    // Strictly above the (k+1)-th highest negative score, and above the cap on short
    // texts, so that the model alone never blocks a short text.
    budget_edge(scores.iter().filter(|s| !s.1).map(|s| s.0).collect())
        .map_or(0.999, |s| (s + 1e-4).min(0.999))
        .max(bulwark_guard::injection::SHORT_CAP + 0.01)
}

/// The model as it ships (quantised), with these thresholds.
fn build(bias: f32, w: &[f32], threshold: f32) -> (Vec<u8>, &'static Model) {
    let bytes = Model::to_bytes(bias, w, threshold);
    let model = Model::from_bytes(&bytes).unwrap_or_else(|| panic!("model round trip"));
    (bytes, Box::leak(Box::new(model)))
}

/// Logistic regression over the hashed features of `fit`, by SGD with L2: (bias,
/// weights).
fn sgd(fit: &[&Example], (epochs, l2, lr0): (usize, f32, f32)) -> (f32, Vec<f32>) {
    // SGD, deterministic order (xorshift shuffles).
    let mut w = vec![0f32; features::BUCKETS];
    let mut bias = 0f32;
    let mut order: Vec<usize> = (0..fit.len()).collect();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut scratch = Vec::new();
    let windows: Vec<Vec<(usize, usize)>> =
        fit.iter().map(|e| features::windows(&e.norm)).collect();
    for epoch in 0..epochs {
        for i in (1..order.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            order.swap(i, (rng % (i as u64 + 1)) as usize);
        }
        let lr = lr0 / (1.0 + epoch as f32 * 0.5);
        for &i in &order {
            let e = fit[i];
            // As the gateway reads (`Model::locate`): a long text in windows. Every
            // window of a benign text is taught to stay low; of an attack, the window
            // that scores highest now is taught to be high (the others may be benign
            // prose around an injected sentence).
            let spans = &windows[i];
            let chosen = if e.label && spans.len() > 1 {
                let at = spans
                    .iter()
                    .map(|&(s, t)| features::logit(&w, bias, &e.norm[s..t], &mut scratch))
                    .enumerate()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .map_or(0, |(k, _)| k);
                &spans[at..=at]
            } else {
                &spans[..]
            };
            for &(s, t) in chosen {
                let z = features::logit(&w, bias, &e.norm[s..t], &mut scratch);
                let v = features::scale(scratch.len());
                let p = sigmoid(z);
                let g = f32::from(u8::from(e.label)) - p;
                for &h in &scratch {
                    let wh = &mut w[h as usize];
                    *wh += lr * (g * v - l2 * *wh);
                }
                bias += lr * g * 0.1;
            }
        }
    }
    (bias, w)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, train, dev, out, snippets, docs, docs_cal, out_docs] = args.as_slice() else {
        panic!(
            "usage: train_injection TRAIN.jsonl DEV.jsonl OUT.bin SNIPPETS.jsonl DOCS.jsonl DOCS_CAL.jsonl OUT_DOCS.bin"
        );
    };
    let all = read(train);
    let dev = read(dev);
    let (tune, fit): (Vec<&Example>, Vec<&Example>) = all.iter().partition(|e| is_tuning(&e.text));

    // Chosen on the tuning split (TRAIN_EPOCHS, TRAIN_L2, TRAIN_LR override them).
    let env = |k: &str, d: f32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let hyper = (
        env("TRAIN_EPOCHS", 40.0) as usize,
        env("TRAIN_L2", 1e-7),
        env("TRAIN_LR", 3.0),
    );
    let epochs = hyper.0;
    let started = Instant::now();
    let snippets = read(snippets);
    let with_snippets: Vec<&Example> = fit.iter().copied().chain(snippets.iter()).collect();
    let (bias, w) = sgd(&with_snippets, hyper);
    let train_secs = started.elapsed().as_secs_f64();

    let rules = Guard {
        thresholds: Thresholds {
            block: 0.5,
            flag: 0.5,
        },
        model: None,
        encoder: None,
    };
    let combined = |g: &Guard, set: &[&Example]| -> Vec<(f32, bool)> {
        set.iter()
            .map(|e| (g.scan(&e.text).injection_score, e.label))
            .collect()
    };
    // Quantised first, so that everything below measures the model that ships.
    let (_, provisional) = build(bias, &w, 0.5);
    let tune_scores = combined(
        &Guard {
            model: Some(provisional),
            ..rules.clone()
        },
        &tune,
    );
    let threshold = pick(&tune_scores);
    let (bytes, short_only) = build(bias, &w, threshold);
    std::fs::write(out, &bytes).unwrap_or_else(|e| panic!("{out}: {e}"));

    // The documents model: the fit split (not the snippets) plus the documents, the same
    // training.
    let docs = read(docs);
    let cal = read(docs_cal);
    let started = Instant::now();
    let (doc_bias, doc_w) = sgd(
        &[&fit[..], &docs.iter().collect::<Vec<_>>()].concat(),
        hyper,
    );
    let doc_secs = started.elapsed().as_secs_f64();
    let (_, doc_provisional) = build(doc_bias, &doc_w, 0.5);
    let long = |e: &&Example| features::windows(&e.norm).len() > 1;
    let mut scratch = Vec::new();
    let neg: Vec<f32> = cal
        .iter()
        .chain(tune.iter().copied())
        .filter(|e| !e.label && long(e))
        .map(|e| {
            let windows = features::windows(&e.norm);
            doc_provisional.highest(&e.norm, &windows, &mut scratch).0
        })
        .collect();
    let long_benign = neg.len();
    // In log-odds (the model's own scale near 1 is finer than f32 probabilities).
    let z = budget_edge(neg).map_or(f32::INFINITY, |z| z + 1e-3);
    let doc_threshold = sigmoid(z);
    let back = log_odds(doc_threshold);
    assert!(
        (back - z).abs() < 0.05,
        "documents threshold {z} in log-odds does not survive f32 ({back})"
    );
    let (doc_bytes, _) = build(doc_bias, &doc_w, doc_threshold);
    std::fs::write(out_docs, &doc_bytes).unwrap_or_else(|e| panic!("{out_docs}: {e}"));
    let model: &'static Model = Box::leak(Box::new(
        Model::from_bytes(&bytes)
            .and_then(|m| Some(m.with_documents(Model::from_bytes(&doc_bytes)?)))
            .unwrap_or_else(|| panic!("model round trip")),
    ));
    let both = Guard {
        model: Some(model),
        ..rules.clone()
    };
    let without_docs = Guard {
        model: Some(short_only),
        ..rules.clone()
    };

    let dev_refs: Vec<&Example> = dev.iter().collect();
    let started = Instant::now();
    let dev_both = combined(&both, &dev_refs);
    let per_text_us = started.elapsed().as_secs_f64() * 1e6 / dev.len().max(1) as f64;
    let dev_rules = combined(&rules, &dev_refs);
    let dev_model: Vec<(f32, bool)> = dev
        .iter()
        .map(|e| (model.score(&e.norm, &mut scratch), e.label))
        .collect();

    println!(
        "{}",
        json!({"train": with_snippets.len(), "tune": tune.len(), "dev": dev.len(), "epochs": epochs,
        "train_secs": train_secs, "threshold": threshold, "scan_us_per_dev_text": per_text_us,
        "model_bytes": bytes.len()})
    );
    println!("{}", report("tune: rules + model", &tune_scores, threshold));
    println!(
        "{}",
        json!({"documents model": {"train": fit.len() + docs.len(), "train_secs": doc_secs,
               "long benign texts": long_benign, "threshold": doc_threshold, "threshold_logit": z}})
    );
    // Long texts: the tuning split's and the calibration documents (by kind), with and
    // without the documents model. (The calibration's benign documents chose its
    // threshold; the attacks hidden in its other pieces did not.)
    let long_tune: Vec<&Example> = tune.iter().copied().filter(long).collect();
    let mut kinds: Vec<&str> = cal.iter().map(|e| e.category.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let tune_all = combined(&both, &tune);
    println!("{}", report("tune: rules + models", &tune_all, threshold));
    for (name, g) in [("without", &without_docs), ("with", &both)] {
        let s = combined(g, &long_tune);
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
            let blocked = combined(g, &set)
                .iter()
                .filter(|s| s.0 >= threshold)
                .count();
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
