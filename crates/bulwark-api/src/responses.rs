//! The OpenAI Responses API (`POST /v1/responses`) translated to and from chat
//! completions, so that it runs on the same pipeline.
//!
//! | Responses | chat completions |
//! |---|---|
//! | `instructions` | a leading `system` message |
//! | `input` string | one `user` message |
//! | `input` message items (`input_text`, `output_text` parts) | messages of that role |
//! | `function_call` item | an assistant message's `tool_calls` entry |
//! | `function_call_output` item | a `tool` message |
//! | `tools` (`{"type":"function","name",...}`) | `tools` (`{"type":"function","function":{...}}`) |
//! | `tool_choice` auto / none / required / `{"type":"function","name"}` | the same |
//! | `text.format` text / json_object / json_schema | `response_format` |
//! | `max_output_tokens`, `temperature`, `top_p`, `parallel_tool_calls`, `stream` | `max_tokens`, the rest as is |
//!
//! The gateway keeps no conversation state: `previous_response_id` and `conversation`
//! are refused with a message saying so; `store` is accepted and ignored (nothing is
//! stored).

use serde_json::{json, Map, Value};

use crate::{ApiError, ErrorKind};

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(param, message)
}

/// The text of a message item's `content`: a string, or `input_text`/`output_text` parts.
fn content_text(content: &Value, at: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("input_text" | "output_text" | "text"), Some(t)) => out.push_str(t),
                    (Some("refusal"), _) => {
                        out.push_str(p.get("refusal").and_then(Value::as_str).unwrap_or(""))
                    }
                    (kind, _) => {
                        return Err(invalid(
                            "input",
                            format!("`{at}.content[{j}]` of type `{}` is not supported; send `input_text` parts.", kind.unwrap_or("?")),
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(invalid(
            "input",
            format!("`{at}.content` must be a string or a list of parts."),
        )),
    }
}

/// A Responses request as a chat completion request.
pub fn to_chat(body: &Value) -> Result<Value, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| invalid("input", "The request body must be a JSON object."))?;
    for unsupported in ["previous_response_id", "conversation"] {
        if obj.get(unsupported).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("`{unsupported}` is not supported: this gateway stores no responses. Send the whole conversation in `input`."),
            )
            .with_param(unsupported)
            .with_code(crate::ErrorCode::UnsupportedParameter));
        }
    }
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("model", "`model` is required."))?;
    let mut messages: Vec<Value> = Vec::new();
    if let Some(i) = obj.get("instructions").filter(|v| !v.is_null()) {
        let text = i
            .as_str()
            .ok_or_else(|| invalid("instructions", "`instructions` must be a string."))?;
        messages.push(json!({"role": "system", "content": text}));
    }
    match obj.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("input[{i}]");
                let kind = item
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("message");
                match kind {
                    "message" => {
                        let role = match item.get("role").and_then(Value::as_str) {
                            Some(r @ ("user" | "system" | "developer" | "assistant")) => r,
                            other => {
                                return Err(invalid(
                                    "input",
                                    format!("`{at}.role` must be `user`, `system`, `developer` or `assistant`, got {other:?}."),
                                ))
                            }
                        };
                        let text = content_text(item.get("content").unwrap_or(&Value::Null), &at)?;
                        messages.push(json!({"role": role, "content": text}));
                    }
                    "function_call" => {
                        let call_id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                            invalid("input", format!("`{at}.call_id` is required."))
                        })?;
                        let name = item.get("name").and_then(Value::as_str).ok_or_else(|| {
                            invalid("input", format!("`{at}.name` is required."))
                        })?;
                        let args = item.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                        let call = json!({"id": call_id, "type": "function",
                                          "function": {"name": name, "arguments": args}});
                        // Calls made in one turn belong to one assistant message.
                        match messages.last_mut() {
                            Some(last)
                                if last["role"] == "assistant" && last.get("tool_calls").is_some() =>
                            {
                                if let Some(calls) = last["tool_calls"].as_array_mut() {
                                    calls.push(call);
                                }
                            }
                            _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                        }
                    }
                    "function_call_output" => {
                        let call_id = item.get("call_id").and_then(Value::as_str).ok_or_else(|| {
                            invalid("input", format!("`{at}.call_id` is required."))
                        })?;
                        let output = match item.get("output") {
                            Some(Value::String(s)) => s.clone(),
                            Some(v @ Value::Array(_)) => content_text(v, &at)?,
                            _ => {
                                return Err(invalid("input", format!("`{at}.output` must be a string.")))
                            }
                        };
                        messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
                    }
                    other => {
                        return Err(invalid(
                            "input",
                            format!("`{at}` of type `{other}` is not supported; send `message`, `function_call` and `function_call_output` items."),
                        ))
                    }
                }
            }
        }
        _ => {
            return Err(invalid(
                "input",
                "`input` must be a string or a list of items.",
            ))
        }
    }
    let mut chat = Map::new();
    chat.insert("model".into(), json!(model));
    chat.insert("messages".into(), json!(messages));
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if stream {
        chat.insert("stream".into(), json!(true));
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(m) = obj.get("max_output_tokens").filter(|v| !v.is_null()) {
        chat.insert("max_tokens".into(), m.clone());
    }
    for key in [
        "temperature",
        "top_p",
        "parallel_tool_calls",
        "user",
        "metadata",
        "seed",
    ] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            chat.insert(key.into(), v.clone());
        }
    }
    if let Some(tools) = obj.get("tools").filter(|v| !v.is_null()) {
        let tools = tools
            .as_array()
            .ok_or_else(|| invalid("tools", "`tools` must be a list."))?;
        let mut list = Vec::new();
        for (i, t) in tools.iter().enumerate() {
            match t.get("type").and_then(Value::as_str) {
                Some("function") => {
                    let mut f = Map::new();
                    for key in ["name", "description", "parameters", "strict"] {
                        if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                            f.insert(key.into(), v.clone());
                        }
                    }
                    list.push(json!({"type": "function", "function": f}));
                }
                other => {
                    return Err(invalid(
                        "tools",
                        format!("`tools[{i}]` of type {other:?} is not supported; this gateway serves `function` tools."),
                    ))
                }
            }
        }
        if !list.is_empty() {
            chat.insert("tools".into(), json!(list));
        }
    }
    if let Some(tc) = obj.get("tool_choice").filter(|v| !v.is_null()) {
        let choice = match tc {
            Value::String(_) => tc.clone(),
            _ => match (tc.get("type").and_then(Value::as_str), tc.get("name").and_then(Value::as_str)) {
                (Some("function"), Some(name)) => json!({"type": "function", "function": {"name": name}}),
                _ => {
                    return Err(invalid(
                        "tool_choice",
                        "`tool_choice` must be `auto`, `none`, `required` or `{\"type\": \"function\", \"name\": ...}`.",
                    ))
                }
            },
        };
        chat.insert("tool_choice".into(), choice);
    }
    if let Some(format) = body.pointer("/text/format").filter(|v| !v.is_null()) {
        let rf = match format.get("type").and_then(Value::as_str) {
            Some("text") => None,
            Some("json_object") => Some(json!({"type": "json_object"})),
            Some("json_schema") => {
                let mut spec = Map::new();
                for key in ["name", "schema", "strict", "description"] {
                    if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                        spec.insert(key.into(), v.clone());
                    }
                }
                Some(json!({"type": "json_schema", "json_schema": spec}))
            }
            _ => {
                return Err(invalid(
                    "text",
                    "`text.format.type` must be `text`, `json_object` or `json_schema`.",
                ))
            }
        };
        if let Some(rf) = rf {
            chat.insert("response_format".into(), rf);
        }
    }
    Ok(Value::Object(chat))
}

/// `resp_` and the chat completion's id (without its `chatcmpl-`), or a fresh one.
fn response_id(chat_id: Option<&str>) -> String {
    match chat_id {
        Some(id) => format!("resp_{}", id.trim_start_matches("chatcmpl-")),
        None => format!("resp_{}", uuid::Uuid::new_v4().simple()),
    }
}

fn usage(input: u64, output: u64) -> Value {
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}

/// The request's settings echoed in a response object, as the API does.
fn skeleton(request: &Value, id: &str, model: &str, created: u64) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "model": model,
        "output": [],
        "instructions": request.get("instructions").cloned().unwrap_or(Value::Null),
        "max_output_tokens": request.get("max_output_tokens").cloned().unwrap_or(Value::Null),
        "parallel_tool_calls": request.get("parallel_tool_calls").and_then(Value::as_bool).unwrap_or(true),
        "temperature": request.get("temperature").cloned().unwrap_or(Value::Null),
        "top_p": request.get("top_p").cloned().unwrap_or(Value::Null),
        "tool_choice": request.get("tool_choice").cloned().unwrap_or(json!("auto")),
        "tools": request.get("tools").cloned().unwrap_or(json!([])),
        "text": request.get("text").cloned().unwrap_or(json!({"format": {"type": "text"}})),
        "metadata": request.get("metadata").cloned().unwrap_or(json!({})),
        "store": false,
        "error": null,
        "incomplete_details": null,
        "usage": null,
    })
}

fn finish(response: &mut Value, finish_reason: Option<&str>) {
    if finish_reason == Some("length") {
        response["status"] = json!("incomplete");
        response["incomplete_details"] = json!({"reason": "max_output_tokens"});
    } else if finish_reason == Some("content_filter") {
        response["status"] = json!("incomplete");
        response["incomplete_details"] = json!({"reason": "content_filter"});
    } else {
        response["status"] = json!("completed");
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
           "arguments": arguments, "status": status})
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A chat completion as a Responses response object.
pub fn response_from_chat(chat: &Value, request: &Value, model: &str) -> Value {
    let id = response_id(chat.get("id").and_then(Value::as_str));
    let created = chat
        .get("created")
        .and_then(Value::as_u64)
        .unwrap_or_else(now);
    let mut out = skeleton(request, &id, model, created);
    let choice = &chat["choices"][0];
    let msg = &choice["message"];
    let mut output = Vec::new();
    if let Some(t) = msg
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        output.push(message_item(&format!("msg_{}", &id[5..]), t, "completed"));
    }
    for (i, c) in msg
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let call_id = c
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("call_bulwark");
        output.push(call_item(
            &format!("fc_{}_{i}", &id[5..]),
            call_id,
            c.pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or(""),
            c.pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("{}"),
            "completed",
        ));
    }
    out["output"] = json!(output);
    finish(
        &mut out,
        choice.get("finish_reason").and_then(Value::as_str),
    );
    out["usage"] = usage(
        chat.pointer("/usage/prompt_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        chat.pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
    );
    out
}

/// An item a stream has open.
#[derive(Debug)]
enum Item {
    Message {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Chat completion chunks in, Responses events out (`response.created`, the output
/// items with their deltas, `response.completed`), each with its `sequence_number`.
#[derive(Debug)]
pub struct StreamTranslator {
    response: Value,
    started: bool,
    ended: bool,
    sequence: u64,
    /// Items done, in output order, and the one open.
    done: Vec<Value>,
    open: Option<Item>,
    /// Chat tool-call index of the open call.
    open_call: Option<u64>,
    finish_reason: Option<String>,
    usage: (u64, u64),
}

impl StreamTranslator {
    pub fn new(request: &Value, model: &str) -> Self {
        let id = response_id(None);
        StreamTranslator {
            response: skeleton(request, &id, model, now()),
            started: false,
            ended: false,
            sequence: 0,
            done: Vec::new(),
            open: None,
            open_call: None,
            finish_reason: None,
            usage: (0, 0),
        }
    }

    fn emit(&mut self, out: &mut String, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.push_str(&format!("event: {kind}\ndata: {data}\n\n"));
    }

    fn start(&mut self, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        let r = self.response.clone();
        self.emit(out, "response.created", json!({"response": r}));
        let r = self.response.clone();
        self.emit(out, "response.in_progress", json!({"response": r}));
    }

    fn item_id(&self, prefix: &str) -> String {
        let base = self.response["id"].as_str().unwrap_or("resp_x");
        format!(
            "{prefix}_{}_{}",
            &base[5.min(base.len())..],
            self.done.len()
        )
    }

    fn close(&mut self, out: &mut String) {
        let index = self.done.len();
        let item = match self.open.take() {
            None => return,
            Some(Item::Message { id, text }) => {
                self.emit(
                    out,
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index,
                    "content_index": 0, "text": text, "logprobs": []}),
                );
                self.emit(out, "response.content_part.done", json!({"item_id": id, "output_index": index,
                    "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}));
                message_item(&id, &text, "completed")
            }
            Some(Item::Call {
                id,
                call_id,
                name,
                arguments,
            }) => {
                self.emit(
                    out,
                    "response.function_call_arguments.done",
                    json!({"item_id": id,
                    "output_index": index, "name": name, "arguments": arguments}),
                );
                call_item(&id, &call_id, &name, &arguments, "completed")
            }
        };
        self.open_call = None;
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        self.done.push(item);
    }

    fn text(&mut self, delta: &str, out: &mut String) {
        if !matches!(self.open, Some(Item::Message { .. })) {
            self.close(out);
            let id = self.item_id("msg");
            let index = self.done.len();
            self.emit(out, "response.output_item.added", json!({"output_index": index,
                "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []}}));
            self.emit(out, "response.content_part.added", json!({"item_id": id, "output_index": index,
                "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}));
            self.open = Some(Item::Message {
                id,
                text: String::new(),
            });
        }
        let index = self.done.len();
        if let Some(Item::Message { id, text }) = &mut self.open {
            text.push_str(delta);
            let id = id.clone();
            self.emit(
                out,
                "response.output_text.delta",
                json!({"item_id": id, "output_index": index,
                "content_index": 0, "delta": delta, "logprobs": []}),
            );
        }
    }

    fn call(&mut self, call: &Value, out: &mut String) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        if self.open_call != Some(index) {
            self.close(out);
            let id = self.item_id("fc");
            let call_id = call
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("call_bulwark")
                .to_owned();
            let name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let output_index = self.done.len();
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": output_index,
                "item": call_item(&id, &call_id, &name, "", "in_progress")}),
            );
            self.open = Some(Item::Call {
                id,
                call_id,
                name,
                arguments: String::new(),
            });
            self.open_call = Some(index);
        }
        let delta = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("");
        if delta.is_empty() {
            return;
        }
        let output_index = self.done.len();
        if let Some(Item::Call { id, arguments, .. }) = &mut self.open {
            arguments.push_str(delta);
            let id = id.clone();
            self.emit(
                out,
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": output_index, "delta": delta}),
            );
        }
    }
}

impl crate::StreamTranslate for StreamTranslator {
    /// One chat chunk (parsed JSON) in; the events it makes.
    fn push(&mut self, chunk: &Value) -> String {
        let mut out = String::new();
        if self.ended {
            return out;
        }
        self.start(&mut out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = (
                u.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
                u.get("completion_tokens")
                    .and_then(Value::as_u64)
                    .unwrap_or(0),
            );
        }
        // One choice: the Responses API has no `n`.
        let Some(choice) = chunk.pointer("/choices/0") else {
            return out;
        };
        let delta = &choice["delta"];
        if let Some(t) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.text(t, &mut out);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            self.call(call, &mut out);
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(f.to_owned());
        }
        out
    }

    /// The end of the chat stream: close the open item and send `response.completed`
    /// (or `response.incomplete`). Once.
    fn finish(&mut self) -> String {
        let mut out = String::new();
        if self.ended {
            return out;
        }
        self.start(&mut out);
        self.close(&mut out);
        self.ended = true;
        let mut r = self.response.clone();
        r["output"] = json!(self.done);
        finish(&mut r, self.finish_reason.as_deref());
        r["usage"] = usage(self.usage.0, self.usage.1);
        let kind = if r["status"] == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(&mut out, kind, json!({"response": r}));
        out
    }

    /// A failure mid-stream: an `error` event, then nothing more.
    fn error(&mut self, kind: ErrorKind, message: &str) -> String {
        let code = match kind {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::RateLimited => "rate_limit_exceeded",
            _ => "server_error",
        };
        let mut out = String::new();
        if self.ended {
            return out;
        }
        self.ended = true;
        self.emit(
            &mut out,
            "error",
            json!({"code": code, "message": message, "param": null}),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamTranslate;

    #[test]
    fn a_conversation_with_calls_becomes_chat_messages() {
        let body = json!({
            "model": "m", "instructions": "Be brief.", "max_output_tokens": 50, "stream": true,
            "tools": [{"type": "function", "name": "weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "weather"},
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
                {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": "{}"},
                {"type": "function_call", "call_id": "call_2", "name": "weather", "arguments": "{\"x\":1}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"type": "function_call_output", "call_id": "call_2", "output": "rain"}
            ]
        });
        let chat = to_chat(&body).map_err(|e| e.message);
        expect_test::expect![[r#"Ok(Object {"max_tokens": Number(50), "messages": Array [Object {"content": String("Be brief."), "role": String("system")}, Object {"content": String("Weather?"), "role": String("user")}, Object {"content": Null, "role": String("assistant"), "tool_calls": Array [Object {"function": Object {"arguments": String("{}"), "name": String("weather")}, "id": String("call_1"), "type": String("function")}, Object {"function": Object {"arguments": String("{\"x\":1}"), "name": String("weather")}, "id": String("call_2"), "type": String("function")}]}, Object {"content": String("sunny"), "role": String("tool"), "tool_call_id": String("call_1")}, Object {"content": String("rain"), "role": String("tool"), "tool_call_id": String("call_2")}], "model": String("m"), "response_format": Object {"json_schema": Object {"name": String("w"), "schema": Object {"type": String("object")}, "strict": Bool(true)}, "type": String("json_schema")}, "stream": Bool(true), "stream_options": Object {"include_usage": Bool(true)}, "tool_choice": Object {"function": Object {"name": String("weather")}, "type": String("function")}, "tools": Array [Object {"function": Object {"name": String("weather"), "parameters": Object {"type": String("object")}}, "type": String("function")}]})"#]]
        .assert_eq(&format!("{chat:?}"));
    }

    #[test]
    fn stored_state_is_refused_with_a_reason() {
        let e = to_chat(&json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"}));
        assert!(e.is_err_and(|e| e.message.contains("stores no responses")));
    }

    #[test]
    fn a_stream_of_text_then_a_call_makes_two_items() {
        let mut t = StreamTranslator::new(&json!({"model": "m"}), "m");
        let mut out = String::new();
        for chunk in [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "Let me see."}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_9", "type": "function", "function": {"name": "weather", "arguments": ""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":\"Oslo\"}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9}}),
        ] {
            out.push_str(&t.push(&chunk));
        }
        out.push_str(&t.finish());
        let kinds: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let last: Value = out
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("data: "))
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or_default();
        assert_eq!(last["sequence_number"], json!(12));
        assert_eq!(
            last["response"]["output"][1]["arguments"],
            json!("{\"city\":\"Oslo\"}")
        );
        assert_eq!(last["response"]["output"][1]["call_id"], json!("call_9"));
        assert_eq!(last["response"]["usage"]["total_tokens"], json!(16));
    }
}
