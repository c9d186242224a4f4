//! `POST /v1/embeddings` requests: parsing and validation.

use serde_json::Value;

use crate::ApiError;

/// Most inputs in one request (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// One text to embed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Text(String),
    /// Token ids of the model's own vocabulary.
    Tokens(Vec<u32>),
}

/// How the vectors are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A JSON array of numbers.
    Float,
    /// Base64 of the little-endian `f32` bytes.
    Base64,
}

/// A validated embeddings request.
#[derive(Debug, Clone)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub inputs: Vec<Input>,
    pub encoding: Encoding,
    /// The length asked for, when given.
    pub dimensions: Option<u32>,
}

fn tokens(v: &[Value], at: &str) -> Result<Vec<u32>, ApiError> {
    v.iter()
        .map(|t| {
            t.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "input",
                        format!("`{at}` must hold token ids (whole numbers from 0), got {t}."),
                    )
                })
        })
        .collect()
}

impl EmbeddingsRequest {
    pub fn from_json(value: &Value) -> Result<Self, ApiError> {
        let model = value
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid("model", "`model` is required."))?
            .to_owned();
        let inputs = match value.get("input") {
            Some(Value::String(s)) => vec![Input::Text(s.clone())],
            Some(Value::Array(items)) if items.is_empty() => {
                return Err(ApiError::invalid("input", "`input` must not be empty."))
            }
            Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
                vec![Input::Tokens(tokens(items, "input")?)]
            }
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(Input::Text(s.clone())),
                    Value::Array(t) => Ok(Input::Tokens(tokens(t, &format!("input[{i}]"))?)),
                    _ => Err(ApiError::invalid(
                        "input",
                        format!("`input[{i}]` must be a string or a list of token ids."),
                    )),
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(ApiError::invalid(
                    "input",
                    "`input` must be a string, a list of strings, or token ids.",
                ))
            }
        };
        if inputs.len() > MAX_INPUTS {
            return Err(ApiError::invalid(
                "input",
                format!(
                    "`input` holds {} items; at most {MAX_INPUTS} per request.",
                    inputs.len()
                ),
            ));
        }
        if inputs.iter().any(|i| match i {
            Input::Text(s) => s.is_empty(),
            Input::Tokens(t) => t.is_empty(),
        }) {
            return Err(ApiError::invalid(
                "input",
                "`input` must not contain an empty string or an empty list of tokens.",
            ));
        }
        let encoding = match value.get("encoding_format") {
            None | Some(Value::Null) => Encoding::Float,
            Some(Value::String(s)) if s == "float" => Encoding::Float,
            Some(Value::String(s)) if s == "base64" => Encoding::Base64,
            Some(other) => {
                return Err(ApiError::invalid(
                    "encoding_format",
                    format!("`encoding_format` must be `float` or `base64`, got {other}."),
                ))
            }
        };
        let dimensions = match value.get("dimensions") {
            None | Some(Value::Null) => None,
            Some(d) => Some(
                d.as_u64()
                    .and_then(|d| u32::try_from(d).ok())
                    .filter(|d| *d > 0)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "dimensions",
                            format!("`dimensions` must be a positive whole number, got {d}."),
                        )
                    })?,
            ),
        };
        Ok(EmbeddingsRequest {
            model,
            inputs,
            encoding,
            dimensions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> String {
        match EmbeddingsRequest::from_json(&v) {
            Ok(r) => format!("{:?} {:?} {:?}", r.inputs, r.encoding, r.dimensions),
            Err(e) => format!("{} {}", e.status(), e.message),
        }
    }

    #[test]
    fn the_shapes_openai_accepts() {
        let cases = [
            (
                json!({"model": "m", "input": "hi"}),
                r#"[Text("hi")] Float None"#,
            ),
            (
                json!({"model": "m", "input": ["a", "b"], "encoding_format": "base64"}),
                r#"[Text("a"), Text("b")] Base64 None"#,
            ),
            (
                json!({"model": "m", "input": [1, 2, 3]}),
                "[Tokens([1, 2, 3])] Float None",
            ),
            (
                json!({"model": "m", "input": [[1], [2, 3]], "dimensions": 384}),
                "[Tokens([1]), Tokens([2, 3])] Float Some(384)",
            ),
            (
                json!({"model": "m", "input": []}),
                "400 `input` must not be empty.",
            ),
            (
                json!({"model": "m", "input": [""]}),
                "400 `input` must not contain an empty string or an empty list of tokens.",
            ),
            (
                json!({"model": "m", "input": [[-1]]}),
                "400 `input[0]` must hold token ids (whole numbers from 0), got -1.",
            ),
            (
                json!({"model": "m", "input": [{"a": 1}]}),
                "400 `input[0]` must be a string or a list of token ids.",
            ),
            (
                json!({"model": "m", "input": "x", "encoding_format": "int8"}),
                "400 `encoding_format` must be `float` or `base64`, got \"int8\".",
            ),
            (
                json!({"model": "m", "input": "x", "dimensions": 0}),
                "400 `dimensions` must be a positive whole number, got 0.",
            ),
            (json!({"input": "x"}), "400 `model` is required."),
        ];
        for (v, want) in cases {
            assert_eq!(check(v.clone()), want, "{v}");
        }
    }
}
