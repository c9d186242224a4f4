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
use crate::usage::Meter;
use crate::{cache, guard, local, proxy};

pub const ROUTE_HEADER: &str = "x-bulwark-route";
pub const CLASS_HEADER: &str = "x-bulwark-data-class";

/// A validated request of one of the completion endpoints.
pub enum Parsed {
    Chat(ChatRequest),
    Completion(CompletionRequest),
}

impl Parsed {
    /// (cache kind, deterministic, streamed, usage chunk wanted).
    fn cache_facts(&self) -> (bulwark_cache::Kind, bool, bool, bool) {
        match self {
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
        }
    }

    /// Asks the target for the usage chunk of a stream.
    fn want_usage(&mut self) {
        match self {
            Parsed::Chat(r) => r.include_usage = true,
            Parsed::Completion(r) => r.include_usage = true,
        }
    }

    fn endpoint(&self) -> Endpoint {
        match self {
            Parsed::Chat(_) => Endpoint::ChatCompletions,
            Parsed::Completion(_) => Endpoint::Completions,
        }
    }
}

/// The request's data class: the default, raised (never lowered) by the header.
pub fn request_class(headers: &HeaderMap, default: DataClass) -> Result<DataClass, ApiError> {
    let Some(value) = headers.get(CLASS_HEADER) else {
        return Ok(default);
    };
    let class: DataClass =
        value
            .to_str()
            .unwrap_or("")
            .parse()
            .map_err(|e: bulwark_policy::UnknownClass| {
                ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!("Header `{CLASS_HEADER}`: {e}."),
                )
                .with_code("invalid_data_class")
            })?;
    Ok(class.max(default))
}

/// Worth trying the next candidate: the target could not serve, through no fault of the request.
fn retryable(e: &Error) -> bool {
    matches!(
        e.0.kind,
        ErrorKind::BadGateway | ErrorKind::GatewayTimeout | ErrorKind::Unavailable
    ) || e.0.code == Some("queue_full")
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

fn denied(code: &'static str, message: String) -> Response {
    Error(ApiError::new(ErrorKind::PermissionDenied, message).with_code(code)).into_response()
}

fn limited(l: Limited) -> Response {
    let (code, what) = match l {
        Limited::Requests { .. } => ("rate_limit_exceeded", "request rate limit (rpm)"),
        Limited::Tokens { .. } => ("token_rate_limit_exceeded", "token rate limit (tpm)"),
        Limited::Budget { .. } => ("budget_exceeded", "token budget for this period"),
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
) -> Response {
    if state.audit.is_none() && state.receipts.is_none() {
        return serve_inner(state, caller, headers, body, parsed).await;
    }
    let started = std::time::Instant::now();
    let model = body.model.clone();
    let request_digest = state
        .receipts
        .as_ref()
        .map(|_| sha256_hex(&serde_json::to_vec(&body.value).unwrap_or_default()));
    let mut resp = serve_inner(state, caller, headers, body, parsed).await;
    if let (Some(signer), Some(digest)) = (&state.receipts, request_digest) {
        resp = with_receipt(state, signer, headers, resp, &model, digest).await;
    }
    let Some(audit) = state.audit.clone() else {
        return resp;
    };
    let record = audit_record(state, caller, headers, &resp, model, started);
    let unavailable = || {
        Error(
            ApiError::new(
                ErrorKind::Unavailable,
                "The audit log could not record this request, so its answer is withheld; see the gateway's log.",
            )
            .with_code("audit_unavailable"),
        )
        .into_response()
    };
    match audit.append(&record) {
        Ok(None) => resp,
        Ok(Some(ack)) => match ack.await {
            Ok(Ok(())) => resp,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "audit record not written");
                unavailable()
            }
            Err(_) => unavailable(),
        },
        Err(e) => {
            tracing::error!(error = %e, "audit log unavailable");
            unavailable()
        }
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Signs a receipt for the answer. A non-streamed answer is read whole first so that its
/// digest is in the receipt; a stream's receipt leaves the response digest out.
async fn with_receipt(
    state: &AppState,
    signer: &bulwark_audit::receipt::Signer,
    headers: &HeaderMap,
    resp: Response,
    model: &str,
    request_sha256: String,
) -> Response {
    let streamed = crate::sse::is_event_stream(resp.headers());
    let (mut parts, body) = resp.into_parts();
    let (body, response_sha256) = if streamed {
        (body, None)
    } else {
        match axum::body::to_bytes(body, 64 << 20).await {
            Ok(b) => {
                let d = sha256_hex(&b);
                (axum::body::Body::from(b), Some(d))
            }
            Err(e) => {
                tracing::warn!(error = %e, "answer body failed before its receipt");
                return Error(
                    ApiError::new(ErrorKind::BadGateway, "The answer could not be read.")
                        .with_code("upstream_unavailable"),
                )
                .into_response();
            }
        }
    };
    let route = parts
        .headers
        .get(ROUTE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let target = route
        .split("; ")
        .find_map(|p| p.strip_prefix("target="))
        .unwrap_or("");
    let claims = bulwark_audit::receipt::Claims {
        v: 1,
        time_ms: now_ms(),
        request_id: headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        request_sha256,
        response_sha256,
        model: model.to_owned(),
        model_sha256: state
            .models
            .local
            .get(target)
            .and_then(|m| m.config.sha256.clone()),
        route,
        status: parts.status.as_u16(),
    };
    match signer.sign(&claims).map(|r| HeaderValue::from_str(&r)) {
        Ok(Ok(v)) => {
            parts.headers.insert("x-bulwark-receipt", v);
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        _ => tracing::error!("could not sign a receipt"),
    }
    Response::from_parts(parts, body)
}

/// What the audit log keeps about a request, from the request and its answer's headers.
fn audit_record(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    resp: &Response,
    model: String,
    started: std::time::Instant,
) -> bulwark_audit::Record {
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let decision = header(ROUTE_HEADER).unwrap_or_default();
    let field = |k: &str| {
        decision
            .split("; ")
            .find_map(|p| p.strip_prefix(k))
            .map(str::to_owned)
    };
    let target = field("target=").unwrap_or_else(|| "none".into());
    let key = caller.0.as_ref();
    bulwark_audit::Record {
        time_ms: now_ms(),
        request_id: headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        key_id: key.map(|k| k.id().to_owned()),
        tenant: key.map(|k| k.tenant().to_owned()),
        model,
        jurisdiction: state
            .models
            .residency(&target)
            .and_then(|r| r.jurisdiction.clone()),
        target,
        class: field("class="),
        decision,
        guard: header(guard::GUARD_HEADER),
        prompt_tokens: None,
        completion_tokens: None,
        latency_ms: started.elapsed().as_millis() as u64,
        status: resp.status().as_u16(),
        cache: header(cache::CACHE_HEADER),
    }
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
    if let Some(k) = key {
        if !k.allows_model(&body.model) {
            return denied(
                "model_not_allowed",
                format!("This key may not use the model `{}`.", body.model),
            );
        }
    }
    let default = key
        .and_then(|k| k.record.spec.default_class)
        .unwrap_or(state.models.default_class);
    let mut class = match request_class(headers, default) {
        Ok(c) => c,
        Err(e) => return Error(e).into_response(),
    };
    // The guard reads every text before anything else looks at the content: it may
    // refuse the request, raise its class, or rewrite it (placeholders restored below).
    let mut vault = None;
    let mut guard_note = None;
    let mut canary = None;
    if let Some(g) = &state.guard {
        match g.screen(&mut body.value) {
            Err(e) => {
                tracing::warn!(model = %body.model, code = e.code.unwrap_or(""), "request blocked by the guard");
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
                    };
                    match reparsed {
                        Ok(p) => parsed = p,
                        Err(e) => return Error(e).into_response(),
                    }
                }
                vault = s.vault;
                guard_note = s.header;
                canary = s.canary;
            }
        }
    }
    let mut policy = &state.models.policy;
    if let Some(k) = key {
        if class > k.max_class() {
            return denied(
                "data_class_not_allowed",
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
                        "policy_unknown",
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
    let (kind, deterministic, stream, include_usage) = parsed.cache_facts();
    let tenant = key.map_or(cache::DEFAULT_TENANT, |k| k.tenant());
    let cached = state
        .cache
        .as_ref()
        .filter(|c| c.cacheable(deterministic))
        .map(|c| {
            (
                c,
                bulwark_cache::key(tenant, class.as_str(), kind, &body.value),
            )
        });
    if let Some((cache, key)) = &cached {
        if let Some(answer) = cache.get(key) {
            let mut resp = cache::replay(&answer, stream, include_usage);
            if let Some(g) = &state.guard {
                resp = guard::finish(resp, vault, g.config.output, canary).await;
            }
            if let Some(note) = &guard_note {
                resp.headers_mut()
                    .insert(guard::GUARD_HEADER, header_value(note));
            }
            let h = resp.headers_mut();
            h.insert(cache::CACHE_HEADER, HeaderValue::from_static("hit"));
            h.insert(
                ROUTE_HEADER,
                header_value(&format!("target=cache; class={class}")),
            );
            return resp;
        }
    }
    // A keyed request's tokens are counted: a stream must then carry its usage chunk.
    let meter = key.map(|k| Meter {
        keys: std::sync::Arc::clone(&state.keys),
        key: std::sync::Arc::clone(k),
        model: body.model.clone(),
        strip_usage_chunk: stream && !include_usage,
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
    let (result, route) = dispatch(state, policy, class, body, parsed).await;
    let mut resp = match (result, &cached) {
        (Ok(resp), Some((cache, key))) => {
            let mut resp = cache.store_when_complete(resp, *key, kind);
            resp.headers_mut()
                .insert(cache::CACHE_HEADER, HeaderValue::from_static("miss"));
            resp
        }
        (Ok(resp), None) => resp,
        (Err(e), _) => e.into_response(),
    };
    // Cached answers keep their placeholders; the originals go back in on the way out.
    if let Some(g) = &state.guard {
        resp = guard::finish(resp, vault, g.config.output, canary).await;
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
    if let Some(route) = route {
        resp.headers_mut()
            .insert(ROUTE_HEADER, header_value(&route));
    }
    resp
}

async fn dispatch(
    state: &AppState,
    policy: &Policy,
    class: DataClass,
    body: JsonObject,
    parsed: Parsed,
) -> (Result<Response, Error>, Option<String>) {
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
        .with_code("policy_denied");
        return (Err(Error(err)), Some(format!("target=none; {explain}")));
    }

    let endpoint = parsed.endpoint();
    let allowed: Vec<&str> = decision.allowed().collect();
    let hedge_after = models.routes.get(&body.model).and_then(|r| r.hedge_after);
    let mut outcome = Outcome {
        failed: Vec::new(),
        last_error: None,
        hedged: false,
    };

    let mut rest: &[&str] = &allowed;
    if let (Some(delay), [first, second, ..]) = (hedge_after, allowed.as_slice()) {
        // Hedged: the first candidate alone for `delay`, then the second one too; the
        // first success wins and the other future is dropped, which cancels its request.
        rest = &allowed[2..];
        let a = Box::pin(attempt(state, first, &parsed, endpoint, &body.value));
        match select(a, Box::pin(tokio::time::sleep(delay))).await {
            Either::Left((res, _)) => {
                if let Some(done) = outcome.settle(first, res) {
                    return outcome.finish(done, first, &explain);
                }
                rest = &allowed[1..];
            }
            Either::Right(((), a)) => {
                outcome.hedged = true;
                let b = Box::pin(attempt(state, second, &parsed, endpoint, &body.value));
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
            attempt(state, name, &parsed, endpoint, &body.value).await,
        ) {
            return outcome.finish(done, name, &explain);
        }
    }
    let route = format!(
        "target=none; {explain}; failed={}",
        outcome.failed.join(",")
    );
    let err = outcome.last_error.unwrap_or_else(|| {
        Error(
            ApiError::new(ErrorKind::Internal, "No candidate was tried.")
                .with_code("internal_error"),
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
) -> Result<Response, Error> {
    match state.models.resolve(name) {
        Err(e) => Err(Error(e)),
        Ok(Target::Local(engine)) => match parsed {
            Parsed::Chat(req) => {
                let mut req = req.clone();
                req.model = name.to_owned();
                local::chat(engine, req).await
            }
            Parsed::Completion(req) => {
                let mut req = req.clone();
                req.model = name.to_owned();
                local::completion(engine, req).await
            }
        },
        Ok(Target::Upstream(route)) => proxy::forward(route, endpoint, body.clone()).await,
    }
}

/// What happened to the candidates tried so far.
struct Outcome {
    failed: Vec<String>,
    last_error: Option<Error>,
    hedged: bool,
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
    ) -> (Result<Response, Error>, Option<String>) {
        let mut route = format!("target={name}; {explain}");
        if self.hedged {
            route.push_str("; hedged");
        }
        if !self.failed.is_empty() {
            route.push_str(&format!("; fallback_from={}", self.failed.join(",")));
        }
        tracing::debug!(route = %route, "routed");
        (done, Some(route))
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
            Err(Some("invalid_data_class"))
        );
    }
}
