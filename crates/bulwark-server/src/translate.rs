//! Rendering a chat answer in another protocol (Anthropic Messages, OpenAI Responses):
//! a JSON answer read whole and converted once; a stream framed event by event, each
//! chat chunk handed to the protocol's [`StreamTranslate`], the gateway's own SSE comments
//! (receipt, guard notes) passed on as comments. Errors are left to each protocol's
//! error layer.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bulwark_api::{ApiError, ErrorKind, StreamTranslate};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, StatusCode};
use serde_json::Value;

use crate::error::Error;
use crate::sse::{Framer, Piece};

/// Largest non-streamed answer translated.
const MAX_ANSWER: usize = 64 << 20;

/// A successful chat answer in another protocol: a stream through `t`, a JSON answer
/// through `whole`.
pub(crate) async fn render<T: StreamTranslate>(
    resp: Response,
    mut t: T,
    whole: impl FnOnce(&Value) -> Value,
) -> Response {
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    if crate::sse::is_event_stream(&parts.headers) {
        let mut framer = Framer::new(crate::sse::MAX_EVENT);
        let events = body
            .into_data_stream()
            .map(Some)
            .chain(futures_util::stream::once(async { None }))
            .map(move |item| {
                let out = match item {
                    Some(Ok(bytes)) => {
                        let mut pieces = Vec::new();
                        framer.push(&bytes, &mut pieces);
                        let mut out = String::new();
                        for p in pieces {
                            let (Piece::Event(b) | Piece::Raw(b)) = p;
                            translate_event(&b, &mut t, &mut out);
                        }
                        out
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "answer stream failed");
                        t.error(ErrorKind::Internal, "The answer stream failed.")
                    }
                    None => {
                        let mut out = String::new();
                        if let Some(rest) = framer.finish() {
                            translate_event(&rest, &mut t, &mut out);
                        }
                        out.push_str(&t.finish());
                        out
                    }
                };
                Ok::<Bytes, axum::Error>(Bytes::from(out))
            })
            .filter(|b| std::future::ready(!matches!(b, Ok(b) if b.is_empty())));
        return Response::from_parts(parts, Body::from_stream(events));
    }
    let bytes = match axum::body::to_bytes(body, MAX_ANSWER).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "answer body failed while translating it");
            return Error(
                ApiError::new(ErrorKind::BadGateway, "The answer could not be read.")
                    .with_code(bulwark_api::ErrorCode::UpstreamUnavailable),
            )
            .into_response();
        }
    };
    let Ok(chat) = serde_json::from_slice::<Value>(&bytes) else {
        return Error(
            ApiError::new(
                ErrorKind::BadGateway,
                "The model's answer was not a chat completion.",
            )
            .with_code(bulwark_api::ErrorCode::UpstreamInvalidAnswer),
        )
        .into_response();
    };
    let out = serde_json::to_vec(&whole(&chat)).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(out))
}

/// One chat SSE event (or comment) into the protocol's events.
fn translate_event<T: StreamTranslate>(event: &[u8], t: &mut T, out: &mut String) {
    let text = String::from_utf8_lossy(event);
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix(':') {
            // The gateway's own trailers (receipt, guard notes) stay comments.
            out.push_str(&format!(":{comment}\n\n"));
            continue;
        }
        let Some(data) = line.strip_prefix("data:").map(str::trim_start) else {
            continue;
        };
        if data == "[DONE]" {
            out.push_str(&t.finish());
            continue;
        }
        match serde_json::from_str::<Value>(data) {
            Ok(v) if v.get("error").is_some() => {
                let message = v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("The answer stream failed.");
                let kind = match v.pointer("/error/type").and_then(Value::as_str) {
                    Some("invalid_request_error") => ErrorKind::InvalidRequest,
                    Some("rate_limit_error") => ErrorKind::RateLimited,
                    _ => ErrorKind::Internal,
                };
                out.push_str(&t.error(kind, message));
            }
            Ok(v) => out.push_str(&t.push(&v)),
            Err(_) => {}
        }
    }
}
