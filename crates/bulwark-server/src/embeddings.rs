//! `POST /v1/embeddings`: validated here, then served by [`crate::route::serve`] like
//! every completion (keys, guard, policy, routing, audit): by the in-process embedding
//! model ([`local`]) or passed through to an upstream. Embeddings are never cached.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use bulwark_api::embeddings::{EmbeddingsRequest, Encoding, Input};
use bulwark_api::ApiError;
use bulwark_guard::encoder::Embedder;
use http::HeaderMap;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::Error;
use crate::extract::JsonObject;
use crate::route::{self, Parsed, Protocol};
use crate::state::AppState;

/// `POST /v1/embeddings`.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: JsonObject,
) -> Response {
    let parsed = match EmbeddingsRequest::from_json(&body.value) {
        Ok(p) => p,
        Err(e) => return Error(e).into_response(),
    };
    route::serve(
        &state,
        &caller,
        &headers,
        body,
        Parsed::Embeddings(parsed),
        Protocol::OpenAi,
    )
    .await
}

/// The in-process model's answer: every input embedded on a blocking thread (the
/// forward pass is CPU work), in order, as OpenAI writes them.
pub(crate) async fn local(
    embedder: Arc<Embedder>,
    req: &EmbeddingsRequest,
    name: &str,
) -> Result<Response, Error> {
    let dims = Embedder::DIMENSIONS as u32;
    if req.dimensions.is_some_and(|d| d != dims) {
        return Err(Error(ApiError::invalid(
            "dimensions",
            format!("`{name}` writes vectors of {dims} dimensions and cannot shorten them; omit `dimensions` or send {dims}."),
        )));
    }
    let vocabulary = embedder.vocabulary();
    if let Some((i, t)) = req
        .inputs
        .iter()
        .enumerate()
        .find_map(|(i, input)| match input {
            Input::Tokens(t) => t
                .iter()
                .find(|&&t| t as usize >= vocabulary)
                .map(|t| (i, *t)),
            Input::Text(_) => None,
        })
    {
        return Err(Error(ApiError::invalid(
            "input",
            format!("`input[{i}]` holds the token id {t}, outside `{name}`'s vocabulary of {vocabulary}."),
        )));
    }
    let inputs = req.inputs.clone();
    let vectors = tokio::task::spawn_blocking(move || {
        inputs
            .iter()
            .map(|input| match input {
                Input::Text(t) => embedder.embed(t),
                Input::Tokens(ids) => embedder.embed_ids(ids),
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| {
        Error(ApiError::new(
            bulwark_api::ErrorKind::Internal,
            format!("The embedding model failed: {e}"),
        ))
    })?;
    let tokens: usize = vectors.iter().map(|(_, n)| n + 2).sum();
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, (v, _))| {
            let embedding = match req.encoding {
                Encoding::Float => json!(v),
                Encoding::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response())
}
