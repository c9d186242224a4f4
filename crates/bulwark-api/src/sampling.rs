//! Sampling parameters shared by chat and text completions, validated.

use serde::Deserialize;

use crate::ApiError;

/// The most stop sequences a request may carry (OpenAI's limit).
pub const MAX_STOP_SEQUENCES: usize = 4;

/// Validated sampling parameters. `None` means "the engine's default".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplingParams {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub seed: Option<u32>,
    pub stop: Vec<String>,
    pub max_tokens: Option<u32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Keep generating past end-of-generation tokens (llama.cpp server's extension; for benchmarks).
    pub ignore_eos: bool,
}

impl SamplingParams {
    /// True when the output is a pure function of the prompt: greedy decoding or a fixed seed.
    pub fn is_deterministic(&self) -> bool {
        self.temperature == Some(0.0) || self.seed.is_some()
    }
}

/// `stop` may be a string or an array of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// The sampling fields as they arrive, before validation.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawSampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub ignore_eos: Option<bool>,
}

fn in_range(param: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(Some(x as f32)),
        Some(x) => Err(ApiError::invalid(
            param,
            format!("`{param}` must be between {lo} and {hi}, got {x}."),
        )),
    }
}

impl RawSampling {
    pub fn validate(self) -> Result<SamplingParams, ApiError> {
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => None,
            Some(n) if n >= 1 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            Some(n) => {
                let param = if self.max_completion_tokens.is_some() {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                };
                return Err(ApiError::invalid(
                    param,
                    format!("`{param}` must be at least 1, got {n}."),
                ));
            }
        };
        let top_k = match self.top_k {
            None => None,
            Some(k) if k >= 0 => Some(u32::try_from(k).unwrap_or(u32::MAX)),
            Some(k) => {
                return Err(ApiError::invalid(
                    "top_k",
                    format!("`top_k` must be 0 (disabled) or positive, got {k}."),
                ))
            }
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.len() > MAX_STOP_SEQUENCES {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "`stop` may hold at most {MAX_STOP_SEQUENCES} sequences, got {}.",
                    stop.len()
                ),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                "stop",
                "`stop` sequences must not be empty.",
            ));
        }
        Ok(SamplingParams {
            temperature: in_range("temperature", self.temperature, 0.0, 2.0)?,
            top_p: in_range("top_p", self.top_p, 0.0, 1.0)?,
            top_k,
            min_p: in_range("min_p", self.min_p, 0.0, 1.0)?,
            // Any integer is a valid OpenAI seed; the engine takes 32 bits of it.
            seed: self.seed.map(|s| (s as u64 & 0xffff_ffff) as u32),
            stop,
            max_tokens,
            presence_penalty: in_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?,
            frequency_penalty: in_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?,
            ignore_eos: self.ignore_eos.unwrap_or(false),
        })
    }
}
