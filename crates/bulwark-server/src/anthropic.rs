//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: the Anthropic Messages API
//! on the same pipeline as chat completions. The request is translated into the chat
//! form at the edge ([`bulwark_api::anthropic::to_chat`]) and served by
//! [`crate::route::serve`] (keys, guard, policy, cache, routing, audit, receipts), which
//! translates the answer back ([`render`]) before the audit record and the receipt are
//! made, so both cover the bytes the client receives. Errors anywhere on these routes
//! take Anthropic's shape ([`errors`]).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bulwark_api::anthropic::{self, StreamTranslator};
use bulwark_api::chat::ChatRequest;
use bulwark_api::{ApiError, ErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::Error;
use crate::extract::JsonObject;
use crate::route::{self, Parsed, Protocol};
use crate::sse::{Framer, Piece};
use crate::state::{AppState, Target};

/// Largest non-streamed answer translated.
const MAX_ANSWER: usize = 64 << 20;

/// `POST /v1/messages`.
pub async fn messages(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: JsonObject,
) -> Response {
    let chat = match anthropic::to_chat(&body.value) {
        Ok(c) => c,
        Err(e) => return Error(e).into_response(),
    };
    let parsed = match ChatRequest::from_json(&chat) {
        Ok(p) => p,
        Err(e) => return Error(e).into_response(),
    };
    let body = JsonObject {
        value: chat,
        model: body.model,
    };
    route::serve(
        &state,
        &caller,
        &headers,
        body,
        Parsed::Chat(parsed),
        Protocol::Anthropic,
    )
    .await
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as the local model counts them
/// (its chat template and tokenizer). An upstream's count is not known without asking
/// it, which this endpoint does not do: for an upstream model it answers an estimate
/// (about four bytes a token) and says so in `x-bulwark-token-count: estimated`.
pub async fn count_tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: JsonObject,
) -> Response {
    // `max_tokens` is not part of this endpoint's request.
    let mut value = body.value;
    if let Some(o) = value.as_object_mut() {
        o.entry("max_tokens").or_insert(json!(1));
    }
    let chat = match anthropic::to_chat(&value) {
        Ok(c) => c,
        Err(e) => return Error(e).into_response(),
    };
    if let Some(refused) = route::model_refused(&caller, &body.model) {
        return refused;
    }
    let first = match state.models.candidates(&body.model) {
        Ok(c) => c.first().map(|s| (*s).to_owned()),
        Err(e) => return Error(e).into_response(),
    };
    let local = first
        .as_deref()
        .and_then(|name| match state.models.resolve(name) {
            Ok(Target::Local(engine)) => Some(engine),
            _ => None,
        });
    match local {
        Some(engine) => {
            // Exact: the prompt the engine would decode, tools and all.
            let counted = bulwark_api::chat::ChatRequest::from_json(&chat)
                .map_err(Error)
                .and_then(|req| crate::plan::plan(&engine, &req))
                .and_then(|plan| engine.tokenize(&plan.prompt).map_err(Error::from));
            match counted {
                Ok(p) => Json(json!({"input_tokens": p.len()})).into_response(),
                Err(e) => e.into_response(),
            }
        }
        None => {
            let bytes: usize = chat["messages"].as_array().map_or(0, |m| {
                m.iter().map(|m| text_of(&m["content"]).len() + 4).sum()
            }) + chat.get("tools").map_or(0, |t| t.to_string().len());
            let mut resp = Json(json!({"input_tokens": bytes.div_ceil(4)})).into_response();
            resp.headers_mut().insert(
                "x-bulwark-token-count",
                HeaderValue::from_static("estimated"),
            );
            resp
        }
    }
}

/// The text of a chat message's content (a string or text parts).
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// A successful chat answer, JSON or streamed, as Anthropic's message or event sequence.
/// Errors are left to [`errors`].
pub async fn render(resp: Response, model: &str) -> Response {
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    if crate::sse::is_event_stream(&parts.headers) {
        let mut framer = Framer::new(crate::sse::MAX_EVENT);
        let mut t = StreamTranslator::new(model);
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
                        t.error("api_error", "The answer stream failed.")
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
    let out = serde_json::to_vec(&anthropic::message_from_chat(&chat, model)).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(out))
}

/// One chat SSE event (or comment) into Anthropic events.
fn translate_event(event: &[u8], t: &mut StreamTranslator, out: &mut String) {
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
                    Some("invalid_request_error") => "invalid_request_error",
                    Some("rate_limit_error") => "rate_limit_error",
                    _ => "api_error",
                };
                out.push_str(&t.error(kind, message));
            }
            Ok(v) => out.push_str(&t.push(&v)),
            Err(_) => {}
        }
    }
}

/// Route layer on the Anthropic routes: an error answered anywhere below (key check,
/// body checks, validation, guard, policy, limits, upstream) in the OpenAI shape is
/// given Anthropic's shape, `{"type":"error","error":{"type","message"}}`, same status.
pub async fn errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if resp.status().is_success() || crate::sse::is_event_stream(resp.headers()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let kind = anthropic::error_type_for_status(parts.status.as_u16());
    let out = serde_json::to_vec(&anthropic::error_body(kind, &message)).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(out))
}
