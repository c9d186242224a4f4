//! The exact response cache through the real binary: hits, misses, SSE replay, what is
//! never cached, expiry, and keys that separate data classes.

mod common;

use std::time::Duration;

use bulwark_testkit::{Bulwark, MockUpstream};
use common::{local_model, start, start_with, streamed_content, TempDir};
use serde_json::{json, Value};

struct Reply {
    status: u16,
    cache: String,
    route: String,
    body: String,
}

async fn send(b: &Bulwark, body: &Value, class: Option<&str>) -> Reply {
    let mut req = reqwest::Client::new()
        .post(b.url("/v1/chat/completions"))
        .json(body);
    if let Some(c) = class {
        req = req.header("x-bulwark-data-class", c);
    }
    let r = req.send().await.unwrap_or_else(|e| panic!("{e}"));
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (status, cache, route) = (
        r.status().as_u16(),
        header("x-bulwark-cache"),
        header("x-bulwark-route"),
    );
    Reply {
        status,
        cache,
        route,
        body: r.text().await.unwrap_or_default(),
    }
}

fn chat(model: &str, text: &str, extra: Value) -> Value {
    let mut v = json!({"model": model, "messages": [{"role": "user", "content": text}]});
    if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
        obj.extend(more.clone());
    }
    v
}

fn content(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn deterministic_answers_are_cached_and_replayed() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("cache");
    let cfg = format!(
        "[cache]\nenabled = true\nttl_secs = 1\n[[upstreams]]\nname = \"m\"\nbase_url = \"{}\"\njurisdiction = \"FR\"\ntrust = \"private\"\nretries = 0\nmodels = {{ \"up\" = \"mock-up\", \"broken\" = \"error-500\" }}\n",
        mock.base_url()
    );
    let b = start_with(Some(&dir.write("bulwark.toml", &cfg)), &[]).await;
    let greedy = chat("up", "cache me", json!({"temperature": 0}));

    let first = send(&b, &greedy, None).await;
    assert_eq!((first.status, first.cache.as_str()), (200, "miss"));
    let second = send(&b, &greedy, None).await;
    assert_eq!((second.status, second.cache.as_str()), (200, "hit"));
    assert_eq!(second.route, "target=cache; class=public");
    assert_eq!(content(&second.body), content(&first.body));
    assert_eq!(content(&second.body), "mock reply to: cache me");
    assert_eq!(
        mock.received().len(),
        1,
        "the hit must not reach the upstream"
    );

    // The same request, streamed: replayed as SSE, with the usage chunk when asked.
    let streamed = chat(
        "up",
        "cache me",
        json!({"temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let replay = send(&b, &streamed, None).await;
    assert_eq!(replay.cache, "hit");
    assert_eq!(streamed_content(&replay.body), "mock reply to: cache me");
    assert!(replay.body.ends_with("data: [DONE]\n\n"), "{}", replay.body);
    assert!(replay.body.contains("\"usage\":{"), "{}", replay.body);
    assert_eq!(mock.received().len(), 1);

    // Another data class is another key.
    assert_eq!(send(&b, &greedy, Some("internal")).await.cache, "miss");
    // Sampled answers are not cached.
    let sampled = chat("up", "cache me", json!({"temperature": 0.7}));
    assert_eq!(send(&b, &sampled, None).await.cache, "bypass");
    assert_eq!(send(&b, &sampled, None).await.cache, "bypass");
    // Failures are not cached.
    let broken = chat("broken", "x", json!({"temperature": 0}));
    assert_eq!(send(&b, &broken, None).await.status, 502);
    assert_eq!(send(&b, &broken, None).await.status, 502);
    assert_eq!(mock.received().len(), 6);

    // A streamed miss fills the cache too, once the stream has ended.
    let fresh = chat(
        "up",
        "streamed first",
        json!({"temperature": 0, "stream": true}),
    );
    assert_eq!(send(&b, &fresh, None).await.cache, "miss");
    let again = send(
        &b,
        &chat("up", "streamed first", json!({"temperature": 0})),
        None,
    )
    .await;
    assert_eq!(
        (again.cache.as_str(), content(&again.body).as_str()),
        ("hit", "mock reply to: streamed first")
    );

    // Entries expire.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(send(&b, &greedy, None).await.cache, "miss");
}

#[tokio::test]
async fn local_answers_are_cached() {
    let dir = TempDir::new("cache-local");
    let b = start(
        &dir,
        &format!("[cache]\nenabled = true\n{}", local_model("")),
    )
    .await;
    let greedy = chat(
        "smollm2",
        "Say hello.",
        json!({"temperature": 0, "max_tokens": 8}),
    );
    let first = send(&b, &greedy, None).await;
    let second = send(&b, &greedy, None).await;
    assert_eq!(
        (first.cache.as_str(), second.cache.as_str()),
        ("miss", "hit")
    );
    assert!(!content(&first.body).is_empty());
    assert_eq!(content(&first.body), content(&second.body));
    assert_eq!(
        common::metric(&b, "bulwark_engine_requests_completed_total").await,
        1.0
    );
}
