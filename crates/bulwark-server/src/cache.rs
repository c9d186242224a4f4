//! The response cache at the edge: lookup before routing, replay in the shape the client
//! asked for (JSON or SSE), and storing an answer once its body has been sent completely.
//!
//! Only complete, successful answers are stored: the body is copied as it streams to the
//! client and parsed when it ends; a stream cut short, an error event, a non-200 answer
//! or one larger than `max_answer_bytes` is never cached. A client that hangs up before
//! the end stores nothing.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::{IntoResponse, Response};
use bulwark_cache::{parse_answer, Answer, Cache, Key, Kind};
use bulwark_config::CacheConfig;
use bytes::Bytes;
use futures_util::stream;
use http::StatusCode;
use serde_json::{json, Value};

use crate::sse;

pub const CACHE_HEADER: &str = "x-bulwark-cache";

/// The tenant of requests made without an API key (keys carry their own tenant).
pub const DEFAULT_TENANT: &str = "default";

pub struct ResponseCache {
    cache: Cache,
    config: CacheConfig,
}

impl ResponseCache {
    pub fn new(config: CacheConfig) -> Self {
        ResponseCache {
            cache: Cache::new(config.max_entries, config.ttl),
            config,
        }
    }

    /// Whether a request may be answered from, and stored in, the cache.
    pub fn cacheable(&self, deterministic: bool) -> bool {
        deterministic || !self.config.deterministic_only
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Answer>> {
        self.cache.get(key)
    }

    /// Passes `resp` through unchanged, keeping a copy of its body; stores the answer if
    /// the body completes and parses as a whole answer.
    pub fn store_when_complete(self: &Arc<Self>, resp: Response, key: Key, kind: Kind) -> Response {
        // A marked answer is not stored: replayed, it would reach requests that did
        // not ask for the mark, without the header that discloses it.
        if resp.status() != StatusCode::OK || resp.headers().contains_key(crate::WATERMARK_HEADER) {
            return resp;
        }
        let sse = crate::sse::is_event_stream(resp.headers());
        let cache = Arc::clone(self);
        crate::tap::on_whole_body(resp, self.config.max_answer_bytes, move |body| {
            if let Some(answer) = parse_answer(kind, sse, &body) {
                cache.cache.put(key, answer);
            }
        })
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An answer from the cache, in the shape of a fresh one: JSON, or SSE for a stream.
pub fn replay(answer: &Answer, stream: bool, include_usage: bool) -> Response {
    let created = now();
    let usage = answer.usage.clone().unwrap_or(Value::Null);
    let (id, object) = match answer.kind {
        Kind::Chat => (
            format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            "chat.completion",
        ),
        Kind::Completion => (
            format!("cmpl-{}", uuid::Uuid::new_v4().simple()),
            "text_completion",
        ),
    };
    if !stream {
        let choice = match answer.kind {
            Kind::Chat => {
                json!({"index": 0, "message": {"role": "assistant", "content": answer.text},
                                 "finish_reason": answer.finish_reason, "logprobs": null})
            }
            Kind::Completion => {
                json!({"index": 0, "text": answer.text, "finish_reason": answer.finish_reason, "logprobs": null})
            }
        };
        let body = json!({"id": id, "object": object, "created": created, "model": answer.model,
                          "choices": [choice], "usage": usage});
        return axum::Json(body).into_response();
    }
    let chunk_object = if answer.kind == Kind::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let frame = |choices: Value, usage: Option<&Value>| {
        let mut v = json!({"id": id, "object": chunk_object, "created": created, "model": answer.model, "choices": choices});
        if let Some(u) = usage {
            v["usage"] = u.clone();
        }
        sse::event(&v)
    };
    let (head, body, tail) = match answer.kind {
        Kind::Chat => (
            Some(
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
            ),
            json!([{"index": 0, "delta": {"content": answer.text}, "finish_reason": null}]),
            json!([{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}]),
        ),
        Kind::Completion => (
            None,
            json!([{"index": 0, "text": answer.text, "finish_reason": null}]),
            json!([{"index": 0, "text": "", "finish_reason": answer.finish_reason}]),
        ),
    };
    let mut frames: Vec<Bytes> = head.into_iter().map(|h| frame(h, None)).collect();
    if !answer.text.is_empty() {
        frames.push(frame(body, None));
    }
    frames.push(frame(tail, None));
    if include_usage {
        frames.push(frame(json!([]), Some(&usage)));
    }
    frames.push(Bytes::from_static(sse::DONE));
    sse::response(stream::iter(frames.into_iter().map(Ok)))
}
