//! `POST /v1/chat/completions` requests: parsing and validation.

use serde::Deserialize;
use serde_json::Value;

use crate::sampling::{RawSampling, SamplingParams};
use crate::ApiError;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

impl Role {
    /// The role name a chat template expects (`developer` is rendered as `system`).
    pub fn template_name(self) -> &'static str {
        match self {
            Role::System | Role::Developer => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool | Role::Function => "tool",
        }
    }
}

/// One part of a multi-part message.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// A message's content: a string, or a list of parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// A message as the client sent it.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Value>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// The text of the message; parts that are not text are an error for text-only engines.
    pub fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None => Ok(String::new()),
            Some(Content::Text(s)) => Ok(s.clone()),
            Some(Content::Parts(parts)) => {
                let mut out = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => out.push_str(t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                "messages",
                                format!("Content parts of type `{kind}` are not supported by this model; send text parts."),
                            ))
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct RawChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(flatten)]
    sampling: RawSampling,
}

/// A validated chat completion request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub model: String,
    /// Choices asked for (1 to 128): upstreams answer them; the local engine one.
    pub n: u32,
    pub messages: Vec<ChatMessage>,
    pub stream: bool,
    pub include_usage: bool,
    pub sampling: SamplingParams,
    /// Function tools the model may call (other tool types are in `other_tools`).
    pub tools: Vec<FunctionTool>,
    /// Tool types other than `function` (upstreams may serve them; the local engine not).
    pub other_tools: Vec<String>,
    pub tool_choice: ToolChoice,
    /// Whether the model may call several tools in one turn (OpenAI's default: yes).
    pub parallel_tool_calls: bool,
    pub response_format: ResponseFormat,
    /// A feature the local engine does not implement; upstreams may.
    pub wants_logprobs: bool,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionTool {
    pub name: String,
    pub description: Option<String>,
    /// A JSON Schema of the arguments (an object schema; `{}` when none was given).
    pub parameters: Value,
    pub strict: bool,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (the default when tools are given).
    Auto,
    /// No tool call (the default without tools).
    None,
    /// At least one tool call.
    Required,
    /// A call of this function.
    Function(String),
}

/// The form of the answer's text.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON that validates against `schema`.
    JsonSchema {
        name: String,
        schema: Value,
        strict: bool,
    },
}

/// Tool names as OpenAI allows them: letters, digits, `_` and `-`, at most 64.
fn valid_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_tools(raw: Option<&[Value]>) -> Result<(Vec<FunctionTool>, Vec<String>), ApiError> {
    let mut functions = Vec::new();
    let mut others = Vec::new();
    for (i, tool) in raw.unwrap_or_default().iter().enumerate() {
        let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != "function" {
            if kind.is_empty() {
                return Err(ApiError::invalid(
                    "tools",
                    format!("`tools[{i}].type` is missing; function tools have `\"type\": \"function\"`."),
                ));
            }
            others.push(kind.to_owned());
            continue;
        }
        let Some(f) = tool.get("function").filter(|f| f.is_object()) else {
            return Err(ApiError::invalid(
                "tools",
                format!("`tools[{i}].function` must be an object with a `name`."),
            ));
        };
        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
        if !valid_tool_name(name) {
            return Err(ApiError::invalid(
                "tools",
                format!("`tools[{i}].function.name` must be 1 to 64 letters, digits, `_` or `-`, got {:?}.", f.get("name").unwrap_or(&Value::Null).to_string()),
            ));
        }
        if functions.iter().any(|t: &FunctionTool| t.name == name) {
            return Err(ApiError::invalid(
                "tools",
                format!("Two tools are named `{name}`; tool names must be unique."),
            ));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(ApiError::invalid(
                    "tools",
                    format!("`tools[{i}].function.parameters` must be a JSON Schema object."),
                ))
            }
        };
        functions.push(FunctionTool {
            name: name.to_owned(),
            description: f
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
            parameters,
            strict: f.get("strict").and_then(Value::as_bool).unwrap_or(false),
        });
    }
    Ok((functions, others))
}

fn parse_tool_choice(
    raw: Option<&Value>,
    tools: &[FunctionTool],
    any_tools: bool,
) -> Result<ToolChoice, ApiError> {
    let choice = match raw {
        None | Some(Value::Null) => {
            return Ok(if any_tools { ToolChoice::Auto } else { ToolChoice::None })
        }
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("`tool_choice` must be `auto`, `none`, `required` or a named function, got `{other}`."),
                ))
            }
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            match (v.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) => ToolChoice::Function(name.to_owned()),
                // Other named tool types (allowed_tools, custom) are the upstream's to judge.
                (Some(_), _) if !tools.is_empty() || any_tools => return Ok(ToolChoice::Auto),
                _ => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "`tool_choice` as an object must be `{\"type\": \"function\", \"function\": {\"name\": ...}}`.",
                    ))
                }
            }
        }
    };
    match &choice {
        ToolChoice::Required if !any_tools => Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice` is `required` but no `tools` were given.",
        )),
        ToolChoice::Function(name) if !tools.iter().any(|t| &t.name == name) => {
            Err(ApiError::invalid(
                "tool_choice",
                format!("`tool_choice` names the function `{name}`, which is not among `tools`."),
            ))
        }
        _ => Ok(choice),
    }
}

fn parse_response_format(raw: Option<&Value>) -> Result<ResponseFormat, ApiError> {
    let Some(v) = raw.filter(|v| !v.is_null()) else {
        return Ok(ResponseFormat::Text);
    };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ResponseFormat::Text),
        Some("json_object") => Ok(ResponseFormat::JsonObject),
        Some("json_schema") => {
            let spec = v
                .get("json_schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| {
                    ApiError::invalid(
                        "response_format",
                        "`response_format.json_schema` must be an object with `name` and `schema`.",
                    )
                })?;
            let name = spec.get("name").and_then(Value::as_str).unwrap_or("");
            if !valid_tool_name(name) {
                return Err(ApiError::invalid(
                    "response_format",
                    "`response_format.json_schema.name` must be 1 to 64 letters, digits, `_` or `-`.",
                ));
            }
            let schema = match spec.get("schema") {
                None | Some(Value::Null) => serde_json::json!({}),
                Some(s @ (Value::Object(_) | Value::Bool(_))) => s.clone(),
                Some(_) => {
                    return Err(ApiError::invalid(
                        "response_format",
                        "`response_format.json_schema.schema` must be a JSON Schema object.",
                    ))
                }
            };
            Ok(ResponseFormat::JsonSchema {
                name: name.to_owned(),
                schema,
                strict: spec.get("strict").and_then(Value::as_bool).unwrap_or(false),
            })
        }
        _ => Err(ApiError::invalid(
            "response_format",
            "`response_format.type` must be `text`, `json_object` or `json_schema`.",
        )),
    }
}

/// Deserialize with the failing field's path in the message.
pub(crate) fn from_value<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::new(
                crate::ErrorKind::InvalidRequest,
                format!("Invalid request body: {inner}."),
            )
            .with_code(crate::ErrorCode::InvalidRequest)
        } else {
            let param = path.split(['.', '[']).next().unwrap_or(&path).to_owned();
            ApiError::new(
                crate::ErrorKind::InvalidRequest,
                format!("Invalid value for `{path}`: {inner}."),
            )
            .with_param(param)
            .with_code(crate::ErrorCode::InvalidValue)
        }
    })
}

impl ChatRequest {
    /// Parse and validate a JSON body. Borrows it, so the same value can be forwarded.
    pub fn from_json(value: &Value) -> Result<Self, ApiError> {
        let raw: RawChatRequest = from_value(value)?;
        if raw.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must contain at least one message.",
            ));
        }
        let n = match raw.n {
            None => 1,
            Some(n @ 1..=128) => n as u32,
            Some(n) => {
                return Err(ApiError::invalid(
                    "n",
                    format!("`n` must be between 1 and 128, got {n}."),
                ))
            }
        };
        let (tools, other_tools) = parse_tools(raw.tools.as_deref())?;
        let any_tools = !tools.is_empty() || !other_tools.is_empty();
        let tool_choice = parse_tool_choice(raw.tool_choice.as_ref(), &tools, any_tools)?;
        let response_format = parse_response_format(raw.response_format.as_ref())?;
        Ok(ChatRequest {
            n,
            model: raw.model,
            messages: raw.messages,
            stream: raw.stream.unwrap_or(false),
            include_usage: raw.stream_options.is_some_and(|o| o.include_usage),
            sampling: raw.sampling.validate()?,
            tools,
            other_tools,
            tool_choice,
            parallel_tool_calls: raw.parallel_tool_calls.unwrap_or(true),
            response_format,
            wants_logprobs: raw.logprobs.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{expect, Expect};
    use serde_json::json;

    fn check(body: Value, expect: Expect) {
        let got = match ChatRequest::from_json(&body) {
            Ok(r) => format!(
                "ok model={} msgs={} stream={} usage={} sampling={:?}",
                r.model,
                r.messages.len(),
                r.stream,
                r.include_usage,
                r.sampling
            ),
            Err(e) => format!("{} {}", e.status(), e.body_json()),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn valid_request() {
        check(
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,
                   "stream_options":{"include_usage":true},"temperature":0,"stop":"\n","max_tokens":5,"seed":-1}),
            expect![[
                r#"ok model=m msgs=1 stream=true usage=true sampling=SamplingParams { temperature: Some(0.0), top_p: None, top_k: None, min_p: None, seed: Some(4294967295), stop: ["\n"], max_tokens: Some(5), presence_penalty: None, frequency_penalty: None, ignore_eos: false }"#
            ]],
        );
    }

    #[test]
    fn empty_messages() {
        check(
            json!({"model":"m","messages":[]}),
            expect![[
                r#"400 {"error":{"message":"`messages` must contain at least one message.","type":"invalid_request_error","param":"messages","code":"invalid_value"}}"#
            ]],
        );
    }

    #[test]
    fn missing_messages() {
        check(
            json!({"model":"m"}),
            expect![[
                r#"400 {"error":{"message":"Invalid request body: missing field `messages`.","type":"invalid_request_error","param":null,"code":"invalid_request"}}"#
            ]],
        );
    }

    #[test]
    fn negative_max_tokens() {
        check(
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":-3}),
            expect![[
                r#"400 {"error":{"message":"`max_tokens` must be at least 1, got -3.","type":"invalid_request_error","param":"max_tokens","code":"invalid_value"}}"#
            ]],
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        check(
            json!({"model":"m","messages":[{"role":"robot","content":"hi"}]}),
            expect![[
                r#"400 {"error":{"message":"Invalid value for `messages[0].role`: unknown variant `robot`, expected one of `system`, `developer`, `user`, `assistant`, `tool`, `function`.","type":"invalid_request_error","param":"messages","code":"invalid_value"}}"#
            ]],
        );
    }

    #[test]
    fn temperature_out_of_range() {
        check(
            json!({"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":3.5}),
            expect![[
                r#"400 {"error":{"message":"`temperature` must be between 0 and 2, got 3.5.","type":"invalid_request_error","param":"temperature","code":"invalid_value"}}"#
            ]],
        );
    }

    #[test]
    fn content_parts_are_joined() {
        let r = ChatRequest::from_json(&json!({"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"a"},{"type":"text","text":"b"}]}]}));
        let text = r.and_then(|r| r.messages[0].text());
        assert_eq!(text, Ok("ab".to_owned()));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
            prop_oneof![
                Just("user"),
                Just("system"),
                Just("messages"),
                Just("max_tokens")
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("model".to_owned()),
                        Just("messages".to_owned()),
                        Just("role".to_owned()),
                        Just("content".to_owned()),
                        Just("max_tokens".to_owned()),
                        Just("stop".to_owned()),
                        Just("temperature".to_owned()),
                        Just("stream_options".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any JSON is either a valid request or a 400 with a message; never a panic.
        #[test]
        fn arbitrary_json_never_panics(v in json_value()) {
            match ChatRequest::from_json(&v) {
                Ok(r) => prop_assert!(!r.messages.is_empty()),
                Err(e) => {
                    prop_assert_eq!(e.status(), 400);
                    prop_assert!(!e.message.is_empty());
                }
            }
            let _ = crate::completions::CompletionRequest::from_json(&v);
        }
    }
}
