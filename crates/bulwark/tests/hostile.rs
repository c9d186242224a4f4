//! The real binary against hostile upstreams (a raw-socket fault injector) and hostile
//! clients (raw sockets too): every case gets a clear, bounded answer, and the gateway's
//! memory stays bounded.

mod common;

use std::time::{Duration, Instant};

use bulwark_testkit::{fault::SPLIT_TEXT, Bulwark, FaultUpstream, LEAKED_KEY};
use common::{start_with, TempDir};
use expect_test::expect;
use serde_json::{json, Value};

async fn gateway(dir: &TempDir, upstream: &str, extra: &str) -> Bulwark {
    let cfg = format!(
        r#"
{extra}
[[upstreams]]
name = "faulty"
base_url = "{upstream}"
read_timeout_ms = 1500
connect_timeout_ms = 1000
retries = 0
breaker_failures = 1000
models = {{ "reset" = "reset", "reset-mid" = "reset-mid", "silent" = "silent", "long-length" = "long-length", "short-length" = "short-length", "huge-body" = "huge-body", "gzip-bomb" = "gzip-bomb", "many-headers" = "many-headers", "huge-header" = "huge-header", "bad-chunk" = "bad-chunk", "utf8-split" = "utf8-split", "bad-utf8" = "bad-utf8", "huge-event" = "huge-event", "endless-event" = "endless-event", "flood" = "flood", "fine" = "fine" }}
"#
    );
    let path = dir.write("bulwark.toml", &cfg);
    start_with(Some(&path), &[]).await
}

/// A fault-injecting upstream and the gateway in front of it (`extra` goes first in its
/// config).
async fn setup(tag: &str, extra: &str) -> (FaultUpstream, TempDir, Bulwark) {
    let up = FaultUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new(tag);
    let b = gateway(&dir, &up.base_url(), extra).await;
    (up, dir, b)
}

fn chat(model: &str, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": stream})
}

/// Posts a chat request for `model`; its status and body, which must arrive within
/// 10 s whatever the upstream does.
async fn ask(client: &reqwest::Client, b: &Bulwark, model: &str, stream: bool) -> (u16, String) {
    let t = Instant::now();
    let r = client
        .post(b.url("/v1/chat/completions"))
        .json(&chat(model, stream))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{model}: {e}"));
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "{model}: {:?}",
        t.elapsed()
    );
    (status, body)
}

/// The text of every `data:` event's deltas, and the error code of an error event.
fn read_stream(body: &str) -> (String, Option<String>) {
    let mut text = String::new();
    let mut error = None;
    for line in body.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            continue;
        };
        if let Some(code) = v["error"]["code"].as_str() {
            error = Some(code.to_owned());
        }
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    (text, error)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_upstreams_get_clear_bounded_answers() {
    let (up, _dir, b) = setup("hostile-up", "").await;
    let client = reqwest::Client::new();
    let (rss_before, _) = b.memory_kib();
    let mut out = String::new();
    for model in [
        "fine",
        "reset",
        "long-length",
        "short-length",
        "huge-body",
        "gzip-bomb",
        "many-headers",
        "huge-header",
        "bad-chunk",
    ] {
        let (status, body) = ask(&client, &b, model, false).await;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let what = if status == 200 {
            v["choices"][0]["message"]["content"].to_string()
        } else {
            format!(
                "{} | {}",
                v["error"]["code"],
                v["error"]["message"].as_str().unwrap_or("")
            )
        };
        out += &format!("{model}: {status} {what}\n");
    }
    for model in [
        "reset-mid",
        "silent",
        "utf8-split",
        "bad-utf8",
        "huge-event",
        "endless-event",
    ] {
        let (status, body) = ask(&client, &b, model, true).await;
        assert!(
            !body.contains(LEAKED_KEY),
            "{model}: the key passed unscreened"
        );
        assert!(
            !body.contains('\u{fffd}'),
            "{model}: a character was mangled"
        );
        let (text, error) = read_stream(&body);
        let text: String = text.chars().take(40).collect();
        out += &format!("{model} (stream): {status} {text:?} then {error:?}\n");
    }
    expect![[r#"
        fine: 200 "no fault"
        reset: 502 "upstream_unavailable" | upstream `faulty` failed: Connection reset by peer (os error 104)
        long-length: 502 "upstream_unavailable" | upstream `faulty` failed: end of file before message length reached
        short-length: 502 "upstream_invalid_answer" | Upstream `faulty` sent an answer that is not valid JSON; the answer was not passed on.
        huge-body: 502 "upstream_invalid_answer" | Upstream `faulty` sent an answer over 64 MiB; the answer was not passed on.
        gzip-bomb: 502 "upstream_invalid_answer" | Upstream `faulty` sent a `gzip`-encoded answer, which the gateway did not ask for; the answer was not passed on.
        many-headers: 502 "upstream_unavailable" | upstream `faulty` failed: message head is too large
        huge-header: 502 "upstream_unavailable" | upstream `faulty` failed: message head is too large
        bad-chunk: 502 "upstream_unavailable" | upstream `faulty` failed: Invalid chunk size line: missing size digit
        reset-mid (stream): 200 "before the reset " then Some("upstream_unavailable")
        silent (stream): 200 "and then silence " then Some("upstream_timeout")
        utf8-split (stream): 200 "Grüße aus Köln, 東京と🦀!" then None
        bad-utf8 (stream): 200 "fine " then Some("upstream_invalid_answer")
        huge-event (stream): 200 "" then Some("upstream_invalid_answer")
        endless-event (stream): 200 "" then Some("upstream_invalid_answer")
    "#]].assert_eq(&out);
    // The whole answer of the split stream arrived intact.
    assert!(out.contains(&format!("{SPLIT_TEXT:?}")), "{out}");
    // Of the 1 GiB answers, the gateway read no more than its limits (64 MiB for a
    // JSON answer, 1 MiB for an event) and the socket buffers hold.
    let written = up.written();
    assert!(written < 200 << 20, "the upstream wrote {written} bytes");
    let (rss_after, peak) = b.memory_kib();
    eprintln!("upstream wrote {} MiB; gateway RSS {rss_before} KiB before, {rss_after} KiB after, peak {peak} KiB", written >> 20);
    assert!(
        peak < rss_before + 300 * 1024,
        "peak RSS {peak} KiB against {rss_before} KiB at the start"
    );
    // Still serving.
    let r = client
        .post(b.url("/v1/chat/completions"))
        .json(&chat("fine", false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    assert!(!b.logs().contains("panicked"), "{}", b.logs());
}

/// Sends `raw` on a fresh connection and reads until the server closes it, or `wait`.
async fn exchange(addr: std::net::SocketAddr, raw: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = s.write_all(raw).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_lines(response: &str) -> Vec<&str> {
    response
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect()
}

fn post_head(extra: &str, body_len: usize) -> String {
    format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{extra}content-length: {body_len}\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_clients_meet_limits_and_cannot_smuggle() {
    let (up, _dir, b) = setup(
        "hostile-client",
        "[server]\nmax_header_bytes = 16384\nmax_in_flight = 4\n",
    )
    .await;
    let wait = Duration::from_secs(5);
    let body = chat("fine", false).to_string();
    let mut out = String::new();

    // A head over max_header_bytes, and more than 100 headers: 431.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let many: String = (0..200).map(|i| format!("x-h{i}: {i}\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{many}\r\n");
    // Two different lengths: 400.
    let two = format!("{}{body}", post_head("content-length: 3\r\n", body.len()));
    // Transfer-Encoding that is not chunked: 400.
    let te = format!(
        "{}{body}",
        post_head("transfer-encoding: gzip\r\n", body.len())
    );
    for (case, raw) in [
        ("big head", big),
        ("200 headers", many),
        ("two lengths", two),
        ("te gzip", te),
    ] {
        let r = exchange(b.addr, raw.as_bytes(), wait).await;
        out += &format!("{case}: {:?}\n", status_lines(&r));
    }
    // Smuggling: Content-Length and Transfer-Encoding both. The chunked body wins, the
    // connection closes after the answer, and the request hidden behind it is never
    // served.
    let smuggled = "GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n";
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n{smuggled}",
        body.len()
    );
    let r = exchange(b.addr, raw.as_bytes(), wait).await;
    out += &format!(
        "cl+te: {:?} served: {}\n",
        status_lines(&r),
        r.contains("no fault")
    );
    // Half-closed: the request, then the client shuts its sending side. Like a hang-up,
    // that is taken as the client leaving: no answer, the connection closes at once.
    // The upstream (`silent`) would answer nothing before the read timeout (1.5 s, then a
    // 504 well within `wait`), so that an answer can only mean the half-close was not
    // noticed; with `fine`, an answer ready before the gateway read the end of the
    // stream was sent, on a busy machine.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(b.addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let silent = chat("silent", false).to_string();
        let _ = s
            .write_all(format!("{}{silent}", post_head("", silent.len())).as_bytes())
            .await;
        let _ = s.shutdown().await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(wait, s.read_to_end(&mut got)).await;
        let got = String::from_utf8_lossy(&got);
        out += &format!("half-closed: {:?}\n", status_lines(&got));
    }
    expect![[r#"
        big head: ["HTTP/1.1 431 Request Header Fields Too Large"]
        200 headers: ["HTTP/1.1 431 Request Header Fields Too Large"]
        two lengths: ["HTTP/1.1 400 Bad Request"]
        te gzip: ["HTTP/1.1 400 Bad Request"]
        cl+te: ["HTTP/1.1 200 OK"] served: true
        half-closed: []
    "#]]
    .assert_eq(&out);

    // Clients that never read their streams: the upstream is held back (backpressure),
    // nothing piles up in the gateway, and they hold in-flight slots until they leave.
    let (rss_before, _) = b.memory_kib();
    let stream = chat("flood", true).to_string();
    let mut readers = Vec::new();
    for _ in 0..4 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(b.addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        s.write_all(format!("{}{stream}", post_head("", stream.len())).as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut first = [0u8; 1024];
        let n = s.read(&mut first).await.unwrap_or(0);
        let head = String::from_utf8_lossy(&first[..n]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        readers.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let w1 = up.written();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let w2 = up.written();
    let (rss_held, _) = b.memory_kib();
    eprintln!(
        "4 unread streams: upstream wrote {} KiB, then {} KiB more in 2 s; gateway RSS {rss_before} -> {rss_held} KiB",
        w1 >> 10,
        (w2 - w1) >> 10
    );
    assert!(
        w2 - w1 < 1 << 20,
        "the upstream kept writing: {} bytes",
        w2 - w1
    );
    assert!(
        w2 < 64 << 20,
        "{w2} bytes buffered for clients that do not read"
    );
    assert!(
        rss_held < rss_before + 64 * 1024,
        "{rss_before} -> {rss_held} KiB"
    );
    // All four slots are taken: the next /v1 request is refused at once, with
    // Retry-After; health checks still answer.
    let client = reqwest::Client::new();
    let r = client
        .post(b.url("/v1/chat/completions"))
        .json(&chat("fine", false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(v["error"]["code"], "gateway_overloaded", "{v}");
    let r = client
        .get(b.url("/healthz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    // They leave; their slots come back.
    drop(readers);
    let t = Instant::now();
    loop {
        let r = client
            .post(b.url("/v1/chat/completions"))
            .json(&chat("fine", false))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if r.status() == 200 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "slots not given back: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!b.logs().contains("panicked"), "{}", b.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_idle_keep_alive_connections_neither_block_nor_stay() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const N: usize = 10_000;
    let (_up, _dir, b) = setup(
        "hostile-idle",
        "[server]\nmax_connections = 12000\nheader_read_timeout_ms = 3000\n",
    )
    .await;
    let (rss_before, _) = b.memory_kib();
    // Each connection asks once, reads its answer, and then stays open and silent.
    let addr = b.addr;
    let mut conns = Vec::with_capacity(N);
    for batch in 0..N / 500 {
        let tasks: Vec<_> = (0..500)
            .map(|_| {
                tokio::spawn(async move {
                    let mut s = tokio::net::TcpStream::connect(addr).await?;
                    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                        .await?;
                    let mut buf = [0u8; 512];
                    let n = s.read(&mut buf).await?;
                    if !buf[..n].starts_with(b"HTTP/1.1 200") {
                        return Err(std::io::Error::other("not 200"));
                    }
                    Ok::<_, std::io::Error>(s)
                })
            })
            .collect();
        for t in tasks {
            match t.await {
                Ok(Ok(s)) => conns.push(s),
                other => panic!("connection in batch {batch}: {other:?}"),
            }
        }
    }
    let opened = Instant::now();
    let (rss_open, _) = b.memory_kib();
    // Slowloris beside them: headers a byte every 100 ms, each byte well within any
    // per-read timeout; the header deadline is for the whole head.
    let loris = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let t = Instant::now();
        let head = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-slow: ";
        s.write_all(head).await?;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(b"a").await.is_err() {
                break;
            }
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => break,
                _ if t.elapsed() > Duration::from_secs(20) => break,
                _ => {}
            }
        }
        Ok::<_, std::io::Error>(t.elapsed())
    });
    // A new client is served at once beside them.
    let t = Instant::now();
    let r = reqwest::Client::new()
        .post(b.url("/v1/chat/completions"))
        .json(&chat("fine", false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    let served_in = t.elapsed();
    // The idle ones are closed by the gateway once header_read_timeout_ms passes.
    let mut closed = 0;
    for s in &mut conns {
        let mut buf = [0u8; 16];
        let left = Duration::from_secs(15).saturating_sub(opened.elapsed());
        if let Ok(Ok(0)) = tokio::time::timeout(left, s.read(&mut buf)).await {
            closed += 1;
        }
    }
    let closed_in = opened.elapsed();
    let loris_cut = loris
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("slowloris cut off after {loris_cut:?}");
    assert!(
        loris_cut < Duration::from_secs(8),
        "a byte-a-time head was held for {loris_cut:?}"
    );
    eprintln!(
        "{N} idle connections: gateway RSS {rss_before} -> {rss_open} KiB ({} bytes each); a new request served in {served_in:?}; {closed} closed by the gateway within {closed_in:?}",
        (rss_open.saturating_sub(rss_before) * 1024) / N as u64
    );
    assert!(served_in < Duration::from_secs(2), "{served_in:?}");
    assert_eq!(closed, N, "idle connections left open");
    assert!(
        rss_open < rss_before + 200 * 1024,
        "{rss_before} -> {rss_open} KiB for {N} idle connections"
    );
}
