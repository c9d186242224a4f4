//! The chat form sent to an Anthropic-protocol upstream (`kind = "anthropic"`: the
//! hosted API, or vLLM, llama.cpp's server and Ollama, which serve `/v1/messages`), and
//! its answers, whole or streamed, read back into the chat form every stage reads. The
//! reverse of [`crate::anthropic`]. No IO.
//!
//! | chat form | Anthropic |
//! |---|---|
//! | `system` / `developer` messages | `system` (joined with blank lines) |
//! | text parts, `image_url` parts (data URLs or URLs) | `text` and `image` blocks |
//! | an assistant's `tool_calls` | `tool_use` blocks (arguments parsed as the input) |
//! | `tool` messages | `tool_result` blocks of the next user turn |
//! | `tools`, `tool_choice` auto / required / a function / none | `tools`, `tool_choice` auto / any / tool / none |
//! | `max_tokens` (default 4096: Anthropic requires one), `stop`, `temperature`, `top_p`, `top_k`, `user` | `max_tokens`, `stop_sequences`, the same, `metadata.user_id` |
//! | `response_format` `json_schema` | `output_config.format` |
//!
//! Answers: `stop_reason` end_turn / stop_sequence / max_tokens / tool_use / refusal
//! become `finish_reason` stop / stop / length / tool_calls / content_filter.

use serde_json::{json, Map, Value};

use crate::ApiError;

/// `max_tokens` when the chat request names none.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

/// A chat message's content as Anthropic blocks.
fn blocks(content: &Value, at: &str) -> Result<Vec<Value>, ApiError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![json!({"type": "text", "text": s})]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| match p.get("type").and_then(Value::as_str) {
                Some("text") => Ok(json!({"type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or("")})),
                Some("image_url") => {
                    let url = p.pointer("/image_url/url").and_then(Value::as_str).unwrap_or("");
                    match url.strip_prefix("data:").and_then(|r| r.split_once(";base64,")) {
                        Some((media, data)) => Ok(json!({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})),
                        None => Ok(json!({"type": "image", "source": {"type": "url", "url": url}})),
                    }
                }
                other => Err(invalid("messages", format!("`{at}.content[{j}]` of type {other:?} cannot be sent to an Anthropic-protocol upstream."))),
            })
            .collect(),
        _ => Err(invalid("messages", format!("`{at}.content` must be a string or a list of parts."))),
    }
}

fn text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// A chat completion request as a Messages request.
pub fn request_from_chat(chat: &Value) -> Result<Value, ApiError> {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let push = |messages: &mut Vec<Value>, role: &str, mut content: Vec<Value>| {
        if content.is_empty() {
            return;
        }
        match messages.last_mut() {
            // Consecutive turns of one role are one turn (tool results then text).
            Some(last) if last["role"] == role => {
                if let Some(c) = last["content"].as_array_mut() {
                    c.append(&mut content);
                }
            }
            _ => messages.push(json!({"role": role, "content": content})),
        }
    };
    for (i, m) in chat["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("messages[{i}]");
        let content = m.get("content").unwrap_or(&Value::Null);
        match m.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => system.push(text(content)),
            Some("user") => push(&mut messages, "user", blocks(content, &at)?),
            Some("assistant") => {
                let mut out = blocks(content, &at)?;
                for c in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let args = c
                        .pointer("/function/arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}");
                    let input = serde_json::from_str::<Value>(args)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    out.push(json!({"type": "tool_use", "id": c.get("id").cloned().unwrap_or(json!("call")),
                        "name": c.pointer("/function/name").cloned().unwrap_or(json!("")), "input": input}));
                }
                push(&mut messages, "assistant", out);
            }
            Some("tool" | "function") => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                push(
                    &mut messages,
                    "user",
                    vec![
                        json!({"type": "tool_result", "tool_use_id": id, "content": text(content)}),
                    ],
                );
            }
            other => {
                return Err(invalid(
                    "messages",
                    format!(
                        "`{at}.role` {other:?} cannot be sent to an Anthropic-protocol upstream."
                    ),
                ))
            }
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), chat["model"].clone());
    out.insert("messages".into(), json!(messages));
    if !system.is_empty() {
        out.insert("system".into(), json!(system.join("\n\n")));
    }
    let max = chat
        .get("max_completion_tokens")
        .or_else(|| chat.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), json!(max));
    match chat.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(v @ Value::Array(_)) => {
            out.insert("stop_sequences".into(), v.clone());
        }
        _ => {}
    }
    for key in ["temperature", "top_p", "top_k", "stream"] {
        if let Some(v) = chat.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(u) = chat.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": u}));
    }
    if let Some(tools) = chat.get("tools").and_then(Value::as_array) {
        let list: Vec<Value> = tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(|f| {
                let mut t = json!({"name": f["name"], "input_schema": f.get("parameters").cloned().unwrap_or(json!({"type": "object"}))});
                if let Some(d) = f.get("description").filter(|d| d.is_string()) {
                    t["description"] = d.clone();
                }
                t
            })
            .collect();
        if !list.is_empty() {
            out.insert("tools".into(), json!(list));
        }
    }
    if let Some(tc) = chat.get("tool_choice").filter(|v| !v.is_null()) {
        let choice = match tc.as_str() {
            Some("auto") => json!({"type": "auto"}),
            Some("required") => json!({"type": "any"}),
            Some("none") => json!({"type": "none"}),
            _ => match tc.pointer("/function/name").and_then(Value::as_str) {
                Some(name) => json!({"type": "tool", "name": name}),
                None => {
                    return Err(invalid(
                        "tool_choice",
                        "This `tool_choice` cannot be sent to an Anthropic-protocol upstream.",
                    ))
                }
            },
        };
        out.insert("tool_choice".into(), choice);
    }
    if let Some(rf) = chat.get("response_format") {
        match rf.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                let schema = rf
                    .pointer("/json_schema/schema")
                    .cloned()
                    .unwrap_or(json!({"type": "object"}));
                out.insert(
                    "output_config".into(),
                    json!({"format": {"type": "json_schema", "schema": schema}}),
                );
            }
            Some("json_object") => {
                out.insert(
                    "output_config".into(),
                    json!({"format": {"type": "json_schema", "schema": {"type": "object"}}}),
                );
            }
            _ => {}
        }
    }
    Ok(Value::Object(out))
}

fn finish_reason(stop: Option<&str>) -> &'static str {
    match stop {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

fn chat_id(message_id: Option<&str>) -> String {
    format!("chatcmpl-{}", message_id.unwrap_or("anthropic"))
}

/// A Messages answer as a chat completion.
pub fn chat_from_message(msg: &Value, model: &str) -> Value {
    let mut content = String::new();
    let mut calls = Vec::new();
    for b in msg["content"].as_array().into_iter().flatten() {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => content.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(json!({"id": b["id"], "type": "function",
                "function": {"name": b["name"], "arguments": b.get("input").cloned().unwrap_or(json!({})).to_string()}})),
            _ => {}
        }
    }
    let mut message = json!({"role": "assistant", "content": if content.is_empty() && !calls.is_empty() { Value::Null } else { json!(content) }});
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    let input = msg
        .pointer("/usage/input_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let output = msg
        .pointer("/usage/output_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    json!({
        "id": chat_id(msg.get("id").and_then(Value::as_str)),
        "object": "chat.completion",
        "created": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": null,
                     "finish_reason": finish_reason(msg.get("stop_reason").and_then(Value::as_str))}],
        "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output},
    })
}

/// Anthropic stream events in, chat completion chunks out (`data: ...` lines, then the
/// usage chunk when `include_usage`, then `[DONE]`).
#[derive(Debug)]
pub struct ChatStream {
    id: String,
    model: String,
    include_usage: bool,
    /// Chat tool-call index of each open `tool_use` block, by block index.
    calls: Vec<(u64, u32)>,
    next_call: u32,
    input_tokens: u64,
    output_tokens: u64,
    ended: bool,
}

impl ChatStream {
    pub fn new(model: &str, include_usage: bool) -> Self {
        ChatStream {
            id: chat_id(None),
            model: model.to_owned(),
            include_usage,
            calls: Vec::new(),
            next_call: 0,
            input_tokens: 0,
            output_tokens: 0,
            ended: false,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> String {
        let c = json!({"id": self.id, "object": "chat.completion.chunk", "created": 0, "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]});
        format!("data: {c}\n\n")
    }

    /// One Anthropic event (its `data` JSON) in; chat chunks out.
    pub fn push(&mut self, event: &Value) -> String {
        if self.ended {
            return String::new();
        }
        match event.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let m = &event["message"];
                self.id = chat_id(m.get("id").and_then(Value::as_str));
                self.input_tokens = m
                    .pointer("/usage/input_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                self.chunk(json!({"role": "assistant", "content": ""}), None)
            }
            Some("content_block_start") => {
                let b = &event["content_block"];
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                match b.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let call = self.next_call;
                        self.next_call += 1;
                        self.calls.push((index, call));
                        self.chunk(
                            json!({"tool_calls": [{"index": call, "id": b["id"], "type": "function",
                            "function": {"name": b["name"], "arguments": ""}}]}),
                            None,
                        )
                    }
                    Some("text") => match b
                        .get("text")
                        .and_then(Value::as_str)
                        .filter(|t| !t.is_empty())
                    {
                        Some(t) => self.chunk(json!({"content": t}), None),
                        None => String::new(),
                    },
                    _ => String::new(),
                }
            }
            Some("content_block_delta") => {
                let d = &event["delta"];
                let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => self.chunk(json!({"content": d["text"]}), None),
                    Some("input_json_delta") => {
                        match self.calls.iter().find(|(b, _)| *b == index) {
                            Some(&(_, call)) => self.chunk(
                                json!({"tool_calls": [{"index": call,
                                "function": {"arguments": d["partial_json"]}}]}),
                                None,
                            ),
                            None => String::new(),
                        }
                    }
                    _ => String::new(),
                }
            }
            Some("message_delta") => {
                if let Some(o) = event
                    .pointer("/usage/output_tokens")
                    .and_then(Value::as_u64)
                {
                    self.output_tokens = o;
                }
                match event.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    Some(stop) => self.chunk(json!({}), Some(finish_reason(Some(stop)))),
                    None => String::new(),
                }
            }
            Some("message_stop") => self.finish(),
            Some("error") => {
                self.ended = true;
                let message = event
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("The upstream stream failed.");
                let err = json!({"error": {"message": format!("The upstream failed mid-answer: {message}"),
                    "type": "server_error", "param": null, "code": "upstream_unavailable"}});
                format!("data: {err}\n\ndata: [DONE]\n\n")
            }
            _ => String::new(),
        }
    }

    /// Ends the stream without another chunk (it failed, and said so already).
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// The usage chunk (when asked for) and `[DONE]`. Once.
    pub fn finish(&mut self) -> String {
        if self.ended {
            return String::new();
        }
        self.ended = true;
        let mut out = String::new();
        if self.include_usage {
            let u = json!({"id": self.id, "object": "chat.completion.chunk", "created": 0, "model": self.model,
                "choices": [], "usage": {"prompt_tokens": self.input_tokens, "completion_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens}});
            out.push_str(&format!("data: {u}\n\n"));
        }
        out.push_str("data: [DONE]\n\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_with_calls_becomes_a_messages_request() {
        let chat = json!({"model": "m", "stream": true, "stop": "END", "temperature": 0.2, "user": "u1",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
                {"role": "user", "content": "And tomorrow?"}],
            "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
            "tool_choice": "required"});
        let out = request_from_chat(&chat).map_err(|e| e.message);
        expect_test::expect![[r#"Ok(Object {"max_tokens": Number(4096), "messages": Array [Object {"content": Array [Object {"text": String("Weather in Paris?"), "type": String("text")}], "role": String("user")}, Object {"content": Array [Object {"id": String("call_1"), "input": Object {"city": String("Paris")}, "name": String("weather"), "type": String("tool_use")}], "role": String("assistant")}, Object {"content": Array [Object {"content": String("18 C"), "tool_use_id": String("call_1"), "type": String("tool_result")}, Object {"text": String("And tomorrow?"), "type": String("text")}], "role": String("user")}], "metadata": Object {"user_id": String("u1")}, "model": String("m"), "stop_sequences": Array [String("END")], "stream": Bool(true), "system": String("Be brief."), "temperature": Number(0.2), "tool_choice": Object {"type": String("any")}, "tools": Array [Object {"input_schema": Object {"type": String("object")}, "name": String("weather")}]})"#]]
        .assert_eq(&format!("{out:?}"));
    }

    #[test]
    fn a_tool_use_answer_becomes_tool_calls() {
        let msg = json!({"id": "msg_1", "type": "message", "role": "assistant", "stop_reason": "tool_use",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}}],
            "usage": {"input_tokens": 4, "output_tokens": 6}});
        let chat = chat_from_message(&msg, "m");
        assert_eq!(chat["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chat["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(
            chat["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(chat["usage"]["total_tokens"], 10);
    }

    #[test]
    fn a_stream_becomes_chat_chunks() {
        let mut s = ChatStream::new("m", true);
        let mut out = String::new();
        for e in [
            json!({"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 3, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "ping"}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 7}}),
            json!({"type": "message_stop"}),
        ] {
            out.push_str(&s.push(&e));
        }
        let deltas: Vec<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| match serde_json::from_str::<Value>(d) {
                Ok(v) => format!(
                    "{} {} {}",
                    v["choices"][0]["delta"], v["choices"][0]["finish_reason"], v["usage"]
                ),
                Err(_) => d.to_owned(),
            })
            .collect();
        expect_test::expect![[r#"
            [
                "{\"content\":\"\",\"role\":\"assistant\"} null null",
                "{\"content\":\"Hi\"} null null",
                "{\"tool_calls\":[{\"function\":{\"arguments\":\"\",\"name\":\"w\"},\"id\":\"toolu_1\",\"index\":0,\"type\":\"function\"}]} null null",
                "{\"tool_calls\":[{\"function\":{\"arguments\":\"{\\\"a\\\":\"},\"index\":0}]} null null",
                "{\"tool_calls\":[{\"function\":{\"arguments\":\"1}\"},\"index\":0}]} null null",
                "{} \"tool_calls\" null",
                "null null {\"completion_tokens\":7,\"prompt_tokens\":3,\"total_tokens\":10}",
                "[DONE]",
            ]
        "#]]
        .assert_debug_eq(&deltas);
    }
}
