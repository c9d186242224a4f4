//! Agent passports: signed, scoped, expiring credentials an API key holder gives to an
//! autonomous agent, usable as bearer tokens on `/v1` and `/mcp`.
//!
//! A passport is a [Biscuit](https://www.biscuitsec.org/) token (`biscuit-auth`): its
//! first block is signed with the gateway's passport key (`passport.key` in the data
//! directory) and names the issuing API key, the agent, the models and tools it may use,
//! the highest data class it may send, and an expiry check. Its holder can derive a
//! narrower passport offline, for a sub-agent, by appending a block of checks
//! ([`attenuate`]): Biscuit's rules are that a block can add checks and never facts the
//! gateway's policies trust, so an attenuated passport can never do more than its
//! parent (a block that claims another model, tool, class or a later expiry changes
//! nothing). Biscuit rather than a format of our own: offline attenuation with a proof
//! that it only narrows, revocation identifiers per block, and a specification with
//! several independent implementations; the cost is one dependency tree (prost, nom).
//!
//! Every request with a passport is authorized by running the token's checks with the
//! request's facts (`request("model", M)` and `class(N)` on `/v1`, `request("tool", T)`
//! on `/mcp`, the time, and `used(I, N)`: the tokens spent so far by the passport of
//! block `I` and everything derived from it, see [`Spending`]). A token budget is a
//! check on its own block's `used`, so a derived passport's budget is its own and its
//! parent's still holds. Revocation ([`Revocations`]) takes any block's revocation
//! id; it takes effect on the next request. Passports whose signatures have been
//! checked once are kept (by the SHA-256 of the token, 10,000 at most), so a request
//! pays for the authorizer only.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{date, fact, int, string, Term};
use biscuit_auth::builder::{AuthorizerBuilder, BiscuitBuilder, BlockBuilder};
use biscuit_auth::{Biscuit, KeyPair, PrivateKey, PublicKey, UnverifiedBiscuit};
use bulwark_policy::DataClass;
use sha2::{Digest, Sha256};

/// What a passport token starts with (so that it is told apart from an API key).
pub const PREFIX: &str = "bwp_";
/// The passport key's file name in the data directory.
pub const KEY_FILE: &str = "passport.key";
/// The longest a passport may be issued for.
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PassportError {
    #[error("not a passport: {0}")]
    Malformed(String),
    #[error("the passport's signature does not verify (forged, or issued by another gateway)")]
    Forged,
    #[error("the passport has expired")]
    Expired,
    #[error("the passport has been revoked")]
    Revoked,
    #[error("the passport's token budget is spent")]
    BudgetSpent,
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PassportError + '_ {
    move |source| PassportError::Io {
        path: path.to_owned(),
        source,
    }
}

fn class_rank(c: DataClass) -> i64 {
    DataClass::ALL.iter().position(|x| *x == c).unwrap_or(0) as i64
}

/// The gateway's passport key: made on first use, kept in the data directory (owner
/// only), never logged.
pub struct Authority {
    keys: KeyPair,
}

impl Authority {
    pub fn load_or_create(path: &Path) -> Result<Authority, PassportError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim()).map_err(|_| {
                    PassportError::Invalid(format!("{}: not a passport key", path.display()))
                })?;
                let private = PrivateKey::from_bytes(&bytes, biscuit_auth::Algorithm::Ed25519)
                    .map_err(|_| {
                        PassportError::Invalid(format!("{}: not a passport key", path.display()))
                    })?;
                Ok(Authority {
                    keys: KeyPair::from(&private),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io(dir))?;
                }
                let keys = KeyPair::new();
                let text = hex::encode(&*keys.private().to_bytes());
                let tmp = path.with_extension("tmp");
                {
                    use std::io::Write;
                    let mut opts = std::fs::OpenOptions::new();
                    opts.write(true).create_new(true);
                    #[cfg(unix)]
                    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
                    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
                    f.sync_all().map_err(io(&tmp))?;
                }
                std::fs::rename(&tmp, path).map_err(io(path))?;
                Ok(Authority { keys })
            }
            Err(e) => Err(io(path)(e)),
        }
    }

    pub fn public(&self) -> PublicKey {
        self.keys.public()
    }

    /// Issues a passport for `scope`.
    pub fn issue(&self, scope: &Scope) -> Result<String, PassportError> {
        if scope.agent.trim().is_empty() {
            return Err(PassportError::Invalid("name the agent (--agent)".into()));
        }
        let lifetime = scope
            .expires
            .duration_since(SystemTime::now())
            .map_err(|_| PassportError::Invalid("the expiry is in the past".into()))?;
        if lifetime > MAX_LIFETIME {
            return Err(PassportError::Invalid(
                "a passport may be issued for 30 days at most".into(),
            ));
        }
        let params = HashMap::from([
            ("key".to_owned(), string(&scope.key_id)),
            ("agent".to_owned(), string(&scope.agent)),
            ("class".to_owned(), int(class_rank(scope.max_class))),
            ("expires".to_owned(), date(&scope.expires)),
        ]);
        let mut b: BiscuitBuilder = Biscuit::builder()
            .code_with_params(
                "passport_key({key}); agent({agent}); max_class({class});
                 check if time($t), $t <= {expires};",
                params,
                HashMap::new(),
            )
            .map_err(|e| PassportError::Invalid(e.to_string()))?;
        if let Some(budget) = scope.budget_tokens {
            b = b
                .code_with_params(
                    "check if used(0, $u), $u < {budget};",
                    HashMap::from([("budget".to_owned(), int(budget_term(budget)?))]),
                    HashMap::new(),
                )
                .map_err(|e| PassportError::Invalid(e.to_string()))?;
        }
        for m in &scope.models {
            b = b
                .code_with_params(
                    "model({m});",
                    HashMap::from([("m".to_owned(), string(m))]),
                    HashMap::new(),
                )
                .map_err(|e| PassportError::Invalid(e.to_string()))?;
        }
        for t in &scope.tools {
            let (fact, value) = match t.strip_suffix('*') {
                Some(prefix) => ("tool_prefix({t});", prefix),
                None => ("tool({t});", t.as_str()),
            };
            b = b
                .code_with_params(
                    fact,
                    HashMap::from([("t".to_owned(), string(value))]),
                    HashMap::new(),
                )
                .map_err(|e| PassportError::Invalid(e.to_string()))?;
        }
        let token = b
            .build(&self.keys)
            .map_err(|e| PassportError::Invalid(e.to_string()))?;
        Ok(format!(
            "{PREFIX}{}",
            token
                .to_base64()
                .map_err(|e| PassportError::Invalid(e.to_string()))?
        ))
    }
}

/// What a passport allows (when issued), or what a narrower one keeps (when derived).
#[derive(Debug, Clone)]
pub struct Scope {
    /// The issuing API key's id (issuing only).
    pub key_id: String,
    /// The agent's name, recorded with every use.
    pub agent: String,
    /// Models (or routes) it may use; empty: none.
    pub models: Vec<String>,
    /// MCP tools: names, prefixes ending in `*`, or `*`; empty: none.
    pub tools: Vec<String>,
    pub max_class: DataClass,
    pub expires: SystemTime,
    /// Most tokens (prompt and completion) its requests may use in all; `None`: the
    /// key's own limits only.
    pub budget_tokens: Option<u64>,
}

fn budget_term(budget: u64) -> Result<i64, PassportError> {
    i64::try_from(budget)
        .ok()
        .filter(|b| *b > 0)
        .ok_or_else(|| PassportError::Invalid("a token budget is 1 to 2^63-1".into()))
}

fn parse(token: &str) -> Result<&str, PassportError> {
    token
        .strip_prefix(PREFIX)
        .ok_or_else(|| PassportError::Malformed(format!("a passport starts with `{PREFIX}`")))
}

/// What a derived passport keeps: each `Some` narrows, `None` keeps the parent's.
#[derive(Debug, Clone, Default)]
pub struct Narrowing {
    pub agent: String,
    pub models: Option<Vec<String>>,
    pub tools: Option<Vec<String>>,
    pub max_class: Option<DataClass>,
    pub expires: Option<SystemTime>,
    /// Most tokens the derived passport (and what is derived from it) may use.
    pub budget_tokens: Option<u64>,
}

/// Derives a narrower passport offline (no key needed): a block of checks that keeps
/// only `narrower`'s models, tools, class and expiry. A wider value narrows nothing:
/// the parent's checks still hold.
pub fn attenuate(token: &str, narrower: &Narrowing) -> Result<String, PassportError> {
    let parent = UnverifiedBiscuit::from_base64(parse(token)?)
        .map_err(|e| PassportError::Malformed(e.to_string()))?;
    let set = |items: &[String]| -> Term {
        biscuit_auth::builder::set(items.iter().map(|s| string(s)).collect::<BTreeSet<_>>())
    };
    let mut params = HashMap::from([("agent".to_owned(), string(&narrower.agent))]);
    let mut code = String::from("agent({agent});\n");
    if let Some(expires) = &narrower.expires {
        params.insert("expires".into(), date(expires));
        code.push_str("check if time($t), $t <= {expires};\n");
    }
    if let Some(budget) = narrower.budget_tokens {
        // This block's own counter: the tokens spent by this passport and its children.
        params.insert("budget".into(), int(budget_term(budget)?));
        params.insert("block".into(), int(parent.block_count() as i64));
        code.push_str("check if used({block}, $u), $u < {budget};\n");
    }
    if let Some(models) = &narrower.models {
        params.insert("models".into(), set(models));
        code.push_str(
            "check if request(\"tool\", $t) or request(\"model\", $m), {models}.contains($m);\n",
        );
    }
    if let Some(class) = narrower.max_class {
        params.insert("class".into(), int(class_rank(class)));
        code.push_str("check if request(\"tool\", $t) or class($c), $c <= {class};\n");
    }
    if let Some(tools) = &narrower.tools {
        let exact: Vec<String> = tools
            .iter()
            .filter(|t| !t.ends_with('*'))
            .cloned()
            .collect();
        params.insert("tools".into(), set(&exact));
        code.push_str(
            "check if request(\"model\", $m) or request(\"tool\", $t), {tools}.contains($t)",
        );
        // One alternative per prefix: Datalog has no "any of these prefixes".
        for (i, p) in tools.iter().filter_map(|t| t.strip_suffix('*')).enumerate() {
            let name = format!("p{i}");
            code.push_str(&format!(
                " or request(\"tool\", $t), $t.starts_with({{{name}}})"
            ));
            params.insert(name, string(p));
        }
        code.push_str(";\n");
    }
    let block = BlockBuilder::new()
        .code_with_params(code, params, HashMap::new())
        .map_err(|e| PassportError::Invalid(e.to_string()))?;
    let child = parent
        .append(block)
        .map_err(|e| PassportError::Invalid(e.to_string()))?;
    Ok(format!(
        "{PREFIX}{}",
        child
            .to_base64()
            .map_err(|e| PassportError::Invalid(e.to_string()))?
    ))
}

/// A passport whose signatures verified.
pub struct Passport {
    token: Biscuit,
    /// The issuing API key.
    pub key_id: String,
    /// The agents, issuer first, then each that derived it.
    pub chain: Vec<String>,
    /// The first block's revocation id (hex): the passport's id.
    pub id: String,
    revocation_ids: Vec<String>,
    spending: Arc<Spending>,
    /// Some block sets a token budget (else no request needs the spent counts).
    budgeted: bool,
}

impl std::fmt::Debug for Passport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passport")
            .field("id", &self.id)
            .field("key_id", &self.key_id)
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

/// What is asked of a passport.
pub enum Request<'a> {
    /// A model, with the class of what is sent to it.
    Model(&'a str, DataClass),
    Tool(&'a str),
}

fn first_string(source: &str, predicate: &str) -> Option<String> {
    let start = source.find(&format!("{predicate}(\""))? + predicate.len() + 2;
    let end = source[start..].find("\")")?;
    Some(source[start..start + end].replace("\\\"", "\""))
}

impl Passport {
    fn new(token: Biscuit, spending: Arc<Spending>) -> Result<Passport, PassportError> {
        let authority = token
            .print_block_source(0)
            .map_err(|e| PassportError::Malformed(e.to_string()))?;
        let key_id = first_string(&authority, "passport_key")
            .ok_or_else(|| PassportError::Malformed("no issuing key".into()))?;
        let sources: Vec<String> = (0..token.block_count())
            .map(|i| token.print_block_source(i).unwrap_or_default())
            .collect();
        let chain = sources
            .iter()
            .map(|s| first_string(s, "agent").unwrap_or_else(|| "(unnamed)".into()))
            .collect();
        let budgeted = sources.iter().any(|s| s.contains("used("));
        let revocation_ids: Vec<String> = token
            .revocation_identifiers()
            .iter()
            .map(hex::encode)
            .collect();
        Ok(Passport {
            id: revocation_ids.first().cloned().unwrap_or_default(),
            key_id,
            chain,
            revocation_ids,
            token,
            spending,
            budgeted,
        })
    }

    /// The tokens this passport (and what was derived from it) has spent.
    pub fn spent(&self) -> u64 {
        self.spending
            .used(&self.revocation_ids)
            .last()
            .copied()
            .unwrap_or(0)
    }

    /// Counts `tokens` against this passport and every one it was derived from.
    pub fn spend(&self, tokens: u64) {
        self.spending.spend(&self.revocation_ids, tokens);
    }

    /// Runs the passport's checks for `req` at `now`.
    pub fn authorize(&self, req: &Request<'_>, now: SystemTime) -> Result<(), PassportError> {
        let (kind, name, class) = match req {
            Request::Model(m, c) => ("model", *m, Some(*c)),
            Request::Tool(t) => ("tool", *t, None),
        };
        // The policies are parsed once; each request adds only its facts.
        static POLICIES: std::sync::OnceLock<[Result<AuthorizerBuilder, String>; 2]> =
            std::sync::OnceLock::new();
        let policies = POLICIES.get_or_init(|| {
            let allow = "allow if request(\"model\", $m), model($m);
                 allow if request(\"tool\", $t), tool($t);
                 allow if request(\"tool\", $t), tool_prefix($p), $t.starts_with($p);";
            let parsed = |code: &str| {
                AuthorizerBuilder::new()
                    .code(code)
                    .map_err(|e| e.to_string())
            };
            [
                parsed(allow),
                parsed(&format!(
                    "{allow} check if class($c), max_class($m), $c <= $m;"
                )),
            ]
        });
        let base = policies[usize::from(class.is_some())]
            .clone()
            .map_err(PassportError::Invalid)?;
        let mut facts = vec![
            fact("request", &[string(kind), string(name)]),
            fact("time", &[date(&now)]),
        ];
        if let Some(c) = class {
            facts.push(fact("class", &[int(class_rank(c))]));
        }
        if self.budgeted {
            for (i, used) in self
                .spending
                .used(&self.revocation_ids)
                .into_iter()
                .enumerate()
            {
                facts.push(fact(
                    "used",
                    &[int(i as i64), int(i64::try_from(used).unwrap_or(i64::MAX))],
                ));
            }
        }
        let mut authorizer = facts
            .into_iter()
            .try_fold(base, AuthorizerBuilder::fact)
            .and_then(|b| b.build(&self.token))
            .map_err(|e| PassportError::Invalid(e.to_string()))?;
        match authorizer.authorize() {
            Ok(_) => Ok(()),
            Err(biscuit_auth::error::Token::FailedLogic(logic)) => {
                let text = logic.to_string();
                Err(if text.contains("time(") {
                    PassportError::Expired
                } else if text.contains("used(") {
                    PassportError::BudgetSpent
                } else if text.contains("class(") {
                    PassportError::Denied(format!(
                        "This passport may not send `{}` data.",
                        class.map_or("", DataClass::as_str)
                    ))
                } else {
                    PassportError::Denied(format!(
                        "This passport does not allow the {kind} `{name}`."
                    ))
                })
            }
            Err(e) => Err(PassportError::Denied(format!(
                "This passport could not be checked: {e}"
            ))),
        }
    }
}

/// Revoked passports: revocation ids (hex) in a file in the data directory, one per
/// line, read again whenever it changes.
pub struct Revocations {
    path: PathBuf,
    cache: Mutex<(Option<SystemTime>, BTreeSet<String>)>,
}

impl Revocations {
    pub fn in_dir(data_dir: &Path) -> Revocations {
        Revocations {
            path: data_dir.join("passports-revoked.txt"),
            cache: Mutex::new((None, BTreeSet::new())),
        }
    }

    pub fn revoke(&self, id: &str) -> Result<(), PassportError> {
        if id.len() < 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PassportError::Invalid(format!(
                "`{id}` is not a passport id"
            )));
        }
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        writeln!(f, "{}", id.to_ascii_lowercase()).map_err(io(&self.path))?;
        f.sync_all().map_err(io(&self.path))
    }

    fn is_revoked(&self, ids: &[String]) -> bool {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 != modified || modified.is_none() {
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            *cache = (
                modified,
                text.lines().map(|l| l.trim().to_owned()).collect(),
            );
        }
        ids.iter().any(|id| cache.1.contains(id))
    }
}

/// The tokens each passport has spent, by block revocation id (hex): a request's
/// tokens count for its passport and every passport it was derived from. Kept in
/// `passport-usage.json` in the data directory, written by [`Spending::flush`] (the
/// gateway does it with the keys' usage, every `usage_flush_ms`, and when it stops; so
/// a crash may forget the last second's tokens). One gateway's count: replicas each
/// keep their own.
pub struct Spending {
    path: Option<PathBuf>,
    /// The counts, and whether they changed since they were last written.
    counts: Mutex<(HashMap<String, u64>, bool)>,
}

/// The file [`Spending`] is kept in.
pub const USAGE_FILE: &str = "passport-usage.json";

impl Spending {
    /// In memory only.
    pub fn in_memory() -> Spending {
        Spending {
            path: None,
            counts: Mutex::new((HashMap::new(), false)),
        }
    }

    /// Kept in `data_dir` (read now; an unreadable file counts as nothing spent, and
    /// is logged).
    pub fn in_dir(data_dir: &Path) -> Spending {
        let path = data_dir.join(USAGE_FILE);
        let counts = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(path = %path.display(), error = %e, "passport usage unreadable; counting from zero");
                HashMap::new()
            }),
            Err(_) => HashMap::new(),
        };
        Spending {
            path: Some(path),
            counts: Mutex::new((counts, false)),
        }
    }

    fn spend(&self, ids: &[String], tokens: u64) {
        if tokens == 0 {
            return;
        }
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            let n = c.0.entry(id.clone()).or_insert(0);
            *n = n.saturating_add(tokens);
        }
        c.1 = true;
    }

    fn used(&self, ids: &[String]) -> Vec<u64> {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        ids.iter()
            .map(|id| c.0.get(id).copied().unwrap_or(0))
            .collect()
    }

    /// Writes the counts if they changed since they were last written.
    pub fn flush(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = {
            let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            if !c.1 {
                return Ok(());
            }
            c.1 = false;
            serde_json::to_vec(&c.0).map_err(std::io::Error::other)?
        };
        let tmp = path.with_extension("json.tmp");
        let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            // Try again at the next flush.
            self.counts.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        }
        written
    }
}

/// Checks passports presented to the gateway.
pub struct Verifier {
    public: PublicKey,
    revocations: Revocations,
    verified: Mutex<HashMap<[u8; 32], Arc<Passport>>>,
    pub spending: Arc<Spending>,
}

impl Verifier {
    /// Counting spent tokens in memory; see [`Verifier::with_spending`].
    pub fn new(public: PublicKey, revocations: Revocations) -> Verifier {
        Verifier {
            public,
            revocations,
            verified: Mutex::new(HashMap::new()),
            spending: Arc::new(Spending::in_memory()),
        }
    }

    pub fn with_spending(mut self, spending: Spending) -> Verifier {
        self.spending = Arc::new(spending);
        self
    }

    /// The passport `token` stands for, if its signatures verify and it is not revoked.
    pub fn verify(&self, token: &str) -> Result<Arc<Passport>, PassportError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .cloned();
        let passport = match cached {
            Some(p) => p,
            None => {
                let body = parse(token)?;
                let biscuit = Biscuit::from_base64(body, self.public).map_err(|e| match e {
                    biscuit_auth::error::Token::Format(biscuit_auth::error::Format::Signature(
                        _,
                    )) => PassportError::Forged,
                    biscuit_auth::error::Token::Format(
                        biscuit_auth::error::Format::UnknownPublicKey
                        | biscuit_auth::error::Format::InvalidSignatureSize(_),
                    ) => PassportError::Forged,
                    other => PassportError::Malformed(other.to_string()),
                })?;
                let p = Arc::new(Passport::new(biscuit, Arc::clone(&self.spending))?);
                let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= 10_000 {
                    cache.clear();
                }
                cache.insert(digest, Arc::clone(&p));
                p
            }
        };
        if self.revocations.is_revoked(&passport.revocation_ids) {
            return Err(PassportError::Revoked);
        }
        Ok(passport)
    }
}

#[cfg(test)]
mod tests;
