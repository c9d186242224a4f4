//! What the handlers share: the model table (local engines and upstream routes) and limits.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bulwark_api::{ApiError, ErrorKind};
use bulwark_config::{Config, GuardConfig, LocalModelConfig, ModelsConfig, RouteConfig};
use bulwark_engine::{Engine, EngineConfig};
use bulwark_policy::{DataClass, Policy, Residency};
use bulwark_upstream::{Upstream, UpstreamError};

/// The handlers' shared state: one reference count to clone per extractor, not one per
/// field (axum clones the state for every middleware and handler of every request).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub max_body_bytes: usize,
    /// Longest wait for a request's whole body once its headers are in.
    pub body_read_timeout: std::time::Duration,
    pub models: Arc<Models>,
    /// `None` when the response cache is off.
    pub cache: Option<Arc<crate::cache::ResponseCache>>,
    pub keys: Arc<bulwark_keys::Keys>,
    /// `None` when the admin API is off.
    pub admin_token: Option<crate::auth::AdminTokenHash>,
    /// `None` when the guard is off.
    pub guard: Option<Arc<crate::guard::EdgeGuard>>,
    /// `None` when there is no audit log.
    pub audit: Option<Arc<bulwark_audit::AuditLog>>,
    /// Audit records carry request and answer bodies (`[audit] record_content`).
    pub audit_content: bool,
    /// `None` when answers carry no receipt.
    pub receipts: Option<Arc<bulwark_audit::receipt::Signer>>,
    /// The key that marks what local models write (`data_dir/watermark.key`); `None`
    /// when no model is served in-process.
    pub watermark: Option<bulwark_engine::watermark::WatermarkKey>,
    /// Slots for `/v1` requests served at once (`[server] max_in_flight`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    pub max_in_flight: usize,
    /// `None` when the MCP gateway is off.
    pub mcp: Option<crate::mcp::McpEdge>,
    /// Checks agent passports (signed with `passport.key` in the data directory).
    pub passports: Arc<bulwark_passport::Verifier>,
}

impl Shared {
    /// The watermark for an answer of local model `name`: when the model or the
    /// caller's key asks for one, at the model's strength.
    pub fn watermark_for(
        &self,
        name: &str,
        key_asks: bool,
    ) -> Option<bulwark_engine::watermark::Marker> {
        let model = &self.models.local.get(name)?.config;
        let key = self.watermark.clone()?;
        (model.watermark || key_asks).then(|| bulwark_engine::watermark::Marker {
            key,
            delta: model
                .watermark_delta
                .unwrap_or(bulwark_engine::watermark::DEFAULT_DELTA),
        })
    }
}

/// A model served in-process. The engine appears once loading has finished.
pub struct LocalModel {
    pub config: LocalModelConfig,
    pub engine: OnceLock<Arc<Engine>>,
    pub residency: Residency,
    /// How its weights were vouched for, once loaded (see `ModelObject::verification`).
    pub verification: OnceLock<&'static str>,
}

/// The sentence embedding model served in-process. It appears once loaded.
pub struct EmbeddingModel {
    pub config: bulwark_config::EmbeddingsConfig,
    pub embedder: OnceLock<Arc<bulwark_guard::encoder::Embedder>>,
    pub residency: Residency,
}

/// A client-facing model name served by an upstream.
pub struct UpstreamRoute {
    pub upstream: Arc<Upstream>,
    pub upstream_model: String,
    pub residency: Residency,
}

/// Every model this gateway serves, by the name clients use.
pub struct Models {
    pub local: BTreeMap<String, LocalModel>,
    /// `None` when off, or when its files are missing and it was not required.
    pub embedder: Option<EmbeddingModel>,
    pub upstream: BTreeMap<String, UpstreamRoute>,
    /// Client-facing names that stand for an ordered list of candidate models.
    pub routes: BTreeMap<String, RouteConfig>,
    pub policy: Policy,
    /// Named policies that keys may carry instead of `policy`.
    pub policies: BTreeMap<String, Policy>,
    pub default_class: DataClass,
    pub created: u64,
    /// `[models]`: what local model files must prove before loading.
    pub load_policy: ModelsConfig,
    /// `[guard]` (`None`: off) and its named profiles.
    pub guard_default: Option<GuardConfig>,
    pub guard_profiles: BTreeMap<String, Option<GuardConfig>>,
    /// Where the model registry lives.
    pub data_dir: std::path::PathBuf,
}

/// Where a request goes.
pub enum Target<'a> {
    Local(Arc<Engine>),
    Embedder(Arc<bulwark_guard::encoder::Embedder>),
    Upstream(&'a UpstreamRoute),
}

impl Models {
    pub fn from_config(config: &Config) -> Result<Self, UpstreamError> {
        let host = Residency::host(config.server.jurisdiction.clone());
        let local = config
            .local_models
            .iter()
            .map(|m| {
                let model = LocalModel {
                    config: m.clone(),
                    engine: OnceLock::new(),
                    residency: host.clone(),
                    verification: OnceLock::new(),
                };
                (m.name.clone(), model)
            })
            .collect();
        let mut upstream = BTreeMap::new();
        for u in &config.upstreams {
            let client = Arc::new(Upstream::new(u)?);
            for (alias, target) in &u.models {
                let route = UpstreamRoute {
                    upstream: Arc::clone(&client),
                    upstream_model: target.clone(),
                    residency: u.residency.clone(),
                };
                upstream.insert(alias.clone(), route);
            }
        }
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let embedder = config.embeddings.clone().and_then(|e| {
            let present = ["model.safetensors", "tokenizer.json"]
                .iter()
                .all(|f| e.dir.join(f).exists());
            if !present && !e.required {
                tracing::warn!(dir = %e.dir.display(), "no embedding model: its files are missing (scripts/fetch-model.sh fetches them); /v1/embeddings serves upstream models only");
                return None;
            }
            Some(EmbeddingModel {
                config: e,
                embedder: OnceLock::new(),
                residency: host.clone(),
            })
        });
        Ok(Models {
            local,
            embedder,
            upstream,
            routes: config
                .routes
                .iter()
                .map(|r| (r.model.clone(), r.clone()))
                .collect(),
            policy: config.policy.clone(),
            policies: config.policies.clone(),
            default_class: config.default_class,
            created,
            load_policy: config.models.clone(),
            guard_default: config.guard.clone(),
            guard_profiles: config.guard_profiles.clone(),
            data_dir: config.server.data_dir.clone(),
        })
    }

    /// The guard settings for a request: the key's profile, else the route's, else
    /// `[guard]`; `None` when they turn the guard off. `Err` names a profile the key
    /// refers to that the config no longer has.
    pub fn guard_for<'a>(
        &'a self,
        key: Option<&'a bulwark_keys::KeySpec>,
        model: &str,
    ) -> Result<Option<&'a GuardConfig>, &'a str> {
        let profile = key
            .and_then(|k| k.guard.as_deref())
            .or_else(|| self.routes.get(model).and_then(|r| r.guard.as_deref()));
        match profile {
            None => Ok(self.guard_default.as_ref()),
            Some(p) => self.guard_profiles.get(p).map(Option::as_ref).ok_or(p),
        }
    }

    /// The models a request for `model` may be served by, in order: a route's
    /// candidates, or the model itself.
    pub fn candidates<'a>(&'a self, model: &'a str) -> Result<Vec<&'a str>, ApiError> {
        if let Some(route) = self.routes.get(model) {
            return Ok(route.candidates.iter().map(String::as_str).collect());
        }
        if self.local.contains_key(model)
            || self.upstream.contains_key(model)
            || self
                .embedder
                .as_ref()
                .is_some_and(|e| e.config.name == model)
        {
            return Ok(vec![model]);
        }
        Err(ApiError::model_not_found(model))
    }

    /// Where a configured model runs.
    pub fn residency(&self, model: &str) -> Option<&Residency> {
        self.local
            .get(model)
            .map(|m| &m.residency)
            .or_else(|| self.upstream.get(model).map(|r| &r.residency))
            .or_else(|| {
                self.embedder
                    .as_ref()
                    .filter(|e| e.config.name == model)
                    .map(|e| &e.residency)
            })
    }

    pub fn resolve(&self, model: &str) -> Result<Target<'_>, ApiError> {
        if let Some(m) = self.local.get(model) {
            return match m.engine.get() {
                Some(engine) => Ok(Target::Local(Arc::clone(engine))),
                None => Err(loading(model)),
            };
        }
        if let Some(e) = self.embedder.as_ref().filter(|e| e.config.name == model) {
            return match e.embedder.get() {
                Some(embedder) => Ok(Target::Embedder(Arc::clone(embedder))),
                None => Err(loading(model)),
            };
        }
        match self.upstream.get(model) {
            Some(route) => Ok(Target::Upstream(route)),
            None => Err(ApiError::model_not_found(model)),
        }
    }

    /// True once every local model is loaded.
    pub fn ready(&self) -> bool {
        self.local.values().all(|m| m.engine.get().is_some())
            && self
                .embedder
                .as_ref()
                .is_none_or(|e| e.embedder.get().is_some())
    }

    /// Verifies and loads every local model, in order. The first failure is returned
    /// and is fatal: a gateway that silently serves a subset of its models is worse
    /// than one that refuses to start.
    pub async fn load_local(self: Arc<Self>) -> Result<(), String> {
        for (name, m) in &self.local {
            let cfg = m.config.clone();
            let (policy, data_dir) = (self.load_policy.clone(), self.data_dir.clone());
            let started = std::time::Instant::now();
            let (engine, how) =
                tokio::task::spawn_blocking(move || load_one(cfg, &policy, &data_dir))
                    .await
                    .map_err(|e| format!("loading `{name}` panicked: {e}"))??;
            tracing::info!(model = %name, verification = how, elapsed_ms = started.elapsed().as_millis() as u64, "model ready");
            let _ = m.verification.set(how);
            let _ = m.engine.set(Arc::new(engine));
        }
        if let Some(e) = &self.embedder {
            let cfg = e.config.clone();
            let started = std::time::Instant::now();
            let embedder = tokio::task::spawn_blocking(move || load_embedder(&cfg))
                .await
                .map_err(|err| format!("loading `{}` panicked: {err}", e.config.name))??;
            tracing::info!(model = %e.config.name, verification = "pinned-digest", elapsed_ms = started.elapsed().as_millis() as u64, "embedding model ready");
            let _ = e.embedder.set(Arc::new(embedder));
        }
        Ok(())
    }
}

/// Checks a model file against the registry as `[models]` requires: its digests, its
/// scan, and its manifest signature. Returns how it was vouched for.
fn check_registry(
    cfg: &LocalModelConfig,
    policy: &ModelsConfig,
    data_dir: &std::path::Path,
) -> Result<&'static str, String> {
    use bulwark_supply::registry::{self, Registry, Signatures};
    let registry = Registry::load(data_dir).map_err(|e| format!("model `{}`: {e}", cfg.name))?;
    let Some(entry) = registry.by_file(&cfg.path) else {
        return Err(format!(
            "model `{}`: {} is not in the model registry ({}), and [models] require_verified is on. \
             Register it with `bulwark models add {}`{}.",
            cfg.name,
            cfg.path.display(),
            Registry::path(data_dir).display(),
            cfg.path.display(),
            if policy.require_signature { " and sign it with `bulwark models sign NAME --key signing.key`" } else { "" }
        ));
    };
    let key: Option<bulwark_audit::receipt::VerifyingKey> = match &policy.signing_public_key {
        None => None,
        Some(p) => Some(
            bulwark_audit::read_key(p)
                .map_err(|e| format!("model `{}`: signing public key: {e}", cfg.name))?,
        ),
    };
    let sigs = match (&key, policy.require_signature) {
        (Some(k), true) => Signatures::Required(k),
        (Some(k), false) => Signatures::IfPresent(k),
        (None, _) => Signatures::Ignore,
    };
    let problems = registry::verify(entry, &sigs, &|_, _| {});
    if !problems.is_empty() {
        return Err(format!(
            "model `{}` (registry entry `{}`) failed verification, so it is not loaded: {}",
            cfg.name,
            entry.name,
            problems.join("; ")
        ));
    }
    // The file now matches the registry's digest, which was just recomputed: a pinned
    // digest is checked against it rather than by reading the file a second time.
    if let Some(expected) = &cfg.sha256 {
        let actual = std::fs::canonicalize(&cfg.path)
            .ok()
            .and_then(|p| entry.files.iter().find(|f| f.path == p))
            .map_or("", |f| f.sha256.as_str());
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(format!(
                "model `{}`: {}",
                cfg.name,
                bulwark_supply::VerifyError::Mismatch {
                    path: cfg.path.clone(),
                    expected: expected.clone(),
                    actual: actual.to_owned(),
                }
            ));
        }
    }
    Ok(if key.is_some() && entry.signature.is_some() {
        "registry+signature"
    } else {
        "registry"
    })
}

/// A model asked for before it has loaded: 503 with `Retry-After`.
fn loading(model: &str) -> ApiError {
    ApiError::new(
        ErrorKind::Unavailable,
        format!("The model `{model}` is still loading; retry shortly (GET /readyz says when it is ready)."),
    )
    .with_code(bulwark_api::ErrorCode::ModelLoading)
    .with_retry_after(1)
}

/// Checks the embedding model's files against their pinned digests, then loads it.
fn load_embedder(
    cfg: &bulwark_config::EmbeddingsConfig,
) -> Result<bulwark_guard::encoder::Embedder, String> {
    use bulwark_config::default_embedder::{MODEL_SHA256, TOKENIZER_SHA256};
    for (file, digest) in [
        ("model.safetensors", MODEL_SHA256),
        ("tokenizer.json", TOKENIZER_SHA256),
    ] {
        bulwark_supply::verify_sha256(&cfg.dir.join(file), digest).map_err(|e| {
            format!(
                "embedding model `{}`: {e} (run scripts/fetch-model.sh)",
                cfg.name
            )
        })?;
    }
    bulwark_guard::encoder::Embedder::load(&cfg.dir)
        .map_err(|e| format!("embedding model `{}`: {e}", cfg.name))
}

fn load_one(
    cfg: LocalModelConfig,
    policy: &ModelsConfig,
    data_dir: &std::path::Path,
) -> Result<(Engine, &'static str), String> {
    if !cfg.path.exists() {
        return Err(format!(
            "model `{}`: file {} does not exist (for the default model, run scripts/fetch-model.sh)",
            cfg.name,
            cfg.path.display()
        ));
    }
    // Each way reads the file once: the registry check also covers a pinned digest.
    let how = if policy.require_verified {
        check_registry(&cfg, policy, data_dir)?
    } else if let Some(expected) = &cfg.sha256 {
        bulwark_supply::verify_sha256(&cfg.path, expected)
            .map_err(|e| format!("model `{}`: {e}", cfg.name))?;
        "pinned-digest"
    } else {
        "none"
    };
    if how != "none" {
        tracing::info!(model = %cfg.name, verification = how, "model digest verified");
    }
    let engine = Engine::load(EngineConfig {
        name: cfg.name.clone(),
        path: cfg.path.clone(),
        ctx_size: cfg.ctx_size,
        threads: cfg.threads,
        parallel: cfg.parallel,
        batch_size: cfg.batch_size,
        queue_depth: cfg.queue_depth,
        unified_kv: cfg.unified_kv,
    })
    .map_err(|e| format!("model `{}`: {e}", cfg.name))?;
    Ok((engine, how))
}
