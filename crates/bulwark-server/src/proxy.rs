//! Requests passed through to an OpenAI-compatible upstream.
//!
//! The body is forwarded as the client sent it, with `model` rewritten to the upstream's
//! name. A successful response is streamed back chunk by chunk as it arrives (never
//! buffered). Upstream failures become OpenAI-shaped 502/504 errors; the upstream's own
//! 4xx answers about the request (400, 422, 429) are passed through unchanged.

use axum::body::Body;
use axum::response::Response;
use bulwark_api::{ApiError, ErrorKind};
use bulwark_upstream::{read_to_limit, Endpoint};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, StatusCode};
use serde_json::Value;

use crate::error::Error;
use crate::state::UpstreamRoute;

/// How much of an upstream's error body is read to build our error.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

pub async fn forward(
    route: &UpstreamRoute,
    endpoint: Endpoint,
    mut body: Value,
) -> Result<Response, Error> {
    if let Some(obj) = body.as_object_mut() {
        obj.insert("model".into(), Value::String(route.upstream_model.clone()));
    }
    let upstream = route.upstream.name().to_owned();
    let resp = route.upstream.send(endpoint, &body).await?;
    let status = resp.status;

    if (200..300).contains(&status) {
        let is_sse = resp
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("text/event-stream"));
        // A mid-stream failure cannot change the status any more: in an SSE stream it
        // becomes a final `error` event; otherwise the connection is cut so the client
        // sees a truncated body rather than a silently short one.
        let mut failed = false;
        let stream = resp.body.scan((), move |_, item| {
            let out = match item {
                _ if failed => None,
                Ok(bytes) => Some(Ok::<Bytes, std::io::Error>(bytes)),
                Err(e) => {
                    failed = true;
                    tracing::warn!(error = %e, "upstream stream failed");
                    if is_sse {
                        let err = Error::from(e).0;
                        Some(Ok(Bytes::from(format!("data: {}\n\n", err.body_json()))))
                    } else {
                        Some(Err(std::io::Error::other(e.to_string())))
                    }
                }
            };
            std::future::ready(out)
        });
        let mut out = Response::new(Body::from_stream(stream));
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
    let upstream_message = serde_json::from_slice::<Value>(&raw)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&raw[..raw.len().min(512)]).into_owned());

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
            .with_code("upstream_rejected"),
        )),
        400..=499 => {
            // About the request itself: pass the upstream's answer through.
            let mut out = Response::new(Body::from(raw));
            *out.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            let ct = resp
                .content_type
                .unwrap_or_else(|| "application/json".into());
            if let Ok(v) = HeaderValue::from_str(&ct) {
                out.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            if let Some(v) = resp
                .retry_after
                .and_then(|r| HeaderValue::from_str(&r).ok())
            {
                out.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Ok(out)
        }
        _ => Err(Error(
            ApiError::new(
                ErrorKind::BadGateway,
                format!("Upstream `{upstream}` failed with {status}: {upstream_message}"),
            )
            .with_code("upstream_error"),
        )),
    }
}
