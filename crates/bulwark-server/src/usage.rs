//! Token accounting: the answer's `usage` is read as the body passes through, and
//! recorded against the key's limits, budget and usage (requests made with an API key)
//! and for the audit log (when it is on).
//!
//! Non-streamed answers carry `usage` in their JSON. For streams, the router asks the
//! target for the usage chunk (`stream_options.include_usage`) whatever the client
//! asked; when the client did not ask, that chunk is read here and removed, so the
//! client sees exactly the stream it requested. Nothing is held back beyond the end of
//! the current SSE event. A stream cut short before its usage chunk records no tokens.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::Response;
use bulwark_keys::{now_ms, Key, Keys};
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::{header, StatusCode};
use serde_json::Value;

use crate::sse::{self, Framer, Piece};

/// Largest SSE event or JSON answer inspected for usage.
const MAX_INSPECTED: usize = 8 << 20;

/// The token counts an answer reported (prompt, completion), once it has passed. The
/// meter puts one in the response's extensions for the audit record to read.
#[derive(Clone, Default, Debug)]
pub struct Tokens(Arc<Mutex<Option<(u64, u64)>>>);

impl Tokens {
    pub fn get(&self) -> Option<(u64, u64)> {
        *crate::lock(&self.0)
    }
}

/// Counts an answer's tokens: against a key when one pays, and for the audit log.
#[derive(Clone)]
pub struct Meter {
    /// The key database and the key that pays, when the request had one.
    pub payer: Option<(Arc<Keys>, Arc<Key>)>,
    /// The passport the request was made with: its token budget is spent too.
    pub passport: Option<Arc<bulwark_passport::Passport>>,
    pub model: String,
    /// The client did not ask for the usage chunk: remove it from the stream.
    pub strip_usage_chunk: bool,
    pub seen: Tokens,
}

impl Meter {
    /// Records a `usage` object; true if it was one.
    fn record(&self, usage: &Value) -> bool {
        let n = |k: &str| usage.get(k).and_then(Value::as_u64);
        match (n("prompt_tokens"), n("completion_tokens")) {
            (Some(p), c) => {
                let c = c.unwrap_or(0);
                *crate::lock(&self.seen.0) = Some((p, c));
                if let Some((keys, key)) = &self.payer {
                    keys.record_tokens(key, &self.model, p, c, now_ms());
                }
                if let Some(passport) = &self.passport {
                    passport.spend(p.saturating_add(c));
                }
                true
            }
            _ => false,
        }
    }

    /// Wraps a successful answer so that its usage is recorded as it passes.
    pub fn account(self, mut resp: Response) -> Response {
        if resp.status() != StatusCode::OK {
            return resp;
        }
        resp.extensions_mut().insert(self.seen.clone());
        if sse::is_event_stream(resp.headers()) {
            self.account_stream(resp)
        } else {
            self.account_json(resp)
        }
    }

    fn account_stream(self, resp: Response) -> Response {
        let (parts, body) = resp.into_parts();
        let framer = Arc::new(Mutex::new(Framer::new(MAX_INSPECTED)));
        let tail = Arc::clone(&framer);
        let data = body.into_data_stream().flat_map(move |chunk| {
            let out: Vec<Result<Bytes, axum::Error>> = match chunk {
                Err(e) => vec![Err(e)],
                Ok(bytes) => {
                    let mut pieces = Vec::new();
                    crate::lock(&framer).push(&bytes, &mut pieces);
                    pieces
                        .into_iter()
                        .filter_map(|p| match p {
                            Piece::Raw(b) => Some(Ok(b)),
                            Piece::Event(b) => self.keep_event(&b).then_some(Ok(b)),
                        })
                        .collect()
                }
            };
            stream::iter(out)
        });
        let rest = stream::once(async move { crate::lock(&tail).finish().map(Ok) })
            .filter_map(|b| async move { b });
        let mut resp = Response::from_parts(parts, Body::from_stream(data.chain(rest)));
        resp.headers_mut().remove(header::CONTENT_LENGTH);
        resp
    }

    /// Records the usage an event carries; false when it is the usage chunk the client
    /// did not ask for.
    fn keep_event(&self, event: &[u8]) -> bool {
        // Cheap test first: most events are content deltas.
        if !event.windows(7).any(|w| w == b"\"usage\"") {
            return true;
        }
        let Some(v) = sse::data_json(event) else {
            return true;
        };
        let recorded = v.get("usage").is_some_and(|u| self.record(u));
        let usage_only = v
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty);
        !(recorded && usage_only && self.strip_usage_chunk)
    }

    fn account_json(self, resp: Response) -> Response {
        crate::tap::on_whole_body(resp, MAX_INSPECTED, move |body| {
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                if let Some(u) = v.get("usage") {
                    self.record(u);
                }
            }
        })
    }
}
