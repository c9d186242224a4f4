//! The error every failure is turned into before it reaches a client.
//!
//! The body is OpenAI-shaped: `{"error":{"message","type","param","code"}}`. A message
//! must tell a person what to do, and must never echo secrets or raw prompt text.

use serde::Serialize;

/// What went wrong, which fixes the HTTP status and the OpenAI `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 400: the request is malformed or fails validation.
    InvalidRequest,
    /// 401: no or unknown credentials.
    Authentication,
    /// 403: authenticated, but not allowed.
    PermissionDenied,
    /// 404: unknown model or route.
    NotFound,
    /// 405: the route exists with another method.
    MethodNotAllowed,
    /// 408: the client did not send its request body in time.
    RequestTimeout,
    /// 413: the body is larger than the configured limit.
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 429: a queue or limit is full; `retry_after_secs` says when to come back.
    RateLimited,
    /// 500: a bug or an engine failure.
    Internal,
    /// 502: the upstream failed or answered with garbage.
    BadGateway,
    /// 503: not ready yet (models loading) or shutting down.
    Unavailable,
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
}

impl ErrorKind {
    /// The HTTP status code for this kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::Authentication => 401,
            ErrorKind::PermissionDenied => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::RateLimited => 429,
            ErrorKind::Internal => 500,
            ErrorKind::BadGateway => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::GatewayTimeout => 504,
        }
    }

    /// The OpenAI `error.type` string.
    pub fn type_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::RequestTimeout
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType => "invalid_request_error",
            ErrorKind::Authentication => "authentication_error",
            ErrorKind::PermissionDenied => "permission_error",
            ErrorKind::RateLimited => "rate_limit_error",
            ErrorKind::Internal => "server_error",
            ErrorKind::BadGateway | ErrorKind::GatewayTimeout => "upstream_error",
            ErrorKind::Unavailable => "service_unavailable",
        }
    }
}

/// Every machine-readable error code the gateway answers with (`error.code`), in one
/// place: clients and the audit log match on these strings, so they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    AdminApiOff,
    AuditUnavailable,
    BudgetExceeded,
    ChatTemplateError,
    ClientClosedRequest,
    ContextLengthExceeded,
    DataClassNotAllowed,
    EngineError,
    GatewayOverloaded,
    GuardProfileUnknown,
    InternalError,
    InvalidAdminToken,
    InvalidApiKey,
    InvalidDataClass,
    InvalidJson,
    InvalidKeySpec,
    InvalidPassport,
    InvalidRequest,
    InvalidScanRequest,
    InvalidValue,
    KeyDatabaseError,
    KeyNotFound,
    MethodNotAllowed,
    MissingApiKey,
    MissingField,
    ModelLoading,
    ModelNotAllowed,
    ModelNotFound,
    PassportBudgetSpent,
    PassportDenied,
    PassportExpired,
    PassportRevoked,
    PiiDetected,
    PolicyDenied,
    PolicyUnknown,
    PromptInjectionDetected,
    QueueFull,
    RateLimitExceeded,
    RequestTimeout,
    RequestTooLarge,
    SecretDetected,
    SystemPromptLeak,
    TokenRateLimitExceeded,
    UnknownRoute,
    UnsupportedMediaType,
    UnsupportedParameter,
    UpstreamCircuitOpen,
    UpstreamError,
    UpstreamInvalidAnswer,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamRejectedRequest,
    UpstreamTimeout,
    UpstreamUnavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AdminApiOff => "admin_api_off",
            ErrorCode::AuditUnavailable => "audit_unavailable",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::ChatTemplateError => "chat_template_error",
            ErrorCode::ClientClosedRequest => "client_closed_request",
            ErrorCode::ContextLengthExceeded => "context_length_exceeded",
            ErrorCode::DataClassNotAllowed => "data_class_not_allowed",
            ErrorCode::EngineError => "engine_error",
            ErrorCode::GatewayOverloaded => "gateway_overloaded",
            ErrorCode::GuardProfileUnknown => "guard_profile_unknown",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::InvalidAdminToken => "invalid_admin_token",
            ErrorCode::InvalidApiKey => "invalid_api_key",
            ErrorCode::InvalidPassport => "invalid_passport",
            ErrorCode::PassportBudgetSpent => "passport_budget_spent",
            ErrorCode::PassportDenied => "passport_denied",
            ErrorCode::PassportExpired => "passport_expired",
            ErrorCode::PassportRevoked => "passport_revoked",
            ErrorCode::InvalidDataClass => "invalid_data_class",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidKeySpec => "invalid_key_spec",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidScanRequest => "invalid_scan_request",
            ErrorCode::InvalidValue => "invalid_value",
            ErrorCode::KeyDatabaseError => "key_database_error",
            ErrorCode::KeyNotFound => "key_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::MissingApiKey => "missing_api_key",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::ModelLoading => "model_loading",
            ErrorCode::ModelNotAllowed => "model_not_allowed",
            ErrorCode::ModelNotFound => "model_not_found",
            ErrorCode::PiiDetected => "pii_detected",
            ErrorCode::PolicyDenied => "policy_denied",
            ErrorCode::PolicyUnknown => "policy_unknown",
            ErrorCode::PromptInjectionDetected => "prompt_injection_detected",
            ErrorCode::QueueFull => "queue_full",
            ErrorCode::RateLimitExceeded => "rate_limit_exceeded",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::RequestTooLarge => "request_too_large",
            ErrorCode::SecretDetected => "secret_detected",
            ErrorCode::SystemPromptLeak => "system_prompt_leak",
            ErrorCode::TokenRateLimitExceeded => "token_rate_limit_exceeded",
            ErrorCode::UnknownRoute => "unknown_route",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::UnsupportedParameter => "unsupported_parameter",
            ErrorCode::UpstreamCircuitOpen => "upstream_circuit_open",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::UpstreamInvalidAnswer => "upstream_invalid_answer",
            ErrorCode::UpstreamRateLimited => "upstream_rate_limited",
            ErrorCode::UpstreamRejected => "upstream_rejected",
            ErrorCode::UpstreamRejectedRequest => "upstream_rejected_request",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error for a client, with everything needed to render it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// The request field at fault, e.g. `messages` or `max_tokens`.
    pub param: Option<String>,
    /// A stable machine-readable code, e.g. `model_not_found`.
    pub code: Option<ErrorCode>,
    /// For 429 and 503: seconds after which a retry may succeed.
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after_secs: None,
        }
    }

    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError::new(ErrorKind::InvalidRequest, message)
            .with_param(param)
            .with_code(crate::ErrorCode::InvalidValue)
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError::new(
            ErrorKind::NotFound,
            format!(
                "The model `{model}` does not exist or you do not have access to it. \
                 GET /v1/models lists the models this gateway serves."
            ),
        )
        .with_param("model")
        .with_code(crate::ErrorCode::ModelNotFound)
    }

    #[must_use]
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    #[must_use]
    pub fn with_code(mut self, code: ErrorCode) -> Self {
        self.code = Some(code);
        self
    }

    #[must_use]
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// The OpenAI-shaped JSON body.
    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                r#type: self.kind.type_str(),
                param: self.param.as_deref(),
                code: self.code.map(ErrorCode::as_str),
            },
        }
    }

    /// The body serialised; infallible for these plain types.
    pub fn body_json(&self) -> String {
        serde_json::to_string(&self.body()).unwrap_or_else(|_| {
            r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#
                .to_owned()
        })
    }
}

#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail<'a> {
    pub message: &'a str,
    pub r#type: &'static str,
    pub param: Option<&'a str>,
    pub code: Option<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn body_is_openai_shaped() {
        let e = ApiError::model_not_found("gpt-9");
        assert_eq!(e.status(), 404);
        expect![[r#"{"error":{"message":"The model `gpt-9` does not exist or you do not have access to it. GET /v1/models lists the models this gateway serves.","type":"invalid_request_error","param":"model","code":"model_not_found"}}"#]]
            .assert_eq(&e.body_json());
    }
}
