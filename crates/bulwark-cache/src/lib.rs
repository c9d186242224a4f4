//! Exact response cache.
//!
//! An answer is stored under a key derived from everything that decides it: the tenant,
//! the request's data class, the model the client asked for, and the request body with
//! the fields that only change its transport (`stream`, `stream_options`, `user`)
//! removed. Keys are SHA-256 digests, so the cache never holds a prompt in the clear
//! as a key. Entries expire after a TTL and the least recently used are evicted beyond
//! a bound. No IO: what to cache and how to replay it is the server's business.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Which endpoint an answer belongs to, so it is replayed in the right shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// A complete answer, as it will be replayed.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub kind: Kind,
    pub model: String,
    pub text: String,
    pub finish_reason: String,
    /// The original usage object, replayed as is.
    pub usage: Option<Value>,
}

pub type Key = [u8; 32];

/// Fields that change how an answer is delivered, not what it is.
const TRANSPORT_FIELDS: [&str; 3] = ["stream", "stream_options", "user"];

/// The cache key of a request. `body` must be the JSON object the client sent.
pub fn key(tenant: &str, class: &str, kind: Kind, body: &Value) -> Key {
    let mut normalised: Map<String, Value> = body.as_object().cloned().unwrap_or_default();
    for f in TRANSPORT_FIELDS {
        normalised.remove(f);
    }
    let mut h = Sha256::new();
    for part in [
        tenant,
        class,
        if kind == Kind::Chat {
            "chat"
        } else {
            "completion"
        },
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    // serde_json's map is ordered by key, so equal requests serialise identically.
    h.update(Value::Object(normalised).to_string().as_bytes());
    h.finalize().into()
}

struct Entry {
    answer: std::sync::Arc<Answer>,
    expires: Instant,
}

/// An in-memory LRU of answers with a time to live.
pub struct Cache {
    ttl: Duration,
    entries: Mutex<LruCache<Key, Entry>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Cache {
    pub fn new(max_entries: NonZeroUsize, ttl: Duration) -> Self {
        Cache {
            ttl,
            entries: Mutex::new(LruCache::new(max_entries)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut LruCache<Key, Entry>) -> T) -> T {
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn get_at(&self, key: &Key, now: Instant) -> Option<std::sync::Arc<Answer>> {
        self.with(|c| match c.get(key) {
            Some(e) if e.expires > now => Some(std::sync::Arc::clone(&e.answer)),
            Some(_) => {
                c.pop(key);
                None
            }
            None => None,
        })
    }

    pub fn put_at(&self, key: Key, answer: Answer, now: Instant) {
        let entry = Entry {
            answer: std::sync::Arc::new(answer),
            expires: now + self.ttl,
        };
        self.with(|c| c.put(key, entry));
    }

    pub fn get(&self, key: &Key) -> Option<std::sync::Arc<Answer>> {
        self.get_at(key, Instant::now())
    }

    pub fn put(&self, key: Key, answer: Answer) {
        self.put_at(key, answer, Instant::now());
    }

    pub fn len(&self) -> usize {
        self.with(|c| c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads a complete answer back out of a finished response body: an OpenAI JSON body
/// or an SSE stream of chunks. `None` when the body is not a complete, error-free answer.
pub fn parse_answer(kind: Kind, sse: bool, body: &[u8]) -> Option<Answer> {
    let text_of = |choice: &Value, streamed: bool| -> Option<String> {
        let v = match (kind, streamed) {
            (Kind::Chat, false) => choice.pointer("/message/content"),
            (Kind::Chat, true) => choice.pointer("/delta/content"),
            (Kind::Completion, _) => choice.get("text"),
        };
        v.and_then(Value::as_str).map(str::to_owned)
    };
    if !sse {
        let v: Value = serde_json::from_slice(body).ok()?;
        let choice = v.pointer("/choices/0")?;
        return Some(Answer {
            kind,
            model: v.get("model")?.as_str()?.to_owned(),
            text: text_of(choice, false)?,
            finish_reason: choice.get("finish_reason")?.as_str()?.to_owned(),
            usage: v.get("usage").cloned(),
        });
    }
    let body = std::str::from_utf8(body).ok()?;
    let (mut text, mut finish, mut usage, mut model, mut done) =
        (String::new(), None, None, None, false);
    for event in body.split("\n\n") {
        let Some(data) = event.trim().strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).ok()?;
        if v.get("error").is_some() {
            return None;
        }
        if let Some(m) = v.get("model").and_then(Value::as_str) {
            model.get_or_insert_with(|| m.to_owned());
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            usage = Some(u.clone());
        }
        if let Some(choice) = v.pointer("/choices/0") {
            if let Some(t) = text_of(choice, true) {
                text.push_str(&t);
            }
            if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
                finish = Some(f.to_owned());
            }
        }
    }
    // A stream that never said [DONE] or never finished was cut short: not an answer.
    if !done {
        return None;
    }
    Some(Answer {
        kind,
        model: model?,
        text,
        finish_reason: finish?,
        usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn transport_fields_do_not_change_the_key() {
        let a = json!({"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0});
        let b = json!({"temperature":0,"stream":true,"stream_options":{"include_usage":true},"user":"u1","messages":[{"role":"user","content":"hi"}],"model":"m"});
        assert_eq!(
            key("t", "public", Kind::Chat, &a),
            key("t", "public", Kind::Chat, &b)
        );
        let c = json!({"model":"m","messages":[{"role":"user","content":"hi!"}],"temperature":0});
        assert_ne!(
            key("t", "public", Kind::Chat, &a),
            key("t", "public", Kind::Chat, &c)
        );
        assert_ne!(
            key("t", "public", Kind::Chat, &a),
            key("u", "public", Kind::Chat, &a),
            "tenants must not share"
        );
        assert_ne!(
            key("t", "public", Kind::Chat, &a),
            key("t", "secret", Kind::Chat, &a)
        );
        assert_ne!(
            key("t", "public", Kind::Chat, &a),
            key("t", "public", Kind::Completion, &a)
        );
    }

    fn answer(text: &str) -> Answer {
        Answer {
            kind: Kind::Chat,
            model: "m".into(),
            text: text.into(),
            finish_reason: "stop".into(),
            usage: None,
        }
    }

    #[test]
    fn entries_expire_and_the_least_recently_used_go_first() {
        let cache = Cache::new(NonZeroUsize::MIN.saturating_add(1), Duration::from_secs(10));
        let t0 = Instant::now();
        cache.put_at([1; 32], answer("one"), t0);
        cache.put_at([2; 32], answer("two"), t0);
        assert!(cache.get_at(&[1; 32], t0).is_some()); // 1 is now the most recent
        cache.put_at([3; 32], answer("three"), t0);
        assert!(
            cache.get_at(&[2; 32], t0).is_none(),
            "2 was least recently used"
        );
        assert_eq!(
            cache.get_at(&[1; 32], t0).map(|a| a.text.clone()),
            Some("one".into())
        );
        assert!(
            cache
                .get_at(&[1; 32], t0 + Duration::from_secs(10))
                .is_none(),
            "expired"
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn answers_parse_from_json_and_sse() {
        let json_body = br#"{"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hi!"},"finish_reason":"stop"}],"usage":{"total_tokens":3}}"#;
        let a = parse_answer(Kind::Chat, false, json_body);
        assert_eq!(
            a.map(|a| (a.text, a.finish_reason)),
            Some(("Hi!".into(), "stop".into()))
        );
        let sse = "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n\
                   data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
                   data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"!\"},\"finish_reason\":null}]}\n\n\
                   data: {\"model\":\"m\",\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\n\
                   data: {\"model\":\"m\",\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\n\
                   data: [DONE]\n\n";
        let a = parse_answer(Kind::Chat, true, sse.as_bytes());
        assert_eq!(
            a.map(|a| (a.text, a.finish_reason, a.usage)),
            Some((
                "Hi!".into(),
                "length".into(),
                Some(json!({"total_tokens":3}))
            ))
        );
        // Cut short or failed: not an answer.
        let cut = sse.replace("data: [DONE]\n\n", "");
        assert_eq!(parse_answer(Kind::Chat, true, cut.as_bytes()), None);
        let failed = "data: {\"error\":{\"message\":\"x\"}}\n\ndata: [DONE]\n\n";
        assert_eq!(parse_answer(Kind::Chat, true, failed.as_bytes()), None);
    }
}
