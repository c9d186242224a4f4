//! What gets past the guard, through the real binary: every field of a request, values
//! disguised or split, placeholders restored into links, upstream credentials in errors,
//! data-class headers, body limits and read deadlines, cut streams. Each test is named
//! after what it holds.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use bulwark_testkit::{Bulwark, MockUpstream};
use common::{streamed_content, TempDir};
use serde_json::{json, Value};

/// A `foreign` upstream in the US: under the default policy it may receive public data
/// only, so a request whose class the guard raised never reaches it.
fn config(mock: &MockUpstream, extra: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"abroad\"\nbase_url = \"{}\"\njurisdiction = \"US\"\ntrust = \"foreign\"\n\
         api_key_env = \"LEAKS_UPSTREAM_KEY\"\n\
         models = {{ \"m\" = \"m\", \"c\" = \"m\", \"links\" = \"link-back\", \"echo-auth\" = \"error-echo-auth\", \"cut\" = \"cut-stream\" }}\n{extra}",
        mock.base_url()
    )
}

const UPSTREAM_KEY: &str = "upstream-key-7f3a9c2e51d04b8a";

async fn setup(tag: &str, extra: &str) -> (MockUpstream, TempDir, Bulwark) {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new(tag);
    let cfg = dir.write("bulwark.toml", &config(&mock, extra));
    let b = common::start_with(Some(&cfg), &[("LEAKS_UPSTREAM_KEY", UPSTREAM_KEY)]).await;
    (mock, dir, b)
}

async fn post(b: &Bulwark, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::Client::new()
        .post(b.url(path))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap_or_default())
}

/// Everything the mock received, as one text.
fn received(mock: &MockUpstream) -> String {
    mock.received()
        .iter()
        .map(|(_, _, b)| b.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A small deterministic generator, so that a failure names its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A value to plant: its plain form and the ways to disguise it.
struct Planted {
    plain: &'static str,
    disguises: &'static [&'static str],
}

const VALUES: &[Planted] = &[
    Planted {
        plain: "jane.doe@example.com",
        disguises: &[
            "jane.doe@example.com",
            "jane.d\u{200B}oe@example.com",
            "jane.doe\u{FF20}example.com",
            "jane.doe&#64;example.com",
            "jane.doe%40example.com",
            "amFuZS5kb2VAZXhhbXBsZS5jb20=",
        ],
    },
    Planted {
        plain: "DE89 3704 0044 0532 0130 00",
        disguises: &[
            "DE89 3704 0044 0532 0130 00",
            "DE89-3704-0044-0532-0130-00",
            "de89370400440532013000",
            "DE\u{0668}\u{0669}\u{0663}\u{0667}\u{0660}\u{0664}\u{0660}\u{0660}\u{0664}\u{0664}\u{0660}\u{0665}\u{0663}\u{0662}\u{0660}\u{0661}\u{0663}\u{0660}\u{0660}\u{0660}",
            "DE89 3704 0044 05\u{200B}32 0130 00",
        ],
    },
    Planted {
        plain: "-----BEGIN PRIVATE KEY-----\nMIIBVAIBADANBgkqhkiG9w0BAQEFAASCAT4wggE6AgEAAkEAu1SU1LfVLPHCozMxH2Mo\n-----END PRIVATE KEY-----",
        disguises: &["-----BEGIN PRIVATE KEY-----\nMIIBVAIBADANBgkqhkiG9w0BAQEFAASCAT4wggE6AgEAAkEAu1SU1LfVLPHCozMxH2Mo\n-----END PRIVATE KEY-----"],
    },
    Planted {
        plain: "+44 20 7946 0958",
        disguises: &["+44 20 7946 0958", "+44 20 79\u{200C}46 0958"],
    },
    Planted {
        plain: "ghp_0123456789abcdefghijABCDEFGHIJ012345",
        disguises: &[
            "ghp_0123456789abcdefghijABCDEFGHIJ012345",
            "ghp_0123456789\u{200B}abcdefghijABCDEFGHIJ012345",
            "Z2hwXzAxMjM0NTY3ODlhYmNkZWZnaGlqQUJDREVGR0hJSjAxMjM0NQ==",
        ],
    },
];

/// A chat request that uses every field people send: tool calls and results, tool and
/// function definitions, a response format, content parts of several kinds, stop,
/// user, metadata, prediction, reasoning, refusal and fields nobody has defined.
fn chat_body() -> Value {
    json!({
        "model": "m",
        "messages": [
            {"role": "system", "content": "You are the assistant of ACME. Answer briefly."},
            {"role": "user", "name": "alice", "content": [
                {"type": "text", "text": "Please look at this picture and my note."},
                {"type": "image_url", "image_url": {"url": "https://img.example/p.png?x=1", "detail": "low"}, "caption": "holiday"}
            ]},
            {"role": "assistant", "content": null, "reasoning_content": "I should look it up.", "refusal": "none",
             "tool_calls": [{"id": "call_abc", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"holiday photos\"}"}}]},
            {"role": "tool", "tool_call_id": "call_abc", "content": "Found three photos."},
            {"role": "user", "content": "Thanks, summarise it.", "x_note": {"deep": ["free text here"]}}
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "Looks things up.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string", "description": "what to look for"}}}}}],
        "functions": [{"name": "legacy", "description": "An old-style function.", "parameters": {"type": "object", "properties": {}}}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "description": "the answer's shape",
            "schema": {"type": "object", "properties": {"a": {"type": "string", "description": "the text"}}}}},
        "stop": ["END OF ANSWER"],
        "user": "user-1234",
        "metadata": {"ticket": "T-1", "note": "routine"},
        "prediction": {"type": "content", "content": "A short summary."},
        "x_vendor": {"hint": "nothing special"}
    })
}

/// Paths to every string leaf that carries free text (not `model`, `role` or `type`).
fn text_leaves(v: &Value, path: &mut Vec<Value>, out: &mut Vec<Vec<Value>>) {
    match v {
        Value::String(_) => out.push(path.clone()),
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(json!(i));
                text_leaves(x, path, out);
                path.pop();
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                if matches!(k.as_str(), "model" | "role" | "type" | "name") {
                    continue;
                }
                path.push(json!(k));
                text_leaves(x, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[Value]) -> &'a mut Value {
    path.iter().fold(v, |v, p| match p {
        Value::Number(i) => &mut v[i.as_u64().unwrap_or(0) as usize],
        Value::String(k) => &mut v[k.as_str()],
        _ => v,
    })
}

/// One generated request: the body, and the strings that must not reach an upstream.
fn generate(rng: &mut Rng, completion: bool) -> (Value, Vec<String>) {
    let value = &VALUES[rng.below(VALUES.len())];
    let disguise = value.disguises[rng.below(value.disguises.len())];
    let mut forbidden = vec![value.plain.to_owned(), disguise.to_owned()];
    if completion {
        let mut body = json!({"model": "c", "prompt": "Write a note.", "suffix": "End.", "user": "u-1", "stop": ["\n\n"]});
        let field = ["prompt", "suffix", "user", "stop"][rng.below(4)];
        let text = format!("see {disguise} now");
        match field {
            "stop" => body["stop"] = json!([text]),
            f => body[f] = json!(text),
        }
        return (body, forbidden);
    }
    let mut body = chat_body();
    match rng.below(6) {
        // Split across two text parts, or two user messages (plain value: the split is
        // the disguise).
        0 | 1 => {
            let plain = value.plain;
            let mut cut = 3 + rng.below(plain.len() - 6);
            while !plain.is_char_boundary(cut) {
                cut += 1;
            }
            let (a, b) = plain.split_at(cut);
            forbidden = vec![plain.to_owned(), a.to_owned(), b.to_owned()];
            if rng.below(2) == 0 {
                body["messages"][1]["content"][0]["text"] = json!(format!("note: {a}"));
                let part = json!({"type": "text", "text": format!("{b} end")});
                if let Some(parts) = body["messages"][1]["content"].as_array_mut() {
                    parts.insert(1, part);
                }
            } else {
                body["messages"][3]["content"] = json!(format!("found: {a}"));
                body["messages"][4]["content"] = json!(format!("{b} thanks"));
            }
        }
        // An object key.
        2 => {
            body["metadata"][format!("contact {disguise}")] = json!("yes");
        }
        // Any free-text leaf.
        _ => {
            let mut leaves = Vec::new();
            text_leaves(&body, &mut Vec::new(), &mut leaves);
            let path = &leaves[rng.below(leaves.len())];
            let slot = at(&mut body, path);
            let old = slot.as_str().unwrap_or("").to_owned();
            let text = if path.last() == Some(&json!("arguments")) {
                json!({"q": format!("mail {disguise}")}).to_string()
            } else if path.last() == Some(&json!("url")) {
                format!("https://img.example/p.png?e={disguise}&t=1")
            } else {
                format!("{old} {disguise}")
            };
            *slot = json!(text);
        }
    }
    (body, forbidden)
}

/// The property: whatever field, depth, split or disguise a value is planted in, under
/// `pseudonymise`, `redact` and `block` no raw value reaches the upstream, and under
/// `flag`/`allow` the request never reaches an upstream its raised class forbids.
async fn every_field(mode: &str, seed: u64) {
    let guard = format!("[guard]\npii = \"{mode}\"\nsecrets = \"{mode}\"\n");
    let (mock, _dir, b) = setup(&format!("leaks-{mode}"), &guard).await;
    let mut rng = Rng(seed);
    let mut served = 0;
    for case in 0..80 {
        let completion = case % 5 == 4;
        let (body, forbidden) = generate(&mut rng, completion);
        let before = mock.received().len();
        let path = if completion {
            "/v1/completions"
        } else {
            "/v1/chat/completions"
        };
        let (status, _, text) = post(&b, path, &body).await;
        let sent = &mock.received()[before..];
        let what = format!("mode {mode}, seed {seed}, case {case}: {status} {text}\nbody {body}");
        // A fragment of a PEM block alone reads to the injection model like an attack
        // (a false positive of the guard, not a leak): refused, nothing sent.
        if status == 400 && text.contains("prompt_injection_detected") {
            assert!(sent.is_empty(), "{what}");
            continue;
        }
        match mode {
            "pseudonymise" | "redact" => {
                assert_eq!(status, 200, "{what}");
                served += 1;
                for (_, _, got) in sent {
                    let got = got.to_string();
                    for f in &forbidden {
                        assert!(
                            !got.contains(f.as_str()),
                            "{what}\n`{f}` reached the upstream: {got}"
                        );
                    }
                }
            }
            "block" => {
                assert_eq!(status, 400, "{what}");
                assert!(sent.is_empty(), "{what}");
            }
            _ => {
                // Sent as is, so the class is raised: the foreign upstream may not see it.
                assert_eq!(status, 403, "{what}");
                assert!(sent.is_empty(), "{what}");
            }
        }
    }
    if matches!(mode, "pseudonymise" | "redact") {
        assert!(served >= 70, "only {served} of 80 served");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_field_is_screened_under_pseudonymise() {
    every_field("pseudonymise", 0x5eed_0001).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_field_is_screened_under_redact() {
    every_field("redact", 0x5eed_0002).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_field_is_screened_under_block() {
    every_field("block", 0x5eed_0003).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_field_raises_the_class_under_flag_and_allow() {
    every_field("flag", 0x5eed_0004).await;
    every_field("allow", 0x5eed_0005).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pseudonymised_tool_arguments_come_back_restored_in_the_answer_text() {
    // The same value anywhere gets the same placeholder, so a model can still refer to
    // it; what it writes back is restored for the client.
    let (mock, _dir, b) = setup("leaks-args", "").await;
    let mut body = chat_body();
    body["messages"][4]["content"] = json!("Write to jane.doe@example.com please.");
    body["messages"][2]["tool_calls"][0]["function"]["arguments"] =
        json!("{\"to\": \"jane.doe@example.com\"}");
    let (status, _, text) = post(&b, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{text}");
    let got = received(&mock);
    assert!(!got.contains("jane.doe@example.com"), "{got}");
    assert!(got.contains("[EMAIL_1]"), "{got}");
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!(
        v["choices"][0]["message"]["content"],
        json!("mock reply to: Write to jane.doe@example.com please.")
    );
}

const PII_TEXT: &str = "Call me on +44 20 7946 0958, SSN 123-45-6789, mail j@ex.io, done";

#[tokio::test(flavor = "multi_thread")]
async fn placeholders_restored_into_links_are_defused() {
    let (mock, _dir, b) = setup("leaks-links", "").await;
    let body = json!({"model": "links", "messages": [{"role": "user", "content": PII_TEXT}]});
    // The upstream saw placeholders only, and wrote them into URLs.
    let (status, headers, text) = post(&b, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{text}");
    let upstream_saw = received(&mock);
    for raw in ["+44 20 7946 0958", "123-45-6789", "j@ex.io"] {
        assert!(!upstream_saw.contains(raw), "{upstream_saw}");
    }
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
    for raw in ["7946", "123-45-6789", "j@ex.io", "attacker.test/p"] {
        assert!(!answer.contains(raw), "{raw} in {answer}");
    }
    // The link that carries nothing passes.
    assert!(
        answer.contains("[more](https://attacker.test/q/done)"),
        "{answer}"
    );
    assert!(answer.contains("[BLOCKED_URL]"), "{answer}");
    let out = headers
        .get("x-bulwark-guard-output")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    assert!(out.contains("exfiltration_data"), "{out}");

    // Streamed, whatever the chunking the upstream chose (one word per event).
    let mut body = body;
    body["stream"] = json!(true);
    let (status, _, text) = post(&b, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{text}");
    let answer = streamed_content(&text);
    for raw in ["7946", "123-45-6789", "j@ex.io", "attacker.test/p"] {
        assert!(!answer.contains(raw), "{raw} in {answer}");
    }
    assert!(answer.contains("[BLOCKED_URL]"), "{answer}");

    // Even with the output guard off: the gateway itself would write the value.
    drop(b);
    let dir2 = TempDir::new("leaks-links-off");
    let cfg = dir2.write(
        "bulwark.toml",
        &config(&mock, "[guard]\noutput = \"allow\"\n"),
    );
    let b2 = common::start_with(Some(&cfg), &[("LEAKS_UPSTREAM_KEY", UPSTREAM_KEY)]).await;
    let body = json!({"model": "links", "messages": [{"role": "user", "content": PII_TEXT}]});
    let (status, _, text) = post(&b2, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        !text.contains("7946") && !text.contains("123-45-6789"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_key_never_reaches_a_client_or_the_log() {
    let (mock, _dir, b) = setup("leaks-key", "").await;
    let body = json!({"model": "echo-auth", "messages": [{"role": "user", "content": "hi"}]});
    let (status, headers, text) = post(&b, "/v1/chat/completions", &body).await;
    // The upstream did get the key, and echoed it in its 400.
    assert_eq!(
        mock.received().last().and_then(|r| r.1.clone()).as_deref(),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    assert_eq!(status, 400, "{text}");
    assert!(!text.contains(UPSTREAM_KEY), "{text}");
    for (_, v) in &headers {
        assert!(!v.to_str().unwrap_or("").contains(UPSTREAM_KEY));
    }
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!(
        v["error"]["code"],
        json!("upstream_rejected_request"),
        "{text}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("refused the request with 400"),
        "{text}"
    );
    // Streamed too.
    let mut body = body;
    body["stream"] = json!(true);
    let (_, _, text) = post(&b, "/v1/chat/completions", &body).await;
    assert!(!text.contains(UPSTREAM_KEY), "{text}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(!b.logs().contains(UPSTREAM_KEY), "{}", b.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn several_data_class_headers_give_the_highest() {
    let (mock, _dir, b) = setup("leaks-class", "").await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]});
    let r = reqwest::Client::new()
        .post(b.url("/v1/chat/completions"))
        .header("x-bulwark-data-class", "public")
        .header("x-bulwark-data-class", "secret")
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 403);
    assert!(mock.received().is_empty());
    let r = reqwest::Client::new()
        .post(b.url("/v1/chat/completions"))
        .header("x-bulwark-data-class", "public, bogus")
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 400);
    assert!(mock.received().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn guard_scan_and_admin_keys_honour_the_body_limit() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("leaks-limits2");
    let cfg = dir.write(
        "bulwark.toml",
        &config(
            &mock,
            "[server]\nmax_body_bytes = 4096\n[keys]\nadmin_token_env = \"LEAKS_ADMIN\"\n",
        ),
    );
    let b = common::start_with(
        Some(&cfg),
        &[
            ("LEAKS_UPSTREAM_KEY", UPSTREAM_KEY),
            ("LEAKS_ADMIN", "admin-secret-token-1"),
        ],
    )
    .await;
    let big = json!({"text": "a".repeat(10_000)});
    let (status, headers, text) = post(&b, "/v1/guard/scan", &big).await;
    assert_eq!(status, 413, "{text}");
    assert!(headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .starts_with("application/json"));
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!(v["error"]["code"], json!("request_too_large"), "{text}");

    let c = reqwest::Client::new();
    let big_key = json!({"name": "x".repeat(10_000)});
    // Without the token: 401 before the body is even read.
    let r = c
        .post(b.url("/admin/keys"))
        .json(&big_key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 401);
    // The token is not taken from x-api-key.
    let r = c
        .post(b.url("/admin/keys"))
        .header("x-api-key", "admin-secret-token-1")
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 401);
    let r = c
        .post(b.url("/admin/keys"))
        .bearer_auth("admin-secret-token-1")
        .json(&big_key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 413);
    // A tenant with an invisible character is refused, not made a second tenant.
    let r = c
        .post(b.url("/admin/keys"))
        .bearer_auth("admin-secret-token-1")
        .json(&json!({"name": "k", "tenant": "t1\u{200B}"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 400);
}

/// A raw connection that sends `head`, then waits; returns how long until the gateway
/// closed it, and what it answered.
fn slow_client(addr: std::net::SocketAddr, head: &[u8], wait: Duration) -> (Duration, String) {
    let started = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(wait)).ok();
    s.write_all(head).ok();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (
        started.elapsed(),
        String::from_utf8_lossy(&out).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_headers_and_bodies_are_cut_off() {
    let (_mock, _dir, b) = setup(
        "leaks-slow",
        "[server]\nheader_read_timeout_ms = 500\nbody_read_timeout_ms = 500\n",
    )
    .await;
    let addr = b.addr;
    // Half-sent headers: the connection is closed.
    let (took, _) = tokio::task::spawn_blocking(move || {
        slow_client(
            addr,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n",
            Duration::from_secs(10),
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Half-sent body: 408 with an OpenAI-shaped body.
    let (took, answer) = tokio::task::spawn_blocking(move || {
        slow_client(
            addr,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":",
            Duration::from_secs(10),
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    // And the gateway still serves.
    let (status, _, _) = post(
        &b,
        "/v1/chat/completions",
        &json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_stream_ends_with_a_parseable_error_event() {
    let (_mock, _dir, b) = setup("leaks-cut", "").await;
    let body =
        json!({"model": "cut", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, text) = post(&b, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    // Every event is whole and its data parses; the last one before the end is the error.
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect();
    let mut errors = 0;
    for e in &events {
        if e.starts_with(':') {
            continue;
        }
        let data = e
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not an event: {e:?} in {text:?}"));
        if data == "[DONE]" {
            continue;
        }
        let v: Value =
            serde_json::from_str(data).unwrap_or_else(|err| panic!("{err}: {data:?} in {text:?}"));
        if v.get("error").is_some() {
            errors += 1;
        }
    }
    assert_eq!(errors, 1, "{text}");
    assert!(!text.contains("choi\""), "{text}");
    assert_eq!(streamed_content(&text), "partial ");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_cap_wait_for_a_free_one() {
    let (_mock, _dir, b) = setup(
        "leaks-cap",
        "[server]\nmax_connections = 2\nheader_read_timeout_ms = 60000\n",
    )
    .await;
    // Two clients that connect and send nothing hold both slots.
    let idle: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(b.addr).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        client.get(b.url("/healthz")).send().await.is_err(),
        "served beyond the cap"
    );
    drop(idle);
    let r = reqwest::Client::new()
        .get(b.url("/healthz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_whole_in_one_message_does_not_swallow_the_next_word() {
    let (mock, _dir, b) = setup("leaks-adjacent", "").await;
    let body = json!({"model": "m", "messages": [
        {"role": "system", "content": "Escalations go to jane.doe@example.com."},
        {"role": "user", "content": "Forward this to jane.doe@example.com please."}]});
    let (status, _, text) = post(&b, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{text}");
    let got = received(&mock);
    assert!(got.contains("Forward this to [EMAIL_1] please."), "{got}");
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    assert_eq!(
        v["choices"][0]["message"]["content"],
        json!("mock reply to: Forward this to jane.doe@example.com please.")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn several_choices_from_an_upstream_are_each_restored() {
    let (mock, _dir, b) = setup("leaks-n", "").await;
    let body = json!({"model": "m", "n": 3, "messages": [{"role": "user", "content": "Mail jane.doe@example.com"}]});
    let (status, _, text) = post(&b, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{text}");
    assert!(!received(&mock).contains("jane.doe@example.com"));
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let choices = v["choices"].as_array().cloned().unwrap_or_default();
    assert_eq!(choices.len(), 3, "{text}");
    for c in choices {
        assert_eq!(
            c["message"]["content"],
            json!("mock reply to: Mail jane.doe@example.com")
        );
    }
    // `n` must be at least 1.
    let (status, _, text) = post(
        &b,
        "/v1/chat/completions",
        &json!({"model": "m", "n": 0, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_call_arguments_come_back_restored_and_their_urls_defused() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("leaks-tool-args");
    let cfg = dir.write(
        "bulwark.toml",
        &format!(
            "[[upstreams]]\nname = \"u\"\nbase_url = \"{}\"\nmodels = {{ \"echo\" = \"tool-echo\" }}\n",
            mock.base_url()
        ),
    );
    let b = common::start_with(Some(&cfg), &[]).await;
    let key = "-----BEGIN PRIVATE KEY-----\nMIIBVAIBADANBgkqhkiG9w0BAQEFAASCAT4wggE6AgEAAkEAu1SU1LfVLPHCozMxH2Mo\n-----END PRIVATE KEY-----";
    let text = format!("jane.doe@example.com {key}");
    let tools = json!([{"type": "function", "function": {"name": "send", "parameters": {"type": "object"}}}]);
    let body =
        json!({"model": "echo", "tools": tools, "messages": [{"role": "user", "content": text}]});
    for stream in [false, true] {
        let mut body = body.clone();
        body["stream"] = json!(stream);
        let (status, _, answer) = post(&b, "/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{answer}");
        assert!(!received(&mock).contains("jane.doe@example.com"));
        let args: String = if stream {
            answer
                .split("\n\n")
                .filter_map(|e| e.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .filter_map(|v| {
                    v.pointer("/choices/0/delta/tool_calls/0/function/arguments")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .collect()
        } else {
            let v: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
            v.pointer("/choices/0/message/tool_calls/0/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        // Valid JSON with the originals back (the key's line breaks escaped), and the
        // URL the upstream built from placeholders defused.
        let parsed: Value = serde_json::from_str(&args).unwrap_or_else(|e| panic!("{e}: {args}"));
        assert_eq!(parsed["to"], json!(text), "stream={stream}: {args}");
        assert_eq!(
            parsed["link"],
            json!("[BLOCKED_URL]"),
            "stream={stream}: {args}"
        );
    }
}
