//! Chat requests served by an Anthropic-protocol upstream (`kind = "anthropic"`): the
//! chat form is sent as a Messages request ([`bulwark_api::to_anthropic`]) and the
//! answer, JSON or streamed, comes back in the chat form, so every stage after it
//! (guard, meter, cache, receipts, audit) and every client protocol's rendering work as
//! for any other upstream. Status mapping and stream failures are the proxy's.

use axum::body::Body;
use axum::response::Response;
use bulwark_api::to_anthropic::{self, ChatStream};
use bulwark_api::{ApiError, ErrorKind};
use bulwark_upstream::Endpoint;
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, StatusCode};
use serde_json::Value;

use crate::error::Error;
use crate::sse::{Framer, Piece};
use crate::state::UpstreamRoute;

/// Largest non-streamed answer read.
const MAX_ANSWER: usize = 64 << 20;

pub(crate) async fn forward(
    route: &UpstreamRoute,
    endpoint: Endpoint,
    chat: &Value,
) -> Result<Response, Error> {
    if endpoint != Endpoint::ChatCompletions {
        return Err(Error(
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "Model `{}` is served by an Anthropic-protocol upstream, which has no {}; use chat completions.",
                    route.upstream_model,
                    if endpoint == Endpoint::Embeddings { "embeddings" } else { "text completions" }
                ),
            )
            .with_param("model")
            .with_code(bulwark_api::ErrorCode::UnsupportedParameter),
        ));
    }
    if chat.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(Error(
            ApiError::new(
                ErrorKind::InvalidRequest,
                "`n` above 1 cannot be served by an Anthropic-protocol upstream, which writes one answer per request; send `n` requests.",
            )
            .with_param("n")
            .with_code(bulwark_api::ErrorCode::UnsupportedParameter),
        ));
    }
    let request = to_anthropic::request_from_chat(chat)?;
    let include_usage = chat
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let model = chat["model"].as_str().unwrap_or("").to_owned();
    let resp = crate::proxy::send(route, Endpoint::Messages, &request).await?;
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    if crate::sse::is_event_stream(&parts.headers) {
        let mut framer = Framer::new(crate::sse::MAX_EVENT);
        let mut t = ChatStream::new(&model, include_usage);
        let chunks = body
            .into_data_stream()
            .map(Some)
            .chain(futures_util::stream::once(async { None }))
            .map(move |item| {
                let mut out = String::new();
                match item {
                    Some(Ok(bytes)) => {
                        let mut pieces = Vec::new();
                        framer.push(&bytes, &mut pieces);
                        for p in pieces {
                            let (Piece::Event(b) | Piece::Raw(b)) = p;
                            translate(&b, &mut t, &mut out);
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        if let Some(rest) = framer.finish() {
                            translate(&rest, &mut t, &mut out);
                        }
                        out.push_str(&t.finish());
                    }
                }
                Ok(Bytes::from(out))
            })
            .filter(|b| std::future::ready(!matches!(b, Ok(b) if b.is_empty())));
        return Ok(Response::from_parts(parts, Body::from_stream(chunks)));
    }
    let bytes = axum::body::to_bytes(body, MAX_ANSWER).await.map_err(|e| {
        tracing::warn!(error = %e, "Anthropic upstream answer failed");
        Error(
            ApiError::new(
                ErrorKind::BadGateway,
                "The upstream's answer could not be read.",
            )
            .with_code(bulwark_api::ErrorCode::UpstreamUnavailable),
        )
    })?;
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(|m| m.get("type").and_then(Value::as_str) == Some("message"))
        .ok_or_else(|| {
            Error(
                ApiError::new(
                    ErrorKind::BadGateway,
                    "The upstream's answer was not an Anthropic message.",
                )
                .with_code(bulwark_api::ErrorCode::UpstreamInvalidAnswer),
            )
        })?;
    let out =
        serde_json::to_vec(&to_anthropic::chat_from_message(&message, &model)).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.status = StatusCode::OK;
    Ok(Response::from_parts(parts, Body::from(out)))
}

/// One Anthropic SSE event into chat chunks. The proxy's own error event (a stream the
/// upstream cut) is already in the chat form: it goes through as it is.
fn translate(event: &[u8], t: &mut ChatStream, out: &mut String) {
    let text = String::from_utf8_lossy(event);
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:").map(str::trim_start) else {
            continue;
        };
        match serde_json::from_str::<Value>(data) {
            Ok(v) if v.get("type").is_none() && v.get("error").is_some() => {
                out.push_str(&format!("data: {data}\n\n"));
                t.end();
            }
            Ok(v) => out.push_str(&t.push(&v)),
            Err(_) => {}
        }
    }
}
