//! Chooses how the two stages decide together, from the gateway's own scores on the
//! tuning split, and measures the result on dev.
//!
//! `calibrate_encoder DATA_DIR ENCODER_DIR OUT.json [SHORT_PROBE] [TRAINER_DEV_SCORES]`
//! (run by `train/train_encoder.sh`). DATA_DIR holds `train.jsonl` and `dev.jsonl` from
//! `train/prepare.py`.
//!
//! 1. On the tuning split (one text in ten of train, never trained on by either stage):
//!    the first stage's score (`Guard::scan` without the encoder) and the encoder's
//!    (`Encoder::score` on the normalised text, as the gateway runs it).
//! 2. For each gate (the first-stage score below which the encoder is skipped), each
//!    minimum word count and each blend weight (the first stage's share in the score the
//!    encoder's threshold applies to, in log-odds): the pair of thresholds (first stage,
//!    blended) with the highest recall whose false-positive rate stays at or under 1%.
//! 3. The minimum word count is `MIN_WORDS` (default 0, no minimum: a minimum of 3 or
//!    more words costs about 3 points of tuning recall, see BENCHMARKS.md); the gate is
//!    the highest whose tuning recall is within 0.3 points of the best, and the weight the
//!    one with the best recall at that gate (on a tie, the lowest). Written to OUT.
//! 4. Dev, never trained or tuned on, is scored by `Guard::scan` with that calibration:
//!    one JSON line per measurement, per attack category, the CPU cost, the short probe,
//!    and, given the trainer's dev scores, how far this forward pass is from the trainer's.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bulwark_guard::encoder::{Calibration, Encoder};
use bulwark_guard::{Guard, Thresholds};
use serde_json::{json, Value};

mod common;
use common::{categories, confusion, is_tuning, read, report, Example};

const MAX_FPR: f64 = 0.01;
const GATES: &[f32] = &[0.0, 0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3];
/// The first stage's share in the blended score (0: the encoder's score alone).
const WEIGHTS: &[f32] = &[0.0, 0.2, 0.3, 0.4, 0.5, 0.6];

/// Scores of one tuning text: first stage, encoder, word count.
struct Scored {
    first: f32,
    encoder: f32,
    words: usize,
    label: bool,
}

/// The lowest threshold letting at most `allowed` of `neg` through (2.0: none may pass).
fn lowest(mut neg: Vec<f32>, allowed: i64) -> f32 {
    if allowed < 0 {
        return 2.0;
    }
    neg.sort_by(|a, b| b.total_cmp(a));
    neg.get(allowed as usize).map_or(0.0, |&s| s.next_up())
}

/// The best (first, encoder) pair for this gate, word minimum and blend weight:
/// (recall, fpr, calibration).
fn choose(rows: &[Scored], gate: f32, min_words: usize, weight: f32) -> (f64, f64, Calibration) {
    let neg = rows.iter().filter(|r| !r.label).count();
    let pos = rows.len() - neg;
    let allowed = (MAX_FPR * neg as f64).floor() as i64;
    let blend = Calibration {
        first: 1.01,
        encoder: 2.0,
        weight,
        gate,
        min_words,
    };
    let enc = |r: &Scored| {
        if r.first >= gate && r.words >= min_words {
            blend.blend(r.first, r.encoder)
        } else {
            0.0
        }
    };
    let mut candidates: Vec<f32> = rows
        .iter()
        .map(|r| r.first)
        .filter(|&s| s >= 0.85)
        .collect();
    candidates.push(1.01);
    candidates.sort_by(f32::total_cmp);
    candidates.dedup();
    let mut best: Option<(f64, f64, Calibration)> = None;
    for t_first in candidates {
        let first_fp = rows
            .iter()
            .filter(|r| !r.label && r.first >= t_first)
            .count() as i64;
        let rest: Vec<f32> = rows
            .iter()
            .filter(|r| !r.label && r.first < t_first)
            .map(enc)
            .collect();
        let t_enc = lowest(rest, allowed - first_fp);
        let blocked = |r: &Scored| r.first >= t_first || enc(r) >= t_enc;
        let tp = rows.iter().filter(|r| r.label && blocked(r)).count();
        let fp = rows.iter().filter(|r| !r.label && blocked(r)).count();
        let recall = tp as f64 / pos.max(1) as f64;
        if best.as_ref().is_none_or(|b| recall > b.0) {
            best = Some((
                recall,
                fp as f64 / neg.max(1) as f64,
                Calibration {
                    first: t_first,
                    encoder: t_enc,
                    ..blend
                },
            ));
        }
    }
    best.unwrap_or((0.0, 0.0, blend))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (data, dir, out) = match args.as_slice() {
        [_, data, dir, out, ..] => (Path::new(data), Path::new(dir), Path::new(out)),
        _ => panic!(
            "usage: calibrate_encoder DATA_DIR ENCODER_DIR OUT.json [SHORT_PROBE] [TRAINER_DEV_SCORES]"
        ),
    };
    let min_words: usize = std::env::var("MIN_WORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let started = Instant::now();
    let mut encoder = Encoder::load(dir).unwrap_or_else(|e| panic!("{e}"));
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let train = read(&data.join("train.jsonl").display().to_string());
    let dev = read(&data.join("dev.jsonl").display().to_string());
    let tune: Vec<&Example> = train.iter().filter(|e| is_tuning(&e.text)).collect();
    let dev: Vec<&Example> = dev.iter().collect();
    let thresholds = Thresholds::default();
    let first = Guard::new(thresholds);

    let rows: Vec<Scored> = tune
        .iter()
        .map(|e| Scored {
            first: first.scan(&e.text).injection_score,
            encoder: encoder.score(&e.norm).0,
            words: e.norm.split_whitespace().count(),
            label: e.label,
        })
        .collect();
    // Which text the encoder should read: the normalised one (what the gateway gives it)
    // or the raw one (what it was trained on). Encoder alone, 1% false positives.
    for (what, input) in [("normalised", true), ("raw", false)] {
        let scored: Vec<(f32, bool)> = tune
            .iter()
            .map(|e| {
                let t = if input { &e.norm } else { &e.text };
                (encoder.score(t).0, e.label)
            })
            .collect();
        let neg = scored.iter().filter(|s| !s.1).count();
        let t = lowest(
            scored.iter().filter(|s| !s.1).map(|s| s.0).collect(),
            (MAX_FPR * neg as f64).floor() as i64,
        );
        println!(
            "{}",
            report(&format!("tune: encoder alone on {what} text"), &scored, t)
        );
    }
    let mut table = Vec::new();
    for w in [0, 3, 4, 5] {
        for (&g, &weight) in GATES
            .iter()
            .flat_map(|g| WEIGHTS.iter().map(move |w| (g, w)))
        {
            let (recall, fpr, c) = choose(&rows, g, w, weight);
            let read = rows.iter().filter(|r| r.first >= g && r.words >= w).count() as f64
                / rows.len() as f64;
            let benign_read = rows
                .iter()
                .filter(|r| !r.label && r.first >= g && r.words >= w)
                .count() as f64
                / rows.iter().filter(|r| !r.label).count().max(1) as f64;
            println!(
                "{}",
                json!({"tune": {"min_words": w, "gate": g, "weight": weight, "recall": recall, "fpr": fpr,
                       "share read by the encoder": read, "share of benign read": benign_read,
                       "first": c.first, "encoder": c.encoder}})
            );
            table.push((recall, c));
        }
    }
    let best = table
        .iter()
        .filter(|(_, c)| c.min_words == min_words)
        .map(|(r, _)| *r)
        .fold(0.0, f64::max);
    let chosen = table
        .iter()
        .filter(|(r, c)| c.min_words == min_words && *r >= best - 0.003)
        .max_by(|a, b| {
            // The highest gate, then the best recall, then the simplest rule (the
            // lowest weight; 0 reads the encoder's score alone).
            a.1.gate
                .total_cmp(&b.1.gate)
                .then(a.0.total_cmp(&b.0))
                .then(b.1.weight.total_cmp(&a.1.weight))
        })
        .map(|(_, c)| *c)
        .unwrap_or_else(|| panic!("no calibration"));
    let text = serde_json::to_string_pretty(&chosen).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(out, format!("{text}\n")).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    println!("{}", json!({"chosen": chosen, "encoder_load_ms": load_ms}));

    encoder.calibration = chosen;
    let encoder = Arc::new(encoder);
    let both = Guard::new(thresholds).with_encoder(Some(Arc::clone(&encoder)));
    let scores = |g: &Guard, set: &[&Example]| -> Vec<(f32, bool)> {
        set.iter()
            .map(|e| (g.scan(&e.text).injection_score, e.label))
            .collect()
    };
    let t = thresholds.block;
    println!("{}", report("tune: first stage", &scores(&first, &tune), t));
    println!("{}", report("tune: both stages", &scores(&both, &tune), t));
    let started = Instant::now();
    let dev_first = scores(&first, &dev);
    let first_ms = started.elapsed().as_secs_f64() * 1e3 / dev.len().max(1) as f64;
    let started = Instant::now();
    let dev_both = scores(&both, &dev);
    let both_ms = started.elapsed().as_secs_f64() * 1e3 / dev.len().max(1) as f64;
    println!("{}", report("dev: first stage", &dev_first, t));
    println!("{}", report("dev: both stages", &dev_both, t));

    // The encoder alone on dev, at the threshold that gives it at most 1% false positives
    // on the tuning split by itself.
    let t_alone = lowest(
        rows.iter()
            .filter(|r| !r.label)
            .map(|r| r.encoder)
            .collect(),
        (MAX_FPR * rows.iter().filter(|r| !r.label).count() as f64).floor() as i64,
    );
    let started = Instant::now();
    let dev_enc: Vec<(f32, bool)> = dev
        .iter()
        .map(|e| (encoder.score(&e.norm).0, e.label))
        .collect();
    let enc_ms = started.elapsed().as_secs_f64() * 1e3 / dev.len().max(1) as f64;
    println!("{}", report("dev: encoder alone", &dev_enc, t_alone));
    if let Ok(path) = std::env::var("SCORES") {
        // Each tuning and dev text's two scores, for studying how the stages combine.
        let mut lines = String::new();
        for r in &rows {
            let v = json!({"split": "tune", "first": r.first, "encoder": r.encoder, "words": r.words, "label": r.label});
            lines.push_str(&format!("{v}\n"));
        }
        for ((e, f), x) in dev.iter().zip(&dev_first).zip(&dev_enc) {
            let v = json!({"split": "dev", "first": f.0, "encoder": x.0,
                           "words": e.norm.split_whitespace().count(), "label": e.label, "category": e.category});
            lines.push_str(&format!("{v}\n"));
        }
        std::fs::write(&path, lines).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    println!(
        "{}",
        json!({"dev: ms per text": {"first stage": first_ms, "both stages": both_ms, "encoder on every text": enc_ms}})
    );

    for c in categories(dev.iter().copied()) {
        let pick = |s: &[(f32, bool)]| -> Vec<(f32, bool)> {
            dev.iter()
                .zip(s)
                .filter(|(e, _)| e.category == c)
                .map(|(_, s)| *s)
                .collect()
        };
        let (a, _, _, am) = confusion(&pick(&dev_first), t);
        let (b, _, _, _) = confusion(&pick(&dev_both), t);
        println!(
            "{}",
            json!({"dev category": c, "attacks": a + am, "first stage": a, "both stages": b})
        );
    }

    if let Some(path) = args.get(4) {
        // A hand-written probe of short chat turns.
        let probe = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut counts = [[0u32; 2]; 2];
        for l in probe.lines().filter(|l| !l.trim().is_empty()) {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{path}: {e}"));
            let text = v["text"].as_str().unwrap_or_default();
            let attack = v["label"].as_i64() == Some(1);
            let blocked = both.scan(text).injection_score >= t;
            counts[usize::from(attack)][usize::from(blocked)] += 1;
        }
        println!(
            "{}",
            json!({"short probe, both stages": {"benign blocked": counts[0][1], "benign": counts[0][0] + counts[0][1],
                   "attacks blocked": counts[1][1], "attacks": counts[1][0] + counts[1][1]}})
        );
    }

    if let Some(path) = args.get(5) {
        // The trainer read raw text cut to one window; here the normalised text is read
        // in windows. Where the two inputs agree, the scores must too.
        let theirs: Vec<f32> = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .lines()
            .map(|l| l.trim().parse().unwrap_or(f32::NAN))
            .collect();
        let mut same = 0usize;
        let mut max_diff = 0f32;
        for ((e, ours), theirs) in dev.iter().zip(&dev_enc).zip(&theirs) {
            if e.norm == e.text.to_lowercase() && e.text.len() < 300 {
                same += 1;
                max_diff = max_diff.max((ours.0 - theirs).abs());
            }
        }
        println!(
            "{}",
            json!({"dev texts the trainer read alike": same, "max |ours - trainer's|": max_diff})
        );
    }
}
