//! The guard: what is in a text that should not be, and what to do about it.
//!
//! [`Guard::scan`] runs every detector on one text and returns a [`Report`]: findings
//! (category, kind, byte span in the text, score in [0, 1], a reason a person can read),
//! the injection score, and a verdict. Detectors:
//!
//! - prompt injection and jailbreak ([`injection`]): rules and a learned model over the
//!   normalised text and its decoded views ([`normalise`]), then, when loaded, a
//!   fine-tuned sentence encoder over the normalised text ([`encoder`]);
//! - smuggling ([`normalise`]): Unicode tag text, bidi controls, zero-width runs,
//!   homoglyph-spoofed words;
//! - personal data ([`pii`]) and credentials ([`secrets`]), also disguised ([`data`]);
//! - in answers, exfiltration through links and images ([`output`]) and leaked canaries.
//!
//! [`pseudo`] redacts, pseudonymises and restores. Everything here is pure computation:
//! no IO, no clock, no randomness; the server decides what a verdict leads to.

pub mod data;
pub mod encoder;
pub mod features;
pub mod injection;
pub mod normalise;
pub mod output;
pub mod pii;
pub mod pseudo;
pub mod secrets;

use std::sync::Arc;

use serde::Serialize;

pub use pseudo::{Restorer, Vault};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Injection,
    Smuggling,
    Pii,
    Secret,
    Exfiltration,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Injection => "injection",
            Category::Smuggling => "smuggling",
            Category::Pii => "pii",
            Category::Secret => "secret",
            Category::Exfiltration => "exfiltration",
        }
    }
}

/// One thing the guard found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub category: Category,
    /// What exactly: `prompt_injection`, `email`, `aws_access_key_id`, `unicode_tags`...
    pub kind: &'static str,
    /// Byte span in the scanned text.
    pub start: usize,
    pub end: usize,
    pub score: f32,
    pub reason: String,
}

impl Finding {
    pub fn new(
        category: Category,
        kind: &'static str,
        (start, end): (usize, usize),
        score: f32,
        reason: String,
    ) -> Self {
        Finding {
            category,
            kind,
            start,
            end,
            score,
            reason,
        }
    }
}

/// Sorted by start; of overlapping span findings, the higher-scoring (then longer) wins.
/// Injection findings over a whole text do not compete with spans inside it.
pub fn resolve_overlaps(mut f: Vec<Finding>) -> Vec<Finding> {
    f.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then((b.end - b.start).cmp(&(a.end - a.start)))
    });
    let mut kept: Vec<Finding> = Vec::with_capacity(f.len());
    for x in f {
        if !kept.iter().any(|k| k.start < x.end && x.start < k.end) {
            kept.push(x);
        }
    }
    kept.sort_by_key(|k| k.start);
    kept
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Flag,
    Block,
}

/// What the guard says about one text.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Injection and jailbreak likelihood in [0, 1]: the highest of the rules, the model
    /// and hidden-text smuggling.
    pub injection_score: f32,
    pub verdict: Verdict,
    pub findings: Vec<Finding>,
}

impl Report {
    /// Findings of one category (span findings, sorted, non-overlapping).
    pub fn of(&self, c: Category) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.category == c)
    }

    pub fn has(&self, c: Category) -> bool {
        self.of(c).next().is_some()
    }
}

/// Thresholds on the injection score.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// At or above: block.
    pub block: f32,
    /// At or above: flag.
    pub flag: f32,
}

impl Default for Thresholds {
    /// `block` is the threshold the trainer chose on its tuning split for a
    /// false-positive rate of at most 1% (stored with the model; see BENCHMARKS.md,
    /// "Guard"); `flag` is lower, for a second look.
    fn default() -> Self {
        Thresholds::blocking_at(injection::model().map_or(0.8, |m| m.threshold))
    }
}

impl Thresholds {
    /// Blocking at `block`, flagging from three quarters of it.
    pub fn blocking_at(block: f32) -> Self {
        Thresholds {
            block,
            flag: block * 0.75,
        }
    }
}

#[derive(Clone)]
pub struct Guard {
    pub thresholds: Thresholds,
    /// The learned injection detector; `None` runs the rules alone.
    pub model: Option<&'static injection::Model>,
    /// The second stage; `None` runs the first alone.
    pub encoder: Option<Arc<encoder::Encoder>>,
}

/// The log-odds of `p`, clamped to [1e-6, 1 − 1e-6] so that 0 and 1 stay finite.
pub fn log_odds(p: f32) -> f32 {
    let p = p.clamp(1e-6, 1.0 - 1e-6);
    (p / (1.0 - p)).ln()
}

/// The probability of log-odds `z`.
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// Maps `s` so that `from` lands on `to`, linearly on each side: the encoder's and the
/// first stage's own thresholds both land on the gateway's blocking scale.
fn rescale(s: f32, from: f32, to: f32) -> f32 {
    if s < from {
        s / from * to
    } else if from >= 1.0 {
        1.0
    } else {
        to + (s - from) / (1.0 - from) * (1.0 - to)
    }
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new(Thresholds::default())
    }
}

impl Guard {
    /// A guard with the model shipped in the binary.
    pub fn new(thresholds: Thresholds) -> Self {
        Guard {
            thresholds,
            model: injection::model(),
            encoder: None,
        }
    }

    /// The same guard with the second stage (or without it, for `None`).
    pub fn with_encoder(mut self, encoder: Option<Arc<encoder::Encoder>>) -> Self {
        self.encoder = encoder;
        self
    }

    /// Whether [`Guard::scan`] runs the second stage (milliseconds per window: keep it
    /// off an async executor's threads).
    pub fn runs_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    /// Every detector on `text`, an input (prompt, document, tool result).
    pub fn scan(&self, text: &str) -> Report {
        self.scan_stages(text, true)
    }

    /// As [`Guard::scan`], for the operator's own instructions (`system` and `developer`
    /// messages): rules (also in decoded views), smuggling, personal data and credentials,
    /// but not the learned models, on the first stage's own scale. A system prompt is
    /// written as role-play ("You are a helpful assistant. Be concise.") and the models,
    /// trained on users' turns, read it as one: the first model blocked 2 of 5 ordinary
    /// system prompts. Rules still block a stock attack phrasing put there (retrieved
    /// text pasted into a system prompt).
    pub fn scan_operator(&self, text: &str) -> Report {
        Guard {
            thresholds: self.thresholds,
            model: None,
            encoder: None,
        }
        .scan_stages(text, false)
    }

    /// As [`Guard::scan`] but without running the encoder, on the same score scale: for
    /// a text whose parts the encoder has already read (all messages joined).
    pub fn scan_first_stage(&self, text: &str) -> Report {
        self.scan_stages(text, false)
    }

    /// The first-stage score the second stage's gate and blend read for `text`
    /// (the model's own score, [`injection::Model::read`]: long texts by the first model,
    /// capped).
    pub fn prior(&self, text: &str) -> f32 {
        let norm = normalise::normalise(text, &mut Vec::new());
        self.first_stage(text, &norm, true).1
    }

    /// Rules and the model over the normalised text and its decoded views: the highest
    /// score with its span and reason, and the prior ([`Guard::prior`]; without
    /// `want_prior`, the highest score as it is, sparing a long text a second reading).
    #[allow(clippy::type_complexity)]
    fn first_stage(
        &self,
        text: &str,
        norm: &normalise::Normalised,
        want_prior: bool,
    ) -> (Option<(f32, (usize, usize), String)>, f32) {
        let mut scratch = Vec::new();
        let mut best: Option<(f32, (usize, usize), String)> = None;
        let mut prior = 0f32;
        let mut consider = |s: f32, span: (usize, usize), why: String| {
            if best.as_ref().is_none_or(|b| s > b.0) {
                best = Some((s, span, why));
            }
        };
        for hit in injection::all_rules(&norm.text) {
            prior = prior.max(hit.score);
            consider(
                hit.score,
                norm.span(hit.start, hit.end, text),
                hit.reason.to_owned(),
            );
        }
        let model = self.model;
        if let Some(m) = model {
            let (p, (start, end), own) = m.read(&norm.text, &mut scratch, want_prior);
            prior = prior.max(own);
            let (span, what) = if end - start == norm.text.len() {
                ((0, text.len()), "it")
            } else {
                (norm.span(start, end, text), "this passage")
            };
            consider(
                p,
                span,
                format!("the learned detector scores {what} {p:.2}"),
            );
        }
        for view in normalise::views(text, norm) {
            for hit in injection::rules(&view.text) {
                prior = prior.max(hit.score);
                consider(
                    hit.score,
                    view.span,
                    format!("{} (in {})", hit.reason, view.what),
                );
            }
            if let (true, Some(m)) = (view.for_model, model) {
                let (p, _, own) = m.read(&view.text, &mut scratch, want_prior);
                prior = prior.max(own);
                consider(
                    p,
                    view.span,
                    format!("the learned detector scores the {} {p:.2}", view.what),
                );
            }
        }
        (best, prior)
    }

    fn scan_stages(&self, text: &str, run_encoder: bool) -> Report {
        let mut findings = Vec::new();
        let norm = normalise::normalise(text, &mut findings);
        let mut score = findings
            .iter()
            .filter(|f| f.kind == "unicode_tags")
            .map(|f| f.score)
            .fold(0f32, f32::max);
        let want_prior = run_encoder && self.encoder.is_some();
        let (mut best, prior) = self.first_stage(text, &norm, want_prior);
        let model = self.model;
        if let Some(enc) = &self.encoder {
            // Both stages on one scale: the pair of thresholds chosen together on the
            // tuning split both map to the first stage's own blocking threshold, which
            // `Thresholds::default` uses.
            let reference = model.map_or(0.8, |m| m.threshold);
            let c = enc.calibration;
            let first = prior;
            let mut long = false;
            let mut second = None;
            if run_encoder && first >= c.gate && norm.text.split_whitespace().count() >= c.min_words
            {
                // A text longer than one window (a document, a tool result) is left to
                // the first stage, on its own scale: trained on short texts, the
                // encoder blocked nearly every page of ordinary documentation
                // (`bench/documents.py`).
                match enc.read(&norm.text) {
                    encoder::Reading::Long => long = true,
                    encoder::Reading::Scored(p) => {
                        let s = rescale(c.blend(first, p), c.encoder, reference);
                        second = Some((s, format!("the sentence encoder scores it {p:.2}")));
                    }
                    encoder::Reading::Nothing => {}
                }
            }
            if let Some(b) = best.as_mut().filter(|_| !long) {
                b.0 = rescale(b.0, c.first, reference);
            }
            if let Some((s, why)) = second {
                if best.as_ref().is_none_or(|b| s > b.0) {
                    best = Some((s, (0, text.len()), why));
                }
            }
        }
        if let Some((s, span, why)) = best {
            score = score.max(s);
            if s >= self.thresholds.flag {
                findings.push(Finding::new(
                    Category::Injection,
                    "prompt_injection",
                    span,
                    s,
                    why,
                ));
            }
        }

        let mut spans = Vec::new();
        data::scan(text, &mut spans);
        findings.extend(resolve_overlaps(spans));
        findings.sort_by_key(|f| (f.start, f.category));

        let verdict = if score >= self.thresholds.block {
            Verdict::Block
        } else if score >= self.thresholds.flag || !findings.is_empty() {
            Verdict::Flag
        } else {
            Verdict::Allow
        };
        Report {
            injection_score: score,
            verdict,
            findings,
        }
    }
}

#[cfg(test)]
mod encoder_tests;
#[cfg(test)]
mod tests;
