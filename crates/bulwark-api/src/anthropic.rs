//! The Anthropic Messages API (`POST /v1/messages`), spoken at the edge: a request is
//! validated and translated into the gateway's chat form (the OpenAI chat body every
//! stage reads: guard, keys, policy, cache, audit), and the answer, whole or streamed,
//! is translated back into Anthropic's message and event sequence. Errors take
//! Anthropic's shape. No IO.
//!
//! | Anthropic | chat form |
//! |---|---|
//! | `system` (string or text blocks) | a first `system` message |
//! | `text` block | a text part |
//! | `image` block (base64 or URL) | an `image_url` part (a data URL for base64) |
//! | assistant `tool_use` block | an entry of the message's `tool_calls` (input as JSON text) |
//! | user `tool_result` block | a `tool` message with that `tool_call_id` (before the rest of the turn) |
//! | `tools[]` (`name`, `description`, `input_schema`) | `tools[]` of type `function` |
//! | `tool_choice` auto / any / tool / none | `auto` / `required` / the named function / `none` |
//! | `max_tokens` (required), `stop_sequences`, `temperature`, `top_p`, `top_k` | the same sampling fields (`stop`) |
//! | `metadata.user_id` | `user` |
//! | `output_config.format` (`json_schema`) | `response_format` of type `json_schema`, strict |
//!
//! Answers: `finish_reason` stop / length / tool_calls / content_filter become
//! `stop_reason` end_turn / max_tokens / tool_use / refusal.

use serde_json::{json, Map, Value};

use crate::{ApiError, ErrorKind};

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorKind::InvalidRequest, message).with_code(crate::ErrorCode::InvalidRequest)
}

/// Anthropic's error `type` for one of ours.
pub fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest
        | ErrorKind::MethodNotAllowed
        | ErrorKind::UnsupportedMediaType
        | ErrorKind::RequestTimeout => "invalid_request_error",
        ErrorKind::Authentication => "authentication_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::PayloadTooLarge => "request_too_large",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::Unavailable => "overloaded_error",
        ErrorKind::Internal | ErrorKind::BadGateway | ErrorKind::GatewayTimeout => "api_error",
    }
}

/// Anthropic's error body for an error given by its `type` and message.
pub fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Anthropic's error `type` for an OpenAI-shaped error body's status.
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        400 | 405 | 408 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

fn text_of_blocks(v: &Value, what: &str) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = Vec::new();
            for b in blocks {
                match (b.get("type").and_then(Value::as_str), b.get("text")) {
                    (Some("text"), Some(Value::String(t))) => out.push(t.as_str()),
                    (t, _) => {
                        return Err(invalid(format!(
                            "{what}: only text blocks are allowed here, got `{}`.",
                            t.unwrap_or("a block without a type")
                        )))
                    }
                }
            }
            Ok(out.join("\n"))
        }
        _ => Err(invalid(format!(
            "{what}: expected a string or a list of text blocks."
        ))),
    }
}

/// An `image` block as a chat `image_url` part.
fn image_part(b: &Value, at: &str) -> Result<Value, ApiError> {
    let src = b
        .get("source")
        .ok_or_else(|| invalid(format!("{at}: an image block needs a `source`.")))?;
    let url = match src.get("type").and_then(Value::as_str) {
        Some("base64") => {
            let media = src.get("media_type").and_then(Value::as_str).unwrap_or("");
            let data = src.get("data").and_then(Value::as_str).unwrap_or("");
            if media.is_empty() || data.is_empty() {
                return Err(invalid(format!(
                    "{at}: a base64 image needs `media_type` and `data`."
                )));
            }
            format!("data:{media};base64,{data}")
        }
        Some("url") => src
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{at}: a URL image needs `url`.")))?
            .to_owned(),
        _ => {
            return Err(invalid(format!(
                "{at}: an image `source` is `base64` or `url`."
            )))
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// The text of a `tool_result` block's `content` (a string, or text blocks).
fn tool_result_text(b: &Value, at: &str) -> Result<String, ApiError> {
    match b.get("content") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(c) => text_of_blocks(c, at),
    }
}

/// Validates an Anthropic Messages request and translates it into the chat form.
/// `tool_use` ids must be unique and every `tool_result` must answer one of them.
pub fn to_chat(body: &Value) -> Result<Value, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| invalid("The request body must be a JSON object."))?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(invalid("model: a non-empty string is required.")),
    };
    let max_tokens = match obj.get("max_tokens") {
        Some(v) => v
            .as_u64()
            .filter(|&n| n >= 1)
            .ok_or_else(|| invalid("max_tokens: an integer of at least 1 is required."))?,
        None => return Err(invalid("max_tokens: Field required")),
    };
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("messages: Field required (a list of messages)."))?;
    if messages.is_empty() {
        return Err(invalid("messages: at least one message is required."));
    }
    let mut out: Vec<Value> = Vec::new();
    if let Some(system) = obj.get("system") {
        if !system.is_null() {
            out.push(json!({"role": "system", "content": text_of_blocks(system, "system")?}));
        }
    }
    let mut tool_ids: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages.{i}");
        let role = match m.get("role").and_then(Value::as_str) {
            Some(r @ ("user" | "assistant")) => r,
            Some(other) => {
                return Err(invalid(format!(
                    "{at}.role: `{other}` is not a role here; use `user` or `assistant` (and `system` at the top level)."
                )))
            }
            None => return Err(invalid(format!("{at}.role: Field required"))),
        };
        let content = m
            .get("content")
            .ok_or_else(|| invalid(format!("{at}.content: Field required")))?;
        let blocks: Vec<Value> = match content {
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(b) => b.clone(),
            _ => {
                return Err(invalid(format!(
                    "{at}.content: a string or a list of content blocks."
                )))
            }
        };
        let mut parts: Vec<Value> = Vec::new();
        let mut calls: Vec<Value> = Vec::new();
        let mut results: Vec<Value> = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let bat = format!("{at}.content.{j}");
            match (role, b.get("type").and_then(Value::as_str)) {
                (_, Some("text")) => {
                    let t = b
                        .get("text")
                        .and_then(Value::as_str)
                        .ok_or_else(|| invalid(format!("{bat}.text: Field required")))?;
                    parts.push(json!({"type": "text", "text": t}));
                }
                ("user", Some("image")) => parts.push(image_part(b, &bat)?),
                ("assistant", Some("tool_use")) => {
                    let id = b.get("id").and_then(Value::as_str).unwrap_or("");
                    let name = b.get("name").and_then(Value::as_str).unwrap_or("");
                    if id.is_empty() || name.is_empty() {
                        return Err(invalid(format!(
                            "{bat}: a tool_use block needs `id` and `name`."
                        )));
                    }
                    if tool_ids.iter().any(|t| t == id) {
                        return Err(invalid(format!("{bat}.id: `{id}` is used twice.")));
                    }
                    tool_ids.push(id.to_owned());
                    let input = b.get("input").cloned().unwrap_or_else(|| json!({}));
                    calls.push(json!({"id": id, "type": "function",
                        "function": {"name": name, "arguments": input.to_string()}}));
                }
                ("user", Some("tool_result")) => {
                    let id = b.get("tool_use_id").and_then(Value::as_str).unwrap_or("");
                    if !tool_ids.iter().any(|t| t == id) {
                        return Err(invalid(format!(
                            "{bat}.tool_use_id: `{id}` answers no tool_use block of an earlier assistant turn."
                        )));
                    }
                    let mut text = tool_result_text(b, &bat)?;
                    if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                        text = format!("Error: {text}");
                    }
                    results.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                }
                (_, Some(t)) => {
                    return Err(invalid(format!(
                        "{bat}.type: `{t}` blocks are not accepted in a `{role}` message."
                    )))
                }
                (_, None) => return Err(invalid(format!("{bat}.type: Field required"))),
            }
        }
        out.extend(results);
        if role == "assistant" {
            let text: String = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("");
            let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
            if !calls.is_empty() {
                msg["tool_calls"] = json!(calls);
            }
            out.push(msg);
        } else if !parts.is_empty() {
            let only_text = parts.iter().all(|p| p["type"] == "text");
            let content = if only_text && parts.len() == 1 {
                parts[0]["text"].clone()
            } else {
                json!(parts)
            };
            out.push(json!({"role": "user", "content": content}));
        }
    }
    let mut chat = Map::new();
    chat.insert("model".into(), json!(model));
    chat.insert("messages".into(), json!(out));
    chat.insert("max_tokens".into(), json!(max_tokens));
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
    ] {
        if let Some(v) = obj.get(from).filter(|v| !v.is_null()) {
            chat.insert(to.into(), v.clone());
        }
    }
    if let Some(s) = obj.get("stop_sequences").filter(|v| !v.is_null()) {
        let list = s
            .as_array()
            .filter(|a| a.iter().all(Value::is_string))
            .ok_or_else(|| invalid("stop_sequences: a list of strings."))?;
        if !list.is_empty() {
            chat.insert("stop".into(), json!(list));
        }
    }
    if let Some(u) = body.pointer("/metadata/user_id").and_then(Value::as_str) {
        chat.insert("user".into(), json!(u));
    }
    if let Some(tools) = obj.get("tools").filter(|v| !v.is_null()) {
        let tools = tools
            .as_array()
            .ok_or_else(|| invalid("tools: a list of tools."))?;
        let mut list = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| invalid(format!("tools.{i}.name: Field required")))?;
            let schema = t
                .get("input_schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| {
                    invalid(format!(
                        "tools.{i}.input_schema: a JSON Schema object is required."
                    ))
                })?;
            let mut f = json!({"name": name, "parameters": schema});
            if let Some(d) = t.get("description").and_then(Value::as_str) {
                f["description"] = json!(d);
            }
            list.push(json!({"type": "function", "function": f}));
        }
        if !list.is_empty() {
            chat.insert("tools".into(), json!(list));
        }
    }
    if let Some(tc) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        let choice = match tc.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                let name = tc
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("tool_choice.name: Field required for type `tool`."))?;
                json!({"type": "function", "function": {"name": name}})
            }
            _ => {
                return Err(invalid(
                    "tool_choice.type: `auto`, `any`, `tool` or `none`.",
                ))
            }
        };
        chat.insert("tool_choice".into(), choice);
    }
    if let Some(format) = body
        .pointer("/output_config/format")
        .filter(|v| !v.is_null())
    {
        match format.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                let schema = format
                    .get("schema")
                    .filter(|s| s.is_object())
                    .ok_or_else(|| {
                        invalid("output_config.format.schema: a JSON Schema object is required.")
                    })?;
                chat.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}}),
                );
            }
            _ => {
                return Err(invalid(
                    "output_config.format.type: `json_schema` is the format supported.",
                ))
            }
        }
    }
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        chat.insert("stream".into(), json!(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(Value::Object(chat))
}

fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// A message id from the chat answer's id (`chatcmpl-x` → `msg_x`).
fn message_id(chat_id: Option<&str>) -> String {
    let raw = chat_id.unwrap_or("");
    let tail = raw.strip_prefix("chatcmpl-").unwrap_or(raw);
    if tail.is_empty() {
        "msg_bulwark".to_owned()
    } else {
        format!("msg_{tail}")
    }
}

/// A tool call's arguments as the `input` object (`{}` when they do not parse).
fn tool_input(arguments: Option<&str>) -> Value {
    arguments
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// A whole chat answer as an Anthropic message. `model` is the name the client asked for.
pub fn message_from_chat(chat: &Value, model: &str) -> Value {
    let choice = &chat["choices"][0];
    let msg = &choice["message"];
    let mut content = Vec::new();
    if let Some(t) = msg.get("content").and_then(Value::as_str) {
        if !t.is_empty() {
            content.push(json!({"type": "text", "text": t}));
        }
    }
    if let Some(calls) = msg.get("tool_calls").and_then(Value::as_array) {
        for c in calls {
            content.push(json!({"type": "tool_use",
                "id": c.get("id").and_then(Value::as_str).unwrap_or("toolu_bulwark"),
                "name": c.pointer("/function/name").and_then(Value::as_str).unwrap_or(""),
                "input": tool_input(c.pointer("/function/arguments").and_then(Value::as_str))}));
        }
    }
    json!({
        "id": message_id(chat.get("id").and_then(Value::as_str)),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": {
            "input_tokens": chat.pointer("/usage/prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
            "output_tokens": chat.pointer("/usage/completion_tokens").and_then(Value::as_u64).unwrap_or(0),
        }
    })
}

/// One server-sent event in Anthropic's framing (`event:` then `data:`).
pub fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// The block a stream is writing.
#[derive(Debug, Clone, PartialEq)]
enum Open {
    None,
    Text,
    /// A tool call: its index in the chat stream's `tool_calls`.
    Tool(u64),
}

/// Translates a chat completion stream (its chunks as JSON) into Anthropic's event
/// sequence: `message_start`, `ping`, then per block `content_block_start`,
/// `content_block_delta` (`text_delta` or `input_json_delta`), `content_block_stop`,
/// and at the end `message_delta` (stop reason, output tokens) and `message_stop`.
#[derive(Debug)]
pub struct StreamTranslator {
    model: String,
    started: bool,
    open: Open,
    /// Index of the next content block.
    next_block: u64,
    finish: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    ended: bool,
}

impl StreamTranslator {
    pub fn new(model: &str) -> Self {
        StreamTranslator {
            model: model.to_owned(),
            started: false,
            open: Open::None,
            next_block: 0,
            finish: None,
            input_tokens: 0,
            output_tokens: 0,
            ended: false,
        }
    }

    fn start(&mut self, id: Option<&str>, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        out.push_str(&event(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": message_id(id), "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}}),
        ));
        out.push_str(&event("ping", &json!({"type": "ping"})));
    }

    fn close_block(&mut self, out: &mut String) {
        if self.open != Open::None {
            out.push_str(&event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.next_block - 1}),
            ));
            self.open = Open::None;
        }
    }
}

impl crate::StreamTranslate for StreamTranslator {
    /// The events for one chat chunk.
    fn push(&mut self, chunk: &Value) -> String {
        let mut out = String::new();
        if self.ended {
            return out;
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.input_tokens = u["prompt_tokens"].as_u64().unwrap_or(self.input_tokens);
            self.output_tokens = u["completion_tokens"]
                .as_u64()
                .unwrap_or(self.output_tokens);
        }
        self.start(chunk.get("id").and_then(Value::as_str), &mut out);
        let Some(choice) = chunk.pointer("/choices/0") else {
            return out;
        };
        let delta = &choice["delta"];
        if let Some(t) = delta.get("content").and_then(Value::as_str) {
            if !t.is_empty() {
                if self.open != Open::Text {
                    self.close_block(&mut out);
                    out.push_str(&event(
                        "content_block_start",
                        &json!({"type": "content_block_start", "index": self.next_block,
                            "content_block": {"type": "text", "text": ""}}),
                    ));
                    self.next_block += 1;
                    self.open = Open::Text;
                }
                out.push_str(&event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": self.next_block - 1,
                        "delta": {"type": "text_delta", "text": t}}),
                ));
            }
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for c in calls {
                let idx = c.get("index").and_then(Value::as_u64).unwrap_or(0);
                if self.open != Open::Tool(idx) {
                    self.close_block(&mut out);
                    out.push_str(&event(
                        "content_block_start",
                        &json!({"type": "content_block_start", "index": self.next_block,
                            "content_block": {"type": "tool_use",
                                "id": c.get("id").and_then(Value::as_str).unwrap_or("toolu_bulwark"),
                                "name": c.pointer("/function/name").and_then(Value::as_str).unwrap_or(""),
                                "input": {}}}),
                    ));
                    self.next_block += 1;
                    self.open = Open::Tool(idx);
                }
                if let Some(args) = c.pointer("/function/arguments").and_then(Value::as_str) {
                    if !args.is_empty() {
                        out.push_str(&event(
                            "content_block_delta",
                            &json!({"type": "content_block_delta", "index": self.next_block - 1,
                                "delta": {"type": "input_json_delta", "partial_json": args}}),
                        ));
                    }
                }
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_owned());
            self.close_block(&mut out);
        }
        out
    }

    /// An error event of Anthropic's [`error_type`] for `kind`, in place of the rest
    /// of the stream.
    fn error(&mut self, kind: ErrorKind, message: &str) -> String {
        self.ended = true;
        event("error", &error_body(error_type(kind), message))
    }

    /// The closing events, once the chat stream has ended (`[DONE]`, or its end).
    fn finish(&mut self) -> String {
        let mut out = String::new();
        if self.ended {
            return out;
        }
        self.ended = true;
        self.start(None, &mut out);
        self.close_block(&mut out);
        out.push_str(&event(
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(self.finish.as_deref()), "stop_sequence": null},
                "usage": {"output_tokens": self.output_tokens}}),
        ));
        out.push_str(&event("message_stop", &json!({"type": "message_stop"})));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamTranslate;
    use expect_test::{expect, Expect};

    fn check(body: Value, expect: Expect) {
        let got = match to_chat(&body) {
            Ok(v) => v.to_string(),
            Err(e) => format!("{} {}", e.status(), e.message),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn requests_translate() {
        check(
            json!({"model": "m", "max_tokens": 50, "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"], "temperature": 0.2, "top_k": 5, "metadata": {"user_id": "u1"},
            "tools": [{"name": "weather", "description": "Weather now.", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any"}, "stream": true,
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18 C"}]}, {"type": "text", "text": "And tomorrow?"}]}
            ]}),
            expect![[
                r#"{"max_tokens":50,"messages":[{"content":"Be brief.","role":"system"},{"content":"Weather in Paris?","role":"user"},{"content":"Checking.","role":"assistant","tool_calls":[{"function":{"arguments":"{\"city\":\"Paris\"}","name":"weather"},"id":"toolu_1","type":"function"}]},{"content":"18 C","role":"tool","tool_call_id":"toolu_1"},{"content":"And tomorrow?","role":"user"}],"model":"m","stop":["END"],"stream":true,"stream_options":{"include_usage":true},"temperature":0.2,"tool_choice":"required","tools":[{"function":{"description":"Weather now.","name":"weather","parameters":{"properties":{"city":{"type":"string"}},"type":"object"}},"type":"function"}],"top_k":5,"user":"u1"}"#
            ]],
        );
    }

    #[test]
    fn bad_requests_are_named() {
        check(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            expect![[r#"400 max_tokens: Field required"#]],
        );
        check(
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]}),
            expect![[
                r#"400 messages.0.content.0.type: `video` blocks are not accepted in a `user` message."#
            ]],
        );
        check(
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}]}),
            expect![[
                r#"400 messages.0.content.0.tool_use_id: `toolu_9` answers no tool_use block of an earlier assistant turn."#
            ]],
        );
        check(
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}),
            expect![[
                r#"400 messages.0.role: `system` is not a role here; use `user` or `assistant` (and `system` at the top level)."#
            ]],
        );
        check(
            json!({"model": "m", "max_tokens": 0, "messages": []}),
            expect![[r#"400 max_tokens: an integer of at least 1 is required."#]],
        );
        check(
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}),
            expect![[
                r#"{"max_tokens":5,"messages":[{"content":"x","role":"user"}],"model":"m","response_format":{"json_schema":{"name":"output","schema":{"type":"object"},"strict":true},"type":"json_schema"}}"#
            ]],
        );
    }

    #[test]
    fn answers_translate() {
        let chat = json!({"id": "chatcmpl-abc", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "Let me check.", "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7}});
        expect![[r#"{"content":[{"text":"Let me check.","type":"text"},{"id":"call_1","input":{"city":"Paris"},"name":"weather","type":"tool_use"}],"id":"msg_abc","model":"claude-x","role":"assistant","stop_reason":"tool_use","stop_sequence":null,"type":"message","usage":{"input_tokens":12,"output_tokens":7}}"#]]
            .assert_eq(&message_from_chat(&chat, "claude-x").to_string());
    }

    #[test]
    fn streams_translate() {
        let mut t = StreamTranslator::new("m");
        let chunks = [
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "w", "arguments": "{\"ci"}}]}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "ty\":1}"}}]}, "finish_reason": null}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}),
        ];
        let mut out: String = chunks.iter().map(|c| t.push(c)).collect();
        out.push_str(&t.finish());
        let names: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        expect![[r#"message_start ping content_block_start content_block_delta content_block_stop content_block_start content_block_delta content_block_delta content_block_stop message_delta message_stop"#]]
            .assert_eq(&names.join(" "));
        assert!(out.contains(r#""delta":{"stop_reason":"tool_use","stop_sequence":null},"type":"message_delta","usage":{"output_tokens":4}"#), "{out}");
        assert!(out.contains(r#""partial_json":"ty\":1}""#), "{out}");
    }
}
