//! Requests passed through to an OpenAI-compatible upstream.
//!
//! The body is forwarded as the client sent it, with `model` rewritten to the upstream's
//! name. A successful response is streamed back chunk by chunk as it arrives (never
//! buffered). Upstream failures become OpenAI-shaped 502/504 errors, and its own 4xx
//! answers about the request become ours (400, 429 with its `Retry-After`): an upstream
//! body is never relayed as it came, and the message quoted from it has credentials
//! redacted.

use axum::body::Body;
use axum::response::Response;
use bulwark_api::{ApiError, ErrorKind};
use bulwark_config::UpstreamKind;
use bulwark_upstream::{read_to_limit, Endpoint};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, StatusCode};
use serde_json::Value;

use crate::error::Error;
use crate::state::UpstreamRoute;

/// How much of an upstream's error body is read to build our error.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Set when an answer's body ended in a failure (the upstream cut it off): the audit
/// record then says the answer did not complete. Travels in the response's extensions.
#[derive(Clone, Default)]
pub struct StreamFailed(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl StreamFailed {
    pub fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub async fn forward(
    route: &UpstreamRoute,
    endpoint: Endpoint,
    mut body: Value,
) -> Result<Response, Error> {
    if let Some(obj) = body.as_object_mut() {
        obj.insert("model".into(), Value::String(route.upstream_model.clone()));
    }
    if route.upstream.kind() == UpstreamKind::Anthropic {
        return crate::anthropic_upstream::forward(route, endpoint, &body).await;
    }
    send(route, endpoint, &body).await
}

/// Sends `body` as it is and passes the answer back (translated by nobody).
pub(crate) async fn send(
    route: &UpstreamRoute,
    endpoint: Endpoint,
    body: &Value,
) -> Result<Response, Error> {
    let upstream = route.upstream.name().to_owned();
    let resp = route.upstream.send(endpoint, body).await?;
    let status = resp.status;

    if (200..300).contains(&status) {
        let is_sse = resp
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/event-stream"));
        // A mid-stream failure cannot change the status any more: in an SSE stream it
        // becomes a final `error` event, on a line of its own (only whole events are
        // forwarded, so a half-sent one is dropped rather than glued to it); otherwise
        // the connection is cut so the client sees a truncated body rather than a
        // silently short one. Either way the answer is marked failed for the audit log.
        let failed_flag = StreamFailed::default();
        let flag = failed_flag.clone();
        let mut framer = is_sse.then(|| crate::sse::Framer::new(crate::sse::MAX_EVENT));
        let mut failed = false;
        let stream = resp
            .body
            .map(Some)
            .chain(futures_util::stream::once(async { None }))
            .scan((), move |_, item| {
                let out = match item {
                    _ if failed => None,
                    Some(Ok(bytes)) => match &mut framer {
                        None => Some(Ok::<Bytes, std::io::Error>(bytes)),
                        Some(f) => {
                            let mut pieces = Vec::new();
                            f.push(&bytes, &mut pieces);
                            let mut out = Vec::new();
                            for p in pieces {
                                match p {
                                    crate::sse::Piece::Event(b) | crate::sse::Piece::Raw(b) => {
                                        out.extend_from_slice(&b)
                                    }
                                }
                            }
                            Some(Ok(Bytes::from(out)))
                        }
                    },
                    Some(Err(e)) => {
                        failed = true;
                        flag.set();
                        tracing::warn!(error = %e, "upstream stream failed");
                        if let Some(f) = &mut framer {
                            if let Some(partial) = f.finish() {
                                tracing::warn!(
                                    bytes = partial.len(),
                                    "a half-sent event was dropped"
                                );
                            }
                            let err = Error::from(e).0;
                            Some(Ok(Bytes::from(format!("data: {}\n\n", err.body_json()))))
                        } else {
                            Some(Err(std::io::Error::other(e.to_string())))
                        }
                    }
                    None => Some(Ok(framer
                        .as_mut()
                        .and_then(crate::sse::Framer::finish)
                        .unwrap_or_default())),
                };
                std::future::ready(out)
            })
            .filter(|b| std::future::ready(!matches!(b, Ok(b) if b.is_empty())));
        let mut out = Response::new(Body::from_stream(stream));
        out.extensions_mut().insert(failed_flag);
        *out.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        let ct = resp
            .content_type
            .unwrap_or_else(|| "application/json".into());
        if let Ok(v) = HeaderValue::from_str(&ct) {
            out.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        if is_sse {
            out.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            out.headers_mut()
                .insert("x-accel-buffering", HeaderValue::from_static("no"));
        } else if let Some(len) = resp.content_length {
            // Still streamed as it arrives, but length-framed rather than chunked; if the
            // upstream then sends fewer bytes, hyper closes the connection.
            out.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        return Ok(out);
    }

    let raw = read_to_limit(resp.body, ERROR_BODY_LIMIT)
        .await
        .unwrap_or_default();
    let upstream_message = upstream_message(&raw);

    match status {
        // About the gateway's own credentials or configuration, not the client's request.
        401 | 403 | 404 => Err(Error(
            ApiError::new(
                ErrorKind::BadGateway,
                format!(
                    "Upstream `{upstream}` refused the request with {status}: {upstream_message}. \
                     Check its api_key_env and model mapping in the gateway's config."
                ),
            )
            .with_code(bulwark_api::ErrorCode::UpstreamRejected),
        )),
        429 => {
            let mut e = ApiError::new(
                ErrorKind::RateLimited,
                format!("Upstream `{upstream}` is rate limiting: {upstream_message}"),
            )
            .with_code(bulwark_api::ErrorCode::UpstreamRateLimited);
            if let Some(secs) = resp
                .retry_after
                .as_deref()
                .and_then(|r| r.trim().parse::<u64>().ok())
            {
                e = e.with_retry_after(secs);
            }
            Err(Error(e))
        }
        // About the request itself: the upstream's reason, in our own error (its body is
        // never relayed as it came: it may echo what it was sent, credentials included).
        400..=499 => Err(Error(
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "Upstream `{upstream}` refused the request with {status}: {upstream_message}"
                ),
            )
            .with_code(bulwark_api::ErrorCode::UpstreamRejectedRequest),
        )),
        _ => Err(Error(
            ApiError::new(
                ErrorKind::BadGateway,
                format!("Upstream `{upstream}` failed with {status}: {upstream_message}"),
            )
            .with_code(bulwark_api::ErrorCode::UpstreamError),
        )),
    }
}

/// Longest part of an upstream's error message quoted in ours.
const MAX_QUOTED: usize = 300;

/// The upstream's own error message, made safe to show a client and to log: its
/// `error.message` (else the start of the body), credentials redacted (this gateway's
/// upstream key is already masked where the body is read), control characters dropped,
/// cut to [`MAX_QUOTED`] characters.
fn upstream_message(raw: &[u8]) -> String {
    let text = serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.pointer("/error"))
                .or_else(|| v.pointer("/message"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&raw[..raw.len().min(4096)]).into_owned());
    let (text, _) =
        bulwark_guard::output::redact_secrets("", &text, true, &std::collections::HashSet::new());
    let text = bearer_re().replace_all(&text, "$1[REDACTED]");
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_QUOTED)
        .collect();
    if text.chars().count() > MAX_QUOTED {
        out.push('…');
    }
    if out.trim().is_empty() {
        "(no message)".into()
    } else {
        out
    }
}

/// A credential after an authentication scheme (`Bearer xyz`, `Basic abc=`), whatever
/// its shape.
fn bearer_re() -> &'static regex::Regex {
    static R: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    R.get_or_init(|| {
        regex::Regex::new(
            r"(?i)(\b(?:bearer|basic|token|x-api-key:?|api[_-]?key[=:])\s*)[^\s,;\x22']+",
        )
        .unwrap_or_else(|e| panic!("credential pattern: {e}"))
    })
}
