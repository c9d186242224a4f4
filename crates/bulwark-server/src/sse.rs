//! Server-sent events framing for streamed completions.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures_util::Stream;
use http::{header, HeaderValue, StatusCode};

/// One `data:` event.
pub fn event(json: &impl serde::Serialize) -> Bytes {
    let mut out = b"data: ".to_vec();
    // Serialising plain structs cannot fail; an empty object is the safe fallback.
    if serde_json::to_writer(&mut out, json).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// Largest SSE event held while it arrives, where a stream is forwarded or translated
/// event by event; a longer one passes through unframed.
pub const MAX_EVENT: usize = 1 << 20;

/// Whether a response is an SSE stream.
pub fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"))
}

/// A streaming response with the headers SSE clients and proxies need.
pub fn response<S>(stream: S) -> Response
where
    S: Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
{
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell nginx-style proxies in front of us not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

pub use bulwark_api::sse::{data_json, Framer, Piece};
