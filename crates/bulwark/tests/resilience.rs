//! Retries, fallback, the circuit breaker and hedged requests, through the real binary
//! against mock upstreams on loopback.

mod common;

use std::time::Duration;

use bulwark_testkit::{Bulwark, MockUpstream};
use common::{send_chat, start_with, TempDir};

async fn gateway(dir: &TempDir, config: &str) -> Bulwark {
    let path = dir.write("bulwark.toml", config);
    start_with(Some(&path), &[]).await
}

fn upstream(name: &str, url: &str, extra: &str, models: &str) -> String {
    format!(
        "[[upstreams]]\nname = \"{name}\"\nbase_url = \"{url}\"\njurisdiction = \"FR\"\ntrust = \"private\"\n{extra}\nmodels = {{ {models} }}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_are_retried_on_the_same_upstream() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("retry");
    let cfg = upstream(
        "a",
        &mock.base_url(),
        "retries = 2",
        "\"flaky\" = \"flaky-2\", \"once\" = \"flaky-1\"",
    );
    let b = gateway(&dir, &cfg).await;
    let (status, route, body) = send_chat(&b, "flaky", None, "hi").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(route.split("; ").next(), Some("target=flaky"));
    // Two 503s, then the answer: three requests reached the upstream.
    assert_eq!(mock.received().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn falls_back_when_the_first_candidate_fails_or_is_slow() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("fallback-kinds");
    let cfg = format!(
        "{}{}[[routes]]\nmodel = \"after-500\"\ncandidates = [\"broken\", \"good\"]\n[[routes]]\nmodel = \"after-timeout\"\ncandidates = [\"slow\", \"good\"]\n",
        upstream("flaky-side", &mock.base_url(), "retries = 0\nread_timeout_ms = 300", "\"broken\" = \"error-500\", \"slow\" = \"slow-3000\""),
        upstream("good-side", &mock.base_url(), "", "\"good\" = \"mock-good\""),
    );
    let b = gateway(&dir, &cfg).await;
    let (status, route, _) = send_chat(&b, "after-500", None, "hi").await;
    assert_eq!(status, 200);
    assert!(
        route.starts_with("target=good;") && route.ends_with("fallback_from=broken(502)"),
        "{route}"
    );
    let (status, route, _) = send_chat(&b, "after-timeout", None, "hi").await;
    assert_eq!(status, 200);
    assert!(
        route.starts_with("target=good;") && route.ends_with("fallback_from=slow(504)"),
        "{route}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_opens_skips_the_upstream_and_closes_again() {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("breaker");
    let cfg = upstream(
        "a",
        &mock.base_url(),
        "retries = 0\nbreaker_failures = 2\nbreaker_cooldown_ms = 500",
        "\"flaky\" = \"flaky-2\"",
    );
    let b = gateway(&dir, &cfg).await;
    // Two failures open the circuit.
    assert_eq!(send_chat(&b, "flaky", None, "hi").await.0, 502);
    assert_eq!(send_chat(&b, "flaky", None, "hi").await.0, 502);
    // Open: refused at once, and the upstream is not contacted.
    let (status, _, body) = send_chat(&b, "flaky", None, "hi").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("upstream_circuit_open")),
        "{body}"
    );
    assert_eq!(mock.received().len(), 2);
    // After the cooldown, one probe goes through; it succeeds and closes the circuit.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(send_chat(&b, "flaky", None, "hi").await.0, 200);
    assert_eq!(send_chat(&b, "flaky", None, "hi").await.0, 200);
    assert_eq!(mock.received().len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn hedging_takes_the_faster_answer_and_cancels_the_other() {
    let slow = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let fast = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("hedge");
    let cfg = format!(
        "{}{}[[routes]]\nmodel = \"hedged\"\ncandidates = [\"tortoise\", \"hare\"]\nhedge_after_ms = 100\n",
        upstream("slow-side", &slow.base_url(), "", "\"tortoise\" = \"slow-1500\""),
        upstream("fast-side", &fast.base_url(), "", "\"hare\" = \"mock-fast\""),
    );
    let b = gateway(&dir, &cfg).await;
    let (status, route, body) = send_chat(&b, "hedged", None, "hi").await;
    assert_eq!(status, 200, "{body}");
    // The answer came from the second leg (the first would only answer after 1.5 s).
    assert!(
        route.starts_with("target=hare;") && route.contains("; hedged"),
        "{route}"
    );
    // Both legs were sent, and the slow one was cancelled before it could finish.
    assert_eq!((slow.received().len(), fast.received().len()), (1, 1));
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(
        slow.completed(),
        Vec::<String>::new(),
        "the losing request was not cancelled"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_balanced_across_replicas_and_avoid_a_dead_one() {
    let a = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let b = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9);
    let dir = TempDir::new("replicas");
    let cfg = format!(
        "{}{}",
        upstream(
            "pair",
            &a.base_url(),
            &format!("replicas = [\"{}\"]", b.base_url()),
            "\"pair\" = \"mock-pair\""
        ),
        upstream(
            "half-dead",
            &format!("http://127.0.0.1:{dead}/v1"),
            &format!(
                "replicas = [\"{}\"]\nretries = 1\nconnect_timeout_ms = 500",
                a.base_url()
            ),
            "\"half-dead\" = \"mock-half\""
        ),
    );
    let gw = gateway(&dir, &cfg).await;
    for _ in 0..20 {
        assert_eq!(send_chat(&gw, "pair", None, "hi").await.0, 200);
    }
    let (na, nb) = (a.received().len(), b.received().len());
    assert_eq!(na + nb, 20);
    assert!(
        na > 0 && nb > 0,
        "all requests went to one replica: {na} / {nb}"
    );
    // One replica refuses connections: every request still succeeds, on the other one
    // (a retry never goes back to the replica that just failed it).
    for _ in 0..20 {
        let (status, _, body) = send_chat(&gw, "half-dead", None, "hi").await;
        assert_eq!(status, 200, "{body}");
    }
    let half: usize = a
        .received()
        .iter()
        .filter(|(_, _, body)| body["model"] == "mock-half")
        .count();
    assert_eq!(half, 20);
}
