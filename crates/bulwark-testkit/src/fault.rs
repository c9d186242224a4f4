//! [`FaultUpstream`]: an upstream that breaks HTTP itself, written on a raw TCP socket so
//! it can do what no HTTP library would let it: lie about its length, send ten thousand
//! headers, reset the connection, cut a character in half. As with the mock, the `model`
//! asked for picks the fault:
//!
//! | model          | fault                                                              |
//! |----------------|--------------------------------------------------------------------|
//! | `reset`        | resets the connection (RST) before answering                       |
//! | `reset-mid`    | streams one event, then resets                                      |
//! | `silent`       | streams one event, then sends nothing and keeps the socket open     |
//! | `long-length`  | JSON with a Content-Length 1,000 bytes longer than it sends, then closes |
//! | `short-length` | JSON with a Content-Length shorter than the body it sends           |
//! | `huge-body`    | a JSON answer of 1 GiB (Content-Length says so), sent as fast as read |
//! | `gzip-bomb`    | a JSON answer gzip-compressed from 256 MiB to a few hundred KiB      |
//! | `many-headers` | 10,000 headers before its (good) answer                             |
//! | `huge-header`  | one header of 1 MiB before its (good) answer                        |
//! | `bad-chunk`    | a chunked body whose chunk size is not hexadecimal                   |
//! | `utf8-split`   | a good stream whose multi-byte characters are split across writes    |
//! | `bad-utf8`     | a stream with an event that is not UTF-8                              |
//! | `huge-event`   | a stream with one 2 MiB event, then one carrying [`crate::LEAKED_KEY`] |
//! | `endless-event`| a stream of one event that never ends (1 GiB of `data:` without a newline) |
//! | `flood`        | a good stream of 1 KiB events, as fast as it is read, until the gateway hangs up |
//!
//! [`FaultUpstream::written`] counts the body bytes it managed to write, which shows how
//! much of a huge answer the gateway read before it gave up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The text the `utf8-split` stream sends, in events cut inside characters.
pub const SPLIT_TEXT: &str = "Grüße aus Köln, 東京と🦀!";

pub struct FaultUpstream {
    pub addr: SocketAddr,
    written: Arc<AtomicU64>,
}

impl FaultUpstream {
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let written = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&written);
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let _ = serve(sock, &count).await;
                });
            }
        });
        Ok(FaultUpstream { addr, written })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Body bytes written to the gateway so far, over all requests.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// Reads one request (headers, then a Content-Length body) and returns its JSON body.
async fn read_request(sock: &mut TcpStream) -> std::io::Result<Value> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null))
}

fn chat_json(text: &str) -> Vec<u8> {
    json!({"id":"fault-1","object":"chat.completion","created":0,"model":"fault",
        "choices":[{"index":0,"message":{"role":"assistant","content":text},"finish_reason":"stop"}],
        "usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}})
    .to_string()
    .into_bytes()
}

fn event(text: &str) -> Vec<u8> {
    let chunk = json!({"id":"fault-1","object":"chat.completion.chunk","created":0,"model":"fault",
        "choices":[{"index":0,"delta":{"content":text},"finish_reason":null}]});
    format!("data: {chunk}\n\n").into_bytes()
}

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

fn json_head(len: u64, extra: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\nconnection: close\r\n{extra}\r\n").into_bytes()
}

/// A reset (RST), not an orderly close: linger zero, then drop (which does not block
/// with a zero linger, the reason tokio deprecates `set_linger`).
#[allow(deprecated)]
fn reset(sock: TcpStream) {
    let _ = sock.set_linger(Some(Duration::ZERO));
    drop(sock);
}

async fn serve(mut sock: TcpStream, written: &AtomicU64) -> std::io::Result<()> {
    let body = read_request(&mut sock).await?;
    let model = body["model"].as_str().unwrap_or("").to_owned();
    let count = |n: usize| {
        written.fetch_add(n as u64, Ordering::Relaxed);
    };
    match model.as_str() {
        "reset" => reset(sock),
        "reset-mid" => {
            sock.write_all(SSE_HEAD).await?;
            sock.write_all(&event("before the reset ")).await?;
            sock.flush().await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            reset(sock);
        }
        "silent" => {
            sock.write_all(SSE_HEAD).await?;
            sock.write_all(&event("and then silence ")).await?;
            // Keep the socket open, sending nothing, until the gateway hangs up.
            let mut b = [0u8; 1];
            let _ = sock.read(&mut b).await;
        }
        "long-length" => {
            let b = chat_json("cut short");
            sock.write_all(&json_head(b.len() as u64 + 1000, ""))
                .await?;
            sock.write_all(&b).await?;
        }
        "short-length" => {
            let b = chat_json("longer than it says");
            sock.write_all(&json_head(b.len() as u64 / 2, "")).await?;
            sock.write_all(&b).await?;
        }
        "huge-body" => {
            const SIZE: u64 = 1 << 30;
            let prefix = br#"{"id":"fault-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":""#;
            sock.write_all(&json_head(SIZE, "")).await?;
            sock.write_all(prefix).await?;
            let block = vec![b'a'; 1 << 16];
            let mut sent = prefix.len() as u64;
            while sent + block.len() as u64 <= SIZE {
                sock.write_all(&block).await?;
                count(block.len());
                sent += block.len() as u64;
            }
        }
        "gzip-bomb" => {
            let b = gzip_bomb(256 << 20);
            sock.write_all(&json_head(b.len() as u64, "content-encoding: gzip\r\n"))
                .await?;
            sock.write_all(&b).await?;
        }
        "many-headers" | "huge-header" => {
            let b = chat_json("after the headers");
            let mut head = json_head(b.len() as u64, "");
            head.truncate(head.len() - 2);
            if model == "many-headers" {
                for i in 0..10_000 {
                    head.extend_from_slice(format!("x-filler-{i}: {i}\r\n").as_bytes());
                }
            } else {
                head.extend_from_slice(b"x-filler: ");
                head.extend(std::iter::repeat_n(b'a', 1 << 20));
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"\r\n");
            sock.write_all(&head).await?;
            sock.write_all(&b).await?;
        }
        "bad-chunk" => {
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").await?;
            sock.write_all(b"zz\r\n{\"id\":1}\r\n0\r\n\r\n").await?;
        }
        "utf8-split" => {
            sock.write_all(SSE_HEAD).await?;
            let mut all = Vec::new();
            for word in SPLIT_TEXT.split_inclusive(' ') {
                all.extend(event(word));
            }
            all.extend_from_slice(b"data: [DONE]\n\n");
            // Cut every multi-byte character between two writes.
            let mut start = 0;
            for i in 1..all.len() {
                if all[i] & 0xC0 == 0x80 && all[i - 1] >= 0xC0 {
                    sock.write_all(&all[start..i]).await?;
                    sock.flush().await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    start = i;
                }
            }
            sock.write_all(&all[start..]).await?;
        }
        "bad-utf8" => {
            sock.write_all(SSE_HEAD).await?;
            sock.write_all(&event("fine ")).await?;
            let mut bad = event("broken \u{e9}");
            if let Some(i) = bad.iter().position(|&b| b == 0xC3) {
                bad[i] = 0xFF;
            }
            sock.write_all(&bad).await?;
            sock.write_all(&event("never seen")).await?;
            sock.write_all(b"data: [DONE]\n\n").await?;
        }
        "huge-event" => {
            sock.write_all(SSE_HEAD).await?;
            let big = "a".repeat(2 << 20);
            // One event over the gateway's 1 MiB event limit, ended by a single newline
            // so that its bytes alone look like a well-formed line...
            let mut ev = event(&big);
            ev.pop();
            sock.write_all(&ev).await?;
            // ...then what the gateway must never pass unscreened.
            sock.write_all(b"\n").await?;
            sock.write_all(&event(&format!("the key is {}", crate::LEAKED_KEY)))
                .await?;
            sock.write_all(b"data: [DONE]\n\n").await?;
        }
        "endless-event" => {
            sock.write_all(SSE_HEAD).await?;
            sock.write_all(b"data: {\"choices\":[{\"delta\":{\"content\":\"")
                .await?;
            let block = vec![b'a'; 1 << 16];
            for _ in 0..(1 << 14) {
                sock.write_all(&block).await?;
                count(block.len());
            }
        }
        "flood" => {
            sock.write_all(SSE_HEAD).await?;
            let ev = event(&"flood ".repeat(170));
            loop {
                sock.write_all(&ev).await?;
                count(ev.len());
            }
        }
        _ => {
            let b = chat_json("no fault");
            sock.write_all(&json_head(b.len() as u64, "")).await?;
            sock.write_all(&b).await?;
        }
    }
    Ok(())
}

/// A gzip member that inflates to `size` bytes of JSON-looking text (a string of
/// spaces), a few hundred KiB on the wire.
fn gzip_bomb(size: usize) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let _ = gz.write_all(b"{\"id\":\"bomb\",\"pad\":\"");
    let block = vec![b' '; 1 << 20];
    for _ in 0..size >> 20 {
        let _ = gz.write_all(&block);
    }
    let _ = gz.write_all(b"\"}");
    gz.finish().unwrap_or_default()
}
