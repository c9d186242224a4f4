//! `bulwark passport ...`: agent passports (see `bulwark-passport`). `issue` needs the
//! API key it is issued by (its holder proves it by presenting it) and the data
//! directory's passport key; `attenuate` needs neither (an agent derives a passport for
//! a sub-agent offline); `revoke` and `inspect` read the data directory.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use bulwark_config::{mcp::tool_allowed, DataClass};
use bulwark_passport::{Authority, Narrowing, Revocations, Scope, Verifier, KEY_FILE};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum PassportCommand {
    /// Issue a passport for an agent, within what the API key may do; prints it once.
    Issue {
        /// The API key it is issued by (else the environment variable BULWARK_API_KEY).
        #[arg(long)]
        key: Option<String>,
        #[command(flatten)]
        scope: ScopeArgs,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Derive a narrower passport for a sub-agent, offline: each option given narrows,
    /// none can widen what the passport allows.
    Attenuate {
        /// The passport to derive from (else the environment variable BULWARK_PASSPORT).
        #[arg(long)]
        passport: Option<String>,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// Revoke a passport by its id (and every passport derived from it), from the
    /// gateway's next request on.
    Revoke {
        id: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a passport against this gateway's key and print its id, issuing key and
    /// chain of agents, as JSON.
    Inspect {
        passport: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// What a passport allows: given in full to `issue`, as narrowing to `attenuate`.
#[derive(clap::Args)]
pub struct ScopeArgs {
    /// The agent's name, recorded with every use.
    #[arg(long)]
    agent: String,
    /// A model (or route) it may use; repeat the flag. None: no model (`issue`), the
    /// parent's (`attenuate`).
    #[arg(long = "model")]
    models: Vec<String>,
    /// An MCP tool it may use (`server__tool`, `server__*`, `*`); repeat. None: no tool
    /// (`issue`), the parent's (`attenuate`).
    #[arg(long = "tool")]
    tools: Vec<String>,
    /// The highest data class it may send. Default: the key's (`issue`), the parent's
    /// (`attenuate`).
    #[arg(long)]
    max_class: Option<DataClass>,
    /// How long it is valid: 90s, 30m, 2h, 7d (30 days at most). Needed by `issue`.
    #[arg(long)]
    expires: Option<String>,
    /// Most tokens (prompt and completion) it, and every passport derived from it, may
    /// use in all. Default: no budget of its own (`issue`), the parent's (`attenuate`).
    #[arg(long)]
    budget_tokens: Option<u64>,
}

/// `90s`, `30m`, `2h`, `7d`.
fn duration(text: &str) -> Result<Duration> {
    let (n, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = n
        .parse()
        .with_context(|| format!("`{text}`: expected a number and s, m, h or d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("`{text}`: expected a number and s, m, h or d (e.g. 2h)"),
    };
    Ok(Duration::from_secs(secs))
}

fn from_env(given: Option<String>, var: &str, what: &str) -> Result<String> {
    given
        .or_else(|| std::env::var(var).ok())
        .with_context(|| format!("give {what}, or set {var}"))
}

pub fn run(command: PassportCommand) -> Result<()> {
    match command {
        PassportCommand::Issue { key, scope, config } => {
            let ScopeArgs {
                agent,
                models,
                tools,
                max_class,
                expires,
                budget_tokens,
            } = scope;
            let expires = expires.context("give --expires (e.g. 2h)")?;
            let config = crate::load_config(config.as_deref())?;
            let keys = crate::open_keys(&config)?;
            let plain = from_env(key, "BULWARK_API_KEY", "--key")?;
            let key = match keys.authenticate(Some(&plain)) {
                Ok(Some(k)) => k,
                _ => bail!("that API key is not valid here (unknown or revoked)"),
            };
            // A passport holds no more than its key.
            if let Some(m) = models.iter().find(|m| !key.allows_model(m)) {
                bail!("the key may not use the model `{m}`, so its passports may not either");
            }
            let covered = |t: &String| match t.strip_suffix('*') {
                None => tool_allowed(&key.record.spec.tools, t),
                Some(prefix) => key
                    .record
                    .spec
                    .tools
                    .iter()
                    .any(|k| k.strip_suffix('*').is_some_and(|kp| prefix.starts_with(kp))),
            };
            if let Some(t) = tools.iter().find(|t| !covered(t)) {
                bail!("the key may not use the tools `{t}`, so its passports may not either");
            }
            let max_class = max_class.unwrap_or(key.max_class());
            if max_class > key.max_class() {
                bail!("the key may send data up to `{}` only", key.max_class());
            }
            let authority = Authority::load_or_create(&config.server.data_dir.join(KEY_FILE))?;
            let token = authority.issue(&Scope {
                key_id: key.id().to_owned(),
                agent,
                models,
                tools,
                max_class,
                expires: SystemTime::now() + duration(&expires)?,
                budget_tokens,
            })?;
            println!("{token}");
            Ok(())
        }
        PassportCommand::Attenuate { passport, scope } => {
            let ScopeArgs {
                agent,
                models,
                tools,
                max_class,
                expires,
                budget_tokens,
            } = scope;
            let token = from_env(passport, "BULWARK_PASSPORT", "--passport")?;
            let narrower = Narrowing {
                agent,
                models: (!models.is_empty()).then_some(models),
                tools: (!tools.is_empty()).then_some(tools),
                max_class,
                expires: expires
                    .map(|e| duration(&e).map(|d| SystemTime::now() + d))
                    .transpose()?,
                budget_tokens,
            };
            println!("{}", bulwark_passport::attenuate(&token, &narrower)?);
            Ok(())
        }
        PassportCommand::Revoke { id, config } => {
            let config = crate::load_config(config.as_deref())?;
            Revocations::in_dir(&config.server.data_dir).revoke(&id)?;
            println!("revoked {id}");
            Ok(())
        }
        PassportCommand::Inspect { passport, config } => {
            let config = crate::load_config(config.as_deref())?;
            let dir = &config.server.data_dir;
            let authority = Authority::load_or_create(&dir.join(KEY_FILE))?;
            let p = Verifier::new(authority.public(), Revocations::in_dir(dir))
                .with_spending(bulwark_passport::Spending::in_dir(dir))
                .verify(&passport)?;
            println!(
                "{}",
                serde_json::json!({"id": p.id, "key_id": p.key_id, "chain": p.chain, "spent_tokens": p.spent()})
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_or_refused() {
        assert_eq!(duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        for bad in ["", "h", "2", "2w", "-1h", "1.5h"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }
}
