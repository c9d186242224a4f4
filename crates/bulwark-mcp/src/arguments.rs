//! The operator's constraints on tool arguments (`[[mcp.arguments]]`), checked after
//! the tool's own input schema and before the call leaves the gateway: required,
//! regex, enum, max length, maximum (a row count, a limit) and `under` (a path that
//! must stay under a directory once `..` and symlinks are followed).

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use bulwark_config::mcp::{tool_allowed, ArgumentRule};
use rmcp::model::JsonObject;
use serde_json::Value;

/// Why `args` of tool `name` break a rule, or `None` when they keep every rule.
pub fn check(rules: &[ArgumentRule], name: &str, args: &JsonObject) -> Option<String> {
    rules
        .iter()
        .filter(|r| tool_allowed(std::slice::from_ref(&r.tool), name))
        .find_map(|r| broken(r, args.get(&r.argument)).map(|why| format!("`{}` {why}", r.argument)))
}

fn broken(rule: &ArgumentRule, value: Option<&Value>) -> Option<String> {
    let Some(value) = value else {
        return rule
            .required
            .then(|| "is required by the gateway's policy".to_owned());
    };
    if let Some(allowed) = &rule.one_of {
        if !allowed.contains(value) {
            return Some(format!("must be one of {}", Value::Array(allowed.clone())));
        }
    }
    if let Some(max) = rule.maximum {
        match value.as_f64() {
            Some(n) if n <= max => {}
            Some(_) => return Some(format!("must be at most {max}")),
            None => return Some("must be a number".into()),
        }
    }
    let string_rule = rule.regex.is_some() || rule.max_length.is_some() || rule.under.is_some();
    if !string_rule {
        return None;
    }
    let Some(text) = value.as_str() else {
        return Some("must be a string".into());
    };
    if let Some(max) = rule.max_length {
        if text.chars().count() > max {
            return Some(format!("must be at most {max} characters"));
        }
    }
    if let Some(re) = &rule.regex {
        if !re.is_match(text) {
            return Some(format!("must match `{}`", re.as_str()));
        }
    }
    if let Some(dir) = &rule.under {
        if !lies_under(dir, text) {
            return Some(format!("must be a path under {}", dir.display()));
        }
    }
    None
}

/// Whether path `value` (absolute, or relative to `dir`) stays under `dir` (canonical)
/// once symlinks and `..` are followed. A path that does not exist yet (a file to be
/// written) is judged by its nearest existing ancestor; its missing part may not
/// contain `..`.
pub fn lies_under(dir: &Path, value: &str) -> bool {
    if value.is_empty() || value.contains('\0') {
        return false;
    }
    let path = Path::new(value);
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    };
    let mut existing: &Path = &joined;
    let mut missing: Vec<OsString> = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let full = missing
                .iter()
                .rev()
                .fold(real, |acc: PathBuf, part| acc.join(part));
            return full.starts_with(dir);
        }
        // Only a plain name may be missing; `..` or `.` as the last part is refused.
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(Component::Normal(name))) => {
                missing.push(name.to_owned());
                existing = parent;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(extra: impl FnOnce(&mut ArgumentRule)) -> ArgumentRule {
        let mut r = ArgumentRule {
            tool: "crm__*".into(),
            argument: "x".into(),
            required: false,
            regex: None,
            one_of: None,
            max_length: None,
            maximum: None,
            under: None,
        };
        extra(&mut r);
        r
    }

    fn args(v: Value) -> JsonObject {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn each_constraint_refuses_what_it_should() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("sub/out")).unwrap();
        let cases: Vec<(ArgumentRule, Value, bool)> = vec![
            (rule(|r| r.required = true), json!({}), false),
            (rule(|r| r.required = true), json!({"x": 1}), true),
            (rule(|r| r.maximum = Some(100.0)), json!({}), true),
            (rule(|r| r.maximum = Some(100.0)), json!({"x": 100}), true),
            (rule(|r| r.maximum = Some(100.0)), json!({"x": 101}), false),
            (rule(|r| r.maximum = Some(100.0)), json!({"x": "5"}), false),
            (rule(|r| r.max_length = Some(3)), json!({"x": "abc"}), true),
            (
                rule(|r| r.max_length = Some(3)),
                json!({"x": "abcd"}),
                false,
            ),
            (rule(|r| r.max_length = Some(3)), json!({"x": 7}), false),
            (
                rule(|r| r.regex = Some(regex::Regex::new("^[a-z]+$").unwrap())),
                json!({"x": "abc"}),
                true,
            ),
            (
                rule(|r| r.regex = Some(regex::Regex::new("^[a-z]+$").unwrap())),
                json!({"x": "ab; DROP"}),
                false,
            ),
            (
                rule(|r| r.one_of = Some(vec![json!("eu"), json!("ch")])),
                json!({"x": "ch"}),
                true,
            ),
            (
                rule(|r| r.one_of = Some(vec![json!("eu"), json!("ch")])),
                json!({"x": "us"}),
                false,
            ),
            (
                rule(|r| r.under = Some(root.clone())),
                json!({"x": "sub"}),
                true,
            ),
            (
                rule(|r| r.under = Some(root.clone())),
                json!({"x": "sub/new-file.txt"}),
                true,
            ),
            (
                rule(|r| r.under = Some(root.clone())),
                json!({"x": root.join("sub").to_str().unwrap()}),
                true,
            ),
            (
                rule(|r| r.under = Some(root.clone())),
                json!({"x": "../x"}),
                false,
            ),
            (
                rule(|r| r.under = Some(root.clone())),
                json!({"x": "sub/../../x"}),
                false,
            ),
            (
                rule(|r| r.under = Some(root.clone())),
                json!({"x": "sub/missing/../../../etc"}),
                false,
            ),
            (
                rule(|r| r.under = Some(root.clone())),
                json!({"x": "/etc/passwd"}),
                false,
            ),
            (
                rule(|r| r.under = Some(root.clone())),
                json!({"x": "sub/out/passwd"}),
                false,
            ),
            (
                rule(|r| r.under = Some(root.clone())),
                json!({"x": ""}),
                false,
            ),
            (
                rule(|r| r.under = Some(root.clone())),
                json!({"x": "a\u{0}b"}),
                false,
            ),
        ];
        for (r, a, ok) in cases {
            let got = check(std::slice::from_ref(&r), "crm__search", &args(a.clone()));
            assert_eq!(got.is_none(), ok, "{a} under {r:?}: {got:?}");
            // A rule names its tools: another server's tool is not bound by it.
            assert_eq!(check(&[r], "notes__search", &args(a)), None);
        }
    }

    proptest::proptest! {
        /// Whatever the path, `lies_under` never says yes to one whose real location
        /// is outside the directory.
        #[test]
        fn no_path_it_accepts_leads_outside(parts in proptest::collection::vec(
            proptest::prop_oneof!["..", ".", "sub", "out", "new", "/", "//", "etc"], 1..8)) {
            let dir = tempfile::tempdir().unwrap();
            let root = std::fs::canonicalize(dir.path()).unwrap();
            std::fs::create_dir(root.join("sub")).unwrap();
            std::os::unix::fs::symlink("/etc", root.join("sub/out")).unwrap();
            let value = parts.join("/");
            if lies_under(&root, &value) {
                // Lexically: what it names, its existing part resolved, is under root.
                let joined = if value.starts_with('/') { PathBuf::from(&value) } else { root.join(&value) };
                let mut p = joined.as_path();
                while std::fs::canonicalize(p).is_err() {
                    p = p.parent().unwrap();
                }
                proptest::prop_assert!(std::fs::canonicalize(p).unwrap().starts_with(&root), "{}", value);
                // ... and the part that does not exist climbs nowhere.
                let missing = joined.strip_prefix(p).unwrap();
                proptest::prop_assert!(
                    missing.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
                    "{}", value
                );
            }
        }
    }
}
