//! The `bulwark` command: parses arguments, reads the environment, and calls the libraries.
//!
//! This is the only place that reads environment variables (`BULWARK_MODEL_DIR`,
//! `BULWARK_LOG`, `BULWARK_LOG_FORMAT`, and the variables named by `api_key_env`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bulwark_config::Config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bulwark", version, about = "The sovereign AI gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API (the default model when no config is given).
    Serve {
        /// TOML config file (see bulwark.example.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Address to listen on, overriding the config (e.g. 127.0.0.1:8080; port 0 picks one).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Inspect the models the config declares.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// List local and upstream models, checking local files against their pinned digests.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn model_dir() -> PathBuf {
    std::env::var_os("BULWARK_MODEL_DIR").map_or_else(|| PathBuf::from("models"), PathBuf::from)
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    let env = |k: &str| std::env::var(k).ok();
    match path {
        Some(p) => {
            Config::load(p, &env, &model_dir()).with_context(|| format!("loading {}", p.display()))
        }
        None => Ok(Config::default_with(&model_dir())),
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("BULWARK_LOG")
        .unwrap_or_else(|_| "info,llama_cpp_2=warn,llama-cpp-2=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    if std::env::var("BULWARK_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

async fn serve(config: Option<PathBuf>, listen: Option<SocketAddr>) -> Result<()> {
    let mut config = load_config(config.as_deref())?;
    if let Some(addr) = listen {
        config.server.listen = addr;
    }
    config.server.check_exposure()?;
    if !config.server.listen.ip().is_loopback() {
        tracing::warn!(listen = %config.server.listen, "listening beyond loopback without authentication, as configured");
    }
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    // A plain line on stdout for scripts and tests that started us with port 0.
    println!("bulwark listening on http://{addr}");
    bulwark_server::serve(config, listener, shutdown_signal()).await?;
    Ok(())
}

fn models_list(config: Option<PathBuf>) -> Result<()> {
    let config = load_config(config.as_deref())?;
    println!("{:<28} {:<10} {:<12} SOURCE", "NAME", "KIND", "STATUS");
    for m in &config.local_models {
        let status = if !m.path.exists() {
            "missing".to_owned()
        } else {
            match &m.sha256 {
                None => "unpinned".to_owned(),
                Some(h) => match bulwark_supply::verify_sha256(&m.path, h) {
                    Ok(()) => "verified".to_owned(),
                    Err(bulwark_supply::VerifyError::Mismatch { .. }) => "MISMATCH".to_owned(),
                    Err(e) => format!("error: {e}"),
                },
            }
        };
        println!(
            "{:<28} {:<10} {:<12} {}",
            m.name,
            "local",
            status,
            m.path.display()
        );
    }
    for u in &config.upstreams {
        for (alias, target) in &u.models {
            println!(
                "{:<28} {:<10} {:<12} {} ({}) as {}",
                alias, "upstream", "-", u.name, u.base_url, target
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve { config, listen } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve(config, listen))
        }
        Command::Models {
            command: ModelsCommand::List { config },
        } => models_list(config),
    }
}
