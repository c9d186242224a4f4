//! How the local engine serves one chat request: the prompt its chat template renders
//! (with the tools), the grammar that constrains what it writes (`response_format`, a
//! required tool call, or the generic tool format), and how its output is read back
//! (text, or tool calls).

use std::collections::HashMap;

use bulwark_api::chat::{ChatMessage, ChatRequest, ResponseFormat, Role, ToolChoice};
use bulwark_api::response::{AssistantMessage, FinishReason, ToolCall};
use bulwark_api::{ApiError, ErrorKind};
use bulwark_engine::template::TemplateMessage;
use bulwark_engine::tools::{self, Family, Must, Spec};
use bulwark_engine::{Engine, EngineError, Grammar};
use serde_json::{json, Value};

use crate::error::Error;

/// What the engine is asked to do for a chat request.
pub(crate) struct Plan {
    /// The rendered prompt.
    pub prompt: String,
    /// The grammar every choice is sampled under.
    pub grammar: Option<Grammar>,
    /// How to read what the model wrote.
    pub reading: Reading,
}

pub(crate) enum Reading {
    /// Text, streamed as it is decoded.
    Text,
    /// Calls of the tools named, in the family's format; read once a choice is complete.
    Tools { family: Family, names: Vec<String> },
}

impl Reading {
    /// The assistant message for a choice's output.
    pub fn message(&self, text: String, finish: FinishReason) -> (AssistantMessage, FinishReason) {
        let (content, tool_calls) = match self {
            Reading::Text => (Some(text), Vec::new()),
            Reading::Tools { family, names } => {
                let known = |n: &str| names.iter().any(|k| k == n);
                let parsed = tools::parse(*family, &text, &known);
                let calls = parsed
                    .calls
                    .into_iter()
                    .map(|(name, args)| ToolCall::function(name, args))
                    .collect::<Vec<_>>();
                (parsed.content, calls)
            }
        };
        // A call cut short by `max_tokens` is not a call: it stays `length`.
        let finish = if tool_calls.is_empty() || finish == FinishReason::Length {
            finish
        } else {
            FinishReason::ToolCalls
        };
        (
            AssistantMessage {
                role: "assistant",
                content,
                tool_calls,
            },
            finish,
        )
    }
}

fn unsupported(param: &str, what: String) -> Error {
    Error(
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("{what} is not supported by the local engine."),
        )
        .with_param(param)
        .with_code(bulwark_api::ErrorCode::UnsupportedParameter),
    )
}

/// A schema llama.cpp cannot turn into a grammar is the client's to fix: a 400 naming
/// the parameter.
fn grammar_error(param: &str, e: EngineError) -> Error {
    match e {
        EngineError::Grammar(reason) => Error(ApiError::invalid(
            param,
            format!("{reason}. Simplify the schema."),
        )),
        other => Error::from(other),
    }
}

/// An assistant's `tool_calls` as templates read them: the arguments as an object
/// where they parse (templates write them with `tojson`), else the text.
fn template_calls(calls: Option<&Value>) -> Vec<Value> {
    calls
        .and_then(Value::as_array)
        .map(|calls| {
            calls
                .iter()
                .map(|c| {
                    let f = &c["function"];
                    let args = f["arguments"]
                        .as_str()
                        .and_then(|s| serde_json::from_str::<Value>(s).ok())
                        .unwrap_or_else(|| f["arguments"].clone());
                    json!({
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": f["name"], "arguments": args},
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The conversation as the template sees it. With `generic`, calls and results are
/// written as text the generic format understands (such templates render neither).
fn messages(req: &ChatRequest, generic: bool) -> Result<Vec<TemplateMessage>, Error> {
    let mut names: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(req.messages.len() + 1);
    for (i, m) in req.messages.iter().enumerate() {
        let ChatMessage {
            role,
            tool_calls,
            tool_call_id,
            ..
        } = m;
        let text = m.text()?;
        let calls = template_calls(tool_calls.as_ref());
        for c in &calls {
            if let (Some(id), Some(name)) = (c["id"].as_str(), c["function"]["name"].as_str()) {
                names.insert(id.to_owned(), name.to_owned());
            }
        }
        let mut msg = TemplateMessage::new(role.template_name(), text);
        if *role == Role::Tool {
            let id = tool_call_id.clone().unwrap_or_default();
            let Some(name) = names.get(&id) else {
                return Err(Error(ApiError::invalid(
                    "messages",
                    format!("`messages[{i}]` is a tool result for the call `{id}`, which no earlier assistant message made; send the assistant message with its `tool_calls` before the results."),
                )));
            };
            if generic {
                msg.role = "user".to_owned();
                msg.content = format!(
                    "{}",
                    json!({"tool_result": {"name": name, "id": id, "content": msg.content}})
                );
            } else {
                msg.name = Some(name.clone());
                msg.tool_call_id = Some(id);
            }
        } else if !calls.is_empty() {
            if generic {
                let listed: Vec<Value> = calls
                    .iter()
                    .map(|c| json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}))
                    .collect();
                msg.content = json!({ "tool_calls": listed }).to_string();
            } else {
                msg.tool_calls = calls;
            }
        }
        out.push(msg);
    }
    Ok(out)
}

/// Plans a chat request for `engine`.
pub(crate) fn plan(engine: &Engine, req: &ChatRequest) -> Result<Plan, Error> {
    if let Some(kind) = req.other_tools.first() {
        return Err(unsupported("tools", format!("A tool of type `{kind}`")));
    }
    let tools_on = !req.tools.is_empty() && req.tool_choice != ToolChoice::None;
    let format = (req.response_format != ResponseFormat::Text).then_some(&req.response_format);
    if tools_on && format.is_some() {
        return Err(unsupported(
            "response_format",
            "`response_format` together with `tools`".to_owned(),
        ));
    }
    let template = engine.template();
    let family = if tools_on {
        Family::detect(template.source())
    } else {
        Family::Generic
    };
    let generic = family == Family::Generic;
    let mut msgs = messages(req, generic)?;

    if !tools_on {
        let grammar = match format {
            None => None,
            Some(ResponseFormat::JsonObject) => Some(
                engine
                    .schema_grammar(&json!({"type": "object"}))
                    .map_err(|e| grammar_error("response_format", e))?,
            ),
            Some(ResponseFormat::JsonSchema { schema, .. }) => Some(
                engine
                    .schema_grammar(schema)
                    .map_err(|e| grammar_error("response_format", e))?,
            ),
            Some(ResponseFormat::Text) => None,
        };
        return Ok(Plan {
            prompt: engine.apply_chat_template(&msgs)?,
            grammar,
            reading: Reading::Text,
        });
    }

    let specs: Vec<Spec<'_>> = req
        .tools
        .iter()
        .map(|t| Spec {
            name: &t.name,
            description: t.description.as_deref(),
            parameters: &t.parameters,
        })
        .collect();
    let must = match &req.tool_choice {
        ToolChoice::Required => Must::Call,
        ToolChoice::Function(name) => Must::CallNamed(name),
        ToolChoice::Auto | ToolChoice::None => Must::Choose,
    };
    let names = req.tools.iter().map(|t| t.name.clone()).collect();
    let (prompt, grammar) = if generic {
        let instructions = tools::generic_instructions(&specs, must);
        match msgs.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{instructions}", first.content);
            }
            _ => msgs.insert(0, TemplateMessage::new("system", instructions)),
        }
        let schema = tools::generic_schema(&specs, must, req.parallel_tool_calls);
        let grammar = engine
            .schema_grammar(&schema)
            .map_err(|e| grammar_error("tools", e))?;
        (engine.apply_chat_template(&msgs)?, Some(grammar))
    } else {
        let listed: Vec<Value> = req
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters,
                }})
            })
            .collect();
        let prompt = template
            .render_with_tools(&msgs, Some(&listed))
            .map_err(EngineError::from)?;
        let grammar = match must {
            Must::Choose => None,
            Must::Call | Must::CallNamed(_) => {
                let only = match must {
                    Must::CallNamed(n) => Some(n),
                    _ => None,
                };
                let call =
                    bulwark_engine::json_schema_gbnf(&tools::call_schema(family, &specs, only))
                        .map_err(|e| grammar_error("tools", e))?;
                let gbnf =
                    tools::forced_grammar(family, &call, req.parallel_tool_calls && only.is_none());
                Some(
                    engine
                        .grammar(&gbnf)
                        .map_err(|e| grammar_error("tools", e))?,
                )
            }
        };
        (prompt, grammar)
    };
    Ok(Plan {
        prompt,
        grammar,
        reading: Reading::Tools { family, names },
    })
}
