//! What the guard costs per input: `cargo run --release -p bulwark-guard --example
//! scan_cost` prints one JSON line per input size with p50/p99 latency (µs) over many
//! scans on one thread, and the throughput in MB/s. The inputs are ordinary prose with a
//! little personal data, the common case; the stages are timed together (normalisation,
//! decoded views, rules, the model, PII and secrets), as the gateway runs them.
//!
//! `scan_cost ENCODER_DIR` also times the second stage (`Encoder::score`, which the
//! gateway runs only on texts the first stage finds at least faintly suspicious): a short
//! chat message and the same inputs, fewer times each.

use std::hint::black_box;
use std::time::Instant;

use bulwark_guard::encoder::Encoder;
use bulwark_guard::Guard;

const PROSE: &str =
    "Our quarterly review covered the migration of the billing service to the new cluster. \
The team reported that latency improved by twelve percent after the connection pool was resized, \
and that the remaining errors come from a legacy client that retries too aggressively. \
Please contact maria.rossi@example.org before Friday if the rollout plan needs changes; \
the on-call phone is +33 1 45 67 89 10. Next steps: finish the runbook, review dashboards, \
and schedule the load test with the platform group. ";

/// The same kind of prose in Russian and in Chinese: text outside ASCII takes other
/// paths (Unicode word boundaries in the rules, the character n-grams of unspaced
/// scripts).
const PROSE_RU: &str = "Наш квартальный обзор касался переноса биллинга в новый кластер. \
Команда сообщила, что задержка снизилась на двенадцать процентов после изменения пула соединений. \
Пожалуйста, свяжитесь с maria.rossi@example.org до пятницы, если план развёртывания нужно изменить. ";
const PROSE_ZH: &str = "我们的季度回顾讨论了把计费服务迁移到新集群的工作。团队报告说，调整连接池之后延迟降低了百分之十二，\
剩下的错误来自一个重试过于频繁的旧客户端。如果上线计划需要修改，请在周五之前联系 maria.rossi@example.org。";

fn input(bytes: usize) -> String {
    repeat(PROSE, bytes)
}

/// `prose` repeated to `bytes` bytes (cut at a character boundary).
fn repeat(prose: &str, bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + prose.len());
    while s.len() < bytes {
        s.push_str(prose);
    }
    let mut end = bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s
}

/// Times `f` on `text` `n` times after `n / 50` warm-up runs; prints one JSON line.
fn time(stage: &str, text: &str, n: usize, f: impl Fn(&str)) {
    for _ in 0..(n / 50).max(2) {
        f(black_box(text));
    }
    let mut times: Vec<f64> = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        f(black_box(text));
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = started.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "{{\"stage\":\"{stage}\",\"input_bytes\":{},\"scans\":{n},\"p50_us\":{:.1},\"p99_us\":{:.1},\"mb_per_s\":{:.2}}}",
        text.len(),
        pct(0.50),
        pct(0.99),
        (text.len() * n) as f64 / total / 1e6
    );
}

fn main() {
    let guard = Guard::default();
    for size in [1024usize, 4096, 16384] {
        let n = if size > 8192 { 2_000 } else { 10_000 };
        time("first", &input(size), n, |t| {
            black_box(guard.scan(t));
        });
    }
    for (stage, prose) in [("first (Russian)", PROSE_RU), ("first (Chinese)", PROSE_ZH)] {
        time(stage, &repeat(prose, 1024), 10_000, |t| {
            black_box(guard.scan(t));
        });
    }
    if let Some(dir) = std::env::args().nth(1) {
        let encoder = Encoder::load(std::path::Path::new(&dir)).unwrap_or_else(|e| panic!("{e}"));
        let chat = "Can you summarise the main points of this article in three bullet points?";
        for (text, n) in [(chat.to_owned(), 200), (input(1024), 50), (input(4096), 20)] {
            time("encoder", &text, n, |t| {
                black_box(encoder.score(t));
            });
        }
    }
}
