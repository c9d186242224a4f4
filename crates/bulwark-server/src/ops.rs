//! Operational endpoints: health, readiness, the model list and Prometheus metrics.

use std::fmt::Write as _;

use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bulwark_api::response::{ModelList, ModelObject};
use bulwark_api::ApiError;
use http::{header, StatusCode};
use serde_json::json;

use crate::auth::Caller;
use crate::error::Error;
use crate::state::{AppState, Models};

pub async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let models: serde_json::Map<String, serde_json::Value> = state
        .models
        .local
        .iter()
        .map(|(name, m)| {
            (
                name.clone(),
                json!(if m.engine.get().is_some() {
                    "ready"
                } else {
                    "loading"
                }),
            )
        })
        .collect();
    if state.models.ready() {
        Json(json!({ "status": "ready", "models": models })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "loading", "models": models })),
        )
            .into_response()
    }
}

fn model_objects(models: &Models) -> Vec<ModelObject> {
    let mut out: Vec<ModelObject> = models
        .local
        .iter()
        .map(|(name, m)| ModelObject {
            id: name.clone(),
            object: "model",
            created: models.created,
            owned_by: "bulwark".into(),
            served_by: "local".into(),
            verified: Some(m.config.sha256.is_some() && m.engine.get().is_some()),
            status: Some(if m.engine.get().is_some() {
                "ready"
            } else {
                "loading"
            }),
            verification: m.verification.get().copied(),
            watermark: Some(m.config.watermark),
            mode: Some("chat"),
        })
        .collect();
    out.extend(models.embedder.iter().map(|e| {
        let ready = e.embedder.get().is_some();
        ModelObject {
            id: e.config.name.clone(),
            object: "model",
            created: models.created,
            owned_by: "bulwark".into(),
            served_by: "local".into(),
            verified: Some(ready),
            status: Some(if ready { "ready" } else { "loading" }),
            verification: ready.then_some("pinned-digest"),
            watermark: None,
            mode: Some("embedding"),
        }
    }));
    out.extend(models.upstream.iter().map(|(name, r)| ModelObject {
        id: name.clone(),
        object: "model",
        created: models.created,
        owned_by: r.upstream.name().to_owned(),
        served_by: r.upstream.name().to_owned(),
        verified: None,
        status: None,
        verification: None,
        watermark: None,
        mode: None,
    }));
    out.extend(models.routes.keys().map(|name| ModelObject {
        id: name.clone(),
        object: "model",
        created: models.created,
        owned_by: "bulwark".into(),
        served_by: "route".into(),
        verified: None,
        status: None,
        verification: None,
        watermark: None,
        mode: None,
    }));
    out
}

/// The models a caller may use: all of them, or those its key allows.
fn visible(state: &AppState, caller: &Caller) -> Vec<ModelObject> {
    let mut all = model_objects(&state.models);
    if let Some(key) = &caller.0 {
        all.retain(|m| key.allows_model(&m.id));
    }
    all
}

pub async fn list_models(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Response {
    Json(ModelList {
        object: "list",
        data: visible(&state, &caller),
    })
    .into_response()
}

pub async fn get_model(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    visible(&state, &caller)
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| Json(m).into_response())
        .ok_or_else(|| Error(ApiError::model_not_found(&id)))
}

/// Prometheus text exposition of the engines' counters.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = String::new();
    /// (metric, type, help, value).
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&bulwark_engine::StatsSnapshot) -> f64,
    );
    let series: [Series; 11] = [
        (
            "bulwark_engine_decode_steps_total",
            "counter",
            "llama.cpp decode calls",
            |s| s.decode_steps as f64,
        ),
        (
            "bulwark_engine_shared_steps_total",
            "counter",
            "decode calls that carried two or more sequences",
            |s| s.shared_steps as f64,
        ),
        (
            "bulwark_engine_max_batch_sequences",
            "gauge",
            "most sequences seen in one decode call",
            |s| s.max_batch_sequences as f64,
        ),
        (
            "bulwark_engine_prompt_tokens_total",
            "counter",
            "prompt tokens evaluated",
            |s| s.prompt_tokens as f64,
        ),
        (
            "bulwark_engine_generated_tokens_total",
            "counter",
            "tokens generated",
            |s| s.generated_tokens as f64,
        ),
        (
            "bulwark_engine_requests_completed_total",
            "counter",
            "generations finished",
            |s| s.completed as f64,
        ),
        (
            "bulwark_engine_requests_cancelled_total",
            "counter",
            "generations dropped because the client went away",
            |s| s.cancelled as f64,
        ),
        (
            "bulwark_engine_requests_failed_total",
            "counter",
            "generations the engine failed",
            |s| s.failed as f64,
        ),
        (
            "bulwark_engine_requests_rejected_total",
            "counter",
            "requests refused with 429 because the queue was full",
            |s| s.rejected as f64,
        ),
        (
            "bulwark_engine_queued_requests",
            "gauge",
            "requests waiting for a sequence",
            |s| s.queued as f64,
        ),
        (
            "bulwark_engine_active_sequences",
            "gauge",
            "sequences in use",
            |s| s.active as f64,
        ),
    ];
    let snapshots: Vec<(&String, bulwark_engine::StatsSnapshot)> = state
        .models
        .local
        .iter()
        .filter_map(|(name, m)| m.engine.get().map(|e| (name, e.stats())))
        .collect();
    for (metric, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
        for (name, snap) in &snapshots {
            let _ = writeln!(
                out,
                "{metric}{{model=\"{}\"}} {}",
                name.replace(['"', '\\', '\n'], "_"),
                get(snap)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP bulwark_ready 1 when every local model is loaded\n# TYPE bulwark_ready gauge\nbulwark_ready {}",
        u8::from(state.models.ready())
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// `POST /v1/guard/scan` with `{"text": "..."}` or `{"text": ["...", ...]}`: the guard's
/// report on each text, whatever the gateway's own guard settings (it runs even when the
/// guard is off for requests).
pub async fn guard_scan(
    State(state): State<AppState>,
    crate::extract::JsonBody(v): crate::extract::JsonBody,
) -> Result<Response, Error> {
    let bad = |m: String| {
        Error(ApiError::invalid("text", m).with_code(bulwark_api::ErrorCode::InvalidScanRequest))
    };
    let texts: Vec<String> = match v.get("text") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("Every item of `text` must be a string.".into()))
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(bad(
                "Send `{\"text\": \"...\"}` or a list of strings.".into()
            ))
        }
    };
    let guard = state
        .guard
        .as_ref()
        .map_or_else(bulwark_guard::Guard::default, |g| g.for_scan().clone());
    let heavy = guard.encoder.is_some();
    let scan =
        move || -> Vec<bulwark_guard::Report> { texts.iter().map(|t| guard.scan(t)).collect() };
    let reports = crate::guard::off_workers(heavy, scan)
        .await
        .ok_or_else(|| {
            Error(ApiError::new(
                bulwark_api::ErrorKind::Internal,
                "The guard could not scan these texts.",
            ))
        })?;
    Ok(Json(json!({"object": "list", "data": reports})).into_response())
}

/// `[server] max_in_flight`: a `/v1` request beyond the limit gets 503
/// `gateway_overloaded` at once (with `Retry-After`), rather than queueing behind work
/// the gateway cannot finish in time. A slot is held until the answer's last byte, so a
/// stream counts for as long as it runs.
pub async fn limit_in_flight(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(slot) = std::sync::Arc::clone(&state.in_flight).try_acquire_owned() else {
        tracing::warn!(
            max_in_flight = state.max_in_flight,
            "request refused: the gateway is at its in-flight limit"
        );
        return Error(
            ApiError::new(
                bulwark_api::ErrorKind::Unavailable,
                format!(
                    "The gateway is serving as many requests as it is configured for ({}, [server] max_in_flight); retry in a moment.",
                    state.max_in_flight
                ),
            )
            .with_code(bulwark_api::ErrorCode::GatewayOverloaded)
            .with_retry_after(1),
        )
        .into_response();
    };
    let (parts, body) = next.run(req).await.into_parts();
    Response::from_parts(parts, axum::body::Body::new(Holding { body, _slot: slot }))
}

/// A body that keeps its in-flight slot until it is finished or dropped.
struct Holding {
    body: axum::body::Body,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl http_body::Body for Holding {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
