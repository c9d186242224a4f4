//! What the guard costs per input: `cargo run --release -p bulwark-guard --example
//! scan_cost` prints one JSON line per input size with p50/p99 latency (µs) over many
//! scans on one thread, and the throughput in MB/s. The inputs are ordinary prose with a
//! little personal data, the common case; the stages are timed together (normalisation,
//! decoded views, rules, the model, PII and secrets), as the gateway runs them.

use std::hint::black_box;
use std::time::Instant;

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

fn main() {
    let guard = Guard::default();
    for size in [1024usize, 4096, 16384] {
        let text = input(size);
        for _ in 0..200 {
            black_box(guard.scan(black_box(&text)));
        }
        let n = if size > 8192 { 2_000 } else { 10_000 };
        let mut times: Vec<f64> = Vec::with_capacity(n);
        let started = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            black_box(guard.scan(black_box(&text)));
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        let total = started.elapsed().as_secs_f64();
        times.sort_by(f64::total_cmp);
        let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
        println!(
            "{{\"input_bytes\":{size},\"scans\":{n},\"p50_us\":{:.1},\"p99_us\":{:.1},\"mb_per_s\":{:.1}}}",
            pct(0.50),
            pct(0.99),
            (size * n) as f64 / total / 1e6
        );
    }
}
