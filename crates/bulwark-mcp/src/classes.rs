//! The data class of tool results, remembered so that a chat request carrying one as a
//! `tool` message is raised to it: a file from a `confidential` root stays where
//! confidential data may go, even after an agent pastes it into a conversation.
//!
//! Each text a result carried (each text block, and all of them joined) is remembered
//! by its SHA-256, whitespace trimmed, for a day, the last 100,000 at most; only
//! classes above `public` are kept (nothing to raise otherwise). An agent that rewrites
//! the text before sending it on is not caught by this: the guard's own reading of the
//! message still applies.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bulwark_policy::DataClass;
use serde_json::Value;
use sha2::{Digest, Sha256};

const MAX_ENTRIES: usize = 100_000;
const TTL: Duration = Duration::from_secs(24 * 3600);

type Digest32 = [u8; 32];

#[derive(Default)]
struct Inner {
    by_digest: HashMap<Digest32, (DataClass, Instant)>,
    order: VecDeque<Digest32>,
}

#[derive(Default)]
pub struct ResultClasses {
    inner: Mutex<Inner>,
}

fn digest(text: &str) -> Digest32 {
    Sha256::digest(text.trim().as_bytes()).into()
}

impl ResultClasses {
    /// Remembers that `texts` (one result's text blocks) are of `class`.
    pub fn remember(&self, texts: &[&str], class: DataClass) {
        if class == DataClass::Public || texts.is_empty() {
            return;
        }
        let mut all: Vec<Digest32> = texts.iter().map(|t| digest(t)).collect();
        if texts.len() > 1 {
            all.push(digest(&texts.concat()));
            all.push(digest(&texts.join("\n")));
        }
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for d in all {
            let prev = inner.by_digest.insert(d, (class, now));
            if prev.is_none() {
                inner.order.push_back(d);
            } else if let Some((c, _)) = prev {
                // The same text from two places keeps the higher class.
                let higher = c.max(class);
                inner.by_digest.insert(d, (higher, now));
            }
        }
        while inner.order.len() > MAX_ENTRIES {
            if let Some(old) = inner.order.pop_front() {
                inner.by_digest.remove(&old);
            }
        }
    }

    /// The highest class of the tool results among the `tool` messages of a chat
    /// request body (content as a string or as text parts).
    pub fn class_of(&self, body: &Value) -> Option<DataClass> {
        let messages = body.get("messages")?.as_array()?;
        let mut texts: Vec<&str> = Vec::new();
        for m in messages {
            if m.get("role").and_then(Value::as_str) != Some("tool") {
                continue;
            }
            match m.get("content") {
                Some(Value::String(s)) => texts.push(s),
                Some(Value::Array(parts)) => {
                    let part_texts: Vec<&str> = parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect();
                    texts.extend(part_texts);
                }
                _ => {}
            }
        }
        if texts.is_empty() {
            return None;
        }
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        texts
            .iter()
            .filter_map(|t| inner.by_digest.get(&digest(t)))
            .filter(|(_, at)| at.elapsed() < TTL)
            .map(|(c, _)| *c)
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_tool_message_carrying_a_result_gets_its_class() {
        let classes = ResultClasses::default();
        classes.remember(&["Salary bands 2027: ..."], DataClass::Confidential);
        classes.remember(&["public weather"], DataClass::Public);
        let body = |content: Value| {
            json!({"messages": [
                {"role": "user", "content": "Salary bands 2027: ..."},
                {"role": "tool", "tool_call_id": "c1", "content": content}
            ]})
        };
        assert_eq!(
            classes.class_of(&body(json!("  Salary bands 2027: ...\n"))),
            Some(DataClass::Confidential)
        );
        assert_eq!(
            classes.class_of(&body(
                json!([{"type": "text", "text": "Salary bands 2027: ..."}])
            )),
            Some(DataClass::Confidential)
        );
        // Only tool messages count, and a public result raises nothing.
        assert_eq!(classes.class_of(&body(json!("public weather"))), None);
        assert_eq!(classes.class_of(&body(json!("something else"))), None);
        assert_eq!(classes.class_of(&json!({"messages": "x"})), None);
    }

    #[test]
    fn memory_is_bounded() {
        let classes = ResultClasses::default();
        for i in 0..MAX_ENTRIES + 10 {
            classes.remember(&[&i.to_string()], DataClass::Internal);
        }
        let inner = classes.inner.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(inner.order.len(), MAX_ENTRIES);
        assert_eq!(inner.by_digest.len(), MAX_ENTRIES);
    }
}
