//! Prompt injection and jailbreak detection: hand-written rules and a learned linear
//! model, both reading the normalised text and its decoded views.
//!
//! Rules are phrasings that almost only ever appear in attacks ("ignore all previous
//! instructions", "you are now DAN", "reveal your system prompt"), compiled into one
//! `RegexSet` (a single automaton pass over the text) and then located individually for
//! spans. The model is logistic regression over hashed n-grams ([`crate::features`]),
//! trained by `examples/train_injection.rs` on the data described in
//! `train/prepare.py` and `train/documents.py` (provenance in BENCHMARKS.md, "Guard"); its
//! weights ship inside the binary.
//!
//! A long text (a document, a tool result) is read in windows by a second model of the
//! same kind, the documents model: trained on the same data plus passages of
//! documentation and source code, some with an attack hidden inside, and given its
//! threshold on long pieces of another project's documentation. The registry corpora's
//! benign texts are short questions, so the first model takes any page of technical
//! prose for an attack.

use std::sync::OnceLock;

use regex::{Regex, RegexSet};

use crate::{features, log_odds, sigmoid};

/// One rule: a pattern over normalised (lower-case) text, and what it means.
struct Rule {
    pattern: &'static str,
    score: f32,
    reason: &'static str,
}

const RULES: &[Rule] = &[
    Rule {
        pattern: r"\b(?:ignore|disregard|forget|skip|override|bypass|drop)\b.{0,30}\b(?:previous|prior|above|earlier|preceding|former|original|initial|system|all|any|your)\b.{0,20}\b(?:instructions?|prompts?|rules|directions|directives|guidelines|context|commands|constraints|programming)\b",
        score: 0.97,
        reason: "asks the model to ignore its instructions",
    },
    Rule {
        pattern: r"\b(?:reveal|show|print|repeat|output|display|tell me|give me|leak|dump|what (?:is|are|was|were))\b.{0,25}\b(?:your|the)\b.{0,15}\b(?:system|initial|hidden|original|secret|internal|developer|first)\b.{0,10}\b(?:prompt|instructions?|message|rules|directives)\b",
        score: 0.93,
        reason: "asks for the system prompt",
    },
    Rule {
        pattern: r"\b(?:you are|you're|act as|pretend to be|roleplay as|behave like|become)\b.{0,40}\b(?:dan|do anything now|jailbr[eo]ken|unfiltered|uncensored|unrestricted|evil|without (?:any )?(?:restrictions|limits|filters|rules|guidelines|ethics|morals))\b",
        score: 0.95,
        reason: "a jailbreak persona",
    },
    Rule {
        pattern: r"\b(?:developer|god|debug|admin|sudo|maintenance|unrestricted|jailbreak)\s+mode\b.{0,40}\b(?:enabled|activated|on|engaged|unlocked)\b|\benable\b.{0,20}\b(?:developer|god|debug|jailbreak|unrestricted)\s+mode\b",
        score: 0.93,
        reason: "claims a special unrestricted mode",
    },
    Rule {
        pattern: r"\bdo anything now\b|\bdan mode\b|\bstay in character\b.{0,40}\b(?:no|without) (?:restrictions|filters|limits)\b",
        score: 0.95,
        reason: "the DAN jailbreak",
    },
    Rule {
        pattern: r"\b(?:new|updated|real|actual|true)\s+(?:system\s+)?(?:instructions?|rules|directives|orders)\s*(?::|are\b|follow\b)",
        score: 0.85,
        reason: "announces new instructions",
    },
    Rule {
        pattern: r"(?:^|\n|\s)(?:system|assistant)\s*(?:override|prompt)?\s*:\s*(?:ignore|you (?:are|must|will)|new|override|disregard)",
        score: 0.85,
        reason: "a forged system or assistant turn",
    },
    Rule {
        pattern: r"</?(?:system|instructions?|im_start|im_end|\|im_start\||\|endoftext\|)>|\[/?(?:inst|system)\]|<<\s*/?sys\s*>>",
        score: 0.8,
        reason: "chat-template control tokens in the text",
    },
    Rule {
        pattern: r"\b(?:bypass|disable|turn off|deactivate|circumvent|evade|remove)\b.{0,25}\b(?:safety|content|security|ethical|moderation)?\s*(?:filters?|guardrails?|guidelines|restrictions|safeguards|policies|protections|censorship)\b",
        score: 0.9,
        reason: "asks to disable safety measures",
    },
    Rule {
        pattern: r"\bfrom now on\b.{0,40}\b(?:you (?:will|must|are|shall|have to)|respond|answer|act|ignore)\b",
        score: 0.75,
        reason: "redefines the model's behaviour from now on",
    },
    Rule {
        pattern: r"\b(?:no|without) (?:ethical|moral|safety|content) (?:guidelines|restrictions|limits|constraints|filters)\b",
        score: 0.8,
        reason: "asks for output without safety guidelines",
    },
    Rule {
        pattern: r"\b(?:send|post|forward|exfiltrate|upload|transmit|leak|email)\b.{0,40}\b(?:conversation|chat history|context|api keys?|credentials|passwords?|secrets?|the (?:data|documents?|files?))\b.{0,40}\b(?:to|at)\b.{0,15}(?:https?://|www\.|@|\b[a-z0-9-]+\.(?:com|net|org|io|xyz|ru)\b)",
        score: 0.9,
        reason: "asks to send data to an outside address",
    },
    Rule {
        pattern: r"\b(?:when|if) (?:you|the (?:ai|assistant|model|llm)) (?:read|see|process|summari[sz]e)s? this\b|\bnote to (?:the )?(?:ai|assistant|llm|model)\b|\bai assistants? (?:reading|processing) this\b",
        score: 0.85,
        reason: "instructions addressed to an AI reading the document",
    },
    Rule {
        pattern: r"\bignore\b.{0,12}\b(?:everything|all)\b.{0,15}\b(?:above|before|said|written)\b",
        score: 0.95,
        reason: "asks the model to ignore everything before",
    },
];

fn rule_set() -> &'static (RegexSet, Vec<Regex>) {
    static S: OnceLock<(RegexSet, Vec<Regex>)> = OnceLock::new();
    S.get_or_init(|| {
        let patterns: Vec<String> = RULES.iter().map(|r| format!("(?s){}", r.pattern)).collect();
        let set = RegexSet::new(&patterns).unwrap_or_else(|e| panic!("injection rules: {e}"));
        let each = patterns
            .iter()
            .map(|p| Regex::new(p).unwrap_or_else(|e| panic!("injection rule: {e}")))
            .collect();
        (set, each)
    })
}

/// A rule that matched: its span in the text it ran on, its score and reason.
pub struct RuleHit {
    pub start: usize,
    pub end: usize,
    pub score: f32,
    pub reason: &'static str,
}

/// Every rule that matches `text` (normalised), with the first span of each.
pub fn rules(text: &str) -> Vec<RuleHit> {
    let (set, each) = rule_set();
    set.matches(text)
        .into_iter()
        .filter_map(|i| {
            each[i].find(text).map(|m| RuleHit {
                start: m.start(),
                end: m.end(),
                score: RULES[i].score,
                reason: RULES[i].reason,
            })
        })
        .collect()
}

/// Texts shorter than this many words are "short" (see [`Model::score`]).
pub const SHORT_WORDS: usize = 3;
/// The highest model score a short text can get: below any blocking threshold the
/// trainer picks (it searches above this).
pub const SHORT_CAP: f32 = 0.85;

/// The learned model: a bias and one weight per feature bucket, and the blocking
/// threshold chosen for it (on the combined score) when it was trained.
pub struct Model {
    bias: f32,
    weights: Vec<f32>,
    pub threshold: f32,
    /// The model long texts are read with (see [`Model::locate`]); `None` caps them.
    documents: Option<Box<Model>>,
}

/// `p` capped at [`SHORT_CAP`] for a text of under [`SHORT_WORDS`] words, or a long one
/// read without a documents model (see [`Model::score`]).
fn capped(text: &str, long: bool, p: f32) -> f32 {
    if long || text.split_whitespace().take(SHORT_WORDS).count() < SHORT_WORDS {
        p.min(SHORT_CAP)
    } else {
        p
    }
}

/// Weights file: magic, bucket count (u32 LE), bias, scale, threshold (f32 LE), then
/// one i8 per bucket (weight = i8 × scale). Quantised to 8 bits: 256 KiB instead of
/// 1 MiB (the trainer reports the dev figures of the quantised model).
pub const MAGIC: &[u8; 8] = b"BWINJ002";

impl Model {
    pub fn from_bytes(b: &[u8]) -> Option<Model> {
        let header = MAGIC.len() + 16;
        if b.len() < header || &b[..MAGIC.len()] != MAGIC {
            return None;
        }
        let u = |i: usize| -> Option<[u8; 4]> { b.get(i..i + 4)?.try_into().ok() };
        let n = u32::from_le_bytes(u(8)?) as usize;
        let bias = f32::from_le_bytes(u(12)?);
        let scale = f32::from_le_bytes(u(16)?);
        let threshold = f32::from_le_bytes(u(20)?);
        if n != features::BUCKETS || b.len() != header + n {
            return None;
        }
        let weights = b[header..]
            .iter()
            .map(|&q| f32::from(q as i8) * scale)
            .collect();
        Some(Model {
            bias,
            weights,
            threshold,
            documents: None,
        })
    }

    /// This model, reading long texts with `documents` (whose own threshold is the one
    /// chosen for long texts).
    pub fn with_documents(mut self, documents: Model) -> Model {
        self.documents = Some(Box::new(documents));
        self
    }

    /// Serialises weights (the trainer's output).
    pub fn to_bytes(bias: f32, weights: &[f32], threshold: f32) -> Vec<u8> {
        let max = weights.iter().fold(0f32, |m, w| m.max(w.abs())).max(1e-9);
        let scale = max / 127.0;
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(weights.len() as u32).to_le_bytes());
        out.extend_from_slice(&bias.to_le_bytes());
        out.extend_from_slice(&scale.to_le_bytes());
        out.extend_from_slice(&threshold.to_le_bytes());
        out.extend(
            weights
                .iter()
                .map(|w| (w / scale).round().clamp(-127.0, 127.0) as i8 as u8),
        );
        out
    }

    /// The probability that `text` (normalised) is an injection or jailbreak.
    ///
    /// A text of a few words carries too little evidence for a bag of n-grams ("answer
    /// briefly" could otherwise score like an attack), so below [`SHORT_WORDS`] words the
    /// model's score is capped at [`SHORT_CAP`]: it may flag such a text but never block
    /// it alone; blocking short attacks is the rules' job.
    ///
    /// A long text (over [`features::WINDOW_WORDS`] words: a document, a tool result, a
    /// pasted file) is read in windows and scored by its highest, by the documents model:
    /// this model, trained on short questions and attacks, takes ordinary technical prose
    /// and code for attacks (it blocked a third of 1 KB README excerpts and half of
    /// source files; `bench/documents.py`). The documents model's score is moved in
    /// log-odds so that its own threshold lands on this model's: both block at
    /// [`Model::threshold`]. Without a documents model a long text is capped like a
    /// short one.
    pub fn score(&self, text: &str, scratch: &mut Vec<u32>) -> f32 {
        self.locate(text, scratch).0
    }

    /// As [`Model::score`], with the byte range of `text` that scored it: the highest
    /// of its windows ([`features::windows`]; the whole text when it is short).
    pub fn locate(&self, text: &str, scratch: &mut Vec<u32>) -> (f32, (usize, usize)) {
        let (p, span, _) = self.read(text, scratch, false);
        (p, span)
    }

    /// As [`Model::locate`], and, with `own`, this model's own score as if it had no
    /// documents model (a long text capped like a short one; without `own`, the score
    /// again): what the second stage's gate and blend read, as they were calibrated (the
    /// documents model scores a medium-length document with a hidden instruction near 0,
    /// which would keep the encoder from reading it).
    pub fn read(
        &self,
        text: &str,
        scratch: &mut Vec<u32>,
        own: bool,
    ) -> (f32, (usize, usize), f32) {
        let windows = features::windows(text);
        let long = windows.len() > 1;
        match &self.documents {
            Some(d) if long => {
                let (z, span) = d.highest(text, &windows, scratch);
                let p = sigmoid(z - log_odds(d.threshold) + log_odds(self.threshold));
                let own = if own {
                    capped(text, true, sigmoid(self.highest(text, &windows, scratch).0))
                } else {
                    p
                };
                (p, span, own)
            }
            _ => {
                let (z, span) = self.highest(text, &windows, scratch);
                let p = capped(text, long, sigmoid(z));
                (p, span, p)
            }
        }
    }

    /// The highest log-odds among `windows` of `text` ([`features::windows`]), and that
    /// window.
    pub fn highest(
        &self,
        text: &str,
        windows: &[(usize, usize)],
        scratch: &mut Vec<u32>,
    ) -> (f32, (usize, usize)) {
        let mut best = (f32::NEG_INFINITY, (0, text.len()));
        for &(start, end) in windows {
            let z = self.logit(&text[start..end], scratch);
            if z > best.0 {
                best = (z, (start, end));
            }
        }
        best
    }

    /// The model's log-odds for one window.
    pub fn logit(&self, window: &str, scratch: &mut Vec<u32>) -> f32 {
        features::logit(&self.weights, self.bias, window, scratch)
    }
}

/// The model shipped in the binary, with its documents model.
pub fn model() -> Option<&'static Model> {
    static M: OnceLock<Option<Model>> = OnceLock::new();
    M.get_or_init(|| {
        let model = Model::from_bytes(include_bytes!("../model/injection.bin"))?;
        let documents = Model::from_bytes(include_bytes!("../model/documents.bin"))?;
        Some(model.with_documents(documents))
    })
    .as_ref()
}
