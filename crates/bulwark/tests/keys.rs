//! Virtual API keys through the real binary and the real CLI: 401/403/429, rate limits
//! under concurrent load, budgets, persisted usage, immediate revocation (CLI and admin
//! API), per-key policies, tenant isolation of the cache, and exposure beyond loopback.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use bulwark_testkit::{Bulwark, MockUpstream};
use common::{start, TempDir};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_bulwark");
const ADMIN: &str = "admin-token-0123456789";

/// A config with one mock upstream (jurisdiction FR, private) serving `m` and `n`.
fn config(mock: &MockUpstream, extra: &str) -> String {
    format!(
        "[keys]\nusage_flush_ms = 50\nadmin_token_env = \"TEST_ADMIN_TOKEN\"\n\
         [[upstreams]]\nname = \"mock\"\nbase_url = \"{}\"\njurisdiction = \"FR\"\ntrust = \"private\"\n\
         models = {{ \"m\" = \"m\", \"n\" = \"n\" }}\n{extra}",
        mock.base_url()
    )
}

async fn start_gw(dir: &TempDir, config: &str) -> Bulwark {
    let cfg = dir.write("bulwark.toml", config);
    common::start_with(Some(&cfg), &[("TEST_ADMIN_TOKEN", ADMIN)]).await
}

/// Runs `bulwark keys ARGS` on the gateway's database; returns stdout.
fn cli(b: &Bulwark, args: &[&str]) -> String {
    let data = b.data_dir().unwrap_or_else(|| panic!("no data dir"));
    cli_in(data, args)
}

fn cli_in(data: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("keys")
        .args(args)
        .env("BULWARK_DATA_DIR", data)
        .env("TEST_ADMIN_TOKEN", ADMIN)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "bulwark keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn create(b: &Bulwark, args: &[&str]) -> String {
    let out = cli(b, &[&["create"], args].concat());
    out.trim().to_owned()
}

fn id_of(key: &str) -> &str {
    &key[3..15]
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }
}

async fn send(b: &Bulwark, key: Option<&str>, body: Value, class: Option<&str>) -> Reply {
    let mut req = reqwest::Client::new()
        .post(b.url("/v1/chat/completions"))
        .json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(c) = class {
        req = req.header("x-bulwark-data-class", c);
    }
    let r = req.send().await.unwrap_or_else(|e| panic!("{e}"));
    Reply {
        status: r.status().as_u16(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap_or_default(),
    }
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "temperature": 0, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_gate_requests_with_401_and_403() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("keys-gate");
    let b = start_gw(&dir, &config(&mock, "")).await;

    // No key exists yet: loopback serves without one (the laptop case), and ignores
    // whatever an SDK sends as its key.
    assert_eq!(send(&b, None, chat("m", "hi"), None).await.status, 200);
    assert_eq!(
        send(&b, Some("unused"), chat("m", "hi"), None).await.status,
        200
    );

    let key = create(&b, &["alice", "--model", "m", "--max-class", "internal"]);
    assert!(key.starts_with("bk_"), "{key}");

    let r = send(&b, None, chat("m", "hi"), None).await;
    assert_eq!((r.status, r.code().as_str()), (401, "missing_api_key"));
    assert_eq!(r.json()["error"]["type"], "authentication_error");
    // A forged secret for a real id, garbage, and an x-api-key header.
    let forged = format!("{}{}", &key[..key.len() - 4], "0000");
    for bad in [forged.as_str(), "sk-garbage", "bk_"] {
        let r = send(&b, Some(bad), chat("m", "hi"), None).await;
        assert_eq!((r.status, r.code().as_str()), (401, "invalid_api_key"));
        assert!(
            !r.body.contains(bad),
            "the presented key is echoed: {}",
            r.body
        );
    }
    let r = reqwest::Client::new()
        .post(b.url("/v1/chat/completions"))
        .header("x-api-key", &key)
        .json(&chat("m", "hi"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    // /v1/models needs the key too, and lists only what the key may use.
    let r = reqwest::Client::new()
        .get(b.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let models: Value = r.json().await.unwrap_or_default();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["m"]);
    let r = reqwest::get(b.url("/v1/models"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 401);

    let r = send(&b, Some(&key), chat("n", "hi"), None).await;
    assert_eq!((r.status, r.code().as_str()), (403, "model_not_allowed"));
    let r = send(&b, Some(&key), chat("m", "hi"), Some("confidential")).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "data_class_not_allowed")
    );
    assert_eq!(
        send(&b, Some(&key), chat("m", "hi"), Some("internal"))
            .await
            .status,
        200
    );
    // Refused requests never reached the upstream: 2 open + 1 x-api-key + 1 internal.
    assert_eq!(mock.received().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keys_policy_replaces_the_servers() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("keys-policy");
    // The server policy lets public data reach the private upstream (the default); the
    // named policy keeps every class on the host.
    let extra = "[policies.host-only.rules.public]\ntrust = [\"host\"]\n";
    let b = start_gw(&dir, &config(&mock, extra)).await;
    let open = create(&b, &["open"]);
    let cfg = dir.0.join("bulwark.toml");
    let cfg = cfg.to_str().unwrap_or_default();
    let strict = create(&b, &["strict", "--policy", "host-only", "--config", cfg]);
    assert_eq!(
        send(&b, Some(&open), chat("m", "hi"), None).await.status,
        200
    );
    let r = send(&b, Some(&strict), chat("m", "hi"), None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "policy_denied"),
        "{}",
        r.body
    );
    assert!(r.header("x-bulwark-route").contains("target=none"));
    assert_eq!(mock.received().len(), 1);

    // A policy the config does not declare is refused at creation.
    let out = Command::new(BIN)
        .args(["keys", "create", "x", "--policy", "nope", "--config", cfg])
        .env(
            "BULWARK_DATA_DIR",
            b.data_dir().unwrap_or(Path::new("/nonexistent")),
        )
        .env("TEST_ADMIN_TOKEN", ADMIN)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no policy named `nope`"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_holds_under_concurrent_load() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("keys-rpm");
    let b = start_gw(&dir, &config(&mock, "")).await;
    let key = create(&b, &["burst", "--rpm", "5"]);
    let replies = futures_util::future::join_all(
        (0..24).map(|i| send(&b, Some(&key), chat("m", &format!("r{i}")), None)),
    )
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!((ok, limited.len()), (5, 19));
    for r in limited {
        assert_eq!(r.code(), "rate_limit_exceeded");
        let retry: u64 = r.header("retry-after").parse().unwrap_or(0);
        assert!((1..=60).contains(&retry), "retry-after {retry}");
    }
    assert_eq!(mock.received().len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn budget_runs_out_and_usage_is_persisted() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("keys-budget");
    // Its own data directory, kept across the restart below.
    let data = TempDir::new("keys-budget-data");
    let data_str = data.0.to_str().unwrap_or_default().to_owned();
    let cfg = dir.write("bulwark.toml", &config(&mock, ""));
    let env = [
        ("TEST_ADMIN_TOKEN", ADMIN),
        ("BULWARK_DATA_DIR", data_str.as_str()),
    ];
    let b = common::start_with(Some(&cfg), &env).await;
    let cli = |_: &Bulwark, args: &[&str]| cli_in(&data.0, args);
    let create =
        |b: &Bulwark, args: &[&str]| cli(b, &[&["create"], args].concat()).trim().to_owned();
    // The mock's JSON answers use 3 + 5 = 8 tokens.
    let key = create(
        &b,
        &["budget", "--budget-tokens", "10", "--budget-period", "day"],
    );
    assert_eq!(
        send(&b, Some(&key), chat("m", "one"), None).await.status,
        200
    );
    assert_eq!(
        send(&b, Some(&key), chat("m", "two"), None).await.status,
        200
    );
    let r = send(&b, Some(&key), chat("m", "three"), None).await;
    assert_eq!((r.status, r.code().as_str()), (429, "budget_exceeded"));
    let retry: u64 = r.header("retry-after").parse().unwrap_or(0);
    assert!((1..=86_400).contains(&retry), "retry-after {retry}");

    // A stream: the gateway asks for the usage chunk, counts it, and removes it since
    // the client did not ask for it.
    let other = create(&b, &["streamer"]);
    let mut body = chat("m", "a b c");
    body["stream"] = json!(true);
    let r = send(&b, Some(&other), body.clone(), None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains("[DONE]") && !r.body.contains("\"usage\":{"),
        "{}",
        r.body
    );
    let sent = mock
        .received()
        .last()
        .map(|r| r.2.clone())
        .unwrap_or_default();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    // Asked for, it stays.
    body["stream_options"] = json!({"include_usage": true});
    let r = send(&b, Some(&other), body, None).await;
    assert!(r.body.contains("\"usage\""), "{}", r.body);

    // Usage reaches the database (flushed every 50 ms) and the CLI shows it. A request
    // is counted when it is admitted and its tokens when its stream ends, so a flush
    // can fall between the two: wait for the tokens.
    let mut shown = Value::Null;
    for _ in 0..100 {
        shown = serde_json::from_str(&cli(&b, &["show", id_of(&other)])).unwrap_or_default();
        if shown["usage"][0]["completion_tokens"] == 12 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // "mock reply to: a b c" is 6 words: 3 + 6 tokens per stream.
    assert_eq!(
        shown["usage"][0],
        json!({"model": "m", "day": shown["usage"][0]["day"], "requests": 2,
               "prompt_tokens": 6, "completion_tokens": 12}),
        "{shown}"
    );
    let budget: Value = serde_json::from_str(&cli(&b, &["show", id_of(&key)])).unwrap_or_default();
    // Two answered; the refused one is not usage.
    assert_eq!(budget["usage"][0]["requests"], 2, "{budget}");
    assert_eq!(budget["usage"][0]["prompt_tokens"], 6, "{budget}");

    // A restart keeps the budget spent.
    drop(b);
    let b = common::start_with(Some(&cfg), &env).await;
    let r = send(&b, Some(&key), chat("m", "four"), None).await;
    assert_eq!((r.status, r.code().as_str()), (429, "budget_exceeded"));
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_takes_effect_immediately() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("keys-revoke");
    let b = start_gw(&dir, &config(&mock, "")).await;

    // Through the CLI, while the gateway runs.
    let key = create(&b, &["cli"]);
    assert_eq!(
        send(&b, Some(&key), chat("m", "hi"), None).await.status,
        200
    );
    cli(&b, &["revoke", id_of(&key)]);
    let r = send(&b, Some(&key), chat("m", "hi"), None).await;
    assert_eq!((r.status, r.code().as_str()), (401, "invalid_api_key"));
    let listed = cli(&b, &["list"]);
    assert!(
        listed.contains(id_of(&key)) && listed.contains("revoked"),
        "{listed}"
    );
    assert!(!listed.contains(&key[16..]), "the list shows a secret");

    // Through the admin API.
    let http = reqwest::Client::new();
    let r = http
        .post(b.url("/admin/keys"))
        .bearer_auth("wrong-token-0123456789")
        .json(&json!({"name": "api", "rpm": 100}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 401);
    let r = http
        .post(b.url("/admin/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "api", "rpm": 100, "tenant": "team-a"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap_or_default();
    let api_key = created["key"].as_str().unwrap_or_default().to_owned();
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(created["tenant"], "team-a");
    assert_eq!(
        send(&b, Some(&api_key), chat("m", "hi"), None).await.status,
        200
    );
    let listed: Value = http
        .get(b.url("/admin/keys"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2));
    assert!(
        !listed.to_string().contains(&api_key[16..]),
        "the list shows a secret"
    );
    let r = http
        .delete(b.url(&format!("/admin/keys/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    assert_eq!(
        send(&b, Some(&api_key), chat("m", "hi"), None).await.status,
        401
    );
    let r = http
        .post(b.url("/admin/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "bad", "rpm": 0}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 400);
    let r = http
        .post(b.url("/admin/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "bad", "colour": "red"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_is_never_shared_across_tenants() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("keys-cache");
    let b = start_gw(&dir, &config(&mock, "[cache]\nenabled = true\n")).await;
    let a1 = create(&b, &["a1", "--tenant", "acme"]);
    let a2 = create(&b, &["a2", "--tenant", "acme"]);
    let other = create(&b, &["z", "--tenant", "umbrella"]);
    let req = chat("m", "same question");
    let first = send(&b, Some(&a1), req.clone(), None).await;
    assert_eq!(first.header("x-bulwark-cache"), "miss");
    // Another key of the same tenant shares the answer; another tenant never does.
    assert_eq!(
        send(&b, Some(&a2), req.clone(), None)
            .await
            .header("x-bulwark-cache"),
        "hit"
    );
    assert_eq!(
        send(&b, Some(&other), req.clone(), None)
            .await
            .header("x-bulwark-cache"),
        "miss"
    );
    assert_eq!(
        send(&b, Some(&other), req, None)
            .await
            .header("x-bulwark-cache"),
        "hit"
    );
    assert_eq!(mock.received().len(), 2);
}

#[test]
fn keys_count_as_authentication_beyond_loopback() {
    let data = TempDir::new("keys-exposed");
    let dir = TempDir::new("keys-exposed-cfg");
    let cfg = dir.write(
        "bulwark.toml",
        "[[upstreams]]\nname = \"u\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodels = { \"m\" = \"m\" }\n",
    );
    let serve = || {
        Command::new(BIN)
            .args(["serve", "--listen", "0.0.0.0:0", "--config"])
            .arg(&cfg)
            .env("BULWARK_DATA_DIR", &data.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let out = serve().wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Create an API key first"));

    cli_in(&data.0, &["create", "server"]);
    let child = serve();
    let line = common::first_line_then_kill(child);
    assert!(
        line.starts_with("bulwark listening on http://0.0.0.0:"),
        "{line:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn local_model_streams_are_metered_too() {
    let dir = TempDir::new("keys-local");
    let b = start(&dir, &common::local_model("")).await;
    let key = create(&b, &["local", "--tpm", "1000000"]);
    let body = json!({"model": "smollm2", "stream": true, "max_tokens": 4, "temperature": 0,
                      "messages": [{"role": "user", "content": "Hi"}]});
    let r = send(&b, Some(&key), body, None).await;
    assert_eq!(r.status, 200);
    // Chunks may carry `"usage": null` (as OpenAI's do once usage is requested), but
    // the usage chunk itself is not passed on.
    assert!(!r.body.contains("\"usage\":{"), "{}", r.body);
    let mut shown = Value::Null;
    for _ in 0..100 {
        shown = serde_json::from_str(&cli(&b, &["show", id_of(&key)])).unwrap_or_default();
        if shown["usage"][0]["completion_tokens"] == 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(shown["usage"][0]["completion_tokens"], 4, "{shown}");
    assert!(
        shown["usage"][0]["prompt_tokens"].as_u64().unwrap_or(0) > 0,
        "{shown}"
    );
}
