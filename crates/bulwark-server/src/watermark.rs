//! `POST /v1/watermark/detect`: whether a text carries this gateway's watermark, read
//! with the tokenizer of the local model that would have written it.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bulwark_api::{ApiError, ErrorCode, ErrorKind};
use bulwark_engine::watermark::{self, Detection, WatermarkKey};

use crate::auth::Caller;
use crate::error::Error;
use crate::state::{AppState, Target};

/// What detection reports, on the endpoint and from `bulwark watermark detect`.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub object: &'static str,
    pub model: String,
    pub scheme: &'static str,
    pub key_id: String,
    pub gamma: f64,
    /// The p-value at or below which the verdict is `watermarked`.
    pub p_threshold: f64,
    /// The fewest scored tokens that get a verdict.
    pub min_tokens: usize,
    #[serde(flatten)]
    pub detection: Detection,
}

impl Report {
    pub fn new(model: &str, key: &WatermarkKey, detection: Detection) -> Self {
        Report {
            object: "watermark.detection",
            model: model.to_owned(),
            scheme: watermark::SCHEME,
            key_id: key.id().to_owned(),
            gamma: watermark::GAMMA,
            p_threshold: watermark::P_THRESHOLD,
            min_tokens: watermark::MIN_TOKENS,
            detection,
        }
    }
}

pub async fn detect(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    crate::extract::JsonBody(v): crate::extract::JsonBody,
) -> Result<Response, Error> {
    let text = match v.get("text") {
        Some(serde_json::Value::String(s)) => s.clone(),
        _ => {
            return Err(Error(ApiError::invalid(
                "text",
                "Send `{\"text\": \"...\", \"model\": \"...\"}`: `text` (a string) is required; `model` may be left out when one local model is served.",
            )))
        }
    };
    let model = match v.get("model") {
        None | Some(serde_json::Value::Null) if state.models.local.len() > 1 => {
            return Err(Error(ApiError::invalid(
                "model",
                "Several local models are served: name the one whose tokenizer reads the text in `model`.",
            )))
        }
        None | Some(serde_json::Value::Null) => state.models.local.keys().next().cloned(),
        Some(serde_json::Value::String(m)) => Some(m.clone()),
        Some(_) => {
            return Err(Error(ApiError::invalid(
                "model",
                "`model` must be the name of a local model.",
            )))
        }
    };
    let (Some(model), Some(key)) = (model, state.watermark.clone()) else {
        return Err(Error(
            ApiError::new(
                ErrorKind::InvalidRequest,
                "This gateway serves no local model, so nothing it answers is watermarked.",
            )
            .with_code(ErrorCode::ModelNotFound),
        ));
    };
    if let Some(refused) = crate::route::model_refused(&caller, &model) {
        return Ok(refused);
    }
    let engine = match state.models.resolve(&model).map_err(Error)? {
        Target::Local(engine) => engine,
        _ => {
            return Err(Error(
                ApiError::invalid(
                    "model",
                    format!(
                    "`{model}` is not a local model: only what local models write is watermarked."
                ),
                )
                .with_code(ErrorCode::InvalidValue),
            ))
        }
    };
    let detection = tokio::task::spawn_blocking(move || {
        let tokens = engine.text_tokens(&text);
        (key.detect(&tokens), key)
    })
    .await;
    let (detection, key) = detection.map_err(|_| {
        Error(ApiError::new(
            ErrorKind::Internal,
            "Watermark detection failed.",
        ))
    })?;
    Ok(Json(Report::new(&model, &key, detection)).into_response())
}
