//! A keyed, detectable watermark in what the local models write.
//!
//! The scheme is the green-list watermark of Kirchenbauer et al., "A Watermark for
//! Large Language Models" (ICML 2023), with a context of one token ("LeftHash"):
//!
//! - at every step, the previous token `t` and the secret key give a seed,
//!   `HMAC-SHA256(key, "bulwark-watermark-v1" ‖ t)`; a token `v` of the vocabulary is
//!   *green* when `fmix64(seed ⊕ v·φ)`, read as a fraction of 2⁶⁴, is below
//!   γ = [`GAMMA`]: a pseudo-random quarter of the vocabulary, different after every
//!   token, that only the key holder can tell;
//! - δ ([`DEFAULT_DELTA`], or the model's `watermark_delta`) is added to the logit of every green token before the sampler chain
//!   (penalties, top-k, top-p, min-p, temperature, then the draw), so a sampled token is
//!   green more often than γ; the text's meaning is left to the model, which still
//!   picks among its likely tokens. Greedy decoding takes the highest *biased* logit:
//!   it stays deterministic for a given key and prompt, and marks only where the model
//!   hesitates (a green runner-up within δ of the top);
//! - detection re-tokenizes a text with the same model's tokenizer, counts the green
//!   tokens among its distinct (previous, token) pairs (a repeated pair is scored once,
//!   as the paper advises, so repetition cannot fake a signal), and computes the exact
//!   binomial tail: the probability that text written without this key has at least
//!   that many green tokens. The whole text and windows of 25, 50, 100... tokens are
//!   scored, so that a marked passage pasted into other writing is still found; a
//!   weighted Bonferroni correction (half the budget to the whole text, half shared by
//!   the windows) keeps the false-alarm rate at or below [`P_THRESHOLD`].
//!   Fewer than [`MIN_TOKENS`] scored tokens get no verdict.
//! - detection *with the model* ([`Reader`], the default where the model is at hand)
//!   weighs each scored token by how much the mark could move it: the model is run
//!   over the text, and a token the model was sure of (the mark cannot change it)
//!   counts for little, one where it hesitated for much. The weight is the expected
//!   excess of green tokens there, γα·S/(1 + (α−1)γ) − γ with α = e^δ at the default
//!   δ and S the *spike entropy* of the model's next-token distribution
//!   (Kirchenbauer et al., Theorem 4.2; weighting by it is the entropy-based
//!   detection of Lu et al., ACL 2024). The weights come from the model alone, never
//!   the key, so for text written without the key each token is still green with
//!   probability γ, independently of its weight, and the p-value is a Chernoff bound
//!   on the weighted green count: an upper bound, so the false-alarm rate stays at or
//!   below the threshold. Text the model could only write one way carries little
//!   weight, which is what made short or edited answers hard to call by counting.
//!
//! One token of context makes the mark survive edits well (an edited token disturbs
//! only its own pair and the next one) at the price of a green list that a patient
//! adversary with many marked texts could estimate; the key never leaves the data
//! directory, and rotating it starts a new list.
//!
//! Grammar-constrained output (tool calls, JSON under a schema) is never marked: the
//! bias would change argument values and keys that a program reads, and such text is
//! short and low in entropy, so the mark would say little there anyway.

use std::io::Write;
use std::path::Path;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::LlamaToken;
use sha2::{Digest, Sha256};

/// The share of the vocabulary that is green after any token.
pub const GAMMA: f64 = 0.25;
/// What a green token's logit gains unless configured otherwise. Detection does not
/// depend on it: a larger δ marks more strongly (survives more editing) at a larger
/// cost in quality.
pub const DEFAULT_DELTA: f32 = 2.0;
/// A text is called watermarked when text without the mark would reach its green count
/// with at most this probability.
pub const P_THRESHOLD: f64 = 1e-4;
/// Fewer distinct scored tokens than this, and no verdict is given.
pub const MIN_TOKENS: usize = 25;
/// How the scheme is named in headers, receipts and the audit log.
pub const SCHEME: &str = "kgw-lefthash-v1";

const DOMAIN: &[u8] = b"bulwark-watermark-v1";
const KEY_LEN: usize = 32;

/// A watermarking key: 32 random bytes, kept in the data directory.
#[derive(Clone)]
pub struct WatermarkKey {
    mac: Hmac<Sha256>,
    id: String,
}

impl std::fmt::Debug for WatermarkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WatermarkKey({})", self.id)
    }
}

/// Why a key could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("watermark key `{path}`: {reason}")]
    Io { path: String, reason: String },
    #[error("watermark key `{path}` is not 64 hex digits (a key written by `bulwark`)")]
    Malformed { path: String },
}

impl WatermarkKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        let id: [u8; 32] = Sha256::new()
            .chain_update(b"bulwark watermark key id")
            .chain_update(bytes)
            .finalize()
            .into();
        WatermarkKey {
            // A key shorter than SHA-256's 64-byte block is zero-padded by HMAC itself.
            mac: <Hmac<Sha256> as KeyInit>::new(&{
                let mut block = [0u8; 64];
                block[..KEY_LEN].copy_from_slice(&bytes);
                block.into()
            }),
            id: id[..6].iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// A public name for the key (a hash of it): which key marked a text can be said
    /// without saying the key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Reads the key at `path` (64 hex digits).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let text = text.trim();
        let mut bytes = [0u8; KEY_LEN];
        if text.len() != 2 * KEY_LEN || !text.is_ascii() {
            return Err(KeyError::Malformed {
                path: path.display().to_string(),
            });
        }
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| {
                KeyError::Malformed {
                    path: path.display().to_string(),
                }
            })?;
        }
        Ok(Self::from_bytes(bytes))
    }

    /// Reads the key at `path`, or makes one there (readable by its owner only) when
    /// there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        if path.exists() {
            return Self::load(path);
        }
        let io = |e: std::io::Error| KeyError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let mut bytes = [0u8; KEY_LEN];
        getrandom::getrandom(&mut bytes).map_err(|e| KeyError::Io {
            path: path.display().to_string(),
            reason: format!("no randomness: {e}"),
        })?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut file = options.open(path).map_err(io)?;
        file.write_all(format!("{hex}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        Ok(Self::from_bytes(bytes))
    }

    /// The green list after `prev`, as a seed for [`is_green`].
    fn seed(&self, prev: LlamaToken) -> u64 {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(&prev.0.to_le_bytes());
        let out = mac.finalize().into_bytes();
        let mut seed = [0u8; 8];
        seed.copy_from_slice(&out[..8]);
        u64::from_le_bytes(seed)
    }

    /// Adds `delta` to the logit of every green token after `prev`.
    fn bias(&self, prev: LlamaToken, delta: f32, data: &mut [LlamaTokenData]) {
        let seed = self.seed(prev);
        for d in data {
            if is_green(seed, d.id()) {
                d.set_logit(d.logit() + delta);
            }
        }
    }

    /// Scores a tokenized text by counting; see the module documentation.
    pub fn detect(&self, tokens: &[LlamaToken]) -> Detection {
        let mut seen = std::collections::HashSet::with_capacity(tokens.len());
        let marks: Vec<bool> = tokens
            .windows(2)
            .filter(|pair| seen.insert((pair[0].0, pair[1].0)))
            .map(|pair| is_green(self.seed(pair[0]), pair[1]))
            .collect();
        Detection::new(&marks)
    }

    /// Scores a tokenized text with the weight of each token (`weights[i]` for
    /// `tokens[i + 1]`, from [`Reader::weights`]); see the module documentation.
    pub fn detect_weighted(&self, tokens: &[LlamaToken], weights: &[f64]) -> Detection {
        let mut seen = std::collections::HashSet::with_capacity(tokens.len());
        let (marks, weights): (Vec<bool>, Vec<f64>) = tokens
            .windows(2)
            .zip(weights)
            .filter(|(pair, _)| seen.insert((pair[0].0, pair[1].0)))
            .map(|(pair, &w)| (is_green(self.seed(pair[0]), pair[1]), w))
            .unzip();
        Detection::weighted(&marks, &weights)
    }
}

/// The weight of a token after the model's `logits` for it: the expected excess of
/// green tokens a mark of strength [`DEFAULT_DELTA`] makes there (0 where the model
/// was sure, about 0.46 where it was spread over many tokens).
pub fn weight(logits: &[f32]) -> f64 {
    let alpha = f64::from(DEFAULT_DELTA).exp();
    let z = (1.0 - GAMMA) * (alpha - 1.0) / (1.0 + (alpha - 1.0) * GAMMA);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return 0.0;
    }
    let (mut total, mut spike) = (0.0f64, 0.0f64);
    let exps: Vec<f64> = logits
        .iter()
        .map(|&l| f64::from(l - max).exp())
        .inspect(|e| total += e)
        .collect();
    for e in exps {
        let p = e / total;
        spike += p / (1.0 + z * p);
    }
    let green = GAMMA * alpha * spike / (1.0 + (alpha - 1.0) * GAMMA);
    (green - GAMMA).max(0.0)
}

/// A model loaded to read texts as it would have written them: their tokens, and how
/// much the mark could move each ([`weight`]).
pub struct Reader {
    model: std::sync::Arc<llama_cpp_2::model::LlamaModel>,
    threads: i32,
}

/// The longest text weighed by the model (longer ones are scored by counting): a
/// forward pass over a text costs about as much as reading a prompt of its length.
pub const MAX_WEIGHED_TOKENS: usize = 16_384;

/// Tokens read in one pass; a longer text is read in passes that overlap by
/// [`READ_OVERLAP`] tokens of context.
const READ_CHUNK: usize = 512;
const READ_OVERLAP: usize = 64;

impl Reader {
    pub fn load(path: &Path, threads: i32) -> Result<Self, crate::EngineError> {
        let params = llama_cpp_2::model::params::LlamaModelParams::default();
        let model =
            llama_cpp_2::model::LlamaModel::load_from_file(crate::backend()?, path, &params)
                .map_err(|e| crate::EngineError::Load {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
        Ok(Self::new(std::sync::Arc::new(model), threads))
    }

    /// A reader of a model already loaded (an engine's).
    pub fn new(model: std::sync::Arc<llama_cpp_2::model::LlamaModel>, threads: i32) -> Self {
        Reader {
            model,
            threads: threads.max(1),
        }
    }

    /// Scores `text` for `key`: weighted by the model up to [`MAX_WEIGHED_TOKENS`]
    /// tokens (or when `weigh` is false), by counting beyond.
    pub fn detect(
        &self,
        key: &WatermarkKey,
        text: &str,
        weigh: bool,
    ) -> Result<Detection, crate::EngineError> {
        let tokens = self.tokens(text);
        if !weigh || tokens.len() > MAX_WEIGHED_TOKENS {
            return Ok(key.detect(&tokens));
        }
        let weights = self.weights(&tokens)?;
        Ok(key.detect_weighted(&tokens, &weights))
    }

    pub fn tokens(&self, text: &str) -> Vec<LlamaToken> {
        crate::text_tokens(&self.model, text)
    }

    /// The weight of each token after the first (`weights[i]` for `tokens[i + 1]`):
    /// the model's distribution for it, given the tokens before it in the text.
    pub fn weights(&self, tokens: &[LlamaToken]) -> Result<Vec<f64>, crate::EngineError> {
        use llama_cpp_2::context::params::LlamaContextParams;
        use llama_cpp_2::llama_batch::LlamaBatch;
        let context = |e: String| crate::EngineError::Context(e);
        let mut weights = Vec::with_capacity(tokens.len().saturating_sub(1));
        if tokens.len() < 2 {
            return Ok(weights);
        }
        let n = (READ_CHUNK + READ_OVERLAP) as u32;
        let params = LlamaContextParams::default()
            .with_n_ctx(std::num::NonZeroU32::new(n))
            .with_n_batch(n)
            .with_n_ubatch(n)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads);
        let mut ctx = self
            .model
            .new_context(crate::backend()?, params)
            .map_err(|e| context(e.to_string()))?;
        let mut batch = LlamaBatch::new(n as usize, 1);
        // Each pass predicts tokens[from + 1..=to] from up to READ_OVERLAP tokens of
        // context before `from`.
        let mut from = 0;
        while from + 1 < tokens.len() {
            let to = (from + READ_CHUNK).min(tokens.len() - 1);
            let start = from.saturating_sub(READ_OVERLAP);
            ctx.clear_kv_cache();
            batch.clear();
            for (i, t) in tokens[start..to].iter().enumerate() {
                let at = start + i;
                batch
                    .add(*t, i as i32, &[0], at >= from)
                    .map_err(|e| context(e.to_string()))?;
            }
            ctx.decode(&mut batch).map_err(|e| context(e.to_string()))?;
            for at in from..to {
                weights.push(weight(ctx.get_logits_ith((at - start) as i32)));
            }
            from = to;
        }
        Ok(weights)
    }
}

/// What marks a generation: the key, and how strongly (δ).
#[derive(Debug, Clone)]
pub struct Marker {
    pub key: WatermarkKey,
    pub delta: f32,
}

impl Marker {
    /// What an answer marked this way says of itself (header, receipt, audit):
    /// `kgw-lefthash-v1; key=ID; gamma=0.25; delta=2`.
    pub fn disclosure(&self) -> String {
        format!(
            "{SCHEME}; key={}; gamma={GAMMA}; delta={}",
            self.key.id, self.delta
        )
    }

    pub(crate) fn bias(&self, prev: LlamaToken, data: &mut [LlamaTokenData]) {
        self.key.bias(prev, self.delta, data);
    }
}

/// The green threshold: γ as a fraction of 2⁶⁴.
const GREEN_BELOW: u64 = (GAMMA * 18_446_744_073_709_551_616.0) as u64;

/// Whether `token` is green under `seed`: MurmurHash3's 64-bit finaliser of the seed
/// and the token, below γ·2⁶⁴.
fn is_green(seed: u64, token: LlamaToken) -> bool {
    let mut h = seed ^ (token.0 as u32 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h < GREEN_BELOW
}

/// What detection says of a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Watermarked,
    NotWatermarked,
    /// Fewer than [`MIN_TOKENS`] distinct tokens were scored: no verdict.
    TooShort,
}

/// How a text was scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Green tokens counted, each alike (the key and the tokenizer alone).
    Count,
    /// Green tokens weighed by how much the mark could move each (the model run over
    /// the text).
    EntropyWeighted,
}

/// The green count of a text and what it means.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Detection {
    pub method: Method,
    /// Distinct (previous, token) pairs scored, in the whole text.
    pub tokens_scored: usize,
    pub green_tokens: usize,
    /// (green − γT) / √(Tγ(1−γ)) over the whole text; weighted, (Σwᵢgᵢ − γΣwᵢ) /
    /// √(γ(1−γ)Σwᵢ²).
    pub z_score: f64,
    /// How likely text without the mark is to score as high as this one: twice the
    /// whole text's binomial tail, or twice the number of windows tried times the best
    /// window's (a weighted Bonferroni correction, half the budget to the whole text),
    /// whichever is lower; looking at many windows does not make false alarms.
    pub p_value: f64,
    /// The stretch that scored best: all of the text, or the marked part of a text
    /// that was pasted into other writing.
    pub window: Window,
    pub verdict: Verdict,
}

/// A stretch of the scored tokens: windows of 25, 50, 100... tokens, each half a
/// window apart, and the whole text.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Window {
    /// Index of its first scored token.
    pub start: usize,
    pub tokens_scored: usize,
    pub green_tokens: usize,
    /// P[Binomial(T, γ) ≥ green] for this window alone (weighted: the Chernoff bound
    /// on its weighted count).
    pub p_value: f64,
}

impl Detection {
    fn new(marks: &[bool]) -> Self {
        let scored = marks.len();
        let mut prefix = Vec::with_capacity(scored + 1);
        prefix.push(0usize);
        for &m in marks {
            prefix.push(prefix.last().copied().unwrap_or(0) + usize::from(m));
        }
        let green = prefix[scored];
        let t = scored as f64;
        let z_score = if scored == 0 {
            0.0
        } else {
            (green as f64 - GAMMA * t) / (t * GAMMA * (1.0 - GAMMA)).sqrt()
        };
        Self::decide(Method::Count, marks, z_score, |start, len| {
            let g = prefix[start + len] - prefix[start];
            // A window at or below the expected count cannot be the best.
            ((g as f64) > GAMMA * len as f64).then(|| binomial_tail(len, g, GAMMA))
        })
    }

    fn weighted(marks: &[bool], weights: &[f64]) -> Self {
        let scored = marks.len();
        let mut prefix = Vec::with_capacity(scored + 1);
        let (mut sum, mut total, mut squares) = (0.0, 0.0, 0.0);
        prefix.push((0.0, 0.0));
        for (&m, &w) in marks.iter().zip(weights) {
            let w = if w.is_finite() { w.max(0.0) } else { 0.0 };
            sum += if m { w } else { 0.0 };
            total += w;
            squares += w * w;
            prefix.push((sum, total));
        }
        let z_score = if squares > 0.0 {
            (sum - GAMMA * total) / (GAMMA * (1.0 - GAMMA) * squares).sqrt()
        } else {
            0.0
        };
        Self::decide(Method::EntropyWeighted, marks, z_score, |start, len| {
            let (s, t) = (
                prefix[start + len].0 - prefix[start].0,
                prefix[start + len].1 - prefix[start].1,
            );
            (s > GAMMA * t).then(|| chernoff_tail(&weights[start..start + len], s))
        })
    }

    /// The verdict from each stretch's p-value (`None`: at or below what text without
    /// the mark scores, so never the best).
    fn decide(
        method: Method,
        marks: &[bool],
        z_score: f64,
        p_of: impl Fn(usize, usize) -> Option<f64>,
    ) -> Self {
        let scored = marks.len();
        let green_in =
            |start: usize, len: usize| marks[start..start + len].iter().filter(|&&m| m).count();
        let window = |start: usize, len: usize| Window {
            start,
            tokens_scored: len,
            green_tokens: green_in(start, len),
            p_value: p_of(start, len).unwrap_or(1.0),
        };
        // Half the false-alarm budget goes to the whole text, half is shared by the
        // windows (a weighted Bonferroni correction).
        let whole = window(0, scored);
        let mut best: Option<Window> = None;
        let mut tried = 0usize;
        let mut len = MIN_TOKENS;
        while len < scored {
            for start in (0..=scored - len).step_by(len / 2) {
                tried += 1;
                if let Some(p) = p_of(start, len) {
                    if best.is_none_or(|b| p < b.p_value) {
                        best = Some(window(start, len));
                    }
                }
            }
            len *= 2;
        }
        let (p_value, window) = match best {
            Some(w) if tried as f64 * w.p_value < whole.p_value => {
                ((2.0 * tried as f64 * w.p_value).min(1.0), w)
            }
            _ => ((2.0 * whole.p_value).min(1.0), whole),
        };
        let verdict = if scored < MIN_TOKENS {
            Verdict::TooShort
        } else if p_value <= P_THRESHOLD {
            Verdict::Watermarked
        } else {
            Verdict::NotWatermarked
        };
        Detection {
            method,
            tokens_scored: scored,
            green_tokens: whole.green_tokens,
            z_score,
            p_value,
            window,
            verdict,
        }
    }
}

/// An upper bound on P[Σ wᵢgᵢ ≥ s] for independent gᵢ ~ Bernoulli(γ): the Chernoff
/// bound min over λ > 0 of e^(−λs) Π(1 − γ + γe^(λwᵢ)), the minimum found by
/// bisection on its (increasing) derivative.
pub fn chernoff_tail(weights: &[f64], s: f64) -> f64 {
    let positive = weights.iter().filter(|&&w| w > 0.0).count();
    let total: f64 = weights.iter().sum();
    if s <= GAMMA * total {
        return 1.0;
    }
    if s >= total {
        // Every weighed token green: exactly γ^(their number).
        return GAMMA.powi(positive as i32);
    }
    // ln of the bound at λ, and its derivative.
    let ln_bound = |l: f64| -> f64 {
        weights
            .iter()
            .map(|&w| (1.0 - GAMMA + GAMMA * (l * w).exp()).ln())
            .sum::<f64>()
            - l * s
    };
    let slope = |l: f64| -> f64 {
        weights
            .iter()
            .map(|&w| {
                let e = GAMMA * (l * w).exp();
                w * e / (1.0 - GAMMA + e)
            })
            .sum::<f64>()
            - s
    };
    let (mut lo, mut hi) = (0.0, 1.0);
    while slope(hi) < 0.0 && hi < 1e6 {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if slope(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    ln_bound(0.5 * (lo + hi)).exp().min(1.0)
}

/// P[Binomial(n, p) ≥ k], summed in log space (exact for any n a text has).
pub fn binomial_tail(n: usize, k: usize, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    // ln C(n, k) as a sum of logs; n is at most a few hundred thousand tokens.
    let ln_choose: f64 = (1..=k).map(|i| ((n - k + i) as f64 / i as f64).ln()).sum();
    let mut ln_term = ln_choose + k as f64 * lp + (n - k) as f64 * lq;
    let first = ln_term;
    let mut sum = 1.0; // terms relative to the first
    for j in k..n {
        // term(j+1) / term(j) = (n−j)/(j+1) · p/q
        ln_term += ((n - j) as f64 / (j + 1) as f64).ln() + lp - lq;
        let rel = (ln_term - first).exp();
        sum += rel;
        if rel < 1e-17 * sum {
            break;
        }
    }
    (first + sum.ln()).exp().min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> WatermarkKey {
        WatermarkKey::from_bytes([b; KEY_LEN])
    }

    #[test]
    fn a_quarter_of_the_vocabulary_is_green_after_any_token() {
        let k = key(7);
        for prev in [0, 1, 500, 49_151] {
            let seed = k.seed(LlamaToken(prev));
            let green = (0..49_152)
                .filter(|&v| is_green(seed, LlamaToken(v)))
                .count();
            let share = green as f64 / 49_152.0;
            assert!((share - GAMMA).abs() < 0.01, "prev {prev}: {share}");
        }
    }

    #[test]
    fn green_lists_differ_by_key_and_by_previous_token() {
        let (a, b) = (key(1), key(2));
        let overlap = |s1: u64, s2: u64| {
            (0..20_000)
                .filter(|&v| is_green(s1, LlamaToken(v)) && is_green(s2, LlamaToken(v)))
                .count() as f64
                / 20_000.0
        };
        // Independent lists share γ² of the vocabulary.
        let other_key = overlap(a.seed(LlamaToken(5)), b.seed(LlamaToken(5)));
        let other_prev = overlap(a.seed(LlamaToken(5)), a.seed(LlamaToken(6)));
        for o in [other_key, other_prev] {
            assert!((o - GAMMA * GAMMA).abs() < 0.01, "{o}");
        }
    }

    #[test]
    fn the_binomial_tail_matches_direct_sums() {
        // Small cases against the definition.
        let direct = |n: usize, k: usize, p: f64| -> f64 {
            let choose = |n: usize, k: usize| -> f64 {
                (1..=k).fold(1.0, |acc, i| acc * (n - k + i) as f64 / i as f64)
            };
            (k..=n)
                .map(|j| choose(n, j) * p.powi(j as i32) * (1.0 - p).powi((n - j) as i32))
                .sum()
        };
        for (n, k) in [(10, 0), (10, 3), (10, 10), (40, 20), (200, 80), (30, 31)] {
            let (a, b) = (binomial_tail(n, k, GAMMA), direct(n, k, GAMMA));
            assert!((a - b).abs() <= 1e-12 + 1e-9 * b, "n={n} k={k}: {a} vs {b}");
        }
        // Far in the tail it stays a number (0 where it is below f64's range).
        let deep = binomial_tail(2_000, 1_500, GAMMA);
        assert!((0.0..1e-300).contains(&deep), "{deep}");
    }

    #[test]
    fn detection_needs_enough_distinct_tokens() {
        let k = key(3);
        // A marked-looking text made only of green pairs, too short to decide.
        let mut tokens = vec![LlamaToken(100)];
        while tokens.len() < 12 {
            let prev = *tokens.last().unwrap();
            let seed = k.seed(prev);
            let next = (0..)
                .map(LlamaToken)
                .find(|&v| is_green(seed, v) && !tokens.contains(&v));
            tokens.push(next.unwrap());
        }
        let d = k.detect(&tokens);
        assert_eq!((d.tokens_scored, d.green_tokens), (11, 11));
        assert_eq!(d.verdict, Verdict::TooShort);
        // Repetition scores a pair once.
        let looped: Vec<_> = tokens.iter().cycle().take(1_000).copied().collect();
        assert!(k.detect(&looped).tokens_scored <= 12);
        // Long green text is marked; the same tokens under another key are not.
        let mut long = vec![LlamaToken(100)];
        let mut used = std::collections::HashSet::new();
        while long.len() < 200 {
            let seed = k.seed(*long.last().unwrap());
            let next = (1..)
                .map(LlamaToken)
                .find(|&v| is_green(seed, v) && used.insert((long.last().unwrap().0, v.0)))
                .unwrap();
            long.push(next);
        }
        let d = k.detect(&long);
        assert_eq!(d.verdict, Verdict::Watermarked);
        assert!(d.p_value < 1e-30, "{d:?}");
        assert_eq!(key(4).detect(&long).verdict, Verdict::NotWatermarked);
    }

    #[test]
    fn the_chernoff_bound_holds_and_is_not_far_off() {
        // Equal weights: the weighted count is a binomial; the bound is above the exact
        // tail, within a small factor of it.
        for (n, k) in [(100, 40), (200, 80), (200, 120), (60, 30)] {
            let exact = binomial_tail(n, k, GAMMA);
            let bound = chernoff_tail(&vec![1.0; n], k as f64);
            assert!(bound >= exact, "n={n} k={k}: {bound} < {exact}");
            assert!(bound <= 40.0 * exact, "n={n} k={k}: {bound} vs {exact}");
        }
        // Zero-weight tokens change nothing; at or below the mean there is no evidence.
        let mut w = vec![1.0; 100];
        w.extend(vec![0.0; 100]);
        assert!((chernoff_tail(&w, 40.0) - chernoff_tail(&[1.0; 100], 40.0)).abs() < 1e-15);
        assert_eq!(chernoff_tail(&w, 25.0), 1.0);
        // All weighed tokens green: exactly γ^n.
        assert!((chernoff_tail(&[0.5; 10], 5.0) - GAMMA.powi(10)).abs() < 1e-15);
    }

    /// Weighted detection by simulation: text without the key is called marked no
    /// more often than the threshold allows, whatever the weights; marked tokens that
    /// carry the weight are found with fewer tokens than counting needs.
    #[test]
    fn weighted_detection_keeps_its_false_alarm_rate_and_finds_more() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut alarms = 0;
        for _ in 0..10_000 {
            let n = 25 + rng.usize(0..200);
            let marks: Vec<bool> = (0..n).map(|_| rng.f64() < GAMMA).collect();
            let weights: Vec<f64> = (0..n).map(|_| rng.f64() * 0.46).collect();
            let d = Detection::weighted(&marks, &weights);
            alarms += usize::from(d.verdict == Verdict::Watermarked);
            assert!(d.p_value > 1e-8, "{d:?}");
        }
        assert!(
            alarms <= 2,
            "{alarms} false alarms in 20000 (threshold 1e-4)"
        );
        // Half the tokens are ones the model was sure of (green at chance, weight 0),
        // half were spread (green 55% of the time, weight 0.46): weighing finds it.
        let mut found = (0, 0);
        for _ in 0..200 {
            let (mut marks, mut weights) = (Vec::new(), Vec::new());
            for i in 0..120 {
                let spread = i % 2 == 0;
                marks.push(rng.f64() < if spread { 0.55 } else { GAMMA });
                weights.push(if spread { 0.46 } else { 0.0 });
            }
            found.0 += usize::from(Detection::new(&marks).verdict == Verdict::Watermarked);
            found.1 +=
                usize::from(Detection::weighted(&marks, &weights).verdict == Verdict::Watermarked);
        }
        assert!(found.1 > found.0 + 20, "{found:?}");
    }

    #[test]
    fn a_sure_model_weighs_nothing_and_a_spread_one_about_half() {
        let mut sure = vec![-30.0f32; 1000];
        sure[3] = 10.0;
        assert!(weight(&sure) < 1e-6, "{}", weight(&sure));
        let spread = vec![0.0f32; 49_152];
        assert!(
            (weight(&spread) - 0.461).abs() < 0.01,
            "{}",
            weight(&spread)
        );
        assert_eq!(weight(&[]), 0.0);
        assert_eq!(weight(&[f32::NEG_INFINITY; 4]), 0.0);
    }

    #[test]
    fn keys_are_made_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("bulwark-wm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("watermark.key");
        let made = WatermarkKey::load_or_create(&path).unwrap();
        let again = WatermarkKey::load_or_create(&path).unwrap();
        assert_eq!(made.id(), again.id());
        assert_eq!(made.id().len(), 12);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!format!("{made:?}").contains(&std::fs::read_to_string(&path).unwrap()[..16]));
        std::fs::write(&path, "not a key").unwrap();
        assert!(matches!(
            WatermarkKey::load(&path),
            Err(KeyError::Malformed { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
