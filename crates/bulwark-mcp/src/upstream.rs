//! An upstream MCP server run as a child process and spoken to over stdio.
//!
//! The child is started on first use, with only `PATH` and the configured variables in
//! its environment, and killed with the gateway (or when its connection is dropped).
//! When it dies or stops answering, the next use starts it again, after a backoff that
//! doubles with each failure in a row (250 ms up to 30 s).

use std::time::{Duration, Instant};

use bulwark_config::mcp::McpServerConfig;
use rmcp::model::{CallToolRequestParams, CallToolResult, Tool};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use tokio::sync::Mutex;

/// How long a child may take to start and answer `initialize`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long a tool list is reused for calls (a client's `tools/list` always asks anew).
const LIST_TTL: Duration = Duration::from_secs(2);

struct Conn {
    client: Option<RunningService<RoleClient, ()>>,
    failures: u32,
    retry_at: Option<Instant>,
    /// Counts the starts: a list from an earlier child is not reused.
    generation: u64,
}

pub struct Upstream {
    pub config: McpServerConfig,
    conn: Mutex<Conn>,
    /// The last list: when, from which start, what.
    listed: std::sync::Mutex<Option<(Instant, u64, Vec<Tool>)>>,
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

    async fn start(&self) -> Result<RunningService<RoleClient, ()>, String> {
        let c = &self.config;
        let path = std::env::var_os("PATH").unwrap_or_default();
        let cmd = tokio::process::Command::new(&c.command[0]).configure(|cmd| {
            cmd.args(&c.command[1..])
                .env_clear()
                .env("PATH", &path)
                .envs(&c.env)
                .kill_on_drop(true);
        });
        let transport = TokioChildProcess::new(cmd)
            .map_err(|e| format!("could not start `{}`: {e}", c.command[0]))?;
        match tokio::time::timeout(START_TIMEOUT, ().serve(transport)).await {
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
    /// running child and under [`LIST_TTL`] old.
    pub async fn list_tools(&self, fresh: bool) -> Result<Vec<Tool>, String> {
        let (peer, generation) = self.peer().await?;
        if !fresh {
            let listed = self.listed.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, g, tools)) = listed.as_ref() {
                if *g == generation && at.elapsed() < LIST_TTL {
                    return Ok(tools.clone());
                }
            }
        }
        match peer.list_all_tools().await {
            Ok(tools) => {
                *self.listed.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), generation, tools.clone()));
                Ok(tools)
            }
            Err(e) => {
                self.reset().await;
                Err(format!("tools/list failed: {e}"))
            }
        }
    }

    pub async fn call_tool(&self, params: CallToolRequestParams) -> Result<CallToolResult, String> {
        let (peer, _) = self.peer().await?;
        match peer.call_tool(params).await {
            Ok(r) => Ok(r),
            Err(e) => {
                if matches!(
                    e,
                    rmcp::ServiceError::TransportClosed | rmcp::ServiceError::TransportSend(_)
                ) {
                    self.reset().await;
                }
                Err(format!("tools/call failed: {e}"))
            }
        }
    }
}
