//! Passport verification cost per request: a chain of three (issuer and two derived
//! passports) checked as the gateway checks it on each request (the verified-token
//! cache, the revocation file, then the authorizer for a model and a tool), against the
//! same without the cache (signatures verified every time), and cached with a token
//! budget (the spent counts are then facts of every request). Prints p50 and p99 in µs.
//!
//!     cargo run --release -p bulwark-passport --example verify

use std::time::{Duration, Instant, SystemTime};

use bulwark_passport::{
    attenuate, Authority, Narrowing, Request, Revocations, Scope, Verifier, KEY_FILE,
};
use bulwark_policy::DataClass;

fn quantiles(mut xs: Vec<Duration>) -> (f64, f64) {
    xs.sort();
    let at = |q: f64| xs[((xs.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

fn main() {
    let dir = std::env::temp_dir().join(format!("bulwark-passport-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let authority =
        Authority::load_or_create(&dir.join(KEY_FILE)).unwrap_or_else(|e| panic!("{e}"));
    let chain = |budget: Option<u64>| {
        let root = authority
            .issue(&Scope {
                key_id: "k".into(),
                agent: "planner".into(),
                models: vec!["smollm2".into()],
                tools: vec!["files__*".into(), "notes__add".into()],
                max_class: DataClass::Internal,
                expires: SystemTime::now() + Duration::from_secs(3600),
                budget_tokens: budget,
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let narrow = |agent: &str, tools: &[&str]| Narrowing {
            agent: agent.into(),
            tools: Some(tools.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        };
        let child = attenuate(&root, &narrow("researcher", &["files__*"]))
            .unwrap_or_else(|e| panic!("{e}"));
        attenuate(&child, &narrow("reader", &["files__read"])).unwrap_or_else(|e| panic!("{e}"))
    };
    let n = 5_000;
    for (name, cached, budget) in [
        ("cached", true, None),
        ("uncached", false, None),
        ("cached, with a token budget", true, Some(1_000_000)),
    ] {
        let token = chain(budget);
        let mut verifier = Verifier::new(authority.public(), Revocations::in_dir(&dir));
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            if !cached {
                verifier = Verifier::new(authority.public(), Revocations::in_dir(&dir));
            }
            let t = Instant::now();
            let p = verifier.verify(&token).unwrap_or_else(|e| panic!("{e}"));
            p.authorize(
                &Request::Model("smollm2", DataClass::Public),
                SystemTime::now(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
            samples.push(t.elapsed());
        }
        let (p50, p99) = quantiles(samples);
        println!(
            "{{\"verify\": \"{name}\", \"blocks\": 3, \"p50_us\": {p50:.1}, \"p99_us\": {p99:.1}}}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
