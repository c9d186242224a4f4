//! Identity and limits: virtual API keys, request and token rate limits, token budgets
//! and persisted usage.
//!
//! [`Keys`] is what the server holds. It keeps every key in memory and answers
//! [`Keys::authenticate`] and [`Keys::admit`] without touching the disk, except for one
//! cheap `PRAGMA data_version` per request that notices when another process (the
//! `bulwark keys` CLI) changed the database; the keys are then reloaded before the
//! request is judged, so a revocation takes effect on the next request.
//!
//! Usage is counted in memory at once (limits and budgets see it immediately) and
//! written to SQLite by [`Keys::flush`], which the server calls periodically and at
//! shutdown: a crash loses at most the usage of the last flush interval, never a key.
//!
//! Nothing here ever logs or stores a plaintext key.

pub mod limits;
pub mod store;
pub mod token;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bulwark_policy::DataClass;

pub use limits::{Day, Millis, Period};
pub use store::{KeyRecord, KeySpec, Store, Usage, UsageRow};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("key database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("cannot create {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no randomness from the operating system: {0}")]
    Random(getrandom::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("no key with id `{0}`")]
    NotFound(String),
}

/// Why a request was not authenticated. Deliberately coarse: a client learns only
/// whether it sent a key at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    /// Malformed, unknown, wrong secret, or revoked.
    Invalid,
}

/// Which limit refused a request, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Requests { retry_after_ms: Millis },
    Tokens { retry_after_ms: Millis },
    Budget { retry_after_ms: Millis },
}

impl Limited {
    pub fn retry_after_secs(self) -> u64 {
        let ms = match self {
            Limited::Requests { retry_after_ms }
            | Limited::Tokens { retry_after_ms }
            | Limited::Budget { retry_after_ms } => retry_after_ms,
        };
        ms.div_ceil(1000).max(1)
    }
}

pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// A key and its live counters.
pub struct Key {
    pub record: KeyRecord,
    counters: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    requests: limits::SlidingWindow,
    tokens: limits::SlidingWindow,
    /// First day of the budget period `budget_used` belongs to.
    budget_from: Option<Day>,
    budget_used: u64,
}

impl Key {
    pub fn id(&self) -> &str {
        &self.record.id
    }

    pub fn tenant(&self) -> &str {
        self.record.spec.tenant()
    }

    /// Whether this key may use the model (or route) named `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.record.spec.models.is_empty() || self.record.spec.models.iter().any(|m| m == model)
    }

    pub fn max_class(&self) -> DataClass {
        self.record.spec.max_class()
    }

    fn counters(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tokens used in the current budget period, and the budget.
    pub fn budget(&self, now: Millis) -> Option<(u64, u64)> {
        let (budget, period) = self.record.spec.budget()?;
        let mut c = self.counters();
        roll(&mut c, period, now);
        Some((c.budget_used, budget))
    }
}

fn roll(c: &mut Counters, period: Period, now: Millis) {
    let from = period.start(Day::of(now));
    if c.budget_from != Some(from) {
        c.budget_from = Some(from);
        c.budget_used = 0;
    }
}

struct Loaded {
    version: i64,
    any: bool,
    by_id: HashMap<String, Arc<Key>>,
}

type Pending = HashMap<(String, String, Day), Usage>;

/// The key service: authentication, limits, usage.
pub struct Keys {
    store: Mutex<Store>,
    loaded: RwLock<Loaded>,
    pending: Mutex<Pending>,
    /// Keys are required even while none exists.
    required: bool,
}

impl Keys {
    /// Loads every key from `store`. With `required`, requests need a key even before
    /// the first one is created; otherwise only once one has been.
    pub fn new(store: Store, required: bool) -> Result<Keys, KeysError> {
        let keys = Keys {
            store: Mutex::new(store),
            loaded: RwLock::new(Loaded {
                version: -1,
                any: false,
                by_id: HashMap::new(),
            }),
            pending: Mutex::new(HashMap::new()),
            required,
        };
        keys.reload(now_ms())?;
        Ok(keys)
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the keys, keeping the counters of those that still exist.
    fn reload(&self, now: Millis) -> Result<(), KeysError> {
        let store = self.store();
        let version = store.data_version()?;
        let records = store.all()?;
        let any = !records.is_empty();
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        let mut by_id = HashMap::with_capacity(records.len());
        for record in records {
            let key = match loaded.by_id.get(&record.id) {
                Some(old) if old.record == record => Arc::clone(old),
                old => {
                    let mut c = Counters::default();
                    if let Some(old) = old {
                        let mut o = old.counters();
                        c.requests = std::mem::take(&mut o.requests);
                        c.tokens = std::mem::take(&mut o.tokens);
                    }
                    if let Some((_, period)) = record.spec.budget() {
                        let from = period.start(Day::of(now));
                        c.budget_from = Some(from);
                        c.budget_used = store.tokens_since(&record.id, from)?
                            + self.pending_tokens(&record.id, from);
                    }
                    Arc::new(Key {
                        record,
                        counters: Mutex::new(c),
                    })
                }
            };
            by_id.insert(key.record.id.clone(), key);
        }
        *loaded = Loaded {
            version,
            any,
            by_id,
        };
        Ok(())
    }

    fn pending_tokens(&self, key_id: &str, from: Day) -> u64 {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((k, _, d), _)| k == key_id && *d >= from)
            .map(|(_, u)| u.tokens())
            .sum()
    }

    /// Reloads if another process changed the database since we last looked.
    fn refresh(&self, now: Millis) -> Result<(), KeysError> {
        let version = self.store().data_version()?;
        let current = self
            .loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .version;
        if version != current {
            self.reload(now)?;
        }
        Ok(())
    }

    /// Whether requests must carry a key.
    pub fn required(&self) -> bool {
        self.required || self.loaded.read().unwrap_or_else(|p| p.into_inner()).any
    }

    /// The keys as the database has them now (re-read if it changed).
    fn current(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        if let Err(e) = self.refresh(now_ms()) {
            // Keep serving with what is loaded; a broken disk must not open the gate.
            tracing::error!(error = %e, "cannot check the key database for changes");
        }
        self.loaded.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The key a request presented (`None` if it sent none), checked.
    /// `Ok(None)`: no key sent, and none is required.
    pub fn authenticate(&self, presented: Option<&str>) -> Result<Option<Arc<Key>>, AuthError> {
        let loaded = self.current();
        if !self.required && !loaded.any {
            // The open laptop case: whatever a client sends as its key (OpenAI SDKs
            // insist on sending one) is ignored.
            return Ok(None);
        }
        let presented = presented.ok_or(AuthError::Missing)?;
        let id = token::id_of(presented).ok_or(AuthError::Invalid)?;
        let key = loaded.by_id.get(id).ok_or(AuthError::Invalid)?;
        if !token::matches(presented, &key.record.hash) || key.record.revoked_ms.is_some() {
            return Err(AuthError::Invalid);
        }
        Ok(Some(Arc::clone(key)))
    }

    /// The live (not revoked) key with id `id`: the key a passport was issued by.
    pub fn live(&self, id: &str) -> Option<Arc<Key>> {
        self.current()
            .by_id
            .get(id)
            .filter(|k| k.record.revoked_ms.is_none())
            .cloned()
    }

    /// Counts one request against the key's limits, or says which limit refuses it.
    pub fn admit(&self, key: &Key, model: &str, now: Millis) -> Result<(), Limited> {
        let spec = &key.record.spec;
        {
            let mut c = key.counters();
            if let Some((budget, period)) = spec.budget() {
                roll(&mut c, period, now);
                if c.budget_used >= budget {
                    let next = period.next(Day::of(now)).start_ms();
                    return Err(Limited::Budget {
                        retry_after_ms: next.saturating_sub(now),
                    });
                }
            }
            if let Some(tpm) = spec.tpm {
                if let Some(ms) = c.tokens.wait(tpm, now) {
                    return Err(Limited::Tokens { retry_after_ms: ms });
                }
            }
            if let Some(rpm) = spec.rpm {
                c.requests
                    .admit(rpm, now)
                    .map_err(|ms| Limited::Requests { retry_after_ms: ms })?;
            }
        }
        self.count(
            key,
            model,
            now,
            Usage {
                requests: 1,
                ..Usage::default()
            },
        );
        Ok(())
    }

    /// Records the tokens an answer used.
    pub fn record_tokens(&self, key: &Key, model: &str, prompt: u64, completion: u64, now: Millis) {
        let tokens = prompt + completion;
        {
            let mut c = key.counters();
            c.tokens.add(tokens, now);
            if let Some((_, period)) = key.record.spec.budget() {
                roll(&mut c, period, now);
                c.budget_used += tokens;
            }
        }
        let usage = Usage {
            requests: 0,
            prompt_tokens: prompt,
            completion_tokens: completion,
        };
        self.count(key, model, now, usage);
    }

    fn count(&self, key: &Key, model: &str, now: Millis, add: Usage) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let row = pending
            .entry((key.record.id.clone(), model.to_owned(), Day::of(now)))
            .or_default();
        row.requests += add.requests;
        row.prompt_tokens += add.prompt_tokens;
        row.completion_tokens += add.completion_tokens;
    }

    /// Writes the usage counted since the last flush. On failure the counts are kept
    /// for the next try.
    pub fn flush(&self) -> Result<(), KeysError> {
        let rows: Vec<_> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.is_empty() {
                return Ok(());
            }
            pending.drain().map(|((k, m, d), u)| (k, m, d, u)).collect()
        };
        let mut store = self.store();
        if let Err(e) = store.add_usage(&rows) {
            drop(store);
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (k, m, d, u) in rows {
                let row = pending.entry((k, m, d)).or_default();
                row.requests += u.requests;
                row.prompt_tokens += u.prompt_tokens;
                row.completion_tokens += u.completion_tokens;
            }
            return Err(e);
        }
        // Our own commit does not change data_version for this connection, so the
        // loaded keys stay current.
        Ok(())
    }

    /// Creates a key; returns its record and the plaintext, which is never seen again.
    pub fn create(&self, spec: &KeySpec) -> Result<(KeyRecord, String), KeysError> {
        if let Some(p) = spec.problem() {
            return Err(KeysError::Invalid(p));
        }
        let (id, plaintext) = token::generate().map_err(KeysError::Random)?;
        let record = self
            .store()
            .insert(&id, &token::hash(&plaintext), spec, now_ms())?;
        self.reload(now_ms())?;
        tracing::info!(key_id = %id, name = %spec.name, "key created");
        Ok((record, plaintext))
    }

    pub fn revoke(&self, id: &str) -> Result<KeyRecord, KeysError> {
        if !self.store().revoke(id, now_ms())? {
            return Err(KeysError::NotFound(id.to_owned()));
        }
        self.reload(now_ms())?;
        tracing::info!(key_id = %id, "key revoked");
        self.get(id)
    }

    pub fn get(&self, id: &str) -> Result<KeyRecord, KeysError> {
        self.store()
            .get(id)?
            .ok_or_else(|| KeysError::NotFound(id.to_owned()))
    }

    pub fn list(&self) -> Result<Vec<KeyRecord>, KeysError> {
        self.store().all()
    }

    /// Persisted usage per model and day (flushing first, so it is current).
    pub fn usage(&self, id: &str) -> Result<Vec<UsageRow>, KeysError> {
        self.flush()?;
        self.store().usage(id)
    }
}

#[cfg(test)]
mod tests;
