//! Tool calls on the local engine: how a model is told about tools, how a call is forced
//! when the client requires one, and how calls are read back out of what it wrote.
//!
//! A model's chat template decides the format. Templates that render a `tools` variable
//! were trained on one of a few call formats, recognised by the markers in the template
//! ([`Family`]). A template that knows nothing of tools (SmolLM2's, Gemma's) gets the
//! generic format that llama.cpp's server also uses for such models: the tools are
//! described in a system message and the whole answer is constrained by a grammar to one
//! JSON object, `{"tool_calls": [...]}` or `{"response": "..."}`, so that even a very
//! small model can only produce a well-formed call of a tool that exists, with
//! arguments that validate against the tool's schema.

use serde_json::{json, Map, Value};

/// The call format a model was trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Hermes, Qwen 2.5/3, SmolLM3: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
    Hermes,
    /// Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}}]`.
    Mistral,
    /// Llama 3.1+: a bare `{"name": ..., "parameters": {...}}`, or after `<|python_tag|>`.
    Llama3,
    /// Templates without tools: the JSON answer described above.
    Generic,
}

impl Family {
    /// The family of a chat template, from the markers its source writes.
    pub fn detect(template: &str) -> Family {
        if !template.contains("tools") {
            Family::Generic
        } else if template.contains("<tool_call>") {
            Family::Hermes
        } else if template.contains("[TOOL_CALLS]") {
            Family::Mistral
        } else if template.contains("<|python_tag|>") || template.contains("ipython") {
            Family::Llama3
        } else {
            Family::Generic
        }
    }

    /// The key a call's arguments are written under.
    fn arguments_key(self) -> &'static str {
        match self {
            Family::Llama3 => "parameters",
            _ => "arguments",
        }
    }
}

/// A tool as the engine needs it.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
    /// JSON Schema of the arguments.
    pub parameters: &'a Value,
}

/// What the client asked of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Must<'a> {
    /// Answer or call, as the model decides.
    Choose,
    /// Call at least one tool.
    Call,
    /// Call this tool.
    CallNamed(&'a str),
}

/// The JSON Schema of one call of one of `tools` (only `only`, when given).
pub fn call_schema(family: Family, tools: &[Spec<'_>], only: Option<&str>) -> Value {
    let key = family.arguments_key();
    let mut variants: Vec<Value> = tools
        .iter()
        .filter(|t| only.is_none_or(|n| n == t.name))
        .map(|t| {
            let mut properties = Map::new();
            properties.insert("name".into(), json!({ "const": t.name }));
            properties.insert(key.into(), t.parameters.clone());
            json!({
                "type": "object",
                "properties": properties,
                "required": ["name", key],
                "additionalProperties": false,
            })
        })
        .collect();
    if variants.len() == 1 {
        variants.swap_remove(0)
    } else {
        json!({ "anyOf": variants })
    }
}

/// The most calls one answer in the generic format may make.
pub const GENERIC_MAX_CALLS: usize = 4;

/// The schema of a whole answer in the generic format.
pub fn generic_schema(tools: &[Spec<'_>], must: Must<'_>, parallel: bool) -> Value {
    let only = match must {
        Must::CallNamed(n) => Some(n),
        _ => None,
    };
    let mut calls = json!({
        "type": "array",
        "items": call_schema(Family::Generic, tools, only),
        "minItems": 1,
    });
    // Models without a tool format of their own were never taught when to stop
    // calling; a small one repeats a call until `max_tokens`. Four calls in a turn is
    // room enough for a real plan.
    calls["maxItems"] = json!(if !parallel || only.is_some() {
        1
    } else {
        GENERIC_MAX_CALLS
    });
    let call = json!({
        "type": "object",
        "properties": { "tool_calls": calls },
        "required": ["tool_calls"],
        "additionalProperties": false,
    });
    match must {
        Must::Choose => json!({ "anyOf": [call, {
            "type": "object",
            "properties": { "response": { "type": "string" } },
            "required": ["response"],
            "additionalProperties": false,
        }]}),
        Must::Call | Must::CallNamed(_) => call,
    }
}

/// The system message that describes the tools in the generic format.
pub fn generic_instructions(tools: &[Spec<'_>], must: Must<'_>) -> String {
    let listed: Vec<Value> = tools
        .iter()
        .map(|t| {
            let mut o = json!({ "name": t.name, "parameters": t.parameters });
            if let Some(d) = t.description {
                o["description"] = json!(d);
            }
            o
        })
        .collect();
    let listed = serde_json::to_string(&listed).unwrap_or_default();
    let ask = match must {
        Must::Choose => "Answer with one JSON object: {\"tool_calls\": [{\"name\": TOOL, \"arguments\": {...}}]} to call tools, or {\"response\": TEXT} to answer the user directly.".to_owned(),
        Must::Call => "Answer with one JSON object that calls one of them: {\"tool_calls\": [{\"name\": TOOL, \"arguments\": {...}}]}.".to_owned(),
        Must::CallNamed(n) => format!("Answer with one JSON object that calls `{n}`: {{\"tool_calls\": [{{\"name\": \"{n}\", \"arguments\": {{...}}}}]}}."),
    };
    format!("You can call these tools:\n{listed}\n{ask}")
}

/// The grammar that forces a call in a native format: `call` is the GBNF of
/// [`call_schema`] (llama.cpp's converter's output, whose start rule is `root`), placed
/// between the family's markers.
pub fn forced_grammar(family: Family, call: &str, parallel: bool) -> String {
    let renamed = call
        .lines()
        .map(|l| match l.strip_prefix("root ::=") {
            Some(rest) => format!("call ::={rest}"),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let root = match (family, parallel) {
        (Family::Hermes, false) => r#"root ::= "<tool_call>\n" call "\n</tool_call>""#,
        (Family::Hermes, true) => {
            r#"root ::= "<tool_call>\n" call "\n</tool_call>" ("\n<tool_call>\n" call "\n</tool_call>")*"#
        }
        (Family::Mistral, false) => r#"root ::= "[TOOL_CALLS][" call "]""#,
        (Family::Mistral, true) => r#"root ::= "[TOOL_CALLS][" call (", " call)* "]""#,
        (Family::Llama3 | Family::Generic, _) => "root ::= call",
    };
    format!("{root}\n{renamed}\n")
}

/// What a model wrote, read as an answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Text for the user (`None` when there is none).
    pub content: Option<String>,
    /// `(name, arguments as JSON text)` of each call, in order.
    pub calls: Vec<(String, String)>,
}

fn nonempty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// A call object `{"name": ..., KEY: {...}}` of a known tool, as `(name, arguments)`.
fn read_call(v: &Value, family: Family, known: &dyn Fn(&str) -> bool) -> Option<(String, String)> {
    let name = v.get("name")?.as_str()?;
    if !known(name) {
        return None;
    }
    let args = v
        .get(family.arguments_key())
        .or_else(|| v.get("arguments"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    // A call's arguments are a JSON object, as clients expect them (`**args`); anything
    // else is not a call (found by the `tool_calls` fuzz target: `"parameters": 3`).
    let args = match args {
        Value::Object(_) => args.to_string(),
        Value::Null => "{}".to_owned(),
        // Some models write the arguments as a JSON string already.
        Value::String(s) if serde_json::from_str::<Value>(&s).is_ok_and(|v| v.is_object()) => s,
        _ => return None,
    };
    Some((name.to_owned(), args))
}

/// The first JSON value at the start of `s` and the rest after it.
fn leading_json(s: &str) -> Option<(Value, &str)> {
    let mut it = serde_json::Deserializer::from_str(s).into_iter::<Value>();
    let v = it.next()?.ok()?;
    Some((v, &s[it.byte_offset()..]))
}

/// Reads calls of known tools out of `text`. Anything that is not a well-formed call of a
/// tool in `known` stays text, so a model that mentions a marker in prose is not turned
/// into a call.
pub fn parse(family: Family, text: &str, known: &dyn Fn(&str) -> bool) -> Parsed {
    let all_text = || Parsed {
        content: nonempty(text),
        calls: Vec::new(),
    };
    match family {
        Family::Generic => {
            let Ok(v) = serde_json::from_str::<Value>(text.trim()) else {
                return all_text();
            };
            if let Some(calls) = v.get("tool_calls").and_then(Value::as_array) {
                let read: Option<Vec<_>> =
                    calls.iter().map(|c| read_call(c, family, known)).collect();
                match read {
                    Some(mut calls) if !calls.is_empty() => {
                        // The same call twice in one turn is a small model repeating
                        // itself, not a plan: keep the first.
                        let mut seen = std::collections::HashSet::new();
                        calls.retain(|c| seen.insert(c.clone()));
                        Parsed {
                            content: None,
                            calls,
                        }
                    }
                    _ => all_text(),
                }
            } else if let Some(r) = v.get("response").and_then(Value::as_str) {
                Parsed {
                    content: Some(r.to_owned()),
                    calls: Vec::new(),
                }
            } else {
                all_text()
            }
        }
        Family::Hermes => {
            let mut content = String::new();
            let mut calls = Vec::new();
            let mut rest = text;
            while let Some(start) = rest.find("<tool_call>") {
                let after = &rest[start + "<tool_call>".len()..];
                let (inner, next) = match after.find("</tool_call>") {
                    Some(end) => (&after[..end], &after[end + "</tool_call>".len()..]),
                    None => (after, ""),
                };
                match serde_json::from_str::<Value>(inner.trim())
                    .ok()
                    .and_then(|v| read_call(&v, family, known))
                {
                    Some(call) => {
                        content.push_str(&rest[..start]);
                        calls.push(call);
                        rest = next;
                    }
                    None => {
                        content.push_str(&rest[..start + "<tool_call>".len()]);
                        rest = after;
                    }
                }
            }
            content.push_str(rest);
            Parsed {
                content: nonempty(&content),
                calls,
            }
        }
        Family::Mistral => {
            let Some(at) = text.find("[TOOL_CALLS]") else {
                return all_text();
            };
            let after = text[at + "[TOOL_CALLS]".len()..].trim_start();
            let calls = match leading_json(after) {
                Some((Value::Array(items), _)) => items
                    .iter()
                    .map(|c| read_call(c, family, known))
                    .collect::<Option<Vec<_>>>(),
                Some((obj @ Value::Object(_), _)) => {
                    read_call(&obj, family, known).map(|c| vec![c])
                }
                // Newer Mistral templates: `[TOOL_CALLS]name[ARGS]{...}`.
                _ => after.split_once("[ARGS]").and_then(|(name, args)| {
                    let (args, _) = leading_json(args)?;
                    read_call(
                        &json!({ "name": name.trim(), "arguments": args }),
                        family,
                        known,
                    )
                    .map(|c| vec![c])
                }),
            };
            match calls {
                Some(calls) if !calls.is_empty() => Parsed {
                    content: nonempty(&text[..at]),
                    calls,
                },
                _ => all_text(),
            }
        }
        Family::Llama3 => {
            let body = text.trim_start();
            let body = body.strip_prefix("<|python_tag|>").unwrap_or(body);
            let mut calls = Vec::new();
            let mut rest = body.trim_start();
            while let Some((v, after)) = leading_json(rest) {
                match read_call(&v, family, known) {
                    Some(call) => calls.push(call),
                    None => return all_text(),
                }
                rest = after.trim_start().trim_start_matches(';').trim_start();
                if rest.is_empty() {
                    break;
                }
            }
            if calls.is_empty() || !rest.is_empty() {
                all_text()
            } else {
                Parsed {
                    content: None,
                    calls,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(n: &str) -> bool {
        matches!(n, "get_weather" | "add")
    }

    fn check(family: Family, text: &str) -> String {
        let p = parse(family, text, &known);
        format!("{:?} {:?}", p.content, p.calls)
    }

    /// One table for every family: the output of a model, and what the client gets.
    #[test]
    fn calls_are_read_per_family() {
        let cases: &[(Family, &str, &str)] = &[
            (Family::Generic, r#"{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}"#,
             r#"None [("get_weather", "{\"city\":\"Paris\"}")]"#),
            (Family::Generic, r#"{"response":"It is sunny."}"#, r#"Some("It is sunny.") []"#),
            (Family::Generic, r#"{"tool_calls":[{"name":"add","arguments":{"a":1}},{"name":"add","arguments":{"a":1}},{"name":"add","arguments":{"a":2}}]}"#,
             r#"None [("add", "{\"a\":1}"), ("add", "{\"a\":2}")]"#),
            (Family::Generic, r#"{"tool_calls":[{"name":"rm_rf","arguments":{}}]}"#,
             r#"Some("{\"tool_calls\":[{\"name\":\"rm_rf\",\"arguments\":{}}]}") []"#),
            (Family::Generic, "plain words", r#"Some("plain words") []"#),
            (Family::Hermes, "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>",
             r#"None [("get_weather", "{\"city\":\"Oslo\"}")]"#),
            (Family::Hermes, "Let me check.\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call>",
             r#"Some("Let me check.") [("add", "{\"a\":1,\"b\":2}"), ("get_weather", "{\"city\":\"Rome\"}")]"#),
            (Family::Hermes, "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}",
             r#"None [("add", "{\"a\":1}")]"#),
            (Family::Hermes, "I would write <tool_call> here but no.", r#"Some("I would write <tool_call> here but no.") []"#),
            (Family::Hermes, "<tool_call>{\"name\": \"add\", \"arguments\": \"{\\\"a\\\": 3}\"}</tool_call>",
             r#"None [("add", "{\"a\": 3}")]"#),
            (Family::Mistral, "[TOOL_CALLS][{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}]",
             r#"None [("add", "{\"a\":1,\"b\":2}")]"#),
            (Family::Mistral, "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Lyon\"}",
             r#"None [("get_weather", "{\"city\":\"Lyon\"}")]"#),
            (Family::Mistral, "No tools needed.", r#"Some("No tools needed.") []"#),
            (Family::Llama3, "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Bern\"}}",
             r#"None [("get_weather", "{\"city\":\"Bern\"}")]"#),
            (Family::Llama3, "<|python_tag|>{\"name\": \"add\", \"parameters\": {\"a\": 2}}; {\"name\": \"add\", \"parameters\": {\"a\": 3}}",
             r#"None [("add", "{\"a\":2}"), ("add", "{\"a\":3}")]"#),
            (Family::Llama3, "{\"name\": \"add\"} and then some prose", r#"Some("{\"name\": \"add\"} and then some prose") []"#),
            // Arguments that are not an object make no call (the fuzz target's find).
            (Family::Llama3, "{\"name\": \"add\", \"parameters\":3} ", r#"Some("{\"name\": \"add\", \"parameters\":3}") []"#),
            (Family::Hermes, "<tool_call>{\"name\": \"add\", \"arguments\": [1, 2]}</tool_call>",
             r#"Some("<tool_call>{\"name\": \"add\", \"arguments\": [1, 2]}</tool_call>") []"#),
            (Family::Hermes, "<tool_call>{\"name\": \"add\", \"arguments\": null}</tool_call>", r#"None [("add", "{}")]"#),
        ];
        for (family, text, want) in cases {
            assert_eq!(&check(*family, text), want, "{family:?} {text:?}");
        }
    }

    #[test]
    fn families_are_detected_from_templates() {
        let cases = [
            (
                "{% for m in messages %}{{ m.content }}{% endfor %}",
                Family::Generic,
            ),
            (
                "{% if tools %}<tools>{{ tools|tojson }}</tools>{% endif %}<tool_call>",
                Family::Hermes,
            ),
            (
                "{% if tools %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]",
                Family::Mistral,
            ),
            (
                "{% if tools %}{% endif %}<|python_tag|>ipython",
                Family::Llama3,
            ),
        ];
        for (src, want) in cases {
            assert_eq!(Family::detect(src), want, "{src}");
        }
    }

    #[test]
    fn generic_schema_offers_an_answer_only_when_the_model_may_choose() {
        let params = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let tools = [Spec {
            name: "get_weather",
            description: None,
            parameters: &params,
        }];
        let choose = generic_schema(&tools, Must::Choose, true);
        assert!(choose["anyOf"].as_array().is_some_and(|a| a.len() == 2));
        let named = generic_schema(&tools, Must::CallNamed("get_weather"), true);
        assert_eq!(named["properties"]["tool_calls"]["maxItems"], json!(1));
        assert_eq!(
            named["properties"]["tool_calls"]["items"]["properties"]["name"],
            json!({"const": "get_weather"})
        );
    }

    #[test]
    fn forced_grammar_renames_the_call_root() {
        let g = forced_grammar(Family::Hermes, "root ::= \"{\" x \"}\"\nx ::= \"a\"", false);
        assert_eq!(
            g,
            "root ::= \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall ::= \"{\" x \"}\"\nx ::= \"a\"\n"
        );
    }
}
