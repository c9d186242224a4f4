//! The one place where an error becomes an HTTP response.
//!
//! Every handler returns `Result<_, Error>`; engine and upstream errors are converted
//! here, so status codes, OpenAI-shaped bodies and `Retry-After` are decided once.

use axum::response::{IntoResponse, Response};
use bulwark_api::{ApiError, ErrorKind};
use bulwark_engine::EngineError;
use bulwark_upstream::UpstreamError;
use http::{header, HeaderValue, StatusCode};

/// The code of an error response, kept in its extensions for the audit log.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// An [`ApiError`] on its way out.
#[derive(Debug)]
pub struct Error(pub ApiError);

impl From<ApiError> for Error {
    fn from(e: ApiError) -> Self {
        Error(e)
    }
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Self {
        let api = match &e {
            EngineError::PromptTooLong { .. } => {
                ApiError::new(ErrorKind::InvalidRequest, e.to_string())
                    .with_param("messages")
                    .with_code(bulwark_api::ErrorCode::ContextLengthExceeded)
            }
            EngineError::EmptyPrompt => ApiError::invalid(
                "prompt",
                "The prompt is empty after tokenization; send some text.",
            ),
            EngineError::QueueFull { .. } => ApiError::new(
                ErrorKind::RateLimited,
                format!("{e}; the local model is busy, retry shortly."),
            )
            .with_code(bulwark_api::ErrorCode::QueueFull)
            .with_retry_after(1),
            EngineError::Grammar(reason) => {
                ApiError::invalid("response_format", format!("{reason}. Simplify the schema."))
            }
            EngineError::Template(t) => ApiError::new(
                ErrorKind::InvalidRequest,
                format!("The model's chat template rejected these messages: {t}"),
            )
            .with_param("messages")
            .with_code(bulwark_api::ErrorCode::ChatTemplateError),
            _ => {
                tracing::error!(error = %e, "local engine error");
                ApiError::new(ErrorKind::Internal, format!("The local engine failed: {e}"))
                    .with_code(bulwark_api::ErrorCode::EngineError)
            }
        };
        Error(api)
    }
}

impl From<UpstreamError> for Error {
    fn from(e: UpstreamError) -> Self {
        tracing::warn!(error = %e, "upstream error");
        let api = if matches!(e, UpstreamError::CircuitOpen { .. }) {
            ApiError::new(ErrorKind::Unavailable, e.to_string())
                .with_code(bulwark_api::ErrorCode::UpstreamCircuitOpen)
        } else if e.is_timeout() {
            ApiError::new(ErrorKind::GatewayTimeout, e.to_string())
                .with_code(bulwark_api::ErrorCode::UpstreamTimeout)
        } else {
            ApiError::new(ErrorKind::BadGateway, e.to_string())
                .with_code(bulwark_api::ErrorCode::UpstreamUnavailable)
        };
        Error(api)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = ErrorCode(
            e.code
                .map_or(e.kind.type_str(), bulwark_api::ErrorCode::as_str),
        );
        let mut resp = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            e.body_json(),
        )
            .into_response();
        if let Some(secs) = e.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp.extensions_mut().insert(code);
        resp
    }
}
