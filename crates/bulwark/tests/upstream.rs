//! The real binary in front of a mock OpenAI upstream on loopback: pass-through,
//! streaming without buffering, model and key rewriting, and failure mapping.

mod common;

use std::time::{Duration, Instant};

use bulwark_testkit::{Bulwark, MockUpstream};
use common::{start_with, TempDir};
use expect_test::expect;
use serde_json::{json, Value};

/// Bulwark fronting `mock` with aliases for every mock behaviour under test.
async fn gateway(dir: &TempDir, mock_url: &str, read_timeout_ms: u64) -> Bulwark {
    let cfg = format!(
        r#"
[[upstreams]]
name = "mock"
base_url = "{mock_url}"
api_key_env = "TEST_UPSTREAM_KEY"
read_timeout_ms = {read_timeout_ms}
connect_timeout_ms = 1000
models = {{ "fast" = "mock-large", "drip" = "drip-150", "slow" = "slow-3000", "stall" = "stall", "e500" = "error-500", "e401" = "error-401", "e400" = "error-400", "e429" = "error-429", "badjson" = "bad-json", "badsse" = "bad-sse", "gzip" = "gzip-json" }}
"#
    );
    let path = dir.write("bulwark.toml", &cfg);
    start_with(Some(&path), &[("TEST_UPSTREAM_KEY", "sk-upstream-secret")]).await
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model":model,"messages":[{"role":"user","content":"hello upstream"}],"stream":stream})
}

#[tokio::test(flavor = "multi_thread")]
async fn non_streaming_pass_through_rewrites_model_and_key() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("up-basic");
    let b = gateway(&dir, &mock.base_url(), 5000).await;
    let client = reqwest::Client::new();
    let r = client
        .post(b.url("/v1/chat/completions"))
        .json(&chat("fast", false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    // A non-streamed answer keeps the upstream's length framing.
    assert!(
        r.headers().get("content-length").is_some(),
        "{:?}",
        r.headers()
    );
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "mock reply to: hello upstream"
    );
    let got = mock.received();
    assert_eq!(got.len(), 1);
    let (path, auth, body) = &got[0];
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(auth.as_deref(), Some("Bearer sk-upstream-secret"));
    assert_eq!(body["model"], "mock-large");
    assert_eq!(body["messages"], chat("fast", false)["messages"]);
    // The text completion endpoint goes through too.
    let r = client
        .post(b.url("/v1/completions"))
        .json(&json!({"model":"fast","prompt":"abc"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(v["choices"][0]["text"], "mock reply to: abc");
    // The key never shows up in our logs.
    assert!(!b.logs().contains("sk-upstream-secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_are_passed_through_without_buffering() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("up-stream");
    let b = gateway(&dir, &mock.base_url(), 5000).await;
    let client = reqwest::Client::new();
    let sent = Instant::now();
    let mut r = client
        .post(b.url("/v1/chat/completions"))
        .json(&chat("drip", true))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut arrivals = Vec::new();
    let mut body = String::new();
    while let Some(chunk) = r.chunk().await.unwrap_or_else(|e| panic!("{e}")) {
        arrivals.push(sent.elapsed());
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    // The mock waits 150 ms between its 7 frames. A buffering proxy would deliver
    // everything at the end; we must see frames arrive spread over that time.
    assert!(
        arrivals.len() >= 5,
        "{} chunks: {arrivals:?}",
        arrivals.len()
    );
    let spread = *arrivals.last().unwrap_or(&Duration::ZERO) - arrivals[0];
    assert!(
        spread >= Duration::from_millis(600),
        "frames arrived together: {arrivals:?}"
    );
    assert!(body.ends_with("data: [DONE]\n\n"));
    let text = common::streamed_content(&body);
    assert_eq!(text, "mock reply to: hello upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_are_mapped() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("up-fail");
    let b = gateway(&dir, &mock.base_url(), 500).await;
    let client = reqwest::Client::new();
    let mut out = String::new();
    for model in ["e500", "e401", "e400", "e429", "slow"] {
        let r = client
            .post(b.url("/v1/chat/completions"))
            .json(&chat(model, false))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        out += &format!(
            "{model}: {status} {} {} | {}\n",
            v["error"]["type"],
            v["error"]["code"],
            v["error"]["message"].as_str().unwrap_or("")
        );
    }
    expect![[r#"
        e500: 502 "upstream_error" "upstream_error" | Upstream `mock` failed with 500: mock error 500
        e401: 502 "upstream_error" "upstream_rejected" | Upstream `mock` refused the request with 401: mock error 401. Check its api_key_env and model mapping in the gateway's config.
        e400: 400 "invalid_request_error" "upstream_rejected_request" | Upstream `mock` refused the request with 400: mock error 400
        e429: 429 "rate_limit_error" "upstream_rate_limited" | Upstream `mock` is rate limiting: mock error 429
        slow: 504 "upstream_error" "upstream_timeout" | upstream `mock` did not answer within 500ms
    "#]]
    .assert_eq(&out);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_stream_ends_with_an_error_event() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("up-stall");
    let b = gateway(&dir, &mock.base_url(), 500).await;
    let r = reqwest::Client::new()
        .post(b.url("/v1/chat/completions"))
        .json(&chat("stall", true))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(10), r.text())
        .await
        .unwrap_or_else(|_| panic!("the stalled stream was never ended"))
        .unwrap_or_default();
    let last = body.trim_end().rsplit("\n\n").next().unwrap_or("");
    let v: Value = serde_json::from_str(last.trim_start_matches("data: ")).unwrap_or(Value::Null);
    assert_eq!(v["error"]["code"], "upstream_timeout", "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_a_502() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9);
    let dir = TempDir::new("up-down");
    let b = gateway(&dir, &format!("http://127.0.0.1:{port}/v1"), 500).await;
    let r = reqwest::Client::new()
        .post(b.url("/v1/chat/completions"))
        .json(&chat("fast", false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unreachable")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_connections_are_reused() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("up-keepalive");
    let b = gateway(&dir, &mock.base_url(), 5000).await;
    // One client, one pooled connection, many requests, streamed and not.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..20 {
        let r = client
            .post(b.url("/v1/chat/completions"))
            .json(&chat("fast", i % 2 == 0))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap_or_default();
        assert!(
            body.contains("mock reply") || body.contains("mock"),
            "{body}"
        );
    }
    assert_eq!(mock.received().len(), 20);
}

/// An upstream that breaks its protocol gets its answer refused, never passed on: JSON
/// that is not JSON and a compressed answer nobody asked for are a 502; a stream ends at
/// its first malformed event with an error event, and nothing after it reaches the
/// client.
#[tokio::test(flavor = "multi_thread")]
async fn answers_that_break_the_protocol_are_refused() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("up-hostile");
    let b = gateway(&dir, &mock.base_url(), 5000).await;
    let client = reqwest::Client::new();
    let mut out = String::new();
    for model in ["badjson", "gzip"] {
        let r = client
            .post(b.url("/v1/chat/completions"))
            .json(&chat(model, false))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let status = r.status().as_u16();
        assert!(r.headers().get("content-encoding").is_none());
        let v: Value = r.json().await.unwrap_or(Value::Null);
        out += &format!(
            "{model}: {status} {} | {}\n",
            v["error"]["code"],
            v["error"]["message"].as_str().unwrap_or("")
        );
    }
    let r = client
        .post(b.url("/v1/chat/completions"))
        .json(&chat("badsse", true))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let text = r.text().await.unwrap_or_default();
    assert!(
        text.contains("fine ") && !text.contains("never seen") && !text.contains("broken"),
        "{text}"
    );
    assert!(text.contains("upstream_invalid_answer"), "{text}");
    expect![[r#"
        badjson: 502 "upstream_invalid_answer" | Upstream `mock` sent an answer that is not valid JSON; the answer was not passed on.
        gzip: 502 "upstream_invalid_answer" | Upstream `mock` sent a `gzip`-encoded answer, which the gateway did not ask for; the answer was not passed on.
    "#]].assert_eq(&out);
}
