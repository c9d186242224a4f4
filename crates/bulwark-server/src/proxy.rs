//! Requests passed through to an OpenAI-compatible upstream.
//!
//! The body is forwarded as the client sent it, with `model` rewritten to the upstream's
//! name. A successful stream is passed back event by event as it arrives (never
//! buffered), each event checked to be well formed; a JSON answer is read whole (up to
//! 64 MiB) and passed on only if it is JSON. A compressed answer, which the gateway
//! never asks for, is refused. Upstream failures become OpenAI-shaped 502/504 errors, and its own 4xx
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

/// Largest JSON answer taken from an upstream (it is read whole and checked to be JSON).
const MAX_JSON_ANSWER: usize = 64 << 20;

/// An upstream answer that is not what its protocol promises: 502, and why.
fn invalid_answer(upstream: &str, why: &str) -> Error {
    tracing::warn!(upstream, why, "upstream answer refused");
    Error(
        ApiError::new(
            ErrorKind::BadGateway,
            format!("Upstream `{upstream}` {why}; the answer was not passed on."),
        )
        .with_code(bulwark_api::ErrorCode::UpstreamInvalidAnswer),
    )
}

/// The error event that ends a stream at a malformed event.
fn malformed_event() -> Bytes {
    let err = ApiError::new(
        ErrorKind::BadGateway,
        "The upstream sent a malformed event (or one over 1 MiB); the answer ends here.",
    )
    .with_code(bulwark_api::ErrorCode::UpstreamInvalidAnswer);
    Bytes::from(format!("data: {}\n\n", err.body_json()))
}

/// Whether an SSE event is one a chat or Messages stream may carry: comments, fields,
/// and `data:` lines that are JSON or `[DONE]`.
fn well_formed_event(event: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(event) else {
        return false;
    };
    text.lines().all(|line| match line.strip_prefix("data:") {
        None => true,
        Some(data) => {
            let data = data.trim();
            data == "[DONE]" || serde_json::from_str::<serde::de::IgnoredAny>(data).is_ok()
        }
    })
}

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
        if let Some(enc) = resp
            .content_encoding
            .as_deref()
            .filter(|e| !e.trim().eq_ignore_ascii_case("identity"))
        {
            return Err(invalid_answer(
                &upstream,
                &format!("sent a `{enc}`-encoded answer, which the gateway did not ask for"),
            ));
        }
        let is_sse = resp
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/event-stream"));
        if !is_sse {
            return whole_json(&upstream, status, resp).await;
        }
        // A mid-stream failure cannot change the status any more: it becomes a final
        // `error` event, on a line of its own (only whole events are forwarded, so a
        // half-sent one is dropped rather than glued to it), and the answer is marked
        // failed for the audit log. So does an event that is not well formed.
        let failed_flag = StreamFailed::default();
        let flag = failed_flag.clone();
        let mut framer = crate::sse::Framer::new(crate::sse::MAX_EVENT);
        let mut failed = false;
        let stream = resp
            .body
            .map(Some)
            .chain(futures_util::stream::once(async { None }))
            .scan((), move |_, item| {
                let out = match item {
                    _ if failed => None,
                    Some(Ok(bytes)) => {
                        let mut pieces = Vec::new();
                        framer.push(&bytes, &mut pieces);
                        let mut out = Vec::new();
                        for p in pieces {
                            // An event over the framer's limit (`Raw`) is refused like
                            // a malformed one: nothing downstream could screen it.
                            let (b, whole) = match p {
                                crate::sse::Piece::Event(b) => (b, true),
                                crate::sse::Piece::Raw(b) => (b, false),
                            };
                            if !whole || !well_formed_event(&b) {
                                // What follows a broken event cannot be trusted either.
                                failed = true;
                                flag.set();
                                tracing::warn!(
                                    bytes = b.len(),
                                    "malformed event from the upstream; stream ended"
                                );
                                out.extend_from_slice(&malformed_event());
                                break;
                            }
                            out.extend_from_slice(&b);
                        }
                        Some(Ok::<Bytes, std::io::Error>(Bytes::from(out)))
                    }
                    Some(Err(e)) => {
                        failed = true;
                        flag.set();
                        tracing::warn!(error = %e, "upstream stream failed");
                        if let Some(partial) = framer.finish() {
                            tracing::warn!(bytes = partial.len(), "a half-sent event was dropped");
                        }
                        let err = Error::from(e).0;
                        Some(Ok(Bytes::from(format!("data: {}\n\n", err.body_json()))))
                    }
                    None => match framer.finish() {
                        Some(rest) if !well_formed_event(&rest) => {
                            flag.set();
                            tracing::warn!(
                                bytes = rest.len(),
                                "malformed last event from the upstream"
                            );
                            Some(Ok(malformed_event()))
                        }
                        rest => Some(Ok(rest.unwrap_or_default())),
                    },
                };
                std::future::ready(out)
            })
            .filter(|b| std::future::ready(!matches!(b, Ok(b) if b.is_empty())));
        let mut out = Response::new(Body::from_stream(stream));
        out.extensions_mut().insert(failed_flag);
        *out.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        let ct = resp
            .content_type
            .unwrap_or_else(|| "text/event-stream".into());
        if let Ok(v) = HeaderValue::from_str(&ct) {
            out.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        out.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        out.headers_mut()
            .insert("x-accel-buffering", HeaderValue::from_static("no"));
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

/// A non-streamed answer: read whole (up to [`MAX_JSON_ANSWER`]), passed on only if it
/// is JSON, with its length.
async fn whole_json(
    upstream: &str,
    status: u16,
    resp: bulwark_upstream::UpstreamResponse,
) -> Result<Response, Error> {
    let ct = resp
        .content_type
        .clone()
        .unwrap_or_else(|| "application/json".into());
    let bytes = read_to_limit(resp.body, MAX_JSON_ANSWER + 1)
        .await
        .map_err(Error::from)?;
    if bytes.len() > MAX_JSON_ANSWER {
        return Err(invalid_answer(
            upstream,
            &format!("sent an answer over {} MiB", MAX_JSON_ANSWER >> 20),
        ));
    }
    if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
        return Err(invalid_answer(
            upstream,
            "sent an answer that is not valid JSON",
        ));
    }
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if let Ok(v) = HeaderValue::from_str(&ct) {
        out.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    out.extensions_mut().insert(StreamFailed::default());
    Ok(out)
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
