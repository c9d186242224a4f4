//! `POST /v1/completions` (legacy text completion) requests.

use serde::Deserialize;
use serde_json::Value;

use crate::chat::{from_value, StreamOptions};
use crate::sampling::{RawSampling, SamplingParams};
use crate::ApiError;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct RawCompletionRequest {
    model: String,
    prompt: Prompt,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(flatten)]
    sampling: RawSampling,
}

/// A validated text completion request.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: String,
    pub stream: bool,
    pub include_usage: bool,
    pub echo: bool,
    pub sampling: SamplingParams,
}

impl CompletionRequest {
    /// Parse and validate a JSON body. Borrows it, so the same value can be forwarded.
    pub fn from_json(value: &Value) -> Result<Self, ApiError> {
        let raw: RawCompletionRequest = from_value(value)?;
        let prompt = match raw.prompt {
            Prompt::One(s) => s,
            Prompt::Many(mut v) if v.len() == 1 => v.remove(0),
            Prompt::Many(v) => {
                return Err(ApiError::invalid(
                    "prompt",
                    format!("Only one prompt per request is supported, got {}.", v.len()),
                ))
            }
        };
        if let Some(n) = raw.n {
            if n != 1 {
                return Err(ApiError::invalid(
                    "n",
                    format!("Only `n` = 1 is supported, got {n}."),
                ));
            }
        }
        if matches!(raw.logprobs, Some(ref v) if !v.is_null()) {
            return Err(ApiError::invalid(
                "logprobs",
                "`logprobs` is not supported yet.",
            ));
        }
        Ok(CompletionRequest {
            model: raw.model,
            prompt,
            stream: raw.stream.unwrap_or(false),
            include_usage: raw.stream_options.is_some_and(|o| o.include_usage),
            echo: raw.echo.unwrap_or(false),
            sampling: raw.sampling.validate()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prompt_forms() {
        let one = CompletionRequest::from_json(&json!({"model":"m","prompt":"hi"}));
        assert_eq!(one.map(|r| r.prompt), Ok("hi".to_owned()));
        let list = CompletionRequest::from_json(&json!({"model":"m","prompt":["hi"]}));
        assert_eq!(list.map(|r| r.prompt), Ok("hi".to_owned()));
        let two = CompletionRequest::from_json(&json!({"model":"m","prompt":["a","b"]}));
        assert_eq!(
            two.map(|r| r.prompt).map_err(|e| e.param),
            Err(Some("prompt".to_owned()))
        );
    }
}
