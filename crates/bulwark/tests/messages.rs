//! The Anthropic Messages API through the real binary: every stage of the pipeline
//! applies to `/v1/messages` as to chat completions (keys, policy, guard on input and on
//! streamed output, cache, receipts, audit), and errors take Anthropic's shape.

mod common;

use std::process::{Command, Stdio};

use bulwark_testkit::{Bulwark, MockUpstream, LEAKED_KEY};
use common::{run, TempDir};
use serde_json::{json, Value};

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

async fn send(b: &Bulwark, body: &Value, extra: &[(&str, &str)]) -> Reply {
    let mut req = reqwest::Client::new()
        .post(b.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(body);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap_or_else(|e| panic!("{e}"));
    Reply {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap_or_default(),
    }
}

fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": text}]})
}

/// A foreign US upstream for `m`, a private French one for `fr`.
fn upstreams(mock: &MockUpstream) -> String {
    format!(
        "[[upstreams]]\nname = \"abroad\"\nbase_url = \"{0}\"\njurisdiction = \"US\"\ntrust = \"foreign\"\n\
         models = {{ \"m\" = \"m\", \"leak\" = \"leak-secret\" }}\n\
         [[upstreams]]\nname = \"home\"\nbase_url = \"{0}\"\njurisdiction = \"FR\"\ntrust = \"private\"\n\
         models = {{ \"fr\" = \"m\" }}\n",
        mock.base_url()
    )
}

async fn mock() -> MockUpstream {
    MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_and_class_apply_to_messages() {
    let mock = mock().await;
    let dir = TempDir::new("messages-policy");
    let b = common::start(&dir, &upstreams(&mock)).await;
    let r = send(&b, &ask("m", "hello"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["content"][0]["text"],
        json!("mock reply to: hello")
    );
    assert!(
        r.header("x-bulwark-route").starts_with("target=m;"),
        "{}",
        r.header("x-bulwark-route")
    );
    // Confidential data may not go abroad: refused before anything is sent.
    let before = mock.received().len();
    let r = send(
        &b,
        &ask("m", "hello"),
        &[("x-bulwark-data-class", "confidential")],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["type"], json!("error"));
    assert_eq!(
        r.json()["error"]["type"],
        json!("permission_error"),
        "{}",
        r.body
    );
    assert_eq!(mock.received().len(), before);
    // ...but may stay in France.
    let r = send(
        &b,
        &ask("fr", "hello"),
        &[("x-bulwark-data-class", "confidential")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_apply_to_messages() {
    let mock = mock().await;
    let dir = TempDir::new("messages-keys");
    let data = dir.0.join("data");
    let data_s = data.to_string_lossy().into_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["keys", "create", "claude-user", "--model", "fr"])
        .env("BULWARK_DATA_DIR", &data)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        key.starts_with("bk_"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = dir.write("bulwark.toml", &upstreams(&mock));
    let b = common::start_with(Some(&cfg), &[("BULWARK_DATA_DIR", &data_s)]).await;
    let r = send(&b, &ask("fr", "hello"), &[]).await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(
        r.json()["error"]["type"],
        json!("authentication_error"),
        "{}",
        r.body
    );
    // The Anthropic SDKs send the key in x-api-key.
    let r = send(&b, &ask("fr", "hello"), &[("x-api-key", &key)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(&b, &ask("m", "hello"), &[("x-api-key", &key)]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], json!("permission_error"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_streamed_split_across_deltas_is_never_emitted() {
    let mock = mock().await;
    let dir = TempDir::new("messages-secret");
    let b = common::start(&dir, &upstreams(&mock)).await;
    // The mock streams its answer a word per event, the key among them.
    let mut body = ask("leak", "status?");
    body["stream"] = json!(true);
    let r = send(&b, &body, &[]).await;
    assert_eq!(r.status, 200);
    assert!(!r.body.contains(LEAKED_KEY), "{}", r.body);
    let text: String = r
        .body
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v.pointer("/delta/text")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    assert!(text.contains("[REDACTED_AWS_ACCESS_KEY_ID]"), "{text}");
    let names: Vec<&str> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    // Not streamed, the same.
    let r = send(&b, &ask("leak", "status?"), &[]).await;
    assert!(!r.body.contains(LEAKED_KEY), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_receipts_and_audit_cover_messages() {
    let mock = mock().await;
    let dir = TempDir::new("messages-audit");
    let keys = dir.0.join("keys");
    let (ok, _, err) = run(&["audit", "keygen", "--out", keys.to_str().unwrap_or("")]);
    assert!(ok, "{err}");
    let (ok, _, err) = run(&["receipt", "keygen", "--out", keys.to_str().unwrap_or("")]);
    assert!(ok, "{err}");
    let data = dir.0.join("data").to_string_lossy().into_owned();
    let cfg = dir.write(
        "bulwark.toml",
        &format!(
            "{}[cache]\nenabled = true\n[audit]\npublic_key = \"keys/audit.pub\"\ndurability = \"sync\"\n\
             [receipts]\nsigning_key = \"keys/receipt.key\"\n",
            upstreams(&mock)
        ),
    );
    let b = common::start_with(Some(&cfg), &[("BULWARK_DATA_DIR", &data)]).await;
    let mut body = ask("fr", "cache me");
    body["temperature"] = json!(0);
    let first = send(&b, &body, &[]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-bulwark-cache"), "miss");
    let second = send(&b, &body, &[]).await;
    assert_eq!(second.header("x-bulwark-cache"), "hit");
    assert_eq!(second.json()["content"], first.json()["content"]);
    assert_eq!(mock.received().len(), 1, "the hit sent nothing");

    // The receipt covers the Anthropic bytes the client received.
    let answer = dir.write("answer.json", &first.body);
    let (ok, out, err) = run(&[
        "receipt",
        "verify",
        "--key",
        keys.join("receipt.pub").to_str().unwrap_or(""),
        "--response",
        answer.to_str().unwrap_or(""),
        first.header("x-bulwark-receipt"),
    ]);
    assert!(ok, "{err}");
    let claims: Value = serde_json::from_str(&out).unwrap_or_default();
    assert_eq!(claims["status"], json!(200));

    // Both requests and a refused one are in the log.
    let bad = send(&b, &json!({"model": "fr", "messages": []}), &[]).await;
    assert_eq!(bad.status, 400);
    let (ok, out, err) = run(&[
        "audit",
        "export",
        "--dir",
        &format!("{data}/audit"),
        "--key",
        keys.join("audit.key").to_str().unwrap_or(""),
    ]);
    assert!(ok, "{err}");
    let records: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(Value::Null))
        .collect();
    let id = first.header("x-request-id");
    let r = records
        .iter()
        .find(|r| r["request_id"] == id)
        .unwrap_or_else(|| panic!("no record for {id}: {records:#?}"));
    assert_eq!(r["status"], json!(200));
    assert_eq!(r["target"], json!("fr"));
    assert!(
        records.iter().any(|r| r["status"] == json!(400)),
        "{records:#?}"
    );
}
