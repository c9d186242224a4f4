//! Records per second into the audit log: `cargo run --release -p bulwark-audit --example
//! throughput [DIR]`. One JSON line per durability mode: records appended from one
//! thread as fast as it can, until all are on disk; and the cost of the cryptography
//! alone (seal + hash per record, wrap per segment).

use std::time::{Duration, Instant};

use bulwark_audit::{keygen, AuditLog, Durability, Options, Record};

fn record(i: u64) -> Record {
    Record {
        time_ms: 1_795_000_000_000 + i,
        request_id: format!("8d1f6a2e-5c3b-4f7e-9a1d-{i:012}"),
        key_id: Some("82ff7365791b".into()),
        tenant: Some("acme".into()),
        model: "chat".into(),
        target: "vllm-fr".into(),
        jurisdiction: Some("FR".into()),
        class: Some("confidential".into()),
        decision: "target=vllm-fr; class=confidential; openai-us=denied (confidential data may not reach foreign targets); vllm-fr=allowed".into(),
        guard: Some("pii=pseudonymise:email".into()),
        prompt_tokens: Some(412),
        completion_tokens: Some(96),
        latency_ms: 231,
        status: 200,
        cache: Some("miss".into()),
        response_sha256: Some(
            "3b1f5e0c9a7d4e2f8b6a1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f".into(),
        ),
        ..Default::default()
    }
}

fn main() {
    let base = std::env::args()
        .nth(1)
        .map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    for (name, durability, n) in [
        (
            "batch",
            Durability::Batch(Duration::from_millis(5)),
            200_000u64,
        ),
        ("sync", Durability::Sync, 2_000),
    ] {
        let dir = base.join(format!("bulwark-audit-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (pk, _) = keygen();
        let log = AuditLog::open(
            Options {
                dir: dir.clone(),
                durability,
                segment_max_bytes: 64 << 20,
                segment_max_age: Duration::from_secs(3600),
            },
            pk,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let started = Instant::now();
        if durability == Durability::Sync {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            rt.block_on(async {
                for i in 0..n {
                    if let Ok(Some(ack)) = log.append(&record(i)) {
                        let _ = ack.await;
                    }
                }
            });
        } else {
            for i in 0..n {
                let _ = log.append(&record(i));
            }
            log.flush();
        }
        let secs = started.elapsed().as_secs_f64();
        let bytes: u64 = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        println!(
            "{{\"durability\":\"{name}\",\"records\":{n},\"records_per_s\":{:.0},\"us_per_record\":{:.2},\"bytes_per_record\":{}}}",
            n as f64 / secs,
            secs * 1e6 / n as f64,
            bytes / n
        );
        drop(log);
        let _ = std::fs::remove_dir_all(&dir);
    }
    // The cryptography alone.
    let key = [7u8; 32];
    let plain = serde_json::to_vec(&record(1)).unwrap_or_default();
    let n: u32 = 200_000;
    let started = Instant::now();
    for i in 0..n {
        let _ = std::hint::black_box(bulwark_audit::crypto::seal(
            &key,
            &u64::from(i).to_le_bytes(),
            &plain,
        ));
    }
    let seal_ns = started.elapsed().as_nanos() as f64 / f64::from(n);
    let (pk, _) = keygen();
    let started = Instant::now();
    for _ in 0..200 {
        let _ = std::hint::black_box(bulwark_audit::crypto::wrap(&pk, &key));
    }
    let wrap_us = started.elapsed().as_secs_f64() * 1e6 / 200.0;
    // A receipt: both signatures over a typical payload, and checking both.
    let (vk, sk) = bulwark_audit::receipt::keygen();
    let signer = bulwark_audit::receipt::Signer::new(&sk).unwrap_or_else(|e| panic!("{e}"));
    let claims = bulwark_audit::receipt::Claims {
        v: 1,
        time_ms: 1_795_000_000_000,
        request_id: "8d1f6a2e-5c3b-4f7e-9a1d-000000000001".into(),
        request_sha256: "ab".repeat(32),
        response_sha256: Some("cd".repeat(32)),
        model: "chat".into(),
        model_sha256: None,
        route: "target=vllm-fr; class=confidential; vllm-fr=allowed".into(),
        status: 200,
        watermark: None,
    };
    let started = Instant::now();
    let mut receipt = String::new();
    for _ in 0..200 {
        receipt = signer.sign(&claims).unwrap_or_default();
    }
    let sign_us = started.elapsed().as_secs_f64() * 1e6 / 200.0;
    let started = Instant::now();
    for _ in 0..200 {
        let _ = std::hint::black_box(bulwark_audit::receipt::verify(&vk, &receipt));
    }
    let verify_us = started.elapsed().as_secs_f64() * 1e6 / 200.0;
    println!("{{\"seal_ns_per_record\":{seal_ns:.0},\"record_plaintext_bytes\":{},\"wrap_us_per_segment\":{wrap_us:.0},\"receipt_sign_us\":{sign_us:.0},\"receipt_verify_us\":{verify_us:.0},\"receipt_header_bytes\":{}}}", plain.len(), receipt.len());
}
