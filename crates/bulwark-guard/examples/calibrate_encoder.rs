//! Chooses how the two stages decide together, from the gateway's own scores on the
//! tuning split, and measures the result on dev.
//!
//! `calibrate_encoder DATA_DIR ENCODER_DIR OUT.json [SHORT_PROBE] [TRAINER_DEV_SCORES]`
//! (run by `train/train_encoder.sh`). DATA_DIR holds `train.jsonl` and `dev.jsonl` from
//! `train/prepare.py`.
//!
//! 1. On the tuning split (one text in ten of train, never trained on by either stage):
//!    the first stage's score (`Guard::scan` without the encoder), the first model's own
//!    that the encoder's gate and blend read (`Guard::prior`), and the encoder's
//!    (`Encoder::score` on the normalised text, as the gateway runs it).
//! 2. For each rule (a gate: the first-stage score below which the encoder is skipped;
//!    a blend weight: the first stage's share, in log-odds, in the score the encoder's
//!    threshold applies to; and whether the first stage's own threshold is fitted here or
//!    fixed at FIRST_SURE): the pair of thresholds (first stage, blended) with the
//!    highest recall that lets through at most k = floor(1%·(n+1)) − 1 of the n benign
//!    texts (`allowed`: an expected 1% on benign texts not seen here).
//! 3. Each rule is also chosen on random halves of the tuning split and measured on the
//!    other half (`held_out`). Among the rules whose held-out false-positive rate stays
//!    within 1%, the highest gate whose held-out recall is within 0.3 points of the best,
//!    then the best, then the simplest rule. The minimum word count is `MIN_WORDS`
//!    (default 0, no minimum: a minimum of 3 or more words costs about 3 points of tuning
//!    recall, see BENCHMARKS.md). Written to OUT.
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
use common::{allowed, categories, confusion, is_tuning, read, report, Example, MAX_FPR};

const GATES: &[f32] = &[0.0, 0.001, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3];
/// The first stage's share in the blended score (0: the encoder's score alone).
const WEIGHTS: &[f32] = &[0.0, 0.2, 0.3, 0.4, 0.5, 0.6];

/// The first stage's own threshold when it is not fitted: it blocks alone only when all
/// but certain (odds of 1000 to 1; no benign tuning text scores this high). It must
/// block alone somewhere: the gateway scans the messages of a request joined with the
/// first stage only, to find an instruction split across messages.
const FIRST_SURE: f32 = 0.999;
/// Random halvings of the tuning split behind each rule's held-out estimate.
const HALVINGS: u64 = 20;

/// Scores of one tuning text: first stage, the first-stage score the encoder's gate and
/// blend read (`Guard::prior`), encoder, word count, and whether the gateway leaves it to
/// the first stage as longer than the encoder reads (`Encoder::fits`).
#[derive(Clone, Copy)]
struct Scored {
    first: f32,
    prior: f32,
    encoder: f32,
    words: usize,
    long: bool,
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

/// The score a calibration compares with its encoder threshold (0 where the encoder is
/// not read).
fn blended(c: &Calibration, r: &Scored) -> f32 {
    if r.prior >= c.gate && r.words >= c.min_words {
        c.blend(r.prior, r.encoder)
    } else {
        0.0
    }
}

/// The first stage's own blocking threshold: the one a text longer than one of the
/// encoder's windows meets (the gateway leaves such a text to the first stage).
fn own() -> f32 {
    Thresholds::default().block
}

/// Whether a calibration blocks this text.
fn blocks(c: &Calibration, r: &Scored) -> bool {
    if r.long {
        r.first >= own()
    } else {
        r.first >= c.first || blended(c, r) >= c.encoder
    }
}

/// Recall and false-positive rate of a calibration on these texts.
fn measure(rows: &[Scored], c: &Calibration) -> (f64, f64) {
    let blocked = |r: &Scored| blocks(c, r);
    let pos = rows.iter().filter(|r| r.label).count();
    let tp = rows.iter().filter(|r| r.label && blocked(r)).count();
    let fp = rows.iter().filter(|r| !r.label && blocked(r)).count();
    (
        tp as f64 / pos.max(1) as f64,
        fp as f64 / (rows.len() - pos).max(1) as f64,
    )
}

/// A rule to calibrate: which texts the encoder reads (gate, word minimum), how its
/// score is blended, and whether the first stage's own threshold is fitted.
#[derive(Clone, Copy)]
struct Rule {
    gate: f32,
    min_words: usize,
    weight: f32,
    fitted_first: bool,
}

/// The best (first, encoder) pair for this rule on these texts: (recall, fpr,
/// calibration). Unless `fitted_first`, the first stage's threshold is FIRST_SURE.
fn choose(rows: &[Scored], rule: Rule) -> (f64, f64, Calibration) {
    let neg = rows.iter().filter(|r| !r.label).count();
    let pos = rows.len() - neg;
    let allowed = allowed(neg);
    let blend = Calibration {
        first: FIRST_SURE,
        encoder: 2.0,
        weight: rule.weight,
        gate: rule.gate,
        min_words: rule.min_words,
    };
    let enc = |r: &Scored| blended(&blend, r);
    // The first stage's threshold, fitted: the lowest that blocks j benign texts, for each
    // j the budget allows (a higher one blocking the same benign texts only catches
    // fewer attacks), never under 0.85; or FIRST_SURE.
    let mut benign_first: Vec<f32> = rows.iter().filter(|r| !r.label).map(|r| r.first).collect();
    benign_first.sort_by(|a, b| b.total_cmp(a));
    let mut candidates: Vec<f32> = if rule.fitted_first {
        benign_first
            .iter()
            .take((allowed + 1).max(0) as usize)
            .map(|s| s.next_up().max(0.85))
            .collect()
    } else {
        Vec::new()
    };
    candidates.push(FIRST_SURE);
    candidates.sort_by(f32::total_cmp);
    candidates.dedup();
    let mut best: Option<(f64, f64, Calibration)> = None;
    // Long texts are the first stage's alone, whatever the calibration.
    let long_fp = rows
        .iter()
        .filter(|r| !r.label && r.long && r.first >= own())
        .count() as i64;
    for t_first in candidates {
        let first_fp = rows
            .iter()
            .filter(|r| !r.label && !r.long && r.first >= t_first)
            .count() as i64;
        let rest: Vec<f32> = rows
            .iter()
            .filter(|r| !r.label && !r.long && r.first < t_first)
            .map(enc)
            .collect();
        let t_enc = lowest(rest, allowed - first_fp - long_fp);
        let candidate = Calibration {
            first: t_first,
            encoder: t_enc,
            ..blend
        };
        let blocked = |r: &Scored| blocks(&candidate, r);
        let tp = rows.iter().filter(|r| r.label && blocked(r)).count();
        let fp = rows.iter().filter(|r| !r.label && blocked(r)).count();
        let recall = tp as f64 / pos.max(1) as f64;
        if best.as_ref().is_none_or(|b| recall > b.0) {
            best = Some((recall, fp as f64 / neg.max(1) as f64, candidate));
        }
    }
    best.unwrap_or((0.0, 0.0, blend))
}

/// A rule's recall and false-positive rate on tuning texts its thresholds were not
/// chosen on: chosen on one random half, measured on the other, both ways, over
/// HALVINGS halvings (means). Choosing the best of many rules by their recall on the
/// very texts that set their thresholds favours the rules that fit those texts' quirks
/// (a first-stage threshold picked among hundreds); this estimate does not.
fn held_out(rows: &[Scored], rule: Rule) -> (f64, f64) {
    let (mut recall, mut fpr) = (0.0, 0.0);
    for seed in 0..HALVINGS {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        shuffle(&mut order, seed);
        let (a, b) = order.split_at(rows.len() / 2);
        let a: Vec<Scored> = a.iter().map(|&i| rows[i]).collect();
        let b: Vec<Scored> = b.iter().map(|&i| rows[i]).collect();
        for (on, off) in [(&a, &b), (&b, &a)] {
            let (r, f) = measure(off, &choose(on, rule).2);
            recall += r;
            fpr += f;
        }
    }
    let n = (2 * HALVINGS) as f64;
    (recall / n, fpr / n)
}

/// Fisher–Yates with SplitMix64: the same halvings on every run.
fn shuffle(v: &mut [usize], seed: u64) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Whether the second stage's adapter was trained on `source` (as
/// `train/prepare.py`'s `original_source`).
fn encoder_source(source: &str) -> bool {
    matches!(source, "s-labs" | "handwritten" | "generated") || source.starts_with("neuralchemy")
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
    // The tuning split of the sources the adapter was trained on: the later ones are
    // held out from the second stage altogether.
    let tune: Vec<&Example> = train
        .iter()
        .filter(|e| is_tuning(&e.text) && encoder_source(&e.source))
        .collect();
    let dev: Vec<&Example> = dev.iter().collect();
    let thresholds = Thresholds::default();
    let first = Guard::new(thresholds);

    let rows: Vec<Scored> = tune
        .iter()
        .map(|e| {
            let (p, tokens) = encoder.score(&e.norm);
            Scored {
                first: first.scan(&e.text).injection_score,
                prior: first.prior(&e.text),
                encoder: p,
                words: e.norm.split_whitespace().count(),
                long: !encoder.fits(tokens),
                label: e.label,
            }
        })
        .collect();
    // Which text the encoder should read: the normalised one (what the gateway gives it,
    // scored above) or the raw one (what it was trained on). Encoder alone, at its own
    // threshold within the false-positive budget (`t_alone` is reused for dev below).
    let on_normalised: Vec<(f32, bool)> = rows.iter().map(|r| (r.encoder, r.label)).collect();
    let on_raw: Vec<(f32, bool)> = tune
        .iter()
        .map(|e| (encoder.score(&e.text).0, e.label))
        .collect();
    let alone_threshold = |scored: &[(f32, bool)]| {
        let neg: Vec<f32> = scored.iter().filter(|s| !s.1).map(|s| s.0).collect();
        let n = neg.len();
        lowest(neg, allowed(n))
    };
    let t_alone = alone_threshold(&on_normalised);
    println!(
        "{}",
        report(
            "tune: encoder alone on normalised text",
            &on_normalised,
            t_alone
        )
    );
    println!(
        "{}",
        report(
            "tune: encoder alone on raw text",
            &on_raw,
            alone_threshold(&on_raw)
        )
    );
    // Each rule's thresholds on the whole tuning split, and how it fares on tuning texts
    // its thresholds were not chosen on (`held_out`).
    let mut table = Vec::new();
    for &gate in GATES {
        for &weight in WEIGHTS {
            for fitted_first in [true, false] {
                let rule = Rule {
                    gate,
                    min_words,
                    weight,
                    fitted_first,
                };
                let (recall, fpr, c) = choose(&rows, rule);
                let (held_recall, held_fpr) = held_out(&rows, rule);
                let read = |benign_only: bool| {
                    let set = rows.iter().filter(|r| !benign_only || !r.label);
                    let n = set.clone().count().max(1) as f64;
                    set.filter(|r| r.prior >= gate && r.words >= min_words)
                        .count() as f64
                        / n
                };
                println!(
                    "{}",
                    json!({"tune": {"min_words": min_words, "gate": gate, "weight": weight,
                           "first stage's threshold fitted": fitted_first, "recall": recall, "fpr": fpr,
                           "held-out recall": held_recall, "held-out fpr": held_fpr,
                           "share read by the encoder": read(false), "share of benign read": read(true),
                           "first": c.first, "encoder": c.encoder}})
                );
                table.push((held_recall, held_fpr, rule, c));
            }
        }
    }
    // Among the rules whose held-out false-positive rate stays within MAX_FPR: the
    // highest gate (the fewest texts for the encoder) whose held-out recall is within
    // 0.3 points of the best, then the best held-out recall, then the simplest rule (the
    // lowest weight, then the first stage's threshold fixed).
    let qualifying: Vec<_> = table.iter().filter(|t| t.1 <= MAX_FPR).collect();
    if qualifying.is_empty() {
        println!(
            "{}",
            json!({"warning": "no rule keeps its held-out false-positive rate within 1%; the lowest is chosen"})
        );
    }
    let best = qualifying.iter().map(|t| t.0).fold(0.0, f64::max);
    let chosen = if qualifying.is_empty() {
        table.iter().min_by(|a, b| a.1.total_cmp(&b.1))
    } else {
        qualifying
            .into_iter()
            .filter(|t| t.0 >= best - 0.003)
            .max_by(|a, b| {
                a.2.gate
                    .total_cmp(&b.2.gate)
                    .then(a.0.total_cmp(&b.0))
                    .then(b.2.weight.total_cmp(&a.2.weight))
                    .then(b.2.fitted_first.cmp(&a.2.fitted_first))
            })
    }
    .map(|t| t.3)
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

    // The encoder alone on dev, at its own threshold on the tuning split (`t_alone`).
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
