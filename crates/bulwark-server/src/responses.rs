//! `POST /v1/responses`: the OpenAI Responses API on the same pipeline as chat
//! completions. The request is translated into the chat form at the edge
//! ([`bulwark_api::responses::to_chat`]) and served by [`crate::route::serve`] (keys,
//! guard, policy, cache, routing, audit, receipts), which renders the answer as a
//! response object or the Responses event stream before the audit record and the
//! receipt are made. Errors keep OpenAI's shape, which this API shares.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use axum::Extension;
use bulwark_api::responses::{self, StreamTranslator};
use http::HeaderMap;
use serde_json::Value;

use crate::auth::Caller;
use crate::extract::JsonObject;
use crate::route::{self, Protocol};
use crate::state::AppState;

/// `POST /v1/responses`.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: JsonObject,
) -> Response {
    let chat = responses::to_chat(&body.value);
    let request = Arc::new(body.value);
    route::serve_as_chat(
        &state,
        &caller,
        &headers,
        body.model,
        chat,
        Protocol::Responses(request),
    )
    .await
}

/// A successful chat answer as a response object or the Responses event stream.
pub async fn render(resp: Response, request: &Value, model: &str) -> Response {
    crate::translate::render(resp, StreamTranslator::new(request, model), |chat| {
        responses::response_from_chat(chat, request, model)
    })
    .await
}
