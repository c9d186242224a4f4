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
use http::{header, HeaderMap, HeaderValue};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::Error;
use crate::extract::JsonObject;
use crate::route::{self, Protocol};
use crate::state::{AppState, Target};

/// `POST /v1/messages`.
pub async fn messages(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: JsonObject,
) -> Response {
    let chat = anthropic::to_chat(&body.value);
    route::serve_as_chat(
        &state,
        &caller,
        &headers,
        body.model,
        chat,
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
    crate::translate::render(resp, StreamTranslator::new(model), |chat| {
        anthropic::message_from_chat(chat, model)
    })
    .await
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
