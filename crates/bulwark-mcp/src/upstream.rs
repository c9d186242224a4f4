//! An upstream MCP server: a child process spoken to over stdio, or a remote server
//! over Streamable HTTP.
//!
//! A child is started on first use, with only `PATH` and the configured variables in
//! its environment, and killed with the gateway (or when its connection is dropped).
//! A remote server gets the bearer token from the configured environment variable,
//! never the caller's credentials. When a server dies or stops answering, the next use
//! connects again, after a backoff that doubles with each failure in a row (250 ms up
//! to 30 s).
//!
//! Lists (tools, resources, resource templates, prompts) are cached as the server
//! allows: `rmcp`'s client keeps each for the `ttlMs` the server gives and drops it on
//! a `list_changed` notification. Calls also reuse a tool list up to 2 s old.
//!
//! A list is read page by page, following the server's cursors, up to [`MAX_PAGES`]
//! pages and [`MAX_ITEMS`] items: a server whose cursors never end, or lead back to a
//! page already read, gets an error instead of a gateway that pages forever.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark_config::mcp::{McpServerConfig, Protocol, Transport};
use rmcp::model::ProtocolVersion;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, GetPromptRequestParams, GetPromptResult,
    PaginatedRequestParams, Prompt, ReadResourceRequestParams, ReadResourceResult, Resource,
    ResourceTemplate, Tool,
};
use rmcp::service::RunningService;
use rmcp::service::{ClientLifecycleMode, ClientServiceExt};
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::RoleClient;
use tokio::sync::Mutex;

/// How long a child may take to start and answer `initialize`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Most pages, and items, one list of a server may have.
pub const MAX_PAGES: usize = 100;
pub const MAX_ITEMS: usize = 10_000;

/// Every page of a list, from the first, following the server's cursors within
/// [`MAX_PAGES`] and [`MAX_ITEMS`]. `page` asks for one page and splits it into its
/// items and the next cursor. The outer error is the server's or the connection's;
/// the inner one a list that does not end.
pub async fn all_pages<T, Fut>(
    mut page: impl FnMut(Option<PaginatedRequestParams>) -> Fut,
) -> Result<Result<Vec<T>, String>, rmcp::ServiceError>
where
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>), rmcp::ServiceError>>,
{
    let mut items = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut cursor = None;
    for _ in 0..MAX_PAGES {
        let (mut more, next) =
            page(cursor.map(|c| PaginatedRequestParams::default().with_cursor(Some(c)))).await?;
        if items.len() + more.len() > MAX_ITEMS {
            return Ok(Err(format!("the list has more than {MAX_ITEMS} entries")));
        }
        items.append(&mut more);
        match next {
            None => return Ok(Ok(items)),
            Some(next) if !seen.insert(next.clone()) => {
                return Ok(Err(format!(
                    "its cursor {next:?} leads back to a page already read"
                )))
            }
            Some(next) => cursor = Some(next),
        }
    }
    Ok(Err(format!("the list did not end after {MAX_PAGES} pages")))
}

/// How long a tool list is reused for calls (a client's `tools/list` always asks anew).
const LIST_TTL: Duration = Duration::from_secs(2);

struct Conn {
    client: Option<RunningService<RoleClient, ()>>,
    failures: u32,
    retry_at: Option<Instant>,
    /// Counts the starts: a list from an earlier child is not reused.
    generation: u64,
}

/// A tool list: when it was asked for, from which start, and what it holds.
type Listed = (Instant, u64, Arc<Vec<Tool>>);

pub struct Upstream {
    pub config: McpServerConfig,
    conn: Mutex<Conn>,
    /// The last list: when, from which start, what.
    listed: std::sync::Mutex<Option<Listed>>,
}

impl Upstream {
    pub fn new(config: McpServerConfig) -> Upstream {
        Upstream {
            config,
            conn: Mutex::new(Conn {
                client: None,
                failures: 0,
                retry_at: None,
                generation: 0,
            }),
            listed: std::sync::Mutex::new(None),
        }
    }

    /// How a connection begins: `server/discover` for the current revision, the
    /// `initialize` handshake for the session-based one.
    fn lifecycle(&self) -> ClientLifecycleMode {
        let current = vec![ProtocolVersion::V_2026_07_28];
        match self.config.protocol {
            Protocol::Auto => ClientLifecycleMode::Auto {
                preferred_versions: current,
                legacy_version: Some(ProtocolVersion::V_2025_11_25),
            },
            Protocol::Stateless => ClientLifecycleMode::Discover {
                preferred_versions: current,
            },
            Protocol::Sessions => ClientLifecycleMode::Initialize,
        }
    }

    async fn start(&self) -> Result<RunningService<RoleClient, ()>, String> {
        match &self.config.transport {
            Transport::Stdio { command, env } => {
                let path = std::env::var_os("PATH").unwrap_or_default();
                let cmd = tokio::process::Command::new(&command[0]).configure(|cmd| {
                    cmd.args(&command[1..])
                        .env_clear()
                        .env("PATH", &path)
                        .envs(env)
                        .kill_on_drop(true);
                });
                let transport = TokioChildProcess::new(cmd)
                    .map_err(|e| format!("could not start `{}`: {e}", command[0]))?;
                self.handshake(transport).await
            }
            Transport::Http {
                url,
                bearer_token_env,
            } => {
                let mut config =
                    rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                        url.as_str(),
                    );
                if let Some(var) = bearer_token_env {
                    // Read at each connection, so that a rotated token is picked up.
                    let token = std::env::var(var)
                        .map_err(|_| format!("the environment variable `{var}` is not set"))?;
                    config = config.auth_header(token);
                }
                let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
                    http_client()?,
                    config,
                );
                self.handshake(transport).await
            }
        }
    }

    /// Begins the MCP lifecycle on a transport, within [`START_TIMEOUT`].
    async fn handshake<T, E, A>(
        &self,
        transport: T,
    ) -> Result<RunningService<RoleClient, ()>, String>
    where
        T: rmcp::transport::IntoTransport<RoleClient, E, A>,
        E: std::error::Error + Send + Sync + 'static,
    {
        match tokio::time::timeout(
            START_TIMEOUT,
            ().serve_with_lifecycle(transport, self.lifecycle()),
        )
        .await
        {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(format!("did not initialize: {e}")),
            Err(_) => Err(format!("did not initialize within {START_TIMEOUT:?}")),
        }
    }

    /// The running connection, started (again) if need be.
    async fn peer(&self) -> Result<(rmcp::Peer<RoleClient>, u64), String> {
        let mut conn = self.conn.lock().await;
        if let Some(client) = &conn.client {
            if !client.is_closed() {
                return Ok((client.peer().clone(), conn.generation));
            }
            tracing::warn!(server = %self.config.name, "MCP server exited; restarting it");
            conn.client = None;
        }
        if let Some(at) = conn.retry_at {
            let now = Instant::now();
            if at > now {
                return Err(format!(
                    "is restarting (next try in {} ms)",
                    (at - now).as_millis()
                ));
            }
        }
        match self.start().await {
            Ok(client) => {
                let peer = client.peer().clone();
                conn.client = Some(client);
                conn.failures = 0;
                conn.retry_at = None;
                conn.generation += 1;
                Ok((peer, conn.generation))
            }
            Err(e) => {
                conn.failures = conn.failures.saturating_add(1);
                let wait = BACKOFF_MIN
                    .saturating_mul(1 << conn.failures.min(8).saturating_sub(1))
                    .min(BACKOFF_MAX);
                conn.retry_at = Some(Instant::now() + wait);
                tracing::error!(server = %self.config.name, error = %e, "MCP server failed to start");
                Err(e)
            }
        }
    }

    /// Drops a connection that failed, so that the next use starts a new one.
    async fn reset(&self) {
        // Dropping the connection kills the child (`kill_on_drop`).
        self.conn.lock().await.client = None;
    }

    /// Its tools: asked for anew when `fresh`, else the last list if it is from the
    /// running child and under [`LIST_TTL`] old (the same `Arc`, so that what is made
    /// from a list can be reused while it is).
    pub async fn list_tools(&self, fresh: bool) -> Result<Arc<Vec<Tool>>, String> {
        let (peer, generation) = self.peer().await?;
        if !fresh {
            let listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, g, tools)) = listed.as_ref() {
                if *g == generation && at.elapsed() < LIST_TTL {
                    return Ok(Arc::clone(tools));
                }
            }
        }
        let listed = all_pages(|p| {
            let peer = &peer;
            async move { peer.list_tools(p).await.map(|r| (r.tools, r.next_cursor)) }
        })
        .await;
        match listed {
            Ok(Err(e)) => Err(format!("tools/list failed: {e}")),
            Ok(Ok(tools)) => {
                let tools = Arc::new(tools);
                *self.listed.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), generation, Arc::clone(&tools)));
                Ok(tools)
            }
            Err(e) => {
                // A server that answered with an error of its own is alive: only a lost
                // or stuck connection is started again.
                if !matches!(e, rmcp::ServiceError::McpError(_)) {
                    self.reset().await;
                }
                Err(format!("tools/list failed: {e}"))
            }
        }
    }

    /// Calls a tool. Dropping the future (the caller cancelled, or the call timed
    /// out) sends `notifications/cancelled` to the server.
    pub async fn call_tool(&self, params: CallToolRequestParams) -> Result<CallToolResult, String> {
        let (peer, _) = self.peer().await?;
        let r = peer.call_tool(params).await;
        self.answered("tools/call", r).await
    }

    /// What the server offers besides tools, from its `initialize` answer.
    async fn offers(&self) -> Result<(rmcp::Peer<RoleClient>, bool, bool), String> {
        let (peer, _) = self.peer().await?;
        let caps = peer.peer_info().map(|i| i.capabilities.clone());
        let resources = caps.as_ref().is_some_and(|c| c.resources.is_some());
        let prompts = caps.as_ref().is_some_and(|c| c.prompts.is_some());
        Ok((peer, resources, prompts))
    }

    /// Its resources and resource templates (none when it offers none).
    pub async fn list_resources(&self) -> Result<(Vec<Resource>, Vec<ResourceTemplate>), String> {
        let (peer, resources, _) = self.offers().await?;
        if !resources {
            return Ok(Default::default());
        }
        let listed = all_pages(|p| {
            let peer = &peer;
            async move {
                peer.list_resources(p)
                    .await
                    .map(|r| (r.resources, r.next_cursor))
            }
        })
        .await;
        let listed = self.answered_list("resources/list", listed).await?;
        let templates = all_pages(|p| {
            let peer = &peer;
            async move {
                let r = peer.list_resource_templates(p).await?;
                Ok((r.resource_templates, r.next_cursor))
            }
        })
        .await;
        let templates = self
            .answered_list("resources/templates/list", templates)
            .await?;
        Ok((listed, templates))
    }

    /// Its prompts (none when it offers none).
    pub async fn list_prompts(&self) -> Result<Vec<Prompt>, String> {
        let (peer, _, prompts) = self.offers().await?;
        if !prompts {
            return Ok(Vec::new());
        }
        let listed = all_pages(|p| {
            let peer = &peer;
            async move {
                peer.list_prompts(p)
                    .await
                    .map(|r| (r.prompts, r.next_cursor))
            }
        })
        .await;
        self.answered_list("prompts/list", listed).await
    }

    pub async fn read_resource(&self, uri: &str) -> Result<ReadResourceResult, String> {
        let (peer, _) = self.peer().await?;
        let r = peer
            .read_resource(ReadResourceRequestParams::new(uri))
            .await;
        self.answered("resources/read", r).await
    }

    pub async fn get_prompt(
        &self,
        params: GetPromptRequestParams,
    ) -> Result<GetPromptResult, String> {
        let (peer, _) = self.peer().await?;
        let r = peer.get_prompt(params).await;
        self.answered("prompts/get", r).await
    }

    /// A request's answer, or why it failed; a broken connection is dropped, so that
    /// the next use connects again.
    /// [`Self::answered`] for a list read with [`all_pages`]: a list that does not end
    /// is an error too.
    async fn answered_list<T>(
        &self,
        what: &str,
        r: Result<Result<Vec<T>, String>, rmcp::ServiceError>,
    ) -> Result<Vec<T>, String> {
        self.answered(what, r)
            .await?
            .map_err(|e| format!("{what} failed: {e}"))
    }

    async fn answered<T>(&self, what: &str, r: Result<T, rmcp::ServiceError>) -> Result<T, String> {
        let e = match r {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if matches!(
            e,
            rmcp::ServiceError::TransportClosed | rmcp::ServiceError::TransportSend(_)
        ) {
            tracing::warn!(server = %self.config.name, error = %e, "MCP server connection lost");
            self.reset().await;
        }
        Err(format!("{what} failed: {e}"))
    }
}

/// The HTTP client for remote servers: no redirects (a redirect would carry the bearer
/// token elsewhere), `TCP_NODELAY`, bounded connection time.
fn http_client() -> Result<reqwest::Client, String> {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c.clone());
    }
    bulwark_upstream::install_tls_provider();
    let c = reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    Ok(CLIENT.get_or_init(|| c).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages of `per` numbers; `next` gives the cursor after page `n`.
    async fn list(
        per: usize,
        next: impl Fn(usize) -> Option<String>,
    ) -> Result<Vec<usize>, String> {
        all_pages(|p| {
            let n = p
                .and_then(|p| p.cursor)
                .map_or(0, |c| c.parse::<usize>().unwrap());
            let page = ((n * per)..((n + 1) * per)).collect();
            let next = next(n);
            async move { Ok((page, next)) }
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn every_page_is_read_in_order() {
        let all = list(3, |n| (n < 4).then(|| (n + 1).to_string()))
            .await
            .unwrap();
        assert_eq!(all, (0..15).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_list_that_does_not_end_is_an_error() {
        // Cursors that go on forever.
        let e = list(1, |n| Some((n + 1).to_string())).await.unwrap_err();
        assert!(e.contains("did not end after 100 pages"), "{e}");
        // A cursor that leads back.
        let e = list(1, |n| Some(((n + 1) % 3).to_string()))
            .await
            .unwrap_err();
        assert!(e.contains("leads back"), "{e}");
        // Pages too large in all.
        let e = list(MAX_ITEMS / 2 + 1, |n| (n < 1).then(|| "1".to_owned()))
            .await
            .unwrap_err();
        assert!(e.contains("more than 10000 entries"), "{e}");
    }
}
