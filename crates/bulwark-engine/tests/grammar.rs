//! Grammar-constrained decoding on the real default model: whatever a schema asks for,
//! sampled at any temperature and seed, the output parses and validates against it.

mod common;

use bulwark_api::response::FinishReason;
use bulwark_api::sampling::SamplingParams;
use bulwark_engine::template::TemplateMessage;
use bulwark_engine::{Engine, EngineError};
use common::{collect, engine};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn run(e: &Engine, user: &str, schema: &Value, sampling: SamplingParams) -> (String, FinishReason) {
    let prompt = e
        .apply_chat_template(&[TemplateMessage::new("user", user)])
        .and_then(|p| e.tokenize(&p))
        .unwrap_or_else(|e| panic!("prompt: {e}"));
    let grammar = e
        .schema_grammar(schema)
        .unwrap_or_else(|err| panic!("grammar for {schema}: {err}"));
    let g = e
        .generate_constrained(prompt, sampling, Some(grammar))
        .unwrap_or_else(|e| panic!("generate: {e}"));
    collect(g)
}

/// Checks `v` against the subset of JSON Schema the generator below writes; returns
/// what does not hold.
fn violations(v: &Value, schema: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(v) {
            out.push(format!("{at}: {v} is not one of {options:?}"));
        }
        return;
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => match v.as_str() {
            Some(s) => {
                let len = s.chars().count() as u64;
                if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                    if len > max {
                        out.push(format!("{at}: {len} chars > maxLength {max}"));
                    }
                }
                if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                    if len < min {
                        out.push(format!("{at}: {len} chars < minLength {min}"));
                    }
                }
            }
            None => out.push(format!("{at}: {v} is not a string")),
        },
        Some("integer") => match v.as_i64() {
            Some(n) => {
                if let Some(min) = schema.get("minimum").and_then(Value::as_i64) {
                    if n < min {
                        out.push(format!("{at}: {n} < minimum {min}"));
                    }
                }
                if let Some(max) = schema.get("maximum").and_then(Value::as_i64) {
                    if n > max {
                        out.push(format!("{at}: {n} > maximum {max}"));
                    }
                }
            }
            None => out.push(format!("{at}: {v} is not an integer")),
        },
        Some("number") if !v.is_number() => out.push(format!("{at}: {v} is not a number")),
        Some("boolean") if !v.is_boolean() => out.push(format!("{at}: {v} is not a boolean")),
        Some("array") => match v.as_array() {
            Some(items) => {
                let n = items.len() as u64;
                if schema
                    .get("minItems")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| n < m)
                    || schema
                        .get("maxItems")
                        .and_then(Value::as_u64)
                        .is_some_and(|m| n > m)
                {
                    out.push(format!("{at}: {n} items outside {schema}"));
                }
                for (i, item) in items.iter().enumerate() {
                    violations(item, &schema["items"], &format!("{at}[{i}]"), out);
                }
            }
            None => out.push(format!("{at}: {v} is not an array")),
        },
        Some("object") => match v.as_object() {
            Some(obj) => {
                let props = schema["properties"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                for r in schema["required"].as_array().into_iter().flatten() {
                    if let Some(r) = r.as_str() {
                        if !obj.contains_key(r) {
                            out.push(format!("{at}: required `{r}` is missing"));
                        }
                    }
                }
                for (k, val) in obj {
                    match props.get(k) {
                        Some(s) => violations(val, s, &format!("{at}.{k}"), out),
                        None if schema["additionalProperties"] == json!(false) => {
                            out.push(format!("{at}: `{k}` is not allowed"))
                        }
                        None => {}
                    }
                }
            }
            None => out.push(format!("{at}: {v} is not an object")),
        },
        _ => {}
    }
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..4, 1u64..12).prop_map(
            |(min, extra)| json!({"type": "string", "minLength": min, "maxLength": min + extra})
        ),
        Just(json!({"type": "string"})),
        (-50i64..50, 0i64..100).prop_map(
            |(min, span)| json!({"type": "integer", "minimum": min, "maximum": min + span})
        ),
        Just(json!({"type": "number"})),
        Just(json!({"type": "boolean"})),
        prop::collection::btree_set("[a-z]{1,6}", 1..4)
            .prop_map(|s| json!({"enum": s.into_iter().collect::<Vec<_>>()})),
    ]
}

fn schema() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            (inner.clone(), 0u64..2, 1u64..3).prop_map(|(items, min, extra)| {
                json!({"type": "array", "items": items, "minItems": min, "maxItems": min + extra})
            }),
            (prop::collection::btree_map("[a-z]{1,8}", inner, 1..4), any::<u8>()).prop_map(
                |(props, mask)| {
                    let required: Vec<&String> = props
                        .keys()
                        .enumerate()
                        .filter(|(i, _)| mask & (1 << i) != 0)
                        .map(|(_, k)| k)
                        .collect();
                    json!({
                        "type": "object",
                        "properties": props.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Map<_, _>>(),
                        "required": required,
                        "additionalProperties": false,
                    })
                }
            ),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any generated schema, any seed, a warm temperature: the output parses and
    /// validates (unless `max_tokens` cut it short, which the finish reason says).
    #[test]
    fn output_always_validates(schema in schema(), seed in any::<u32>(), temperature in 0.0f32..1.5) {
        let sampling = SamplingParams {
            temperature: Some(temperature),
            seed: Some(seed),
            max_tokens: Some(400),
            ..Default::default()
        };
        let (text, finish) = run(engine(), "Write some JSON.", &schema, sampling);
        prop_assume!(finish != FinishReason::Length);
        let parsed: Value = serde_json::from_str(&text)
            .map_err(|e| TestCaseError::fail(format!("{text:?} does not parse: {e}")))?;
        let mut bad = Vec::new();
        violations(&parsed, &schema, "$", &mut bad);
        prop_assert!(bad.is_empty(), "{text} against {schema}: {bad:?}");
    }
}

#[test]
fn a_json_object_comes_back_whole_even_greedy() {
    let sampling = SamplingParams {
        temperature: Some(0.0),
        max_tokens: Some(200),
        ..Default::default()
    };
    let schema = json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "population": {"type": "integer", "minimum": 0}},
        "required": ["city", "population"],
        "additionalProperties": false,
    });
    let (text, finish) = run(
        engine(),
        "Name a big city and its population.",
        &schema,
        sampling,
    );
    assert_eq!(finish, FinishReason::Stop, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let mut bad = Vec::new();
    violations(&v, &schema, "$", &mut bad);
    assert!(bad.is_empty(), "{text}: {bad:?}");
}

#[test]
fn schemas_the_converter_cannot_express_are_refused_with_a_reason() {
    let e = engine();
    for schema in [
        json!({"$ref": "https://example.invalid/schema.json"}),
        json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
    ] {
        match e.schema_grammar(&schema) {
            Err(EngineError::Grammar(reason)) => {
                assert!(reason.contains("cannot express"), "{reason}");
            }
            Err(other) => panic!("{schema}: unexpected error {other}"),
            Ok(g) => panic!(
                "{schema}: expected a refusal, got a grammar:\n{}",
                g.as_str()
            ),
        }
    }
    assert!(matches!(
        e.grammar("root ::= ( unclosed"),
        Err(EngineError::Grammar(_))
    ));
}

#[test]
fn schema_grammars_write_compact_json() {
    let g = bulwark_engine::json_schema_gbnf(&json!({"type": "object"}))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(g.lines().any(|l| l == r#"space ::= | " ""#), "{g}");
}
/// Found by `output_always_validates`: the converter lets an exponent have 16 digits,
/// which is JSON but no number a parser can hold (`1.17E1911101017222403`).
#[test]
fn numbers_stay_in_range() {
    let g = bulwark_engine::json_schema_gbnf(&json!({"type": "number"}))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!g.contains("[eE] [-+]? integral-part"), "{g}");
    let sampling = SamplingParams {
        temperature: Some(1.1218375),
        seed: Some(2_606_148_414),
        max_tokens: Some(400),
        ..Default::default()
    };
    let (text, _) = run(
        engine(),
        "Write some JSON.",
        &json!({"type": "number"}),
        sampling,
    );
    let n: f64 = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert!(n.is_finite(), "{text}");
}
