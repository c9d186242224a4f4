//! The `bulwark` command: parses arguments, reads the environment, and calls the libraries.
//!
//! This is the only place that reads environment variables (`BULWARK_MODEL_DIR`,
//! `BULWARK_DATA_DIR`, `BULWARK_LOG`, `BULWARK_LOG_FORMAT`, and the variables named by
//! `api_key_env` and `admin_token_env`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use bulwark_config::Config;
use bulwark_keys::{KeyRecord, KeySpec, Keys, Store};
use clap::{Parser, Subcommand};

mod mcp;
mod models;
mod passport;
mod watermark;
use models::ModelsCommand;

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
    /// The models: the config's, and the registry of verified model files.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Run the guard on text: `bulwark scan TEXT`, or `--jsonl` to read JSON lines with a
    /// `text` field on stdin and write one JSON report per line.
    Scan {
        /// The text to scan (omit with --jsonl).
        text: Option<String>,
        /// Read `{"text": ...}` lines from stdin; write one report per line.
        #[arg(long)]
        jsonl: bool,
        /// Blocking threshold on the injection score (default: the model's).
        #[arg(long)]
        block_threshold: Option<f32>,
        /// Also run the second stage, the sentence encoder (as `[guard] encoder = true`).
        #[arg(long)]
        encoder: bool,
        /// The encoder's directory (default: `all-MiniLM-L6-v2` in the model directory,
        /// where `scripts/fetch-model.sh` puts it); implies `--encoder`.
        #[arg(long)]
        encoder_dir: Option<PathBuf>,
    },
    /// The audit log: make the auditor's keys, check the chain, read the records.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Signed receipts: make the gateway's signing key, check a receipt.
    Receipt {
        #[command(subcommand)]
        command: ReceiptCommand,
    },
    /// Send the built-in, versioned probe set (injection, jailbreaks, encodings,
    /// extraction, exfiltration, personal data, credentials, tool results, benign
    /// controls) to a deployment and report what got through, per category
    /// (OUT/redteam.json and a self-contained OUT/redteam.html).
    Redteam {
        /// The deployment's base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        target: String,
        /// The API key to send (else the environment variable BULWARK_API_KEY, if set).
        #[arg(long)]
        key: Option<String>,
        /// The model to ask (default: the first chat model /v1/models lists).
        #[arg(long)]
        model: Option<String>,
        /// Where to write redteam.json and redteam.html.
        #[arg(long, default_value = "redteam")]
        out: PathBuf,
        /// Only these categories (repeat the flag); all by default.
        #[arg(long = "category")]
        categories: Vec<String>,
        /// Probes in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Seconds allowed for each answer.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Exit with status 2 when any probe got through (for CI).
        #[arg(long)]
        fail_on_through: bool,
    },
    /// Agent passports: issue one within an API key's rights, derive a narrower one
    /// offline, revoke, inspect.
    Passport {
        #[command(subcommand)]
        command: passport::PassportCommand,
    },
    /// The MCP gateway's tool pins: list tools with their standing, approve them.
    Mcp {
        #[command(subcommand)]
        command: mcp::McpCommand,
    },
    /// The watermark of what the local models write: detect it in a text.
    Watermark {
        #[command(subcommand)]
        command: watermark::WatermarkCommand,
    },
    /// Manage virtual API keys (in the data directory's key database).
    Keys {
        /// TOML config file (for the data directory and the named policies).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it once (stdout); only its hash is stored.
    Create(KeySpec),
    /// List keys (never their secrets).
    List {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one key with its usage per model and day, as JSON.
    Show { id: String },
    /// Revoke a key; a running gateway refuses it from its next request.
    Revoke { id: String },
    /// Make the key pair that signs model manifests (`bulwark models sign`):
    /// OUT/signing.key (keep it offline), OUT/signing.pub ([models] signing_public_key).
    GenSigning {
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Make an auditor key pair: OUT/audit.pub for the gateway ([audit] public_key),
    /// OUT/audit.key for the auditor only.
    Keygen {
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Check the whole hash chain (no key needed); names the first bad record.
    Verify {
        /// The log directory (default: the config's).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Decrypt records with the auditor's private key.
    Export {
        #[command(flatten)]
        log: ReadLog,
        /// Only records at or after this time: Unix milliseconds or YYYY-MM-DD (UTC).
        #[arg(long)]
        since: Option<String>,
        /// Only records before this time: Unix milliseconds or YYYY-MM-DD (UTC).
        #[arg(long)]
        until: Option<String>,
        /// jsonl or csv.
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
    /// Check receipts that clients kept (`x-bulwark-receipt` values, one per line)
    /// against the log: each must be validly signed and have its record. A receipt
    /// without a record means records were lost or removed, e.g. the log's tail cut
    /// off, which the hash chain alone cannot show.
    CheckReceipts {
        /// File with one receipt per line.
        receipts: PathBuf,
        /// The gateway's receipt.pub.
        #[arg(long)]
        receipt_key: PathBuf,
        #[command(flatten)]
        log: ReadLog,
    },
}

/// A log and the auditor's keys that read it.
#[derive(clap::Args)]
struct ReadLog {
    /// The auditor's private key (audit.key); repeat it for every key the log was
    /// written to when the auditor's key was rotated.
    #[arg(long, required = true)]
    key: Vec<PathBuf>,
    /// The log directory (default: the config's).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl ReadLog {
    /// Every intact record, decrypted, and how far the chain verified.
    fn records(self) -> Result<(Vec<bulwark_audit::Record>, bulwark_audit::Verified)> {
        let dir = audit_dir(self.dir, self.config)?;
        let keys = self
            .key
            .iter()
            .map(|k| bulwark_audit::read_key::<bulwark_audit::SecretKey>(k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(bulwark_audit::export(&dir, &keys)?)
    }
}

#[derive(Subcommand)]
enum ReceiptCommand {
    /// Make the gateway's receipt key pair: OUT/receipt.key for the gateway
    /// ([receipts] signing_key), OUT/receipt.pub for anyone who checks receipts.
    Keygen {
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Check a receipt (the `x-bulwark-receipt` header value): both signatures, and
    /// with --response, that it covers that response body.
    Verify {
        /// The gateway's receipt.pub.
        #[arg(long)]
        key: PathBuf,
        /// The response body the receipt should cover.
        #[arg(long)]
        response: Option<PathBuf>,
        receipt: String,
    },
}

/// Writes OUT/NAME.pub and OUT/NAME.key; the private key is created new (never
/// overwritten) and readable by its owner only. Returns the public key's path.
fn write_key_pair(out: &Path, name: &str, public: &[u8], private: &[u8]) -> Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    let (pub_path, key_path) = (
        out.join(format!("{name}.pub")),
        out.join(format!("{name}.key")),
    );
    anyhow::ensure!(
        !key_path.exists(),
        "{} exists; not overwriting a private key",
        key_path.display()
    );
    std::fs::write(&pub_path, public)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    options.open(&key_path)?.write_all(private)?;
    Ok(pub_path)
}

fn receipt_command(command: ReceiptCommand) -> Result<()> {
    match command {
        ReceiptCommand::Keygen { out } => {
            let (vk, sk) = bulwark_audit::receipt::keygen();
            let pub_path = write_key_pair(
                &out,
                "receipt",
                &serde_json::to_vec_pretty(&vk)?,
                &serde_json::to_vec_pretty(&sk)?,
            )?;
            println!("{}", pub_path.display());
        }
        ReceiptCommand::Verify {
            key,
            response,
            receipt,
        } => {
            let vk: bulwark_audit::receipt::VerifyingKey = bulwark_audit::read_key(&key)?;
            let claims = bulwark_audit::receipt::verify(&vk, &receipt)?;
            if let Some(path) = response {
                use sha2::Digest;
                let body =
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let digest: String = sha2::Sha256::digest(&body)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                match &claims.response_sha256 {
                    Some(d) if *d == digest => {}
                    Some(_) => anyhow::bail!("both signatures verify, but the receipt covers a different response body"),
                    None => anyhow::bail!("both signatures verify, but this receipt (a streamed answer) covers no response body"),
                }
            }
            println!("{}", serde_json::to_string_pretty(&claims)?);
            eprintln!("valid: ML-DSA-65 and Ed25519 signatures verify");
        }
    }
    Ok(())
}

fn parse_time(s: &str) -> Result<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let parts: Vec<&str> = s.split('-').collect();
    if let [y, m, d] = parts.as_slice() {
        if let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i64>(), m.parse::<u32>(), d.parse::<u32>()) {
            let day = bulwark_keys::Day::from_civil(y, m, d);
            return Ok(day.start_ms());
        }
    }
    anyhow::bail!("`{s}` is not Unix milliseconds or YYYY-MM-DD")
}

fn audit_dir(dir: Option<PathBuf>, config: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d);
    }
    let config = load_config(config.as_deref())?;
    let rel = config
        .audit
        .as_ref()
        .map_or_else(|| PathBuf::from("audit"), |a| a.dir.clone());
    Ok(if rel.is_relative() {
        config.server.data_dir.join(rel)
    } else {
        rel
    })
}

fn audit_command(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::Keygen { out } => {
            let (pk, sk) = bulwark_audit::keygen();
            let pub_path = write_key_pair(
                &out,
                "audit",
                &serde_json::to_vec_pretty(&pk)?,
                &serde_json::to_vec_pretty(&sk)?,
            )?;
            let key_path = out.join("audit.key");
            println!("{}", pub_path.display());
            eprintln!(
                "Wrote {} (give it to the gateway: [audit] public_key) and {} (keep it with the auditor, off the gateway).",
                pub_path.display(),
                key_path.display()
            );
        }
        AuditCommand::Verify { dir, config } => {
            let dir = audit_dir(dir, config)?;
            let v = bulwark_audit::verify(&dir)?;
            match v.problem {
                None => println!(
                    "ok: {} records in {} segments, chain intact (head {})",
                    v.records, v.segments, v.last_hash
                ),
                Some(p) => {
                    println!("BROKEN at {p} ({} records verified before it)", v.records);
                    std::process::exit(1);
                }
            }
        }
        AuditCommand::CheckReceipts {
            receipts,
            receipt_key,
            log,
        } => {
            let vk: bulwark_audit::receipt::VerifyingKey = bulwark_audit::read_key(&receipt_key)?;
            let (records, v) = log.records()?;
            let recorded: std::collections::HashSet<&str> =
                records.iter().map(|r| r.request_id.as_str()).collect();
            let text = std::fs::read_to_string(&receipts)
                .with_context(|| format!("reading {}", receipts.display()))?;
            let (mut ok, mut bad) = (0usize, 0usize);
            for (n, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let line = line
                    .trim()
                    .trim_start_matches(": x-bulwark-receipt ")
                    .trim();
                match bulwark_audit::receipt::verify(&vk, line) {
                    Err(e) => {
                        bad += 1;
                        println!("line {}: not a valid receipt: {e}", n + 1);
                    }
                    Ok(c) if !recorded.contains(c.request_id.as_str()) => {
                        bad += 1;
                        println!(
                            "line {}: request {} (answered {}, status {}) has no record in the log",
                            n + 1,
                            c.request_id,
                            c.time_ms,
                            c.status
                        );
                    }
                    Ok(_) => ok += 1,
                }
            }
            if let Some(p) = &v.problem {
                println!("the chain breaks at {p}; records after it were not read");
            }
            println!("{ok} receipt(s) have their record, {bad} do not");
            if bad > 0 || v.problem.is_some() {
                std::process::exit(1);
            }
        }
        AuditCommand::Export {
            log,
            since,
            until,
            format,
        } => {
            let since = since.as_deref().map(parse_time).transpose()?.unwrap_or(0);
            let until = until
                .as_deref()
                .map(parse_time)
                .transpose()?
                .unwrap_or(u64::MAX);
            let (records, v) = log.records()?;
            let records: Vec<_> = records
                .into_iter()
                .filter(|r| r.time_ms >= since && r.time_ms < until)
                .collect();
            let out = std::io::stdout().lock();
            match format.as_str() {
                "jsonl" => bulwark_audit::export::jsonl(&records, out)?,
                "csv" => bulwark_audit::export::csv(&records, out)?,
                other => anyhow::bail!("--format {other}: use jsonl or csv"),
            }
            if let Some(p) = v.problem {
                eprintln!("warning: the chain breaks at {p}; records after it are not exported");
                std::process::exit(1);
            }
        }
    }
    Ok(())
}

fn model_dir() -> PathBuf {
    std::env::var_os("BULWARK_MODEL_DIR").map_or_else(|| PathBuf::from("models"), PathBuf::from)
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    let env = |k: &str| std::env::var(k).ok();
    let mut config = match path {
        Some(p) => Config::load(p, &env, &model_dir())
            .with_context(|| format!("loading {}", p.display()))?,
        None => Config::default_with(&model_dir()),
    };
    if let Some(dir) = std::env::var_os("BULWARK_DATA_DIR") {
        config.server.data_dir = PathBuf::from(dir);
    }
    Ok(config)
}

fn open_keys(config: &Config) -> Result<Keys> {
    let path = config.server.key_database();
    let store = Store::open(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Keys::new(store, config.keys.required)?)
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
    let keys = open_keys(&config)?;
    config.server.check_exposure(keys.required())?;
    if !config.server.listen.ip().is_loopback() && !keys.required() {
        tracing::warn!(listen = %config.server.listen, "listening beyond loopback without authentication, as configured");
    }
    if keys.required() {
        tracing::info!("API keys required on /v1");
    }
    let scheme = match &config.server.tls {
        // Checked here too so that a bad certificate fails before we claim to listen.
        Some(tls) => {
            bulwark_server::tls::server_config(tls).map_err(anyhow::Error::msg)?;
            "https"
        }
        None => "http",
    };
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    bulwark_server::serve(config, Arc::new(keys), listener, shutdown_signal(), || {
        tracing::info!(%addr, scheme, "listening");
        // A plain line on stdout for scripts and tests that started us with port 0,
        // printed once the server really serves (a broken audit log stops it before).
        println!("bulwark listening on {scheme}://{addr}");
    })
    .await?;
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
    let reg = bulwark_supply::registry::Registry::load(&config.server.data_dir)?;
    if !reg.models.is_empty() {
        println!(
            "\nregistry ({}):",
            bulwark_supply::registry::Registry::path(&config.server.data_dir).display()
        );
        println!(
            "{:<28} {:<12} {:<10} {:<14} {:<8} SOURCE",
            "NAME", "STATE", "SIGNED", "FORMAT", "FINDINGS"
        );
        for e in reg.models.values() {
            println!(
                "{:<28} {:<12} {:<10} {:<14} {:<8} {}",
                e.name,
                e.state(),
                if e.signature.is_some() { "yes" } else { "no" },
                e.format,
                e.findings.len(),
                e.source
            );
        }
    }
    Ok(())
}

fn keys_command(config: Option<PathBuf>, command: KeysCommand) -> Result<()> {
    if let KeysCommand::GenSigning { out } = &command {
        return models::gen_signing(out);
    }
    let config = load_config(config.as_deref())?;
    let keys = open_keys(&config)?;
    match command {
        KeysCommand::Create(spec) => {
            if let Some(p) = &spec.policy {
                if !config.policies.contains_key(p) {
                    anyhow::bail!(
                        "no policy named `{p}` in the config (pass the config with --config; it declares [policies.NAME])"
                    );
                }
            }
            if let Some(g) = &spec.guard {
                if !config.guard_profiles.contains_key(g) {
                    anyhow::bail!(
                        "no guard profile named `{g}` in the config (pass the config with --config; it declares [guard.profiles.NAME])"
                    );
                }
            }
            let (record, plaintext) = keys.create(&spec)?;
            println!("{plaintext}");
            eprintln!(
                "Created key {} ({}, tenant {}). Store it now: it is shown only this once.",
                record.id,
                record.spec.name,
                record.spec.tenant()
            );
        }
        KeysCommand::List { json } => {
            let all = keys.list()?;
            if json {
                for k in &all {
                    println!("{}", serde_json::to_string(k)?);
                }
            } else {
                println!(
                    "{:<14} {:<20} {:<16} {:<13} {:<28} STATUS",
                    "ID", "NAME", "TENANT", "MAX CLASS", "LIMITS"
                );
                for k in &all {
                    println!(
                        "{:<14} {:<20} {:<16} {:<13} {:<28} {}",
                        k.id,
                        k.spec.name,
                        k.spec.tenant(),
                        k.spec.max_class().as_str(),
                        limits(k),
                        if k.revoked_ms.is_some() {
                            "revoked"
                        } else {
                            "active"
                        }
                    );
                }
            }
        }
        KeysCommand::Show { id } => {
            let record = keys.get(&id)?;
            let mut v = serde_json::to_value(&record)?;
            v["usage"] = serde_json::to_value(keys.usage(&id)?)?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        KeysCommand::Revoke { id } => {
            let record = keys.revoke(&id)?;
            eprintln!("Revoked key {} ({}).", record.id, record.spec.name);
        }
        KeysCommand::GenSigning { .. } => {}
    }
    Ok(())
}

fn scan(
    text: Option<String>,
    jsonl: bool,
    block_threshold: Option<f32>,
    encoder: bool,
    encoder_dir: Option<PathBuf>,
) -> Result<()> {
    use std::io::{BufRead, Write};
    let mut thresholds = bulwark_guard::Thresholds::default();
    if let Some(t) = block_threshold {
        anyhow::ensure!(
            (0.0..=1.0).contains(&t),
            "--block-threshold must be between 0 and 1"
        );
        thresholds.block = t;
        thresholds.flag = thresholds.flag.min(t);
    }
    let encoder = if encoder || encoder_dir.is_some() {
        let dir =
            encoder_dir.unwrap_or_else(|| model_dir().join(bulwark_config::EncoderConfig::DIR));
        let e = bulwark_guard::encoder::Encoder::load(&dir).with_context(|| {
            "loading the guard's sentence encoder (fetch it with scripts/fetch-model.sh)"
        })?;
        Some(std::sync::Arc::new(e))
    } else {
        None
    };
    let guard = bulwark_guard::Guard::new(thresholds).with_encoder(encoder);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match (text, jsonl) {
        (Some(t), false) => {
            writeln!(out, "{}", serde_json::to_string_pretty(&guard.scan(&t))?)?;
        }
        (None, true) => {
            for (n, line) in std::io::stdin().lock().lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value = serde_json::from_str(&line)
                    .with_context(|| format!("stdin line {}: not JSON", n + 1))?;
                let text = v
                    .get("text")
                    .and_then(serde_json::Value::as_str)
                    .with_context(|| format!("stdin line {}: no string field `text`", n + 1))?;
                writeln!(out, "{}", serde_json::to_string(&guard.scan(text))?)?;
            }
        }
        _ => anyhow::bail!("give either TEXT or --jsonl (with JSON lines on stdin)"),
    }
    out.flush()?;
    Ok(())
}

fn limits(k: &KeyRecord) -> String {
    let mut parts = Vec::new();
    if let Some(r) = k.spec.rpm {
        parts.push(format!("{r} rpm"));
    }
    if let Some(t) = k.spec.tpm {
        parts.push(format!("{t} tpm"));
    }
    if let Some((b, p)) = k.spec.budget() {
        parts.push(format!("{b}/{}", p.as_str()));
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Writes the red-team report files and prints the summary per category.
fn redteam_output(report: &bulwark_redteam::Report, out: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let json = out.join("redteam.json");
    std::fs::write(&json, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    let html = out.join("redteam.html");
    std::fs::write(&html, bulwark_redteam::html(report))
        .with_context(|| format!("cannot write {}", html.display()))?;
    println!(
        "{:<24} {:>6} {:>8} {:>8} {:>8} {:>10} {:>8}",
        "CATEGORY", "PROBES", "THROUGH", "BLOCKED", "FLAGGED", "DEFUSED+", "OTHER"
    );
    for (cat, counts) in &report.summary {
        use bulwark_redteam::Outcome as O;
        let n = |o: O| counts.get(&o).copied().unwrap_or(0);
        let total: usize = counts.values().sum();
        let stopped = n(O::Defused) + n(O::Protected);
        let other = total - n(O::Through) - n(O::Blocked) - n(O::Flagged) - stopped;
        println!(
            "{cat:<24} {total:>6} {:>8} {:>8} {:>8} {stopped:>10} {other:>8}",
            n(O::Through),
            n(O::Blocked),
            n(O::Flagged)
        );
    }
    println!(
        "{} of {} probes got through; {} false alarms on benign controls. Report: {} and {}",
        report.through,
        report.results.len(),
        report.false_alarms,
        json.display(),
        html.display()
    );
    Ok(())
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Models { command } => models::run(command),
        Command::Watermark { command } => watermark::run(command),
        Command::Mcp { command } => mcp::run(command),
        Command::Passport { command } => passport::run(command),
        Command::Redteam {
            target,
            key,
            model,
            out,
            categories,
            concurrency,
            timeout,
            fail_on_through,
        } => {
            let options = bulwark_redteam::Options {
                target,
                key: key.or_else(|| std::env::var("BULWARK_API_KEY").ok()),
                model,
                concurrency,
                categories,
                timeout: std::time::Duration::from_secs(timeout),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(bulwark_redteam::run(&options))?;
            redteam_output(&report, &out)?;
            if fail_on_through && report.through > 0 {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Keys { config, command } => keys_command(config, command),
        Command::Audit { command } => audit_command(command),
        Command::Receipt { command } => receipt_command(command),
        Command::Scan {
            text,
            jsonl,
            block_threshold,
            encoder,
            encoder_dir,
        } => scan(text, jsonl, block_threshold, encoder, encoder_dir),
    }
}
