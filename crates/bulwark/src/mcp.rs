//! `bulwark mcp ...`: the MCP gateway's tool pins. `pins` starts the configured MCP
//! servers, lists every tool with its standing (approved, pending, changed, poisoned)
//! and records what it saw; `approve` approves what was last seen.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum McpCommand {
    /// List every tool of the configured MCP servers with its standing, as JSON lines:
    /// `hidden` is null (listed), `pending` (never approved), `changed` (its definition
    /// changed since it was approved) or `poisoned` (the guard reads its description as
    /// an injection).
    Pins {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Approve tool definitions as last seen (`server__tool`; every unapproved one with
    /// --all), so that the gateway lists them. A running gateway sees it at once.
    Approve {
        names: Vec<String>,
        #[arg(long, conflicts_with = "names")]
        all: bool,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

pub fn run(command: McpCommand) -> Result<()> {
    match command {
        McpCommand::Pins { config } => {
            let config = crate::load_config(config.as_deref())?;
            let data_dir = config.server.data_dir.clone();
            let mcp = config
                .mcp
                .clone()
                .context("the config has no [mcp] servers or files roots")?;
            // The same reading of descriptions as the gateway's.
            let guard = bulwark_server::guard::EdgeGuard::for_config(&config)?
                .map(|g| g.for_scan().clone());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let entries = rt.block_on(async {
                bulwark_mcp::Gateway::new(
                    mcp,
                    &data_dir,
                    guard,
                    bulwark_mcp::Actions::default(),
                    None,
                )
                .catalog(true)
                .await
            });
            for e in entries.iter() {
                println!("{}", serde_json::to_string(&e)?);
            }
            Ok(())
        }
        McpCommand::Approve { names, all, config } => {
            if names.is_empty() && !all {
                anyhow::bail!("name the tools to approve (server__tool), or pass --all");
            }
            let config = crate::load_config(config.as_deref())?;
            let pins = bulwark_mcp::Pins::in_dir(&config.server.data_dir);
            for name in pins.approve(&names)? {
                println!("approved {name}");
            }
            Ok(())
        }
    }
}
