//! The key database: one SQLite file, created on first open, schema versioned by
//! `PRAGMA user_version` with one migration per version, applied in order in one
//! transaction each. Nothing here holds the plaintext of a key.

use std::path::Path;

use bulwark_policy::DataClass;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use crate::limits::{Day, Millis, Period};
use crate::token::KeyHash;
use crate::KeysError;

/// Schema migrations; index + 1 is the `user_version` after applying it. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: keys and per-day usage.
    "CREATE TABLE keys (
        id            TEXT PRIMARY KEY,
        name          TEXT NOT NULL,
        tenant        TEXT NOT NULL,
        hash          BLOB NOT NULL,
        models        TEXT NOT NULL,
        max_class     TEXT NOT NULL,
        default_class TEXT,
        policy        TEXT,
        rpm           INTEGER,
        tpm           INTEGER,
        budget_tokens INTEGER,
        budget_period TEXT,
        created_ms    INTEGER NOT NULL,
        revoked_ms    INTEGER
    );
    CREATE TABLE usage (
        key_id            TEXT NOT NULL,
        model             TEXT NOT NULL,
        day               TEXT NOT NULL,
        requests          INTEGER NOT NULL DEFAULT 0,
        prompt_tokens     INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, model, day)
    );",
    // 2: a guard profile per key.
    "ALTER TABLE keys ADD COLUMN guard TEXT;",
    // 3: watermarked answers per key.
    "ALTER TABLE keys ADD COLUMN watermark INTEGER NOT NULL DEFAULT 0;",
    // 4: the MCP tools a key may list and call.
    "ALTER TABLE keys ADD COLUMN tools TEXT NOT NULL DEFAULT '[]';",
];

/// What a key may do; given when it is created (as JSON by the admin API, as
/// arguments by `bulwark keys create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// A label for people ("ci", "alice's laptop").
    pub name: String,
    /// Whose key this is; answers are never cached across tenants. Default: the name.
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub tenant: Option<String>,
    /// Model names (or route names) this key may use; empty: all.
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long = "model", value_name = "MODEL"))]
    pub models: Vec<String>,
    /// The highest data class this key may send. Default `secret` (no cap).
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub max_class: Option<DataClass>,
    /// The class of this key's requests that say nothing else. Default: the server's.
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub default_class: Option<DataClass>,
    /// A named policy from the config (`[policies.NAME]`) replacing the server's.
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub policy: Option<String>,
    /// Requests per minute (sliding window).
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub rpm: Option<u64>,
    /// Prompt + completion tokens per minute (sliding window).
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub tpm: Option<u64>,
    /// Tokens allowed per budget period.
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub budget_tokens: Option<u64>,
    /// `day` or `month` (UTC calendar). Default `month` when a budget is set.
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub budget_period: Option<Period>,
    /// A guard profile from the config (`[guard.profiles.NAME]`) for this key's requests.
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub guard: Option<String>,
    /// Watermark what the local models write for this key (as `watermark = true` on a
    /// model does for everyone).
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub watermark: bool,
    /// MCP tools this key may list and call on `/mcp`: names (`notes__search`),
    /// prefixes (`files__*`) or `*`; empty (the default): none.
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long = "tool", value_name = "PATTERN"))]
    pub tools: Vec<String>,
}

impl KeySpec {
    pub fn named(name: &str) -> Self {
        KeySpec {
            name: name.to_owned(),
            tenant: None,
            models: Vec::new(),
            max_class: None,
            default_class: None,
            policy: None,
            rpm: None,
            tpm: None,
            budget_tokens: None,
            budget_period: None,
            guard: None,
            watermark: false,
            tools: Vec::new(),
        }
    }

    /// Checks the fields a person typed; `None` when all is well.
    pub fn problem(&self) -> Option<String> {
        // Invisible characters (zero-width, bidi controls, tags, other format
        // characters) would make two names that list alike name two tenants, and
        // leading or trailing spaces the same.
        let invisible = |c: char| {
            c.is_control()
                || matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
                    | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}'
                    | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}')
        };
        let label = |what: &str, s: &str| {
            (s.trim().is_empty()
                || s.trim() != s
                || s.len() > 200
                || s.chars().any(invisible))
            .then(|| {
                format!(
                    "{what} must be 1 to 200 printable characters, without invisible ones or spaces at either end"
                )
            })
        };
        label("name", &self.name)
            .or_else(|| self.tenant.as_deref().and_then(|t| label("tenant", t)))
            .or_else(|| self.models.iter().find_map(|m| label("each model", m)))
            .or_else(|| self.tools.iter().find_map(|t| label("each tool", t)))
            .or_else(|| self.policy.as_deref().and_then(|p| label("policy", p)))
            .or_else(|| {
                [
                    ("rpm", self.rpm),
                    ("tpm", self.tpm),
                    ("budget_tokens", self.budget_tokens),
                ]
                .into_iter()
                .find(|(_, v)| *v == Some(0))
                .map(|(what, _)| format!("{what} must be at least 1 (leave it out for no limit)"))
            })
            .or_else(|| {
                (self.budget_period.is_some() && self.budget_tokens.is_none())
                    .then(|| "budget_period needs budget_tokens".to_owned())
            })
            .or_else(|| match (self.max_class, self.default_class) {
                (Some(max), Some(def)) if def > max => {
                    Some(format!("default_class {def} is above max_class {max}"))
                }
                _ => None,
            })
    }

    pub fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or(&self.name)
    }

    pub fn max_class(&self) -> DataClass {
        self.max_class.unwrap_or(DataClass::Secret)
    }

    pub fn budget(&self) -> Option<(u64, Period)> {
        self.budget_tokens
            .map(|b| (b, self.budget_period.unwrap_or(Period::Month)))
    }
}

/// A stored key, without its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    pub id: String,
    #[serde(flatten)]
    pub spec: KeySpec,
    pub created_ms: Millis,
    pub revoked_ms: Option<Millis>,
    #[serde(skip)]
    pub hash: KeyHash,
}

/// Usage of one key for one model on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub model: String,
    pub day: String,
    #[serde(flatten)]
    pub usage: Usage,
}

pub struct Store {
    conn: Connection,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, KeysError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| KeysError::Io {
                path: dir.to_owned(),
                source: e,
            })?;
        }
        let conn = Connection::open(path)?;
        Store::init(conn)
    }

    /// A database that lives in memory only (tests, benchmarks).
    pub fn in_memory() -> Result<Store, KeysError> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store, KeysError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL: the CLI and the server can use the file at once; NORMAL: a commit is
        // durable once the WAL is checkpointed (a power cut can lose the last commits,
        // never corrupt the file).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(KeysError::Invalid(format!(
                "the key database has schema version {version}, newer than this Bulwark knows ({known}); use a newer Bulwark"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
            tracing::info!(version = i + 1, "key database migrated");
        }
        Ok(Store { conn })
    }

    /// Changes whenever another connection (another process) commits.
    pub fn data_version(&self) -> Result<i64, KeysError> {
        Ok(self
            .conn
            .pragma_query_value(None, "data_version", |r| r.get(0))?)
    }

    pub fn insert(
        &self,
        id: &str,
        hash: &KeyHash,
        spec: &KeySpec,
        now: Millis,
    ) -> Result<KeyRecord, KeysError> {
        let models =
            serde_json::to_string(&spec.models).map_err(|e| KeysError::Invalid(e.to_string()))?;
        let tools =
            serde_json::to_string(&spec.tools).map_err(|e| KeysError::Invalid(e.to_string()))?;
        self.conn.execute(
            "INSERT INTO keys (id, name, tenant, hash, models, max_class, default_class, policy,
                               rpm, tpm, budget_tokens, budget_period, created_ms, guard,
                               watermark, tools)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            params![
                id,
                spec.name,
                spec.tenant(),
                &hash[..],
                models,
                spec.max_class().as_str(),
                spec.default_class.map(DataClass::as_str),
                spec.policy,
                spec.rpm.map(to_i64),
                spec.tpm.map(to_i64),
                spec.budget_tokens.map(to_i64),
                spec.budget().map(|(_, p)| p.as_str()),
                to_i64(now),
                spec.guard,
                spec.watermark,
                tools,
            ],
        )?;
        self.get(id)?
            .ok_or_else(|| KeysError::Invalid("the key vanished after insert".into()))
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
        let class = |s: Option<String>| s.and_then(|s| s.parse::<DataClass>().ok());
        let models: String = r.get("models")?;
        let tools: String = r.get("tools")?;
        let hash: Vec<u8> = r.get("hash")?;
        let mut h = [0u8; 32];
        if hash.len() == 32 {
            h.copy_from_slice(&hash);
        }
        Ok(KeyRecord {
            id: r.get("id")?,
            spec: KeySpec {
                name: r.get("name")?,
                tenant: Some(r.get("tenant")?),
                models: serde_json::from_str(&models).unwrap_or_default(),
                max_class: class(r.get("max_class")?),
                default_class: class(r.get("default_class")?),
                policy: r.get("policy")?,
                rpm: r.get::<_, Option<i64>>("rpm")?.map(to_u64),
                tpm: r.get::<_, Option<i64>>("tpm")?.map(to_u64),
                budget_tokens: r.get::<_, Option<i64>>("budget_tokens")?.map(to_u64),
                budget_period: r
                    .get::<_, Option<String>>("budget_period")?
                    .and_then(|p| Period::parse(&p)),
                guard: r.get("guard")?,
                watermark: r.get("watermark")?,
                tools: serde_json::from_str(&tools).unwrap_or_default(),
            },
            created_ms: to_u64(r.get("created_ms")?),
            revoked_ms: r.get::<_, Option<i64>>("revoked_ms")?.map(to_u64),
            hash: h,
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<KeyRecord>, KeysError> {
        Ok(self
            .conn
            .prepare_cached("SELECT * FROM keys WHERE id = ?1")?
            .query_row([id], Store::row)
            .optional()?)
    }

    pub fn all(&self) -> Result<Vec<KeyRecord>, KeysError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT * FROM keys ORDER BY created_ms, id")?;
        let rows = stmt.query_map([], Store::row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks a key revoked; `false` when there is no such key. Revoking twice is harmless.
    pub fn revoke(&self, id: &str, now: Millis) -> Result<bool, KeysError> {
        let exists = self.get(id)?.is_some();
        self.conn.execute(
            "UPDATE keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            params![id, to_i64(now)],
        )?;
        Ok(exists)
    }

    /// Adds usage counts, all in one transaction.
    pub fn add_usage(&mut self, rows: &[(String, String, Day, Usage)]) -> Result<(), KeysError> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO usage (key_id, model, day, requests, prompt_tokens, completion_tokens)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (key_id, model, day) DO UPDATE SET
                   requests = requests + excluded.requests,
                   prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                   completion_tokens = completion_tokens + excluded.completion_tokens",
            )?;
            for (key, model, day, u) in rows {
                stmt.execute(params![
                    key,
                    model,
                    day.iso(),
                    to_i64(u.requests),
                    to_i64(u.prompt_tokens),
                    to_i64(u.completion_tokens)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A key's usage per model and day, newest day first.
    pub fn usage(&self, key_id: &str) -> Result<Vec<UsageRow>, KeysError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT model, day, requests, prompt_tokens, completion_tokens FROM usage
             WHERE key_id = ?1 ORDER BY day DESC, model",
        )?;
        let rows = stmt.query_map([key_id], |r| {
            Ok(UsageRow {
                model: r.get(0)?,
                day: r.get(1)?,
                usage: Usage {
                    requests: to_u64(r.get(2)?),
                    prompt_tokens: to_u64(r.get(3)?),
                    completion_tokens: to_u64(r.get(4)?),
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Tokens a key used from `since` (inclusive) on.
    pub fn tokens_since(&self, key_id: &str, since: Day) -> Result<u64, KeysError> {
        let total: i64 = self
            .conn
            .prepare_cached(
                "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM usage
                 WHERE key_id = ?1 AND day >= ?2",
            )?
            .query_row(params![key_id, since.iso()], |r| r.get(0))?;
        Ok(to_u64(total))
    }

    /// Whether any key was ever created (revoked ones included).
    pub fn any(&self) -> Result<bool, KeysError> {
        Ok(self
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM keys)", [], |r| r.get(0))?)
    }
}
