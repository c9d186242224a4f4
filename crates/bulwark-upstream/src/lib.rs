//! Client for OpenAI-compatible upstreams (vLLM, llama.cpp's server, Ollama, hosted APIs).
//!
//! An [`Upstream`] owns one connection pool with `TCP_NODELAY` on every socket, bounded
//! connect and read timeouts, and the upstream's API key (never logged). Response bodies
//! are handed back as a byte stream, chunk by chunk as they arrive: nothing here buffers
//! a stream. Failures are classified ([`UpstreamError`]) so the server can answer 502 or
//! 504 without guessing.

mod breaker;

use std::time::Duration;

pub use breaker::Breaker;

use bulwark_config::UpstreamConfig;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use secrecy::{ExposeSecret, SecretString};

/// Which OpenAI endpoint to call, relative to the upstream's base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    #[error("upstream `{upstream}` is unreachable: {reason}")]
    Connect { upstream: String, reason: String },
    #[error("upstream `{upstream}` did not answer within {timeout:?}")]
    Timeout { upstream: String, timeout: Duration },
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
        matches!(self, UpstreamError::Timeout { .. })
    }
}

/// An upstream's answer: its status, content type, and the body as it arrives.
pub struct UpstreamResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    /// The body's length when the upstream declared it (not for streams).
    pub content_length: Option<u64>,
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

/// One configured upstream.
pub struct Upstream {
    name: String,
    base_url: String,
    api_key: Option<SecretString>,
    client: reqwest::Client,
    connect_timeout: Duration,
    read_timeout: Duration,
    /// `(client-facing name, upstream name)`.
    models: Vec<(String, String)>,
    retries: u32,
    breaker: Breaker,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, UpstreamError> {
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
        Ok(Upstream {
            name: cfg.name.clone(),
            base_url: cfg.base_url.clone(),
            api_key: cfg.api_key.clone(),
            client,
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            models: cfg.models.clone(),
            retries: cfg.retries,
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client-facing model names this upstream serves, with the upstream's names.
    pub fn models(&self) -> &[(String, String)] {
        &self.models
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

    /// The circuit breaker's state: `closed`, `open` or `half_open`.
    pub fn circuit(&self) -> &'static str {
        self.breaker.state()
    }

    /// Sends a JSON body to an endpoint and returns as soon as the response headers arrive.
    ///
    /// A connection failure, a timeout before the response, or a 502/503/504 is retried on
    /// this upstream up to `retries` times with jittered exponential backoff; nothing is
    /// retried once a response has been handed back, so a stream is never replayed. Every
    /// outcome feeds the circuit breaker; while it is open, this fails at once with
    /// [`UpstreamError::CircuitOpen`].
    pub async fn send(
        &self,
        endpoint: Endpoint,
        body: &serde_json::Value,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut attempt = 0;
        loop {
            if !self.breaker.allow() {
                return Err(UpstreamError::CircuitOpen {
                    upstream: self.name.clone(),
                });
            }
            let result = self.send_once(endpoint, body).await;
            let retryable = match &result {
                Ok(r) => matches!(r.status, 502..=504),
                Err(UpstreamError::Connect { .. } | UpstreamError::Timeout { .. }) => true,
                Err(_) => false,
            };
            let failed = match &result {
                Ok(r) => r.status >= 500,
                Err(_) => true,
            };
            self.breaker.record(!failed);
            if !retryable || attempt >= self.retries {
                return result;
            }
            attempt += 1;
            // Full jitter on 50 ms, 100 ms, 200 ms...: spreads retries of many clients.
            let cap = 50u64 << attempt.min(6);
            let wait = Duration::from_millis(fastrand::u64(cap / 2..=cap));
            tracing::debug!(upstream = %self.name, attempt, wait_ms = wait.as_millis() as u64, "retrying upstream");
            tokio::time::sleep(wait).await;
        }
    }

    async fn send_once(
        &self,
        endpoint: Endpoint,
        body: &serde_json::Value,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let url = format!("{}{}", self.base_url, endpoint.path());
        let mut req = self.client.post(url).json(body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key.expose_secret());
        }
        let resp = req.send().await.map_err(|e| self.classify(e))?;
        let header = |name: reqwest::header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let retry_after = header(reqwest::header::RETRY_AFTER);
        let status = resp.status().as_u16();
        let content_length = resp.content_length();
        let name = self.name.clone();
        let read_timeout = self.read_timeout;
        let body = resp
            .bytes_stream()
            .map_err(move |e| {
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
        Ok(UpstreamResponse {
            status,
            content_type,
            retry_after,
            content_length,
            body,
        })
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
