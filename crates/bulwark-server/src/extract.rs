//! Reading a JSON request body defensively: content type (415), size (413), deadline
//! (408), syntax (400).
//!
//! axum's own `Json` extractor answers these with plain-text bodies; clients of an
//! OpenAI-compatible API expect OpenAI-shaped errors, so the checks live here.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use bulwark_api::{ApiError, ErrorKind};
use http::header;
use serde_json::Value;

use crate::error::Error;
use crate::state::AppState;

/// A request body that is a JSON object, with its `model` field.
pub struct JsonObject {
    pub value: Value,
    pub model: String,
}

fn too_large(limit: usize) -> Error {
    Error(
        ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!("The request body is larger than the limit of {limit} bytes (server.max_body_bytes)."),
        )
        .with_code(bulwark_api::ErrorCode::RequestTooLarge),
    )
}

/// A request body that is JSON (any value): content type, size and deadline checked as
/// for [`JsonObject`]. For the endpoints that are not completions (`/v1/guard/scan`,
/// `/admin/keys`).
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        read_json(req, state).await.map(JsonBody)
    }
}

/// Content type (415), declared and actual size (413), deadline (408), JSON syntax (400).
async fn read_json(req: Request, state: &AppState) -> Result<Value, Error> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        let shown = if content_type.is_empty() {
            "none"
        } else {
            content_type
        };
        return Err(Error(
            ApiError::new(
                ErrorKind::UnsupportedMediaType,
                format!("Expected `Content-Type: application/json`, got {shown}."),
            )
            .with_code(bulwark_api::ErrorCode::UnsupportedMediaType),
        ));
    }
    let limit = state.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let body: Body = req.into_body();
    let deadline = state.body_read_timeout;
    let read = tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await;
    let Ok(read) = read else {
        return Err(Error(
            ApiError::new(
                ErrorKind::RequestTimeout,
                format!(
                    "The request body did not arrive within {} ms (server.body_read_timeout_ms).",
                    deadline.as_millis()
                ),
            )
            .with_code(bulwark_api::ErrorCode::RequestTimeout),
        ));
    };
    let bytes = read.map_err(|e| {
        let over = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if over {
            too_large(limit)
        } else {
            Error(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("Failed to read the request body: {e}"),
            ))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error(
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("The request body is not valid JSON: {e}."),
            )
            .with_code(bulwark_api::ErrorCode::InvalidJson),
        )
    })
}

impl FromRequest<AppState> for JsonObject {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let value = read_json(req, state).await?;
        let Value::Object(ref obj) = value else {
            return Err(Error(
                ApiError::new(
                    ErrorKind::InvalidRequest,
                    "The request body must be a JSON object.",
                )
                .with_code(bulwark_api::ErrorCode::InvalidJson),
            ));
        };
        let model = match obj.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            Some(_) => {
                return Err(Error(ApiError::invalid(
                    "model",
                    "`model` must be a non-empty string.",
                )))
            }
            None => {
                return Err(Error(
                    ApiError::new(ErrorKind::InvalidRequest, "Missing required field `model`.")
                        .with_param("model")
                        .with_code(bulwark_api::ErrorCode::MissingField),
                ))
            }
        };
        Ok(JsonObject { value, model })
    }
}
