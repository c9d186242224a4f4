//! Pseudonyms for the personal data and credentials in what tools return, by the same
//! rules as chat (`[guard] pii` and `secrets`: `pseudonymise` by default, `redact`,
//! `block`, `flag`, `allow`).
//!
//! Each caller (its key, or everyone on a gateway without keys) has one vault, so the
//! same value gets the same placeholder (`[EMAIL_1]`) in every result it is shown, and
//! the caller can act on it without seeing it:
//!
//! - a later **tool call's arguments** get the originals back before they leave, but
//!   only towards a server whose class is at least that of the server the value came
//!   from (a confidential CRM's e-mail is not handed to an internal tool);
//! - a later **chat request** with the same key adopts the vault (see
//!   `bulwark_guard::Vault::adopt`): the model sees the placeholders, the answer gets
//!   the originals back.
//!
//! Vaults live in memory: after a restart, old placeholders pass as they are. Bounded:
//! 10,000 callers, 100,000 values each (then that caller's vault starts again).

use std::collections::HashMap;
use std::sync::Mutex;

use bulwark_guard::{Finding, Vault};
use bulwark_policy::DataClass;
use serde_json::Value;

const MAX_CALLERS: usize = 10_000;
const MAX_VALUES: usize = 100_000;

#[derive(Default)]
struct Held {
    vault: Vault,
    /// The class of the server each placeholder's value came from.
    classes: HashMap<String, DataClass>,
}

#[derive(Default)]
pub struct Pseudonyms {
    by_caller: Mutex<HashMap<String, Held>>,
}

impl Pseudonyms {
    fn with<T>(&self, caller: &str, f: impl FnOnce(&mut Held) -> T) -> T {
        let mut all = self.by_caller.lock().unwrap_or_else(|p| p.into_inner());
        if !all.contains_key(caller) && all.len() >= MAX_CALLERS {
            all.clear();
        }
        let held = all.entry(caller.to_owned()).or_default();
        if held.vault.len() >= MAX_VALUES {
            *held = Held::default();
        }
        f(held)
    }

    /// `text` with each finding replaced: by the caller's placeholder for its value,
    /// or by `[REDACTED_KIND]` where `redact` says so. Placeholder-shaped text that was
    /// already there becomes `[LITERAL_N]`, so that no result can name another's value.
    pub fn rewrite(
        &self,
        caller: &str,
        class: DataClass,
        text: &str,
        findings: &[Finding],
        redact: impl Fn(&Finding) -> bool,
    ) -> String {
        self.with(caller, |held| {
            let out = held.vault.rewrite(text, findings, redact);
            for (s, e) in Vault::placeholder_spans(&out) {
                let p = &out[s..e];
                if held.vault.original(p).is_some() {
                    let c = held.classes.entry(p.to_owned()).or_insert(class);
                    *c = (*c).max(class);
                }
            }
            out
        })
    }

    /// Puts the originals back into every string of `args`, for a call to a server of
    /// class `into`; a placeholder whose value came from a higher class stays. The
    /// number of placeholders restored.
    pub fn restore(
        &self,
        caller: &str,
        into: DataClass,
        args: &mut serde_json::Map<String, Value>,
    ) -> usize {
        self.with(caller, |held| {
            let mut n = 0;
            if !held.vault.is_empty() {
                for v in args.values_mut() {
                    restore_value(held, into, v, &mut n);
                }
            }
            n
        })
    }

    /// A copy of the caller's vault, for a chat request to adopt.
    pub fn vault(&self, caller: &str) -> Option<Vault> {
        let all = self.by_caller.lock().unwrap_or_else(|p| p.into_inner());
        all.get(caller)
            .filter(|h| !h.vault.is_empty())
            .map(|h| h.vault.clone())
    }
}

fn restore_value(held: &Held, into: DataClass, v: &mut Value, n: &mut usize) {
    match v {
        Value::String(s) => {
            let spans: Vec<(usize, usize)> = Vault::placeholder_spans(s).collect();
            if spans.is_empty() {
                return;
            }
            let mut out = String::with_capacity(s.len());
            let mut at = 0;
            for (start, end) in spans {
                let p = &s[start..end];
                out.push_str(&s[at..start]);
                match held.vault.original(p) {
                    Some(o) if held.classes.get(p).is_none_or(|c| *c <= into) => {
                        out.push_str(o);
                        *n += 1;
                    }
                    _ => out.push_str(p),
                }
                at = end;
            }
            out.push_str(&s[at..]);
            *s = out;
        }
        Value::Array(a) => a.iter_mut().for_each(|x| restore_value(held, into, x, n)),
        Value::Object(m) => m.values_mut().for_each(|x| restore_value(held, into, x, n)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_guard::Category;
    use serde_json::json;

    fn email(text: &str, value: &str) -> Finding {
        let start = text.find(value).unwrap();
        Finding::new(
            Category::Pii,
            "email",
            (start, start + value.len()),
            1.0,
            String::new(),
        )
    }

    #[test]
    fn a_callers_placeholders_come_back_only_where_they_may() {
        let p = Pseudonyms::default();
        let crm = "Customer ann@shop.eu, see [EMAIL_4].";
        let shown = p.rewrite(
            "key-a",
            DataClass::Confidential,
            crm,
            &[email(crm, "ann@shop.eu")],
            |_| false,
        );
        // A placeholder-shaped text in a result can never be made to name a value.
        assert_eq!(shown, "Customer [EMAIL_1], see [LITERAL_1].");
        let notes = "From ann@shop.eu";
        assert_eq!(
            p.rewrite(
                "key-a",
                DataClass::Internal,
                notes,
                &[email(notes, "ann@shop.eu")],
                |_| false
            ),
            "From [EMAIL_1]"
        );
        let obj = |v: Value| v.as_object().cloned().unwrap();
        let mut args = obj(json!({"to": ["[EMAIL_1]"], "note": "[LITERAL_1] [EMAIL_9]"}));
        // Towards an internal server: the value came (also) from a confidential one.
        assert_eq!(p.restore("key-a", DataClass::Internal, &mut args), 0);
        assert_eq!(args["to"][0], "[EMAIL_1]");
        assert_eq!(p.restore("key-a", DataClass::Confidential, &mut args), 1);
        assert_eq!(
            args,
            obj(json!({"to": ["ann@shop.eu"], "note": "[LITERAL_1] [EMAIL_9]"}))
        );
        // Another caller's placeholders are its own.
        let mut other = obj(json!({"to": "[EMAIL_1]"}));
        assert_eq!(p.restore("key-b", DataClass::Secret, &mut other), 0);
        assert!(p.vault("key-b").is_none());
        assert_eq!(
            p.vault("key-a").unwrap().original("[EMAIL_1]"),
            Some("ann@shop.eu")
        );
        // Redacted values have nothing to restore.
        let r = p.rewrite(
            "key-a",
            DataClass::Public,
            "bob@x.io",
            &[email("bob@x.io", "bob@x.io")],
            |_| true,
        );
        assert_eq!(r, "[REDACTED_EMAIL]");
    }
}
