//! Arguments checked against the tool's input schema before the call goes anywhere.
//!
//! The keywords tool schemas use are checked: `type` (one or a list), `properties`,
//! `required`, `additionalProperties: false`, `enum`, `const`, `minLength`/`maxLength`,
//! `minimum`/`maximum`, `items`, `minItems`/`maxItems`. A keyword not in this list
//! (`$ref`, `oneOf`, `pattern`...) is not checked here; the upstream server still
//! validates its own arguments. Depth is bounded.

use serde_json::{Map, Value};

const MAX_DEPTH: usize = 32;

/// `None` when `value` fits `schema` (a tool's input schema, an object), else what is
/// wrong (with its JSON path).
pub fn check(schema: &Map<String, Value>, value: &Value) -> Option<String> {
    walk_object(schema, value, "arguments", 0)
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        "integer" => {
            v.as_i64().is_some()
                || v.as_u64().is_some()
                || v.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => true,
    }
}

fn walk(schema: &Value, v: &Value, at: &str, depth: usize) -> Option<String> {
    if depth > MAX_DEPTH {
        return Some(format!("{at}: nested too deeply"));
    }
    match schema.as_object() {
        Some(s) => walk_object(s, v, at, depth),
        None => None, // `true`, `{}` or something this check does not read
    }
}

fn walk_object(s: &Map<String, Value>, v: &Value, at: &str, depth: usize) -> Option<String> {
    match s.get("type") {
        Some(Value::String(t)) if !type_ok(t, v) => return Some(format!("{at}: expected {t}")),
        Some(Value::Array(ts)) if !ts.iter().filter_map(Value::as_str).any(|t| type_ok(t, v)) => {
            return Some(format!("{at}: has none of the types allowed"));
        }
        _ => {}
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Some(format!("{at}: must be one of {}", Value::Array(e.clone())));
        }
    }
    if let Some(c) = s.get("const") {
        if c != v {
            return Some(format!("{at}: must be {c}"));
        }
    }
    let n = |k: &str| s.get(k).and_then(Value::as_f64);
    if let Some(text) = v.as_str() {
        let len = text.chars().count() as f64;
        if n("maxLength").is_some_and(|m| len > m) {
            return Some(format!("{at}: longer than {} characters", n("maxLength")?));
        }
        if n("minLength").is_some_and(|m| len < m) {
            return Some(format!("{at}: shorter than {} characters", n("minLength")?));
        }
    }
    if let Some(x) = v.as_f64() {
        if n("maximum").is_some_and(|m| x > m) || n("minimum").is_some_and(|m| x < m) {
            return Some(format!("{at}: out of range"));
        }
    }
    if let Some(items) = v.as_array() {
        let len = items.len() as f64;
        if n("maxItems").is_some_and(|m| len > m) || n("minItems").is_some_and(|m| len < m) {
            return Some(format!("{at}: wrong number of items"));
        }
        if let Some(item) = s.get("items") {
            for (i, x) in items.iter().enumerate() {
                if let Some(e) = walk(item, x, &format!("{at}[{i}]"), depth + 1) {
                    return Some(e);
                }
            }
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        if let Some(req) = s.get("required").and_then(Value::as_array) {
            for r in req.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return Some(format!("{at}: `{r}` is required"));
                }
            }
        }
        for (k, x) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => {
                    if let Some(e) = walk(sub, x, &format!("{at}.{k}"), depth + 1) {
                        return Some(e);
                    }
                }
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Some(format!("{at}: `{k}` is not a known argument"));
                }
                None => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_common_keywords_are_checked() {
        let s = json!({
            "type": "object",
            "properties": {
                "root": {"type": "string", "enum": ["docs"]},
                "path": {"type": "string", "maxLength": 5},
                "n": {"type": "integer", "minimum": 1, "maximum": 10},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}
            },
            "required": ["root"],
            "additionalProperties": false
        });
        let s = s.as_object().cloned().unwrap_or_default();
        assert_eq!(
            check(
                &s,
                &json!({"root": "docs", "path": "a", "n": 3, "tags": ["x"]})
            ),
            None
        );
        for (bad, why) in [
            (json!({}), "`root` is required"),
            (json!({"root": "etc"}), "must be one of"),
            (json!({"root": "docs", "path": "toolong"}), "longer than 5"),
            (json!({"root": "docs", "n": 11}), "out of range"),
            (json!({"root": "docs", "n": 1.5}), "expected integer"),
            (
                json!({"root": "docs", "tags": [1]}),
                "arguments.tags[0]: expected string",
            ),
            (
                json!({"root": "docs", "tags": ["a", "b", "c"]}),
                "wrong number of items",
            ),
            (
                json!({"root": "docs", "x": 1}),
                "`x` is not a known argument",
            ),
            (json!([1]), "expected object"),
        ] {
            let e = check(&s, &bad).unwrap_or_default();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn deep_values_end_with_an_error_not_a_stack_overflow() {
        let mut s = json!({"type": "array"});
        let mut v = json!(1);
        for _ in 0..200 {
            s = json!({"type": "array", "items": s});
            v = json!([v]);
        }
        let s = s.as_object().cloned().unwrap_or_default();
        assert!(check(&s, &v).is_some());
    }
}
