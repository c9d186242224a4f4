//! The real binary serving the default model: the API, errors, batching, cancellation.

mod common;

use std::time::{Duration, Instant};

use common::{local_model, metric, start, TempDir};
use expect_test::expect;
use serde_json::{json, Value};

fn chat_body(content: &str, max_tokens: u32) -> Value {
    json!({"model":"smollm2","messages":[{"role":"user","content":content}],"temperature":0,"max_tokens":max_tokens})
}

/// Reads a streamed chat response until a generated token arrives. (The first frame, the
/// role chunk, is written before the engine has even admitted the job.)
async fn wait_for_token(r: &mut reqwest::Response) {
    let mut seen = String::new();
    while !seen.contains("\"delta\":{\"content\":") {
        let chunk = r
            .chunk()
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("stream ended: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = client
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("post: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_input_gets_openai_shaped_errors() {
    let dir = TempDir::new("errors");
    let b = start(
        &dir,
        &format!(
            "[server]\nmax_body_bytes = 4096\n{}",
            local_model("ctx_size = 128")
        ),
    )
    .await;
    let client = reqwest::Client::new();
    let url = b.url("/v1/chat/completions");
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(20);
    let cases: Vec<(&str, &str, &str, String)> = vec![
        ("malformed json", "POST", "application/json", "{\"model\": ".into()),
        ("not an object", "POST", "application/json", "[1,2]".into()),
        ("missing model", "POST", "application/json", json!({"messages":[]}).to_string()),
        ("empty messages", "POST", "application/json", json!({"model":"smollm2","messages":[]}).to_string()),
        ("negative max_tokens", "POST", "application/json", json!({"model":"smollm2","messages":[{"role":"user","content":"hi"}],"max_tokens":-1}).to_string()),
        ("wrong field type", "POST", "application/json", json!({"model":"smollm2","messages":"hi"}).to_string()),
        ("unknown model", "POST", "application/json", json!({"model":"gpt-9","messages":[{"role":"user","content":"hi"}]}).to_string()),
        ("body over limit", "POST", "application/json", json!({"model":"smollm2","messages":[{"role":"user","content":"x".repeat(5000)}]}).to_string()),
        ("wrong content type", "POST", "text/plain", json!({"model":"smollm2","messages":[{"role":"user","content":"hi"}]}).to_string()),
        ("prompt longer than context", "POST", "application/json", json!({"model":"smollm2","messages":[{"role":"user","content":long}]}).to_string()),
        ("tool result for no call", "POST", "application/json", json!({"model":"smollm2","messages":[{"role":"user","content":"hi"},{"role":"tool","tool_call_id":"call_x","content":"42"}]}).to_string()),
        ("schema the grammar cannot express", "POST", "application/json", json!({"model":"smollm2","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"s","schema":{"$ref":"https://example.invalid/s.json"}}}}).to_string()),
        ("tool_choice names no tool", "POST", "application/json", json!({"model":"smollm2","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"g"}}}).to_string()),
        ("tool type the engine lacks", "POST", "application/json", json!({"model":"smollm2","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"web_search"}]}).to_string()),
        ("tools with response_format", "POST", "application/json", json!({"model":"smollm2","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}],"response_format":{"type":"json_object"}}).to_string()),
        ("wrong method", "GET", "application/json", String::new()),
    ];
    let mut out = String::new();
    for (name, method, ct, body) in cases {
        let req = if method == "GET" {
            client.get(&url)
        } else {
            client.post(&url)
        };
        let r = req
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let status = r.status().as_u16();
        let v: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{name}: body is not JSON: {e}"));
        let err = &v["error"];
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: no message in {v}"
        );
        assert!(err["type"].is_string(), "{name}: no type in {v}");
        out += &format!(
            "{name}: {status} {} {} | {}\n",
            err["param"],
            err["code"],
            err["message"].as_str().unwrap_or("")
        );
    }
    let r = client
        .get(b.url("/v2/nothing"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    out += &format!("unknown route: {}\n", r.status().as_u16());
    expect![[r#"
        malformed json: 400 null "invalid_json" | The request body is not valid JSON: EOF while parsing a value at line 1 column 10.
        not an object: 400 null "invalid_json" | The request body must be a JSON object.
        missing model: 400 "model" "missing_field" | Missing required field `model`.
        empty messages: 400 "messages" "invalid_value" | `messages` must contain at least one message.
        negative max_tokens: 400 "max_tokens" "invalid_value" | `max_tokens` must be at least 1, got -1.
        wrong field type: 400 "messages" "invalid_value" | Invalid value for `messages`: invalid type: string "hi", expected a sequence.
        unknown model: 404 "model" "model_not_found" | The model `gpt-9` does not exist or you do not have access to it. GET /v1/models lists the models this gateway serves.
        body over limit: 413 null "request_too_large" | The request body is larger than the limit of 4096 bytes (server.max_body_bytes).
        wrong content type: 415 null "unsupported_media_type" | Expected `Content-Type: application/json`, got text/plain.
        prompt longer than context: 400 "messages" "context_length_exceeded" | This model's maximum context length is 128 tokens, but the prompt has 231 tokens. Shorten the prompt (it must leave room for at least one generated token).
        tool result for no call: 400 "messages" "invalid_value" | `messages[1]` is a tool result for the call `call_x`, which no earlier assistant message made; send the assistant message with its `tool_calls` before the results.
        schema the grammar cannot express: 400 "response_format" "invalid_value" | llama.cpp's grammar cannot express this JSON Schema (its converter refuses, among others, `$ref`s that point outside the schema). Simplify the schema.
        tool_choice names no tool: 400 "tool_choice" "invalid_value" | `tool_choice` names the function `g`, which is not among `tools`.
        tool type the engine lacks: 400 "tools" "unsupported_parameter" | A tool of type `web_search` is not supported by the local engine.
        tools with response_format: 400 "response_format" "unsupported_parameter" | `response_format` together with `tools` is not supported by the local engine.
        wrong method: 405 null "method_not_allowed" | `GET` is not allowed on `/v1/chat/completions`.
        unknown route: 404
    "#]]
    .assert_eq(&out);
    // The server is still healthy after all of that.
    let (status, _) = post(&client, &url, &chat_body("Hi", 2)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn greedy_generation_is_deterministic() {
    let dir = TempDir::new("greedy");
    let b = start(&dir, &local_model("")).await;
    let client = reqwest::Client::new();
    let url = b.url("/v1/chat/completions");
    let (s1, a) = post(&client, &url, &chat_body("Say hello.", 16)).await;
    let (s2, c) = post(&client, &url, &chat_body("Say hello.", 16)).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(a["choices"][0]["message"], c["choices"][0]["message"]);
    // Which words come out depends on the CPU's arithmetic (llama.cpp picks kernels for
    // the instructions it finds); the answer's shape and its counts do not.
    assert_eq!(a["choices"][0]["finish_reason"], "length", "{a}");
    assert_eq!(
        a["usage"],
        json!({"completion_tokens":16,"prompt_tokens":33,"total_tokens":49})
    );
    let content = a["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(content.split_whitespace().count() >= 3, "{a}");
}

#[tokio::test]
async fn completions_endpoint_streams_and_echoes() {
    let dir = TempDir::new("completions");
    let b = start(&dir, &local_model("")).await;
    let client = reqwest::Client::new();
    let url = b.url("/v1/completions");
    let (status, v) = post(&client, &url, &json!({"model":"smollm2","prompt":"The sky is","max_tokens":4,"temperature":0,"echo":true})).await;
    assert_eq!(status, 200);
    let text = v["choices"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        text.starts_with("The sky is") && text.len() > "The sky is".len(),
        "{v}"
    );
    assert_eq!(v["usage"]["completion_tokens"], 4);
    let body = json!({"model":"smollm2","prompt":"The sky is","max_tokens":4,"temperature":0,"stream":true,"stream_options":{"include_usage":true}});
    let sse = client
        .post(&url)
        .json(&body)
        .send()
        .await
        .and_then(|r| r.error_for_status());
    let sse = match sse {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => panic!("{e}"),
    };
    let events: Vec<&str> = sse.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.last(), Some(&"data: [DONE]"));
    let streamed: String = events
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(format!("The sky is{streamed}"), text);
    assert!(sse.contains("\"usage\":{\"prompt_tokens\":"), "{sse}");
}

#[tokio::test]
async fn concurrent_requests_share_batches() {
    let dir = TempDir::new("concurrent");
    let b = start(&dir, &local_model("parallel = 4")).await;
    let client = reqwest::Client::new();
    let url = b.url("/v1/chat/completions");
    let prompts = [
        "Write a poem about the sea.",
        "Describe a forest.",
        "Tell a story about a cat.",
        "Explain rain.",
    ];
    // End-of-generation is ignored so that none finishes before the last one joins.
    let bodies: Vec<Value> = prompts
        .iter()
        .map(|p| {
            let mut b = chat_body(p, 48);
            b["ignore_eos"] = json!(true);
            b
        })
        .collect();
    let results =
        futures_util::future::join_all(bodies.iter().map(|body| post(&client, &url, body))).await;
    for (status, v) in &results {
        assert_eq!(*status, 200, "{v}");
        assert!(
            v["choices"][0]["message"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty()),
            "{v}"
        );
        assert!(
            v["usage"]["completion_tokens"]
                .as_u64()
                .is_some_and(|n| n > 0),
            "{v}"
        );
    }
    assert!(metric(&b, "bulwark_engine_shared_steps_total").await > 0.0);
    assert_eq!(metric(&b, "bulwark_engine_max_batch_sequences").await, 4.0);
    assert_eq!(
        metric(&b, "bulwark_engine_requests_completed_total").await,
        4.0
    );
}

#[tokio::test]
async fn client_disconnect_frees_the_slot() {
    let dir = TempDir::new("disconnect");
    let b = start(&dir, &local_model("parallel = 1")).await;
    let client = reqwest::Client::new();
    let url = b.url("/v1/chat/completions");
    let mut long = chat_body("Write a very long story about a dragon.", 1500);
    long["stream"] = json!(true);
    let mut r = client
        .post(&url)
        .json(&long)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    // Wait until tokens flow, then hang up.
    wait_for_token(&mut r).await;
    drop(r);
    // With one sequence, this request can only run once the abandoned one is freed;
    // 1500 tokens would take many seconds, so a prompt answer proves the slot came back.
    let started = Instant::now();
    let (status, v) = tokio::time::timeout(
        Duration::from_secs(60),
        post(&client, &url, &chat_body("Hi", 4)),
    )
    .await
    .unwrap_or_else(|_| panic!("the next request hung"));
    assert_eq!(status, 200, "{v}");
    let waited = started.elapsed();
    assert_eq!(
        metric(&b, "bulwark_engine_requests_cancelled_total").await,
        1.0
    );
    let generated = metric(&b, "bulwark_engine_generated_tokens_total").await;
    assert!(
        generated < 1500.0,
        "the abandoned generation ran to the end ({generated} tokens, waited {waited:?})"
    );
    assert_eq!(metric(&b, "bulwark_engine_active_sequences").await, 0.0);
}

#[tokio::test]
async fn full_queue_answers_429_with_retry_after() {
    let dir = TempDir::new("queue");
    let b = start(&dir, &local_model("parallel = 1\nqueue_depth = 1")).await;
    let client = reqwest::Client::new();
    let url = b.url("/v1/chat/completions");
    let mut long = chat_body("Write a long story.", 1000);
    long["stream"] = json!(true);
    let mut running = client
        .post(&url)
        .json(&long)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Hold the only sequence, so that the next request can only queue.
    wait_for_token(&mut running).await;
    let queued = client
        .post(&url)
        .json(&long)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(queued.status(), 200);
    let refused = client
        .post(&url)
        .json(&chat_body("Hi", 2))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let v: Value = refused.json().await.unwrap_or(Value::Null);
    assert_eq!(v["error"]["code"], "queue_full");
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn models_health_and_readiness() {
    let dir = TempDir::new("models");
    let b = start(&dir, &local_model("")).await;
    let v: Value = reqwest::get(b.url("/v1/models"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or(Value::Null);
    expect![[r#"[{"id":"smollm2","mode":"chat","object":"model","owned_by":"bulwark","served_by":"local","status":"ready","verification":"pinned-digest","verified":true,"watermark":false},{"id":"all-minilm-l6-v2","mode":"embedding","object":"model","owned_by":"bulwark","served_by":"local","status":"ready","verification":"pinned-digest","verified":true}]"#]]
        .assert_eq(&strip_created(&v["data"]).to_string());
    let health = reqwest::get(b.url("/healthz"))
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(health.ok(), Some(200));
    let ready = reqwest::get(b.url("/readyz"))
        .await
        .map(|r| r.status().as_u16());
    assert_eq!(ready.ok(), Some(200));
}

fn strip_created(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(items) = v.as_array_mut() {
        for m in items {
            if let Some(o) = m.as_object_mut() {
                o.remove("created");
            }
        }
    }
    v
}

#[tokio::test]
async fn digest_mismatch_refuses_to_serve() {
    let dir = TempDir::new("digest");
    let cfg = format!(
        "[[local_models]]\nname = \"smollm2\"\npath = \"{}\"\nsha256 = \"{}\"\n",
        common::model_path().display(),
        "0".repeat(64)
    );
    let cfg = dir.write("bulwark.toml", &cfg);
    let mut b = bulwark_testkit::Bulwark::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_bulwark")),
        Some(&cfg),
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let status = b
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("bulwark kept running"));
    assert!(!status.success());
    let logs = b.logs();
    assert!(logs.contains("refusing to load"), "{logs}");
    assert!(logs.contains(&"0".repeat(64)), "{logs}");
}

#[test]
fn cli_version_and_models_list() {
    let bin = env!("CARGO_BIN_EXE_bulwark");
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("bulwark {}", env!("CARGO_PKG_VERSION"))
    );

    let dir = TempDir::new("cli");
    let tampered = dir.write("tampered.gguf", "not the model");
    let cfg = format!(
        "{}[[local_models]]\nname = \"tampered\"\npath = \"{}\"\nsha256 = \"{}\"\n\
         [[upstreams]]\nname = \"eu\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = {{ \"big\" = \"org/big\" }}\n",
        local_model(""),
        tampered.display(),
        bulwark_config::default_model::GGUF_SHA256
    );
    let cfg = dir.write("bulwark.toml", &cfg);
    let out = std::process::Command::new(bin)
        .args(["models", "list", "--config"])
        .arg(&cfg)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().take(3).collect())
        .collect();
    assert_eq!(
        rows,
        vec![
            vec!["NAME", "KIND", "STATUS"],
            vec!["smollm2", "local", "verified"],
            vec!["tampered", "local", "MISMATCH"],
            vec!["big", "upstream", "-"],
        ]
    );
}

#[test]
fn refuses_to_listen_beyond_loopback_without_authentication() {
    let bin = env!("CARGO_BIN_EXE_bulwark");
    let data = TempDir::new("exposed-data");
    let out = std::process::Command::new(bin)
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("BULWARK_DATA_DIR", &data.0)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without authentication"),
        "{err}"
    );

    // Told explicitly, it starts (an upstream-only config, so nothing loads).
    let dir = TempDir::new("exposed");
    let cfg = dir.write(
        "bulwark.toml",
        "[server]\nallow_unauthenticated = true\n[[upstreams]]\nname = \"u\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = { \"m\" = \"m\" }\n",
    );
    let child = std::process::Command::new(bin)
        .args(["serve", "--listen", "0.0.0.0:0", "--config"])
        .arg(&cfg)
        .env("BULWARK_DATA_DIR", &data.0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let line = common::first_line_then_kill(child);
    assert!(
        line.starts_with("bulwark listening on http://0.0.0.0:"),
        "{line:?}"
    );
}

#[test]
fn offline_mode_refuses_upstreams_off_the_site() {
    let bin = env!("CARGO_BIN_EXE_bulwark");
    let data = TempDir::new("offline-data");
    let dir = TempDir::new("offline");
    let serve = |cfg: &std::path::Path| {
        std::process::Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(cfg)
            .env("BULWARK_DATA_DIR", &data.0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    // An upstream on a public address (a documentation address: nothing is sent).
    let far = dir.write(
        "far.toml",
        "[server]\noffline = true\n[[upstreams]]\nname = \"far\"\nbase_url = \"https://203.0.113.5/v1\"\nreplicas = [\"http://10.0.0.5:8000/v1\"]\nmodels = { \"m\" = \"m\" }\n",
    );
    let out = serve(&far)
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[server] offline = true, but upstream `far` at https://203.0.113.5/v1: 203.0.113.5 is not a local address"),
        "{err}"
    );
    assert!(!err.contains("10.0.0.5"), "{err}");
    // Loopback, private and `localhost` upstreams: it starts.
    let near = dir.write(
        "near.toml",
        "[server]\noffline = true\n[[upstreams]]\nname = \"near\"\nbase_url = \"http://127.0.0.1:9/v1\"\nreplicas = [\"http://10.0.0.5:8000/v1\", \"http://localhost:9/v1\", \"http://[fd00::5]:8000/v1\"]\nmodels = { \"m\" = \"m\" }\n",
    );
    let child = serve(&near);
    let line = common::first_line_then_kill(child);
    assert!(
        line.starts_with("bulwark listening on http://127.0.0.1:"),
        "{line:?}"
    );
}
