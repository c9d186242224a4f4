//! Client for OpenAI-compatible upstreams (vLLM, llama.cpp's server, Ollama, hosted APIs).
//!
//! An [`Upstream`] owns one connection pool with `TCP_NODELAY` on every socket, bounded
//! connect and read timeouts, and the upstream's API key (never logged). Response bodies
//! are handed back as a byte stream, chunk by chunk as they arrive: nothing here buffers
//! a stream. Failures are classified ([`UpstreamError`]) so the server can answer 502 or
//! 504 without guessing.

mod breaker;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use breaker::Breaker;

use bulwark_config::{UpstreamConfig, UpstreamKind};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use secrecy::{ExposeSecret, SecretString};

/// Which OpenAI endpoint to call, relative to the upstream's base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    /// The Anthropic Messages API, on `kind = "anthropic"` upstreams.
    Messages,
    Embeddings,
}

impl Endpoint {
    /// Every endpoint, in declaration order (`endpoint as usize` indexes it).
    const ALL: [Endpoint; 4] = [
        Endpoint::ChatCompletions,
        Endpoint::Completions,
        Endpoint::Messages,
        Endpoint::Embeddings,
    ];

    fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Messages => "/messages",
            Endpoint::Embeddings => "/embeddings",
        }
    }
}

/// The Messages API version sent to Anthropic-protocol upstreams.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    #[error("upstream `{upstream}` is unreachable: {reason}")]
    Connect { upstream: String, reason: String },
    #[error("upstream `{upstream}` did not answer within {timeout:?}")]
    Timeout { upstream: String, timeout: Duration },
    #[error("upstream `{upstream}` did not finish its answer within its deadline ({deadline:?})")]
    Deadline {
        upstream: String,
        deadline: Duration,
    },
    #[error("upstream `{upstream}` failed: {reason}")]
    Protocol { upstream: String, reason: String },
    #[error("cannot build the client for upstream `{upstream}`: {reason}")]
    Build { upstream: String, reason: String },
    #[error("upstream `{upstream}` is skipped: its circuit is open after repeated failures")]
    CircuitOpen { upstream: String },
}

impl UpstreamError {
    /// True when the upstream was too slow rather than broken (504 rather than 502).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            UpstreamError::Timeout { .. } | UpstreamError::Deadline { .. }
        )
    }
}

/// An upstream's answer: its status, content type, and the body as it arrives.
pub struct UpstreamResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    /// The body's length when the upstream declared it (not for streams).
    pub content_length: Option<u64>,
    /// `Content-Encoding`, when the upstream set one (the gateway asks for none).
    pub content_encoding: Option<String>,
    pub body: BoxStream<'static, Result<Bytes, UpstreamError>>,
}

impl std::fmt::Debug for UpstreamResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamResponse")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

/// One base URL of an upstream, with its own health and load.
struct Replica {
    base_url: String,
    /// Its URL for each endpoint ([`Endpoint::ALL`]'s order), parsed once rather than
    /// for every request.
    urls: Vec<reqwest::Url>,
    /// Requests sent and not yet finished (the response body still streaming counts).
    in_flight: Arc<AtomicUsize>,
    breaker: Breaker,
}

/// Decrements a replica's in-flight count when the request (or its body) is done.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One configured upstream: one or more replicas behind one name.
pub struct Upstream {
    name: String,
    kind: UpstreamKind,
    replicas: Vec<Replica>,
    api_key: Option<SecretString>,
    client: reqwest::Client,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// The whole answer, request to last byte, retries included.
    deadline: Duration,
    /// `(client-facing name, upstream name)`.
    models: Vec<(String, String)>,
    retries: u32,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field(
                "replicas",
                &self
                    .replicas
                    .iter()
                    .map(|r| r.base_url.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

/// Makes rustls on aws-lc-rs the process's TLS provider (idempotent). HTTPS clients then
/// offer the X25519MLKEM768 post-quantum hybrid first, like Bulwark's own listener.
/// Called before any HTTP client is built; reqwest refuses to build one without it.
pub fn install_tls_provider() {
    // Err means a provider is already installed, which is what we want either way.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, UpstreamError> {
        install_tls_provider();
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| UpstreamError::Build {
                upstream: cfg.name.clone(),
                reason: e.to_string(),
            })?;
        let replicas = std::iter::once(&cfg.base_url)
            .chain(&cfg.replicas)
            .map(|url| {
                let urls = Endpoint::ALL
                    .iter()
                    .map(|e| reqwest::Url::parse(&format!("{url}{}", e.path())))
                    .collect::<Result<_, _>>()
                    .map_err(|e| UpstreamError::Build {
                        upstream: cfg.name.clone(),
                        reason: format!("base URL {url}: {e}"),
                    })?;
                Ok(Replica {
                    base_url: url.clone(),
                    urls,
                    in_flight: Arc::new(AtomicUsize::new(0)),
                    breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
                })
            })
            .collect::<Result<_, UpstreamError>>()?;
        Ok(Upstream {
            name: cfg.name.clone(),
            kind: cfg.kind,
            replicas,
            api_key: cfg.api_key.clone(),
            client,
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            deadline: cfg.deadline,
            models: cfg.models.clone(),
            retries: cfg.retries,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The protocol it speaks.
    pub fn kind(&self) -> UpstreamKind {
        self.kind
    }

    /// The client-facing model names this upstream serves, with the upstream's names.
    pub fn models(&self) -> &[(String, String)] {
        &self.models
    }

    fn past_deadline(&self) -> UpstreamError {
        UpstreamError::Deadline {
            upstream: self.name.clone(),
            deadline: self.deadline,
        }
    }

    fn classify(&self, e: reqwest::Error) -> UpstreamError {
        let upstream = self.name.clone();
        if e.is_timeout() {
            let timeout = if e.is_connect() {
                self.connect_timeout
            } else {
                self.read_timeout
            };
            UpstreamError::Timeout { upstream, timeout }
        } else if e.is_connect() {
            UpstreamError::Connect {
                upstream,
                reason: root_cause(&e),
            }
        } else {
            UpstreamError::Protocol {
                upstream,
                reason: root_cause(&e),
            }
        }
    }

    /// Picks a replica by the power of two choices: two at random among those whose
    /// circuit lets a request through (and that have not failed this request already),
    /// the one with fewer requests in flight. `None` when every circuit is open.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        let mut open: Vec<usize> = (0..self.replicas.len())
            .filter(|i| !tried.contains(i) && self.replicas[*i].breaker.available_at(now))
            .collect();
        while !open.is_empty() {
            // Two distinct replicas (or the only one).
            let ia = fastrand::usize(..open.len());
            let ib = if open.len() > 1 {
                (ia + 1 + fastrand::usize(..open.len() - 1)) % open.len()
            } else {
                ia
            };
            let (a, b) = (open[ia], open[ib]);
            let load = |i: usize| self.replicas[i].in_flight.load(Ordering::Relaxed);
            let chosen = if load(b) < load(a) { b } else { a };
            // Claims the half-open probe, if that is the state; another request may have
            // claimed it first, in which case look again without this replica.
            if self.replicas[chosen].breaker.allow_at(now) {
                return Some(chosen);
            }
            open.retain(|&i| i != chosen);
        }
        None
    }

    /// Sends a JSON body to an endpoint and returns as soon as the response headers arrive.
    ///
    /// Each attempt goes to a replica picked by [`Upstream::pick`]. A connection failure, a
    /// timeout before the response, or a 502/503/504 is retried up to `retries` times, on
    /// another replica when there is one, with jittered exponential backoff; nothing is
    /// retried once a response has been handed back, so a stream is never replayed. Every
    /// outcome feeds the replica's circuit breaker; when every circuit is open, this fails
    /// at once with [`UpstreamError::CircuitOpen`].
    pub async fn send(
        &self,
        endpoint: Endpoint,
        body: &serde_json::Value,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.deadline;
        let mut tried: Vec<usize> = Vec::new();
        loop {
            let pick = self.pick(&tried).or_else(|| {
                // Every replica failed this request once: allow another round.
                if tried.is_empty() {
                    None
                } else {
                    self.pick(&[])
                }
            });
            let Some(i) = pick else {
                return Err(UpstreamError::CircuitOpen {
                    upstream: self.name.clone(),
                });
            };
            let replica = &self.replicas[i];
            let result = self.send_once(replica, endpoint, body, deadline).await;
            let retryable = match &result {
                Ok(r) => matches!(r.status, 502..=504),
                Err(UpstreamError::Connect { .. } | UpstreamError::Timeout { .. }) => true,
                Err(_) => false,
            };
            let failed = match &result {
                Ok(r) => r.status >= 500,
                Err(_) => true,
            };
            replica.breaker.record(!failed);
            if !retryable || tried.len() as u32 >= self.retries {
                return result;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.past_deadline());
            }
            tried.push(i);
            // Full jitter on 50 ms, 100 ms, 200 ms...: spreads retries of many clients.
            let cap = 50u64 << tried.len().min(6);
            let wait = Duration::from_millis(fastrand::u64(cap / 2..=cap));
            tracing::debug!(upstream = %self.name, replica = %replica.base_url, attempt = tried.len(), wait_ms = wait.as_millis() as u64, "retrying upstream");
            tokio::time::sleep(wait).await;
        }
    }

    async fn send_once(
        &self,
        replica: &Replica,
        endpoint: Endpoint,
        body: &serde_json::Value,
        deadline: tokio::time::Instant,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let in_flight = InFlight::enter(&replica.in_flight);
        let url = replica.urls[endpoint as usize].clone();
        let mut req = self.client.post(url).json(body);
        match (&self.api_key, self.kind) {
            (Some(key), UpstreamKind::OpenAi) => req = req.bearer_auth(key.expose_secret()),
            (Some(key), UpstreamKind::Anthropic) => {
                req = req.header("x-api-key", key.expose_secret())
            }
            (None, _) => {}
        }
        if self.kind == UpstreamKind::Anthropic {
            req = req.header("anthropic-version", ANTHROPIC_VERSION);
        }
        let resp = match tokio::time::timeout_at(deadline, req.send()).await {
            Ok(r) => r.map_err(|e| self.classify(e))?,
            Err(_) => return Err(self.past_deadline()),
        };
        let header = |name: reqwest::header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let retry_after = header(reqwest::header::RETRY_AFTER);
        let content_encoding = header(reqwest::header::CONTENT_ENCODING);
        let status = resp.status().as_u16();
        let content_length = resp.content_length();
        let name = self.name.clone();
        let read_timeout = self.read_timeout;
        let mask = Mask::new(self.api_key.as_ref().map(|k| k.expose_secret().as_bytes()));
        let body = resp
            .bytes_stream()
            .map_err(move |e| {
                // The body owns the in-flight guard: the replica counts as busy until the
                // last byte has been read or the client has gone.
                let _held = &in_flight;
                if e.is_timeout() {
                    UpstreamError::Timeout {
                        upstream: name.clone(),
                        timeout: read_timeout,
                    }
                } else {
                    UpstreamError::Protocol {
                        upstream: name.clone(),
                        reason: root_cause(&e),
                    }
                }
            })
            .boxed();
        let body = until_deadline(deadline, self.past_deadline(), mask.over(body));
        Ok(UpstreamResponse {
            status,
            content_type,
            retry_after,
            content_length,
            content_encoding,
            body,
        })
    }
}

/// `body` until `deadline`, then `error` and nothing more.
fn until_deadline(
    deadline: tokio::time::Instant,
    error: UpstreamError,
    body: BoxStream<'static, Result<Bytes, UpstreamError>>,
) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
    let state = (
        body,
        Box::pin(tokio::time::sleep_until(deadline)),
        Some(error),
    );
    futures_util::stream::unfold(state, |(mut body, mut sleep, error)| async move {
        let error = error?;
        tokio::select! {
            item = body.next() => item.map(|i| (i, (body, sleep, Some(error)))),
            () = &mut sleep => Some((Err(error), (body, sleep, None))),
        }
    })
    .boxed()
}

/// Masks this gateway's own credential for an upstream wherever it appears in what the
/// upstream sends back (an upstream that echoes the `Authorization` it received, in an
/// error or an answer), with as many `*` so that a declared length stays true. Only a
/// tail that could be the start of the key is held back between chunks.
#[derive(Clone, Default)]
struct Mask {
    key: Option<Arc<[u8]>>,
}

impl Mask {
    fn new(key: Option<&[u8]>) -> Self {
        // A key of a few bytes would mask ordinary text; such a key is no secret anyway.
        Mask {
            key: key.filter(|k| k.len() >= 8).map(Arc::from),
        }
    }

    /// `buf` masked, and how many bytes at its end must wait for the next chunk.
    fn apply(key: &[u8], buf: &mut [u8]) -> usize {
        let mut i = 0;
        while i + key.len() <= buf.len() {
            if &buf[i..i + key.len()] == key {
                buf[i..i + key.len()].fill(b'*');
                i += key.len();
            } else {
                i += 1;
            }
        }
        (1..key.len().min(buf.len() + 1))
            .rev()
            .find(|&n| buf[buf.len() - n..] == key[..n])
            .unwrap_or(0)
    }

    fn over(
        self,
        body: BoxStream<'static, Result<Bytes, UpstreamError>>,
    ) -> BoxStream<'static, Result<Bytes, UpstreamError>> {
        let Some(key) = self.key else {
            return body;
        };
        let state = (body, Vec::<u8>::new(), false);
        futures_util::stream::unfold(state, move |(mut body, mut held, done)| {
            let key = Arc::clone(&key);
            async move {
                if done {
                    return None;
                }
                match body.next().await {
                    Some(Ok(chunk)) => {
                        held.extend_from_slice(&chunk);
                        let keep = Mask::apply(&key, &mut held);
                        let rest = held.split_off(held.len() - keep);
                        let out = Bytes::from(std::mem::replace(&mut held, rest));
                        Some((Ok(out), (body, held, false)))
                    }
                    Some(Err(e)) => Some((Err(e), (body, held, true))),
                    None if held.is_empty() => None,
                    None => Some((
                        Ok(Bytes::from(std::mem::take(&mut held))),
                        (body, held, true),
                    )),
                }
            }
        })
        .boxed()
    }
}

/// The innermost error message: reqwest's own is "error sending request", which helps nobody.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Reads a whole (small) body, e.g. an upstream's error, up to `limit` bytes.
pub async fn read_to_limit(
    mut body: BoxStream<'static, Result<Bytes, UpstreamError>>,
    limit: usize,
) -> Result<Vec<u8>, UpstreamError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_endpoint_indexes_its_own_url() {
        for (i, e) in Endpoint::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i, "{e:?}");
        }
    }

    #[tokio::test]
    async fn the_upstream_key_is_masked_in_what_it_sends_back_at_every_cut() {
        let key = b"upstream-secret-0123456789";
        let text = b"{\"error\":{\"message\":\"bad auth: Bearer upstream-secret-0123456789 (upstream-secret-01)\"}}";
        let want = b"{\"error\":{\"message\":\"bad auth: Bearer ************************** (upstream-secret-01)\"}}";
        for cut in 0..=text.len() {
            let parts: Vec<Result<Bytes, UpstreamError>> = vec![
                Ok(Bytes::copy_from_slice(&text[..cut])),
                Ok(Bytes::copy_from_slice(&text[cut..])),
            ];
            let body = futures_util::stream::iter(parts).boxed();
            let got = read_to_limit(Mask::new(Some(key)).over(body), 1 << 20)
                .await
                .unwrap_or_default();
            assert_eq!(got, want.to_vec(), "cut at {cut}");
        }
    }

    fn upstream(replicas: usize) -> Upstream {
        let cfg = UpstreamConfig {
            name: "u".into(),
            kind: UpstreamKind::OpenAi,
            base_url: "http://127.0.0.1:9/v1".into(),
            replicas: (1..replicas)
                .map(|i| format!("http://127.0.0.1:{}/v1", 9 + i))
                .collect(),
            api_key: None,
            models: Vec::new(),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(10),
            residency: Default::default(),
            retries: 1,
            breaker_failures: 1,
            breaker_cooldown: Duration::from_secs(60),
        };
        match Upstream::new(&cfg) {
            Ok(u) => u,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn two_choices_prefer_the_less_loaded_replica() {
        let u = upstream(2);
        u.replicas[0].in_flight.store(10, Ordering::Relaxed);
        for _ in 0..100 {
            assert_eq!(u.pick(&[]), Some(1));
        }
    }

    #[test]
    fn open_circuits_and_tried_replicas_are_skipped() {
        let u = upstream(3);
        u.replicas[0].breaker.record(false); // threshold 1: open for a minute
        for _ in 0..100 {
            let p = u.pick(&[1]);
            assert_eq!(p, Some(2));
        }
        u.replicas[2].breaker.record(false);
        assert_eq!(u.pick(&[1]), None);
    }
}
