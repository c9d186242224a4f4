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

fn input(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + PROSE.len());
    while s.len() < bytes {
        s.push_str(PROSE);
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
