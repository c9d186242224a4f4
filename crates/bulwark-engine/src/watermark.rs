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

    /// Scores a tokenized text; see the module documentation.
    pub fn detect(&self, tokens: &[LlamaToken]) -> Detection {
        let mut seen = std::collections::HashSet::with_capacity(tokens.len());
        let marks: Vec<bool> = tokens
            .windows(2)
            .filter(|pair| seen.insert((pair[0].0, pair[1].0)))
            .map(|pair| is_green(self.seed(pair[0]), pair[1]))
            .collect();
        Detection::new(&marks)
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

/// The green count of a text and what it means.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Detection {
    /// Distinct (previous, token) pairs scored, in the whole text.
    pub tokens_scored: usize,
    pub green_tokens: usize,
    /// (green − γT) / √(Tγ(1−γ)), over the whole text.
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
    /// P[Binomial(T, γ) ≥ green] for this window alone.
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
        let window = |start: usize, len: usize| {
            let g = prefix[start + len] - prefix[start];
            Window {
                start,
                tokens_scored: len,
                green_tokens: g,
                p_value: binomial_tail(len, g, GAMMA),
            }
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
                // A window at or below the expected count cannot be the best.
                let g = prefix[start + len] - prefix[start];
                if (g as f64) > GAMMA * len as f64 {
                    let w = window(start, len);
                    if best.is_none_or(|b| w.p_value < b.p_value) {
                        best = Some(w);
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
        let t = scored as f64;
        let z_score = if scored == 0 {
            0.0
        } else {
            (green as f64 - GAMMA * t) / (t * GAMMA * (1.0 - GAMMA)).sqrt()
        };
        let verdict = if scored < MIN_TOKENS {
            Verdict::TooShort
        } else if p_value <= P_THRESHOLD {
            Verdict::Watermarked
        } else {
            Verdict::NotWatermarked
        };
        Detection {
            tokens_scored: scored,
            green_tokens: green,
            z_score,
            p_value,
            window,
            verdict,
        }
    }
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
