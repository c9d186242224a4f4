//! Routing: which model serves a request, as the sovereignty policy allows.
//!
//! A request made with an API key may use only the key's models, may not exceed the
//! key's maximum class, is judged by the key's policy if it has one, and is counted
//! against its limits before anything else happens (401 was decided earlier, by
//! [`crate::auth`]; 403 and 429 here). A request's data class is the highest of the
//! default (the key's, else the server's) and the `x-bulwark-data-class` header. Its model names a route (an ordered list of candidate
//! models) or one model. [`bulwark_policy::decide`] says which candidates the class may
//! reach; only those are tried, in order, falling back to the next when one is loading,
//! busy, unreachable, times out or fails with a 5xx (always before any byte has been sent
//! to the client). Nothing here sends a request anywhere the decision does not allow.
//!
//! Every answer, success or error, carries `x-bulwark-route`, which names the target and
//! the verdict on every candidate.

use axum::response::{IntoResponse, Response};
use bulwark_api::chat::ChatRequest;
use bulwark_api::completions::CompletionRequest;
use bulwark_api::embeddings::EmbeddingsRequest;
use bulwark_api::{ApiError, ErrorKind};
use bulwark_keys::{now_ms, Limited};
use bulwark_policy::{decide, Candidate, DataClass, Policy};
use bulwark_upstream::Endpoint;
use futures_util::future::{select, Either};
use http::{HeaderMap, HeaderValue};

use crate::auth::Caller;
use crate::error::Error;
use crate::extract::JsonObject;
use crate::state::{AppState, Target};
use crate::usage::{Meter, Tokens};
use crate::{cache, guard, local, proxy};

pub const ROUTE_HEADER: &str = "x-bulwark-route";
pub const CLASS_HEADER: &str = "x-bulwark-data-class";

/// Where a request went and why, as one typed value: rendered once into
/// `x-bulwark-route` for the client, and read as it is by the receipt and the audit
/// record (which used to parse the header back). Travels in the answer's extensions.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteReport {
    /// The target that answered: a model, `cache` for a hit, `None` when none did
    /// (refused by policy, or every allowed candidate failed).
    pub target: Option<String>,
    pub class: DataClass,
    /// The policy decision's explanation: the class, then each candidate's verdict.
    pub explain: String,
    /// A second candidate was raced against the first (hedging).
    pub hedged: bool,
    /// Candidates that failed before the answer, `name(status)`.
    pub failed: Vec<String>,
}

impl RouteReport {
    /// The `x-bulwark-route` text: `target=NAME; class=...; a=allowed; b=denied (...)`,
    /// then `; hedged`, `; fallback_from=...` or, with no target, `; failed=...`.
    pub fn render(&self) -> String {
        let mut s = format!(
            "target={}; {}",
            self.target.as_deref().unwrap_or("none"),
            self.explain
        );
        if self.hedged {
            s.push_str("; hedged");
        }
        if !self.failed.is_empty() {
            let what = if self.target.is_some() {
                "fallback_from"
            } else {
                "failed"
            };
            s.push_str(&format!("; {what}={}", self.failed.join(",")));
        }
        s
    }
}

/// The protocol a client speaks: answers are produced in the chat form and rendered in
/// it.
#[derive(Clone, Debug, PartialEq)]
pub enum Protocol {
    /// OpenAI chat or text completions: the chat form itself.
    OpenAi,
    /// The Anthropic Messages API ([`crate::anthropic`]).
    Anthropic,
    /// The OpenAI Responses API ([`crate::responses`]), with the client's request,
    /// whose settings a response object echoes.
    Responses(std::sync::Arc<serde_json::Value>),
}

impl Protocol {
    async fn render(self, resp: Response, model: &str) -> Response {
        match self {
            Protocol::OpenAi => resp,
            Protocol::Anthropic => crate::anthropic::render(resp, model).await,
            Protocol::Responses(request) => crate::responses::render(resp, &request, model).await,
        }
    }
}

/// A validated request of one of the completion endpoints.
pub enum Parsed {
    Chat(ChatRequest),
    Completion(CompletionRequest),
    Embeddings(EmbeddingsRequest),
}

impl Parsed {
    /// (cache kind, deterministic, streamed, usage chunk wanted); embeddings are not
    /// cached (`kind` is `None`).
    fn cache_facts(&self) -> (Option<bulwark_cache::Kind>, bool, bool, bool) {
        let (kind, deterministic, stream, usage) = match self {
            Parsed::Embeddings(_) => return (None, false, false, false),
            Parsed::Chat(r) => (
                bulwark_cache::Kind::Chat,
                r.sampling.is_deterministic(),
                r.stream,
                r.include_usage,
            ),
            Parsed::Completion(r) => (
                bulwark_cache::Kind::Completion,
                r.sampling.is_deterministic(),
                r.stream,
                r.include_usage,
            ),
        };
        (Some(kind), deterministic, stream, usage)
    }

    /// Asks the target for the usage chunk of a stream.
    fn want_usage(&mut self) {
        match self {
            Parsed::Chat(r) => r.include_usage = true,
            Parsed::Completion(r) => r.include_usage = true,
            Parsed::Embeddings(_) => {}
        }
    }

    fn endpoint(&self) -> Endpoint {
        match self {
            Parsed::Chat(_) => Endpoint::ChatCompletions,
            Parsed::Completion(_) => Endpoint::Completions,
            Parsed::Embeddings(_) => Endpoint::Embeddings,
        }
    }
}

/// The request's data class: the default, raised (never lowered) by the header. Every
/// `x-bulwark-data-class` header counts, and every comma-separated value in one: the
/// highest wins (a proxy that appends a header cannot lower the class); any value that
/// is not a class is a 400.
pub fn request_class(headers: &HeaderMap, default: DataClass) -> Result<DataClass, ApiError> {
    let mut class = default;
    for value in headers.get_all(CLASS_HEADER) {
        let text = value.to_str().unwrap_or("\u{fffd}");
        for item in text.split(',') {
            let c: DataClass = item
                .trim()
                .parse()
                .map_err(|e: bulwark_policy::UnknownClass| {
                    ApiError::new(
                        ErrorKind::InvalidRequest,
                        format!("Header `{CLASS_HEADER}`: {e}."),
                    )
                    .with_code(bulwark_api::ErrorCode::InvalidDataClass)
                })?;
            class = class.max(c);
        }
    }
    Ok(class)
}

/// Worth trying the next candidate: the target could not serve, through no fault of the request.
fn retryable(e: &Error) -> bool {
    matches!(
        e.0.kind,
        ErrorKind::BadGateway | ErrorKind::GatewayTimeout | ErrorKind::Unavailable
    ) || e.0.code == Some(bulwark_api::ErrorCode::QueueFull)
}

/// A header value from text, non-printable characters replaced.
pub(crate) fn header_value(s: &str) -> HeaderValue {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    HeaderValue::from_str(&clean).unwrap_or_else(|_| HeaderValue::from_static("unavailable"))
}

/// A key may use only its models: the 403 to answer when this one may not use `model`.
pub(crate) fn model_refused(caller: &Caller, model: &str) -> Option<Response> {
    match &caller.0 {
        Some(k) if !k.allows_model(model) => Some(denied(
            bulwark_api::ErrorCode::ModelNotAllowed,
            format!("This key may not use the model `{model}`."),
        )),
        _ => None,
    }
}

fn denied(code: bulwark_api::ErrorCode, message: String) -> Response {
    Error(ApiError::new(ErrorKind::PermissionDenied, message).with_code(code)).into_response()
}

fn limited(l: Limited) -> Response {
    let (code, what) = match l {
        Limited::Requests { .. } => (
            bulwark_api::ErrorCode::RateLimitExceeded,
            "request rate limit (rpm)",
        ),
        Limited::Tokens { .. } => (
            bulwark_api::ErrorCode::TokenRateLimitExceeded,
            "token rate limit (tpm)",
        ),
        Limited::Budget { .. } => (
            bulwark_api::ErrorCode::BudgetExceeded,
            "token budget for this period",
        ),
    };
    let secs = l.retry_after_secs();
    Error(
        ApiError::new(
            ErrorKind::RateLimited,
            format!("This key has reached its {what}; retry in {secs} s."),
        )
        .with_code(code)
        .with_retry_after(secs),
    )
    .into_response()
}

/// Serves a validated request and records what happened in the audit log, when there is
/// one. With `sync` durability the answer is not sent before its record is on disk; if
/// the record cannot be written, the client gets a 503 instead of the answer.
pub async fn serve(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: JsonObject,
    parsed: Parsed,
    protocol: Protocol,
) -> Response {
    let model = body.model.clone();
    if state.audit.is_none() && state.receipts.is_none() {
        let resp = serve_inner(state, caller, headers, body, parsed).await;
        return protocol.render(resp, &model).await;
    }
    let started = std::time::Instant::now();
    let request_sha256 = state
        .receipts
        .as_ref()
        .map(|_| sha256_hex(&serde_json::to_vec(&body.value).unwrap_or_default()));
    let request_content =
        (state.audit.is_some() && state.audit_content).then(|| body.value.clone());
    let mut abandoned = Abandoned {
        pending: state.audit.clone().map(|audit| {
            let record = bulwark_audit::Record {
                target: "none".into(),
                status: CLIENT_CLOSED_REQUEST,
                error: Some(
                    bulwark_api::ErrorCode::ClientClosedRequest
                        .as_str()
                        .to_owned(),
                ),
                ..who_asked(caller, headers, &model)
            };
            (audit, record)
        }),
        started,
    };
    let resp = serve_inner(state, caller, headers, body, parsed).await;
    // In the client's protocol before the digest and the record are made.
    let resp = protocol.render(resp, &model).await;
    // From here the answer's own record is made.
    abandoned.pending = None;
    let tokens = resp
        .extensions()
        .get::<Tokens>()
        .cloned()
        .unwrap_or_default();
    let answered = Answered {
        state,
        caller,
        headers,
        model,
        started,
        request_sha256,
        tokens,
        request_content,
    };
    let mut resp = if crate::sse::is_event_stream(resp.headers()) {
        answered.stream(resp).await
    } else {
        answered.whole(resp).await
    };
    resp.extensions_mut().insert(Audited);
    resp
}

/// Serves a request of another protocol that its handler has translated into the chat
/// form (`chat`): validated as a chat request, then [`serve`]d, its answer rendered in
/// `protocol`.
pub async fn serve_as_chat(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    model: String,
    chat: Result<serde_json::Value, ApiError>,
    protocol: Protocol,
) -> Response {
    let parsed = match chat.and_then(|c| ChatRequest::from_json(&c).map(|p| (c, p))) {
        Ok(p) => p,
        Err(e) => return Error(e).into_response(),
    };
    let (value, parsed) = parsed;
    let body = JsonObject { value, model };
    serve(state, caller, headers, body, Parsed::Chat(parsed), protocol).await
}

/// Marks an answer whose request [`serve`] has recorded.
#[derive(Clone, Copy)]
struct Audited;

/// Route layer on `/v1/*`, outside the key check: records the requests that never
/// reached [`serve`] (no or bad key, body too large or not JSON, invalid fields, model
/// listing), so that the log holds one record per request.
pub async fn record_unrouted(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    record_unanswered(state, req, next, false).await
}

/// On `/mcp`: the record of a request the gateway's own layers refused before the MCP
/// gateway saw it (no key, an invalid or revoked key or passport, an expired passport,
/// the in-flight limit). The MCP gateway records each tool call itself; handshakes and
/// lists are not recorded.
pub async fn record_mcp_refusal(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    record_unanswered(state, req, next, true).await
}

/// A record for a request that reached no handler that records it; with
/// `refusals_only`, only for an answer that is one of the gateway's own errors.
async fn record_unanswered(
    state: AppState,
    req: axum::extract::Request,
    next: axum::middleware::Next,
    refusals_only: bool,
) -> Response {
    let Some(audit) = state.audit.clone() else {
        return next.run(req).await;
    };
    let started = std::time::Instant::now();
    // Cheap clones; the strings are made only for requests that get a record here.
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let id = req.headers().get("x-request-id").cloned();
    let client_id = req.headers().get(crate::CLIENT_REQUEST_ID).cloned();
    let resp = next.run(req).await;
    let refusal = resp.extensions().get::<crate::error::ErrorCode>().is_some();
    if resp.extensions().get::<Audited>().is_some() || (refusals_only && !refusal) {
        return resp;
    }
    let key = resp.extensions().get::<Caller>().and_then(|c| c.0.as_ref());
    let record = bulwark_audit::Record {
        time_ms: now_ms(),
        request_id: request_id(id.as_ref()),
        client_request_id: client_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        key_id: key.map(|k| k.id().to_owned()),
        tenant: key.map(|k| k.tenant().to_owned()),
        target: "none".into(),
        decision: format!("{method} {}", uri.path()),
        latency_ms: started.elapsed().as_millis() as u64,
        status: resp.status().as_u16(),
        error: resp
            .extensions()
            .get::<crate::error::ErrorCode>()
            .map(|c| c.0.to_owned()),
        ..Default::default()
    };
    match append(&audit, &record).await {
        Ok(()) => resp,
        Err(refused) => refused,
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(b))
}

/// A request that has its answer, on its way to the receipt and the audit log.
struct Answered<'a> {
    state: &'a AppState,
    caller: &'a Caller,
    headers: &'a HeaderMap,
    model: String,
    started: std::time::Instant,
    /// Present when receipts are signed.
    request_sha256: Option<String>,
    tokens: Tokens,
    /// The request body, when records carry content.
    request_content: Option<serde_json::Value>,
}

/// Most bytes of an answer a record carries.
const MAX_RECORDED_CONTENT: usize = 1 << 20;

fn recorded(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_RECORDED_CONTENT)]).into_owned()
}

impl Answered<'_> {
    /// A non-streamed answer is read once: its digest goes into the receipt and the
    /// record, its usage (counted by the meter as it passed) into the record.
    async fn whole(self, resp: Response) -> Response {
        let (mut parts, body) = resp.into_parts();
        let bytes = match axum::body::to_bytes(body, 64 << 20).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "answer body failed before it was recorded");
                let resp = Error(
                    ApiError::new(ErrorKind::BadGateway, "The answer could not be read.")
                        .with_code(bulwark_api::ErrorCode::UpstreamUnavailable),
                )
                .into_response();
                return Box::pin(self.whole(resp)).await;
            }
        };
        let digest = sha256_hex(&bytes);
        self.sign(&mut parts, Some(digest.clone()));
        if let Some(audit) = &self.state.audit {
            let mut r = self.record(&parts);
            r.response_sha256 = Some(digest);
            if self.request_content.is_some() {
                r.request = self.request_content.clone();
                r.response = Some(recorded(&bytes));
            }
            if !parts.status.is_success() {
                r.error = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
            }
            if let Err(refused) = append(audit, &r).await {
                return refused;
            }
        }
        Response::from_parts(parts, axum::body::Body::from(bytes))
    }

    /// A stream is recorded before its first byte leaves (`stream_start`) and again
    /// when it ends or the client leaves (`stream_end`, with tokens and the digest of
    /// every byte sent). A completed stream ends with an SSE comment carrying a receipt
    /// over those bytes; clients ignore comments.
    async fn stream(self, resp: Response) -> Response {
        use futures_util::StreamExt;
        let (mut parts, body) = resp.into_parts();
        self.sign(&mut parts, None);
        let start = match &self.state.audit {
            None => None,
            Some(audit) => {
                let mut r = self.record(&parts);
                r.event = bulwark_audit::Event::StreamStart;
                r.request = self.request_content.clone();
                if let Err(refused) = append(audit, &r).await {
                    return refused;
                }
                Some((std::sync::Arc::clone(audit), r))
            }
        };
        let failed = parts.extensions.get::<proxy::StreamFailed>().cloned();
        let tail = std::sync::Arc::new(std::sync::Mutex::new(StreamTail {
            hasher: sha2::Sha256::default(),
            content: self.request_content.is_some().then(Vec::new),
            start,
            tokens: self.tokens.clone(),
            started: self.started,
            receipt: self.state.receipts.clone().zip(self.claims(&parts, None)),
        }));
        let seen = std::sync::Arc::clone(&tail);
        let data = body.into_data_stream().map(move |chunk| {
            if let Ok(b) = &chunk {
                let mut t = crate::lock(&seen);
                sha2::Digest::update(&mut t.hasher, b);
                if let Some(c) = &mut t.content {
                    let room = MAX_RECORDED_CONTENT.saturating_sub(c.len());
                    c.extend_from_slice(&b[..b.len().min(room)]);
                }
            }
            chunk
        });
        let end = futures_util::stream::once(async move {
            // A stream the upstream cut off ended with an error event: not completed.
            let completed = !failed.as_ref().is_some_and(proxy::StreamFailed::is_set);
            let (pending, trailer) = crate::lock(&tail).finish(completed);
            if let Some((audit, record)) = pending {
                // A failed end record is logged; the stream itself was already sent.
                let _ = append(&audit, &record).await;
            }
            trailer.map(Ok::<_, axum::Error>)
        })
        .filter_map(|t| async move { t });
        parts.headers.remove(http::header::CONTENT_LENGTH);
        Response::from_parts(parts, axum::body::Body::from_stream(data.chain(end)))
    }

    fn claims(
        &self,
        parts: &http::response::Parts,
        response_sha256: Option<String>,
    ) -> Option<bulwark_audit::receipt::Claims> {
        let request_sha256 = self.request_sha256.clone()?;
        let report = parts.extensions.get::<RouteReport>();
        let route = report.map(RouteReport::render).unwrap_or_default();
        let target = report.and_then(|r| r.target.as_deref()).unwrap_or("");
        Some(bulwark_audit::receipt::Claims {
            v: 1,
            time_ms: now_ms(),
            request_id: request_id(self.headers.get("x-request-id")),
            request_sha256,
            response_sha256,
            model: self.model.clone(),
            model_sha256: self
                .state
                .models
                .local
                .get(target)
                .and_then(|m| m.config.sha256.clone()),
            route,
            status: parts.status.as_u16(),
            watermark: watermark(parts),
        })
    }

    /// Puts `x-bulwark-receipt` on the answer when receipts are on.
    fn sign(&self, parts: &mut http::response::Parts, response_sha256: Option<String>) {
        let Some(signer) = &self.state.receipts else {
            return;
        };
        let Some(claims) = self.claims(parts, response_sha256) else {
            return;
        };
        match signer.sign(&claims).map(|r| HeaderValue::from_str(&r)) {
            Ok(Ok(v)) => {
                parts.headers.insert("x-bulwark-receipt", v);
            }
            _ => tracing::error!("could not sign a receipt"),
        }
    }

    /// What the audit log keeps about the request, from the request and its answer's
    /// headers.
    fn record(&self, parts: &http::response::Parts) -> bulwark_audit::Record {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let report = parts.extensions.get::<RouteReport>();
        let decision = report.map(RouteReport::render).unwrap_or_default();
        let target = report
            .and_then(|r| r.target.clone())
            .unwrap_or_else(|| "none".into());
        let tokens = self.tokens.get();
        bulwark_audit::Record {
            jurisdiction: self
                .state
                .models
                .residency(&target)
                .and_then(|r| r.jurisdiction.clone()),
            target,
            class: report.map(|r| r.class.to_string()),
            decision,
            guard: header(guard::GUARD_HEADER),
            prompt_tokens: tokens.map(|t| t.0),
            completion_tokens: tokens.map(|t| t.1),
            latency_ms: self.started.elapsed().as_millis() as u64,
            status: parts.status.as_u16(),
            cache: header(cache::CACHE_HEADER),
            watermark: watermark(parts),
            ..who_asked(self.caller, self.headers, &self.model)
        }
    }
}

/// The watermark an answer carries, as its header discloses it.
fn watermark(parts: &http::response::Parts) -> Option<String> {
    parts
        .headers
        .get(crate::WATERMARK_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A record of who asked for what, now: the gateway's request id and the client's, the
/// key and its tenant, the model; the rest is filled in by what happened.
fn who_asked(caller: &Caller, headers: &HeaderMap, model: &str) -> bulwark_audit::Record {
    let key = caller.0.as_ref();
    bulwark_audit::Record {
        time_ms: now_ms(),
        request_id: request_id(headers.get("x-request-id")),
        client_request_id: headers
            .get(crate::CLIENT_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        key_id: key.map(|k| k.id().to_owned()),
        tenant: key.map(|k| k.tenant().to_owned()),
        model: model.to_owned(),
        passport: caller.passport_use(),
        ..Default::default()
    }
}

/// The status recorded for a request whose client left before its answer was ready
/// (nginx's "client closed request"); no client ever sees it.
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The record of a request whose client went away before the answer was ready (its
/// future was dropped, e.g. while an upstream dripped its answer): without it, such a
/// request would leave no trace in the log. Disarmed once the answer exists, which then
/// makes its own record.
struct Abandoned {
    pending: Option<(
        std::sync::Arc<bulwark_audit::AuditLog>,
        bulwark_audit::Record,
    )>,
    started: std::time::Instant,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some((audit, mut record)) = self.pending.take() {
            record.time_ms = now_ms();
            record.latency_ms = self.started.elapsed().as_millis() as u64;
            if let Err(e) = audit.append(&record) {
                tracing::error!(error = %e, "audit record for an abandoned request not written");
            }
        }
    }
}

/// The request id (`x-request-id`, set by the outermost layer) as text.
fn request_id(id: Option<&HeaderValue>) -> String {
    id.and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

/// The end of a stream: its `stream_end` record and its closing receipt.
struct StreamTail {
    hasher: sha2::Sha256,
    /// What was sent, when records carry content (up to the cap).
    content: Option<Vec<u8>>,
    /// The audit log and the stream's `stream_start` record; taken when the end is
    /// recorded.
    start: Option<(
        std::sync::Arc<bulwark_audit::AuditLog>,
        bulwark_audit::Record,
    )>,
    tokens: Tokens,
    started: std::time::Instant,
    receipt: Option<(
        std::sync::Arc<bulwark_audit::receipt::Signer>,
        bulwark_audit::receipt::Claims,
    )>,
}

type PendingRecord = (
    std::sync::Arc<bulwark_audit::AuditLog>,
    bulwark_audit::Record,
);

impl StreamTail {
    /// The `stream_end` record to write and, for a completed stream, the receipt comment.
    fn finish(&mut self, completed: bool) -> (Option<PendingRecord>, Option<bytes::Bytes>) {
        let digest = hex::encode(sha2::Digest::finalize_reset(&mut self.hasher));
        let pending = self.start.take().map(|(audit, mut r)| {
            let tokens = self.tokens.get();
            r.event = bulwark_audit::Event::StreamEnd;
            r.time_ms = now_ms();
            r.latency_ms = self.started.elapsed().as_millis() as u64;
            r.prompt_tokens = tokens.map(|t| t.0);
            r.completion_tokens = tokens.map(|t| t.1);
            r.response_sha256 = Some(digest.clone());
            r.completed = Some(completed);
            r.request = None;
            r.response = self.content.take().map(|c| recorded(&c));
            (audit, r)
        });
        let trailer = match self.receipt.take() {
            Some((signer, mut claims)) if completed => {
                claims.time_ms = now_ms();
                claims.response_sha256 = Some(digest);
                match signer.sign(&claims) {
                    Ok(r) => Some(bytes::Bytes::from(format!(": x-bulwark-receipt {r}\n\n"))),
                    Err(_) => {
                        tracing::error!("could not sign a stream's closing receipt");
                        None
                    }
                }
            }
            _ => None,
        };
        (pending, trailer)
    }
}

impl Drop for StreamTail {
    /// The client left (or the target failed) before the end: record that, without
    /// waiting for the disk (nobody is waiting for this answer any more).
    fn drop(&mut self) {
        if let (Some((audit, record)), _) = self.finish(false) {
            if let Err(e) = audit.append(&record) {
                tracing::error!(error = %e, "audit record for a cut stream not written");
            }
        }
    }
}

/// Appends a record; with `sync` durability waits until it is on disk. When the log
/// cannot take it, the answer is withheld: returns the 503 to send instead.
async fn append(
    audit: &bulwark_audit::AuditLog,
    record: &bulwark_audit::Record,
) -> Result<(), Response> {
    let unavailable = || {
        Error(
            ApiError::new(
                ErrorKind::Unavailable,
                "The audit log could not record this request, so its answer is withheld; see the gateway's log.",
            )
            .with_code(bulwark_api::ErrorCode::AuditUnavailable),
        )
        .into_response()
    };
    match audit.append(record) {
        Ok(None) => Ok(()),
        Ok(Some(ack)) => match ack.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "audit record not written");
                Err(unavailable())
            }
            Err(_) => Err(unavailable()),
        },
        Err(e) => {
            tracing::error!(error = %e, "audit log unavailable");
            Err(unavailable())
        }
    }
}

/// A request the guard blocked, answered as `[guard] refusal = "content_filter"` asks:
/// a 200 whose text says why, finished by the content filter (chat or text completion,
/// streamed when the request was), with `x-bulwark-guard: refused=CODE`. Nothing was
/// sent anywhere.
fn refused(parsed: &Parsed, model: &str, e: &ApiError) -> Response {
    use serde_json::json;
    let created = now_ms() / 1000;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let reason = e.message.as_str();
    let (chat, stream, usage) = match parsed {
        Parsed::Chat(r) => (true, r.stream, r.include_usage),
        Parsed::Completion(r) => (false, r.stream, r.include_usage),
        // An embedding has no text to say why in: the refusal stays an error.
        Parsed::Embeddings(_) => return Error(e.clone()).into_response(),
    };
    let zero = json!({"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0});
    let mut resp = if !stream {
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": reason}, "finish_reason": "content_filter", "logprobs": null})
        } else {
            json!({"index": 0, "text": reason, "finish_reason": "content_filter", "logprobs": null})
        };
        let object = if chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        axum::Json(
            json!({"id": id, "object": object, "created": created, "model": model,
            "choices": [choice], "usage": zero}),
        )
        .into_response()
    } else {
        let object = if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let chunk = |piece: Option<&str>, finish: Option<&str>| {
            let choice = if chat {
                json!({"index": 0, "delta": piece.map_or(json!({}), |p| json!({"role": "assistant", "content": p})), "finish_reason": finish, "logprobs": null})
            } else {
                json!({"index": 0, "text": piece.unwrap_or(""), "finish_reason": finish, "logprobs": null})
            };
            crate::sse::event(
                &json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]}),
            )
        };
        let mut frames = vec![
            chunk(Some(reason), None),
            chunk(None, Some("content_filter")),
        ];
        if usage {
            frames.push(crate::sse::event(
                &json!({"id": id, "object": object, "created": created,
                "model": model, "choices": [], "usage": zero}),
            ));
        }
        frames.push(bytes::Bytes::from_static(crate::sse::DONE));
        crate::sse::response(futures_util::stream::iter(
            frames.into_iter().map(Ok::<_, std::convert::Infallible>),
        ))
    };
    resp.headers_mut().insert(
        guard::GUARD_HEADER,
        header_value(&format!(
            "refused={}",
            e.code.map_or("guard", bulwark_api::ErrorCode::as_str)
        )),
    );
    resp
}

/// Serves a validated request through the first allowed candidate that can take it.
async fn serve_inner(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    mut body: JsonObject,
    mut parsed: Parsed,
) -> Response {
    let key = caller.0.as_ref();
    if let Some(refused) = model_refused(caller, &body.model) {
        return refused;
    }
    let default = key
        .and_then(|k| k.record.spec.default_class)
        .unwrap_or(state.models.default_class);
    let mut class = match request_class(headers, default) {
        Ok(c) => c,
        Err(e) => return Error(e).into_response(),
    };
    // A tool result from `/mcp` keeps its class when an agent sends it on.
    if let Some(c) = state
        .mcp
        .as_ref()
        .and_then(|m| m.classes.class_of(&body.value))
    {
        class = class.max(c);
    }
    // The guard reads every text before anything else looks at the content: it may
    // refuse the request, raise its class, or rewrite it (placeholders restored below).
    let mut vault = None;
    let mut known = std::sync::Arc::default();
    let mut guard_note = None;
    let mut canary = None;
    let guard_config = match state.models.guard_for(key.map(|k| &k.record.spec), &body.model) {
        Ok(c) => c,
        Err(name) => {
            return denied(
                bulwark_api::ErrorCode::GuardProfileUnknown,
                format!("The guard profile `{name}` this request is bound to is not configured; ask the gateway's operator."),
            )
        }
    };
    let guard = state.guard.as_ref().zip(guard_config);
    if let Some((g, cfg)) = guard {
        let heavy = g.runs_encoder(cfg);
        let (g, mut cfg) = (std::sync::Arc::clone(g), cfg.clone());
        // Text being embedded instructs no model: an injection in a document being
        // indexed is flagged (x-bulwark-guard), not refused, so that whole corpora can
        // be embedded. Personal data and secrets are handled as configured.
        if matches!(parsed, Parsed::Embeddings(_))
            && cfg.injection == bulwark_config::GuardAction::Block
        {
            cfg.injection = bulwark_config::GuardAction::Flag;
        }
        let mut value = std::mem::take(&mut body.value);
        // The placeholders this key was shown in MCP tool results stand for their
        // values in this request and its answer too.
        let seed = state
            .mcp
            .as_ref()
            .and_then(|m| m.pseudonyms.vault(key.map_or("", |k| k.id())));
        let Some((value, screened)) = crate::guard::off_workers(heavy, move || {
            let r = g.screen(&mut value, &cfg, seed);
            (value, r)
        })
        .await
        else {
            return Error(ApiError::new(
                ErrorKind::Internal,
                "The guard could not screen this request; it was not sent anywhere.",
            ))
            .into_response();
        };
        body.value = value;
        match screened {
            Err(e) => {
                tracing::warn!(model = %body.model, code = e.code.map_or("", bulwark_api::ErrorCode::as_str), "request blocked by the guard");
                if guard.is_some_and(|(_, c)| c.refusal == bulwark_config::Refusal::ContentFilter) {
                    return refused(&parsed, &body.model, &e);
                }
                return Error(e).into_response();
            }
            Ok(s) => {
                if let Some(c) = s.class {
                    class = class.max(c);
                }
                if s.changed {
                    let reparsed = match &parsed {
                        Parsed::Chat(_) => ChatRequest::from_json(&body.value).map(Parsed::Chat),
                        Parsed::Completion(_) => {
                            CompletionRequest::from_json(&body.value).map(Parsed::Completion)
                        }
                        Parsed::Embeddings(_) => {
                            EmbeddingsRequest::from_json(&body.value).map(Parsed::Embeddings)
                        }
                    };
                    match reparsed {
                        Ok(p) => parsed = p,
                        Err(e) => return Error(e).into_response(),
                    }
                }
                vault = s.vault;
                known = s.known;
                guard_note = s.header;
                canary = s.canary;
            }
        }
    }
    if let Some(p) = &caller.1 {
        let asked = bulwark_passport::Request::Model(&body.model, class);
        if let Err(e) = p.authorize(&asked, std::time::SystemTime::now()) {
            let code = match e {
                bulwark_passport::PassportError::Expired => bulwark_api::ErrorCode::PassportExpired,
                bulwark_passport::PassportError::BudgetSpent => {
                    return Error(
                        ApiError::new(
                            ErrorKind::RateLimited,
                            "This passport's token budget is spent; ask its issuer for a new one.",
                        )
                        .with_code(bulwark_api::ErrorCode::PassportBudgetSpent),
                    )
                    .into_response()
                }
                _ => bulwark_api::ErrorCode::PassportDenied,
            };
            return denied(code, e.to_string());
        }
    }
    let mut policy = &state.models.policy;
    if let Some(k) = key {
        if class > k.max_class() {
            return denied(
                bulwark_api::ErrorCode::DataClassNotAllowed,
                format!(
                    "This key may send data up to `{}`; this request is `{class}`.",
                    k.max_class()
                ),
            );
        }
        if let Some(name) = &k.record.spec.policy {
            match state.models.policies.get(name) {
                Some(p) => policy = p,
                None => {
                    tracing::error!(key_id = %k.id(), policy = %name, "key names a policy the config lacks");
                    return denied(
                bulwark_api::ErrorCode::PolicyUnknown,
                        format!("This key's policy `{name}` is not configured on this gateway; nothing is sent until it is."),
                    );
                }
            }
        }
        if let Err(l) = state.keys.admit(k, &body.model, now_ms()) {
            return limited(l);
        }
    }
    // The cache is consulted after the class is known (it is part of the key) and
    // before anything is sent anywhere.
    // A key that asks for watermarked answers never gets an unmarked one from the
    // cache (and marked answers are never stored: see `cache::ResponseCache`).
    let key_asks_watermark = key.is_some_and(|k| k.record.spec.watermark);
    let (kind, deterministic, stream, include_usage) = parsed.cache_facts();
    let tenant = key.map_or(cache::DEFAULT_TENANT, |k| k.tenant());
    let cached = state
        .cache
        .as_ref()
        .filter(|c| c.cacheable(deterministic) && !key_asks_watermark)
        .and_then(|c| {
            kind.map(|kind| {
                (
                    c,
                    bulwark_cache::key(tenant, class.as_str(), kind, &body.value),
                    kind,
                )
            })
        });
    if let Some((cache, key, _)) = &cached {
        if let Some(answer) = cache.get(key) {
            let mut resp = cache::replay(&answer, stream, include_usage);
            if let Some((_, cfg)) = guard {
                resp = guard::finish(resp, vault, cfg.output, canary, known).await;
            }
            if let Some(note) = &guard_note {
                resp.headers_mut()
                    .insert(guard::GUARD_HEADER, header_value(note));
            }
            let h = resp.headers_mut();
            h.insert(cache::CACHE_HEADER, HeaderValue::from_static("hit"));
            let report = RouteReport {
                target: Some("cache".into()),
                class,
                explain: format!("class={class}"),
                hedged: false,
                failed: Vec::new(),
            };
            h.insert(ROUTE_HEADER, header_value(&report.render()));
            resp.extensions_mut().insert(report);
            return resp;
        }
    }
    // Tokens are counted for a key that pays and for the audit log: a stream must then
    // carry its usage chunk.
    let meter = (key.is_some() || state.audit.is_some()).then(|| Meter {
        payer: key.map(|k| (std::sync::Arc::clone(&state.keys), std::sync::Arc::clone(k))),
        passport: caller.1.clone(),
        model: body.model.clone(),
        strip_usage_chunk: stream && !include_usage,
        seen: Default::default(),
    });
    if meter.is_some() && stream && !include_usage {
        parsed.want_usage();
        if let Some(obj) = body.value.as_object_mut() {
            let opts = obj
                .entry("stream_options")
                .or_insert_with(|| serde_json::json!({}));
            match opts.as_object_mut() {
                Some(o) => {
                    o.insert("include_usage".into(), true.into());
                }
                None => *opts = serde_json::json!({"include_usage": true}),
            }
        }
    }
    let (result, route) = dispatch(state, policy, class, body, parsed, key_asks_watermark).await;
    let mut resp = match (result, &cached) {
        (Ok(resp), Some((cache, key, kind))) => {
            let mut resp = cache.store_when_complete(resp, *key, *kind);
            resp.headers_mut()
                .insert(cache::CACHE_HEADER, HeaderValue::from_static("miss"));
            resp
        }
        (Ok(resp), None) => resp,
        (Err(e), _) => e.into_response(),
    };
    // Cached answers keep their placeholders; the originals go back in on the way out.
    if let Some((_, cfg)) = guard {
        resp = guard::finish(resp, vault, cfg.output, canary, known).await;
    }
    if let Some(meter) = meter {
        resp = meter.account(resp);
    }
    if let Some(note) = &guard_note {
        resp.headers_mut()
            .insert(guard::GUARD_HEADER, header_value(note));
    }
    if cached.is_none() && state.cache.is_some() {
        resp.headers_mut()
            .insert(cache::CACHE_HEADER, HeaderValue::from_static("bypass"));
    }
    if let Some(report) = route {
        resp.headers_mut()
            .insert(ROUTE_HEADER, header_value(&report.render()));
        resp.extensions_mut().insert(report);
    }
    resp
}

async fn dispatch(
    state: &AppState,
    policy: &Policy,
    class: DataClass,
    body: JsonObject,
    parsed: Parsed,
    key_asks_watermark: bool,
) -> (Result<Response, Error>, Option<RouteReport>) {
    let models = &state.models;
    let names = match models.candidates(&body.model) {
        Ok(n) => n,
        Err(e) => return (Err(Error(e)), None),
    };
    let candidates: Vec<Candidate<'_>> = names
        .iter()
        .filter_map(|n| {
            models.residency(n).map(|r| Candidate {
                name: n,
                residency: r,
            })
        })
        .collect();
    let decision = decide(class, &candidates, policy);
    let explain = decision.explain();
    if decision.is_denied() {
        tracing::warn!(model = %body.model, decision = %explain, "request refused by policy");
        let err = ApiError::new(
            ErrorKind::PermissionDenied,
            format!(
                "No target may receive this {class} request for `{}`: {explain}.",
                body.model
            ),
        )
        .with_code(bulwark_api::ErrorCode::PolicyDenied);
        let report = RouteReport {
            target: None,
            class,
            explain,
            hedged: false,
            failed: Vec::new(),
        };
        return (Err(Error(err)), Some(report));
    }

    let endpoint = parsed.endpoint();
    let allowed: Vec<&str> = decision.allowed().collect();
    let hedge_after = models.routes.get(&body.model).and_then(|r| r.hedge_after);
    let mut outcome = Outcome {
        failed: Vec::new(),
        last_error: None,
        hedged: false,
        class,
    };

    let mut rest: &[&str] = &allowed;
    if let (Some(delay), [first, second, ..]) = (hedge_after, allowed.as_slice()) {
        // Hedged: the first candidate alone for `delay`, then the second one too; the
        // first success wins and the other future is dropped, which cancels its request.
        rest = &allowed[2..];
        let a = Box::pin(attempt(
            state,
            first,
            &parsed,
            endpoint,
            &body.value,
            key_asks_watermark,
        ));
        match select(a, Box::pin(tokio::time::sleep(delay))).await {
            Either::Left((res, _)) => {
                if let Some(done) = outcome.settle(first, res) {
                    return outcome.finish(done, first, &explain);
                }
                rest = &allowed[1..];
            }
            Either::Right(((), a)) => {
                outcome.hedged = true;
                let b = Box::pin(attempt(
                    state,
                    second,
                    &parsed,
                    endpoint,
                    &body.value,
                    key_asks_watermark,
                ));
                let (won, res, other_name, other) = match select(a, b).await {
                    Either::Left((res, b)) => (*first, res, *second, b),
                    Either::Right((res, a)) => (*second, res, *first, a),
                };
                if let Some(done) = outcome.settle(won, res) {
                    return outcome.finish(done, won, &explain);
                }
                if let Some(done) = outcome.settle(other_name, other.await) {
                    return outcome.finish(done, other_name, &explain);
                }
            }
        }
    }
    for name in rest {
        if let Some(done) = outcome.settle(
            name,
            attempt(
                state,
                name,
                &parsed,
                endpoint,
                &body.value,
                key_asks_watermark,
            )
            .await,
        ) {
            return outcome.finish(done, name, &explain);
        }
    }
    let route = RouteReport {
        target: None,
        class,
        explain,
        hedged: outcome.hedged,
        failed: outcome.failed,
    };
    let err = outcome.last_error.unwrap_or_else(|| {
        Error(
            ApiError::new(ErrorKind::Internal, "No candidate was tried.")
                .with_code(bulwark_api::ErrorCode::InternalError),
        )
    });
    (Err(err), Some(route))
}

/// One try of one candidate.
async fn attempt(
    state: &AppState,
    name: &str,
    parsed: &Parsed,
    endpoint: Endpoint,
    body: &serde_json::Value,
    key_asks_watermark: bool,
) -> Result<Response, Error> {
    let mark = || state.watermark_for(name, key_asks_watermark);
    match state.models.resolve(name) {
        Err(e) => Err(Error(e)),
        Ok(Target::Local(engine)) => match parsed {
            Parsed::Chat(req) => {
                let mut req = req.clone();
                req.model = name.to_owned();
                local::chat(engine, req, mark()).await
            }
            Parsed::Completion(req) => {
                let mut req = req.clone();
                req.model = name.to_owned();
                local::completion(engine, req, mark()).await
            }
            Parsed::Embeddings(_) => Err(wrong_kind(name, "a chat model; it serves no embeddings")),
        },
        Ok(Target::Embedder(embedder)) => match parsed {
            Parsed::Embeddings(req) => crate::embeddings::local(embedder, req, name).await,
            _ => Err(wrong_kind(
                name,
                "an embedding model; send it to /v1/embeddings",
            )),
        },
        Ok(Target::Upstream(route)) => proxy::forward(route, endpoint, body.clone()).await,
    }
}

/// A request sent to a model of the wrong kind: a 400 naming both.
fn wrong_kind(model: &str, what: &str) -> Error {
    Error(
        ApiError::new(ErrorKind::InvalidRequest, format!("`{model}` is {what}."))
            .with_param("model")
            .with_code(bulwark_api::ErrorCode::InvalidValue),
    )
}

/// What happened to the candidates tried so far.
struct Outcome {
    failed: Vec<String>,
    last_error: Option<Error>,
    hedged: bool,
    class: DataClass,
}

impl Outcome {
    /// Keeps a retryable failure and says to go on; anything else is the answer.
    fn settle(
        &mut self,
        name: &str,
        res: Result<Response, Error>,
    ) -> Option<Result<Response, Error>> {
        match res {
            Err(e) if retryable(&e) => {
                tracing::warn!(target = name, error = %e.0, "target failed; trying the next allowed one");
                self.failed.push(format!("{name}({})", e.0.status()));
                self.last_error = Some(e);
                None
            }
            done => Some(done),
        }
    }

    fn finish(
        self,
        done: Result<Response, Error>,
        name: &str,
        explain: &str,
    ) -> (Result<Response, Error>, Option<RouteReport>) {
        let report = RouteReport {
            target: Some(name.to_owned()),
            class: self.class,
            explain: explain.to_owned(),
            hedged: self.hedged,
            failed: self.failed,
        };
        tracing::debug!(route = %report.render(), "routed");
        (done, Some(report))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_raises_but_never_lowers_the_class() {
        let mut h = HeaderMap::new();
        assert_eq!(
            request_class(&h, DataClass::Internal),
            Ok(DataClass::Internal)
        );
        h.insert(CLASS_HEADER, HeaderValue::from_static("secret"));
        assert_eq!(
            request_class(&h, DataClass::Internal),
            Ok(DataClass::Secret)
        );
        h.insert(CLASS_HEADER, HeaderValue::from_static("public"));
        assert_eq!(
            request_class(&h, DataClass::Internal),
            Ok(DataClass::Internal)
        );
        h.insert(CLASS_HEADER, HeaderValue::from_static("top-secret"));
        assert_eq!(
            request_class(&h, DataClass::Public).map_err(|e| e.code),
            Err(Some(bulwark_api::ErrorCode::InvalidDataClass))
        );
    }

    #[test]
    fn the_route_report_renders_the_header() {
        let mut r = RouteReport {
            target: Some("eu".into()),
            class: DataClass::Confidential,
            explain: "class=confidential; eu=allowed; us=denied (foreign)".into(),
            hedged: true,
            failed: vec!["fr(502)".into()],
        };
        assert_eq!(
            r.render(),
            "target=eu; class=confidential; eu=allowed; us=denied (foreign); hedged; fallback_from=fr(502)"
        );
        r.target = None;
        r.hedged = false;
        assert_eq!(
            r.render(),
            "target=none; class=confidential; eu=allowed; us=denied (foreign); failed=fr(502)"
        );
    }

    #[test]
    fn several_data_class_headers_give_the_highest() {
        let mut h = HeaderMap::new();
        h.append(CLASS_HEADER, HeaderValue::from_static("public"));
        h.append(CLASS_HEADER, HeaderValue::from_static("secret"));
        assert_eq!(request_class(&h, DataClass::Public), Ok(DataClass::Secret));
        let mut h = HeaderMap::new();
        h.append(
            CLASS_HEADER,
            HeaderValue::from_static("public, confidential"),
        );
        assert_eq!(
            request_class(&h, DataClass::Public),
            Ok(DataClass::Confidential)
        );
        h.append(CLASS_HEADER, HeaderValue::from_static("nonsense"));
        assert_eq!(
            request_class(&h, DataClass::Public).map_err(|e| e.code),
            Err(Some(bulwark_api::ErrorCode::InvalidDataClass))
        );
    }
}
