//! Bulwark's HTTP edge: the OpenAI-compatible API in front of local engines and upstreams.
//!
//! A request enters through the Tower stack assembled in [`router`], is parsed by
//! [`extract::JsonObject`] (415/413/400 decided there), validated into a typed request
//! by `bulwark-api`, routed by [`route`] (the sovereignty policy decides which candidate
//! models may receive it), and served by [`local`] (in-process engine) or [`proxy`]
//! (upstream). Every error leaves through
//! [`error::Error`], the only place that turns failures into HTTP responses.

pub mod anthropic;
mod anthropic_upstream;
pub mod auth;
pub mod cache;
mod embeddings;
pub mod error;
pub mod extract;
pub mod guard;
mod local;
pub mod mcp;
pub mod offline;
mod ops;
mod plan;
mod proxy;
mod responses;
pub mod route;
pub mod sse;
pub mod state;
mod tap;
pub mod tls;
mod translate;
mod usage;
pub mod watermark;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;
use bulwark_api::chat::ChatRequest;
use bulwark_api::completions::CompletionRequest;
use bulwark_api::{ApiError, ErrorKind};
use bulwark_config::Config;
use http::{HeaderMap, HeaderName};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::PropagateRequestIdLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use auth::Caller;
use error::Error;
use extract::JsonObject;
use route::{Parsed, Protocol};
use state::{AppState, Models};

/// Locks a mutex, taking it over if a holder panicked: what these locks guard (buffers,
/// framers, counters) stays usable between any two statements.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Upstream(#[from] bulwark_upstream::UpstreamError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    ModelLoad(String),
    #[error("audit log: {0}")]
    Audit(#[from] bulwark_audit::AuditError),
    #[error("{0}")]
    Tls(String),
    #[error("guard encoder: {0}; fetch it with scripts/fetch-model.sh, or set encoder = false in [guard] and its profiles to run the first stage alone")]
    Encoder(#[from] bulwark_guard::encoder::EncoderError),
    #[error("{0}")]
    Watermark(#[from] bulwark_engine::watermark::KeyError),
    #[error("passport key: {0}")]
    Passport(String),
    #[error("[server] offline = true, but {}; point them at addresses on this site or leave offline mode", .0.join("; "))]
    Offline(Vec<String>),
}

async fn chat_completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: JsonObject,
) -> Response {
    match ChatRequest::from_json(&body.value) {
        Ok(req) => {
            route::serve(
                &state,
                &caller,
                &headers,
                body,
                Parsed::Chat(req),
                Protocol::OpenAi,
            )
            .await
        }
        Err(e) => Error(e).into_response(),
    }
}

async fn completions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: JsonObject,
) -> Response {
    match CompletionRequest::from_json(&body.value) {
        Ok(req) => {
            route::serve(
                &state,
                &caller,
                &headers,
                body,
                Parsed::Completion(req),
                Protocol::OpenAi,
            )
            .await
        }
        Err(e) => Error(e).into_response(),
    }
}

async fn not_found(uri: http::Uri) -> Error {
    Error(
        ApiError::new(
            ErrorKind::NotFound,
            format!("No route for `{}`.", uri.path()),
        )
        .with_code(bulwark_api::ErrorCode::UnknownRoute),
    )
}

async fn method_not_allowed(method: http::Method, uri: http::Uri) -> Error {
    Error(
        ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!("`{method}` is not allowed on `{}`.", uri.path()),
        )
        .with_code(bulwark_api::ErrorCode::MethodNotAllowed),
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send>) -> Response {
    tracing::error!("a request handler panicked");
    axum::response::IntoResponse::into_response(Error(
        ApiError::new(
            ErrorKind::Internal,
            "Internal error; the request was not completed.",
        )
        .with_code(bulwark_api::ErrorCode::InternalError),
    ))
}

/// The layers of every `/v1` route: the API-key check (before any body is read), and
/// outside it the audit record of requests refused before routing.
fn v1_layers(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    routes
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ops::limit_in_flight,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            route::record_unrouted,
        ))
}

/// The whole HTTP application.
///
/// Layers, outermost first: request id (set, then propagated to the response), trace,
/// panic-to-500, and on `/v1/*` the audit record of requests refused before routing,
/// the in-flight limit, then the API-key check (before any body is read). Handlers
/// then extract, validate, resolve and serve.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let api = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/responses", post(responses::create))
        .route("/v1/embeddings", post(embeddings::create))
        .route("/v1/models", get(ops::list_models))
        .route("/v1/models/{id}", get(ops::get_model))
        .route("/v1/guard/scan", post(ops::guard_scan))
        .route("/v1/watermark/detect", post(watermark::detect));
    // The Anthropic Messages API: the same layers, and its own error shape outermost.
    let messages = Router::new()
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens));
    let api = v1_layers(api, &state);
    let messages =
        v1_layers(messages, &state).route_layer(axum::middleware::from_fn(anthropic::errors));
    let mcp = mcp::routes(&state).unwrap_or_default();
    Router::new()
        .merge(api)
        .merge(messages)
        .merge(mcp)
        .route("/admin/keys", get(auth::list_keys).post(auth::create_key))
        .route(
            "/admin/keys/{id}",
            get(auth::show_key).delete(auth::revoke_key),
        )
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(CatchPanicLayer::custom(panic_response))
        // Failures are logged where they happen, with context (engine, upstream); the
        // trace layer's own "response failed" would also fire for every 503 from /readyz.
        .layer(
            TraceLayer::new_for_http()
                // Every log line of a request carries its id (the one `x-request-id`
                // answers with), its method and its path.
                .make_span_with(|req: &http::Request<axum::body::Body>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path())
                })
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(axum::middleware::map_request(assign_request_id))
}

/// Serves until `shutdown` resolves. `ready` is called once everything that can refuse
/// to start has opened (config, audit log, receipts, guard), just before connections are
/// served. Local models load in the background after that (`/readyz` turns 200 when they
/// are ready); a model that fails to verify or load stops the server with that error.
pub async fn serve(
    config: Config,
    keys: Arc<bulwark_keys::Keys>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> Result<(), ServeError> {
    if config.server.offline {
        let problems = offline::problems(&config);
        if !problems.is_empty() {
            return Err(ServeError::Offline(problems));
        }
        tracing::info!("offline: every upstream is on a local address");
    }
    let models = Arc::new(Models::from_config(&config)?);
    let audit = match &config.audit {
        None => {
            tracing::info!("no audit log (set [audit] public_key to record every request)");
            None
        }
        Some(a) => {
            let pk: bulwark_audit::PublicKey = bulwark_audit::read_key(&a.public_key)?;
            let dir = if a.dir.is_relative() {
                config.server.data_dir.join(&a.dir)
            } else {
                a.dir.clone()
            };
            let log = bulwark_audit::AuditLog::open(
                bulwark_audit::Options {
                    dir: dir.clone(),
                    durability: a.batch.map_or(
                        bulwark_audit::Durability::Sync,
                        bulwark_audit::Durability::Batch,
                    ),
                    segment_max_bytes: a.segment_max_bytes,
                    segment_max_age: a.segment_max_age,
                },
                pk,
            )?;
            tracing::info!(dir = %dir.display(), "audit log open");
            Some(Arc::new(log))
        }
    };
    let receipts = match &config.receipts {
        None => None,
        Some(path) => {
            let sk: bulwark_audit::receipt::SigningKey = bulwark_audit::read_key(path)?;
            tracing::info!("answers carry signed receipts (x-bulwark-receipt)");
            Some(Arc::new(bulwark_audit::receipt::Signer::new(&sk)?))
        }
    };
    let guard = guard::EdgeGuard::for_config(&config)?.map(Arc::new);
    log_guard(&config);
    // Made on first start, kept in the data directory, never logged.
    let watermark = if config.local_models.is_empty() {
        None
    } else {
        let key = bulwark_engine::watermark::WatermarkKey::load_or_create(
            &config.server.data_dir.join(WATERMARK_KEY_FILE),
        )?;
        let marked: Vec<&str> = config
            .local_models
            .iter()
            .filter(|m| m.watermark)
            .map(|m| m.name.as_str())
            .collect();
        if !marked.is_empty() {
            tracing::info!(models = ?marked, key_id = key.id(), scheme = bulwark_engine::watermark::SCHEME, "answers of these models are watermarked");
        }
        Some(key)
    };
    // Made on first start, kept in the data directory, never logged.
    let passports = {
        let authority = bulwark_passport::Authority::load_or_create(
            &config.server.data_dir.join(bulwark_passport::KEY_FILE),
        )
        .map_err(|e| ServeError::Passport(e.to_string()))?;
        Arc::new(
            bulwark_passport::Verifier::new(
                authority.public(),
                bulwark_passport::Revocations::in_dir(&config.server.data_dir),
            )
            .with_spending(bulwark_passport::Spending::in_dir(&config.server.data_dir)),
        )
    };
    let spending = Arc::clone(&passports.spending);
    let mcp_edge = config.mcp.clone().map(|m| {
        let anonymous_tools = m.anonymous_tools.clone();
        let names: Vec<&str> = m.servers.iter().map(|s| s.name.as_str()).collect();
        tracing::info!(servers = ?names, roots = m.files.len(), "MCP gateway on /mcp");
        let gateway = bulwark_mcp::Gateway::new(
            m,
            &config.server.data_dir,
            guard.as_ref().map(|g| g.for_scan().clone()),
            config
                .guard
                .as_ref()
                .map(|g| bulwark_mcp::Actions {
                    pii: g.pii,
                    secrets: g.secrets,
                })
                .unwrap_or_default(),
            audit.clone(),
        );
        let classes = Arc::clone(&gateway.classes);
        let pseudonyms = Arc::clone(&gateway.pseudonyms);
        let (service, stop) = bulwark_mcp::http_service(
            Arc::new(gateway),
            config.server.listen.ip().is_loopback(),
            config.server.max_body_bytes,
        );
        (
            mcp::McpEdge {
                service,
                anonymous_tools,
                classes,
                pseudonyms,
            },
            stop,
        )
    });
    let state = AppState::new(state::Shared {
        max_body_bytes: config.server.max_body_bytes,
        body_read_timeout: config.server.body_read_timeout,
        models: Arc::clone(&models),
        cache: config
            .cache
            .clone()
            .map(|c| Arc::new(cache::ResponseCache::new(c))),
        keys: Arc::clone(&keys),
        admin_token: config
            .keys
            .admin_token
            .as_ref()
            .map(|t| auth::hash_admin_token(secrecy::ExposeSecret::expose_secret(t))),
        guard,
        audit: audit.clone(),
        audit_content: config.audit.as_ref().is_some_and(|a| a.record_content),
        receipts,
        watermark,
        in_flight: Arc::new(tokio::sync::Semaphore::new(config.server.max_in_flight)),
        max_in_flight: config.server.max_in_flight,
        mcp: mcp_edge.as_ref().map(|(edge, _)| edge.clone()),
        passports,
    });
    // Open `GET /mcp` streams end when shutdown begins, so that connections can drain.
    let mcp_stop = mcp_edge.map(|(_, stop)| stop);
    let shutdown = async move {
        shutdown.await;
        if let Some(stop) = mcp_stop {
            stop.stop();
        }
    };
    // Everything that can refuse to start (the audit log, keys, the guard) has opened:
    // only now does the caller say that it listens.
    ready();
    raise_open_file_limit(config.server.max_connections);
    let limits = ConnLimits {
        header_read_timeout: config.server.header_read_timeout,
        max_connections: config.server.max_connections,
        max_header_bytes: config.server.max_header_bytes,
    };
    // Usage reaches the database every `usage_flush`, and once more on the way out.
    let flusher = tokio::spawn(flush_usage(
        Arc::clone(&keys),
        Arc::clone(&spending),
        config.keys.usage_flush,
    ));
    let result = match &config.server.tls {
        None => {
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::warn!(error = %e, "failed to set TCP_NODELAY on an accepted connection");
                }
            });
            run(state, models, listener, shutdown, limits).await
        }
        Some(tls) => {
            let tls = tls::server_config(tls).map_err(ServeError::Tls)?;
            run(
                state,
                models,
                tls::TlsListener::new(listener, tls)?,
                shutdown,
                limits,
            )
            .await
        }
    };
    flusher.abort();
    if let Some(a) = audit {
        let _ = tokio::task::spawn_blocking(move || a.flush()).await;
    }
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = keys.flush() {
            tracing::error!(error = %e, "could not write usage at shutdown");
        }
        if let Err(e) = spending.flush() {
            tracing::error!(error = %e, "could not write passport usage at shutdown");
        }
    })
    .await;
    result
}

/// Raises the soft limit on open files to the hard one (as Go's runtime does), since
/// many systems start services with a soft limit of 1024: without it, connections
/// beyond that fail to be accepted long before `max_connections`. Says so when even
/// the hard limit is below what `max_connections` needs.
fn raise_open_file_limit(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let target = now.maximum;
    if now.current < target {
        let want = Rlimit {
            current: target,
            maximum: now.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, want) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
    let have = getrlimit(Resource::Nofile).current;
    // Each connection is one file; the model files, the audit log, the key database,
    // upstream connections and the runtime need some more.
    let need = max_connections as u64 + 256;
    if have.is_some_and(|n| n < need) {
        tracing::warn!(
            open_file_limit = have,
            max_connections,
            "the open-file limit is below max_connections + 256: connections beyond it will be refused; raise it (ulimit -n, LimitNOFILE=) or lower max_connections"
        );
    }
}

async fn flush_usage(
    keys: Arc<bulwark_keys::Keys>,
    spending: Arc<bulwark_passport::Spending>,
    every: std::time::Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (k, s) = (Arc::clone(&keys), Arc::clone(&spending));
        let written = tokio::task::spawn_blocking(move || {
            if let Err(e) = s.flush() {
                tracing::error!(error = %e, "could not write passport usage; will retry");
            }
            k.flush()
        });
        match written.await {
            Ok(Err(e)) => tracing::error!(error = %e, "could not write usage; will retry"),
            Err(e) => tracing::error!(error = %e, "usage writer panicked"),
            Ok(Ok(())) => {}
        }
    }
}

async fn run<L>(
    state: AppState,
    models: Arc<Models>,
    listener: L,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ConnLimits,
) -> Result<(), ServeError>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let server = serve_connections(listener, router(state), shutdown, limits);
    let loading = models.load_local();
    tokio::pin!(server, loading);
    let mut loaded = false;
    loop {
        tokio::select! {
            () = &mut server => return Ok(()),
            res = &mut loading, if !loaded => {
                res.map_err(ServeError::ModelLoad)?;
                loaded = true;
                tracing::info!("all local models ready");
            }
        }
    }
}

/// The header that carries the `x-request-id` a client sent, once the gateway has put
/// its own in its place.
pub const CLIENT_REQUEST_ID: &str = "x-client-request-id";
/// The watermarking key's file in the data directory.
pub const WATERMARK_KEY_FILE: &str = "watermark.key";
/// On answers a local model wrote with the watermark: the scheme, the key's public id
/// and the parameters.
pub const WATERMARK_HEADER: &str = "x-bulwark-watermark";

/// Gives every request the gateway's own id (a UUID) in `x-request-id`, which the answer
/// carries back and the audit log records: ids are unique whatever clients send. A
/// client's own id (printable, up to 128 bytes) moves to `x-client-request-id` and is
/// recorded beside it.
async fn assign_request_id(mut req: axum::extract::Request) -> axum::extract::Request {
    let headers = req.headers_mut();
    if let Some(theirs) = headers.remove("x-request-id") {
        let ok = theirs.len() <= 128 && theirs.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if ok {
            headers.insert(CLIENT_REQUEST_ID, theirs);
        }
    }
    if let Ok(v) = http::HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert("x-request-id", v);
    }
    req
}

/// Says at start-up which guard settings are active, and loudly when there is none.
fn log_guard(config: &Config) {
    match &config.guard {
        Some(g) => tracing::info!(
            injection = g.injection.as_str(),
            pii = g.pii.as_str(),
            secrets = g.secrets.as_str(),
            output = g.output.as_str(),
            encoder = g.encoder,
            canary = g.canary,
            refusal = ?g.refusal,
            "guard on"
        ),
        None => tracing::warn!(
            "the guard is OFF ([guard] enabled = false): prompts, documents and tool results reach the models unscreened, and personal data and credentials are sent as they are"
        ),
    }
    for (name, profile) in &config.guard_profiles {
        match profile {
            Some(g) => {
                tracing::info!(profile = %name, injection = g.injection.as_str(), pii = g.pii.as_str(), secrets = g.secrets.as_str(), encoder = g.encoder, "guard profile")
            }
            None => {
                tracing::warn!(profile = %name, "guard profile turns the guard OFF for its keys and routes")
            }
        }
    }
}

/// What one connection may take.
#[derive(Clone, Copy)]
struct ConnLimits {
    /// Longest wait for a request's headers (HTTP/1): a client that dribbles them (or
    /// opens a connection and sends nothing) is cut off.
    header_read_timeout: std::time::Duration,
    /// Most connections served at once; the next waits in the kernel's listen queue.
    max_connections: usize,
    /// Largest request head (HTTP/1: the read buffer; HTTP/2: the header list).
    max_header_bytes: usize,
}

/// Accepts and serves connections until `shutdown`, then lets those open finish their
/// requests (graceful shutdown). axum's own `serve` sets no header-read deadline and no
/// connection cap; this is the same loop with both.
async fn serve_connections<L>(
    mut listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: ConnLimits,
) where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (closing, _) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (io, _addr) = tokio::select! {
            c = listener.accept() => c,
            () = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone().map_request(
            |req: http::Request<hyper::body::Incoming>| req.map(axum::body::Body::new),
        ));
        let mut closed = closing.subscribe();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                _ = closed.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = closing.send(true);
    // Every connection gives its slot back when it has finished.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}
