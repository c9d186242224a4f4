//! What the gateway's own per-request logic costs, without any network: request
//! validation, the API-key check and limit accounting, the policy decision with its
//! explanation (the `x-bulwark-route` header), the cache key, and the guard's screening
//! of a whole request body (every string of it): a plain chat body, an agent's body
//! with tools, tool calls and metadata, and that agent body's message content alone
//! (what the guard read before it read every field), as the baseline in the same run.
//! `cargo run --release -p bulwark-server --example hot_path_cost` prints one JSON line: median nanoseconds per operation over several rounds.

use std::hint::black_box;
use std::time::Instant;

use bulwark_api::chat::ChatRequest;
use bulwark_policy::{decide, Candidate, DataClass, Policy, Residency, Rule, Trust};
use serde_json::json;

/// Median ns per call of `f` over 7 rounds of `n` calls.
fn median_ns(n: u32, mut f: impl FnMut()) -> f64 {
    let mut rounds: Vec<f64> = (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..n {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    rounds[3]
}

fn main() {
    // A realistic ~1 KB chat request.
    let body = json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are a careful assistant for a hospital's staff. ".repeat(4)},
            {"role": "user", "content": "Summarise the discharge letter below in three bullet points. ".repeat(12)}
        ],
        "temperature": 0, "max_tokens": 256, "stream": true, "stream_options": {"include_usage": true}
    });
    let residency = |trust, j: &str| Residency {
        jurisdiction: Some(j.into()),
        operator: None,
        trust: Some(trust),
    };
    let fleet = [
        ("local", Residency::host(Some("FR".into()))),
        ("vllm-fr", residency(Trust::Private, "FR")),
        ("vllm-de", residency(Trust::Private, "DE")),
        ("azure-eu", residency(Trust::Foreign, "EU")),
        ("openai-us", residency(Trust::Foreign, "US")),
        ("unknown", Residency::default()),
    ];
    let candidates: Vec<Candidate<'_>> = fleet
        .iter()
        .map(|(n, r)| Candidate {
            name: n,
            residency: r,
        })
        .collect();
    let policy = Policy::with_rules([
        (
            DataClass::Internal,
            Rule::trust(&[Trust::Host, Trust::Private, Trust::Foreign]).within(&["EU"]),
        ),
        (
            DataClass::Confidential,
            Rule::trust(&[Trust::Host, Trust::Private]).within(&["FR", "DE"]),
        ),
    ]);

    let validate = median_ns(20_000, || {
        let _ = black_box(ChatRequest::from_json(black_box(&body)));
    });
    let decision = median_ns(200_000, || {
        black_box(decide(
            black_box(DataClass::Confidential),
            &candidates,
            &policy,
        ));
    });
    let decision_and_header = median_ns(200_000, || {
        black_box(decide(black_box(DataClass::Confidential), &candidates, &policy).explain());
    });
    let cache_key = median_ns(20_000, || {
        black_box(bulwark_cache::key(
            "tenant",
            "confidential",
            bulwark_cache::Kind::Chat,
            black_box(&body),
        ));
    });
    // The key check as the server does it: a WAL SQLite file (one `data_version` probe
    // per request), a key with request, token and budget limits, then admission.
    let db = std::env::temp_dir().join(format!("bulwark-hot-path-{}.db", std::process::id()));
    let keys = bulwark_keys::Keys::new(
        bulwark_keys::Store::open(&db).unwrap_or_else(|e| panic!("key database: {e:?}")),
        false,
    )
    .unwrap_or_else(|e| panic!("keys: {e:?}"));
    let spec = bulwark_keys::KeySpec {
        rpm: Some(u64::MAX / 2),
        tpm: Some(u64::MAX / 2),
        budget_tokens: Some(u64::MAX / 2),
        ..bulwark_keys::KeySpec::named("bench")
    };
    let (_, plaintext) = keys
        .create(&spec)
        .unwrap_or_else(|e| panic!("create key: {e:?}"));
    let authenticate = median_ns(20_000, || {
        let _ = black_box(keys.authenticate(black_box(Some(plaintext.as_str()))));
    });
    let key = keys
        .authenticate(Some(&plaintext))
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("the key does not authenticate"));
    // Admission with a 60 s request window that fills up: the realistic steady state.
    let admit = median_ns(20_000, || {
        let _ = black_box(keys.admit(&key, "chat", bulwark_keys::now_ms()));
    });
    drop(keys);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    // The guard at its defaults (first stage; pseudonymise), on bodies with nothing to
    // rewrite, as most are.
    let cfg = bulwark_config::GuardConfig::default();
    let edge = bulwark_server::guard::EdgeGuard::new(Some(&cfg), None);
    let tool = |name: &str| {
        json!({"type": "function", "function": {"name": name, "description": format!("Looks up {name} records in the ticket system by id or free text."),
            "parameters": {"type": "object", "properties": {
                "query": {"type": "string", "description": "free text to search for"},
                "limit": {"type": "integer", "description": "most results to return"},
                "status": {"type": "string", "enum": ["open", "closed", "pending"], "description": "which tickets"}},
                "required": ["query"]}}})
    };
    let agent = json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": "You are the support agent of ACME. Use the tools; be brief."},
            {"role": "user", "content": "Find the open tickets about the billing export failing since Monday."},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "tickets", "arguments": "{\"query\": \"billing export failing\", \"status\": \"open\", \"limit\": 10}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "[{\"id\": 4121, \"title\": \"Export to CSV times out\", \"status\": \"open\"}, {\"id\": 4130, \"title\": \"Billing export empty\", \"status\": \"open\"}]"},
            {"role": "assistant", "content": "Two open tickets: 4121 (export times out) and 4130 (empty export)."},
            {"role": "user", "content": "Summarise 4130 for the on-call engineer."}
        ],
        "tools": [tool("tickets"), tool("customers"), tool("invoices"), tool("deployments"), tool("alerts")],
        "tool_choice": "auto",
        "response_format": {"type": "json_schema", "json_schema": {"name": "summary", "schema": {"type": "object",
            "properties": {"text": {"type": "string", "description": "the summary"}}}}},
        "metadata": {"team": "support", "session": "s-2291"},
        "user": "agent-7", "temperature": 0.2, "stream": true
    });
    let content_only = json!({
        "model": "chat",
        "messages": agent["messages"].as_array().map(|m| m.iter().map(|m| json!({"role": m["role"], "content": m["content"]})).collect::<Vec<_>>())
    });
    let screen = |body: &serde_json::Value| {
        median_ns(2_000, || {
            let mut b = body.clone();
            let _ = black_box(edge.screen(black_box(&mut b), &cfg, None));
        })
    };
    let screen_chat = screen(&body);
    let screen_agent = screen(&agent);
    let screen_agent_content = screen(&content_only);
    println!(
        "{{\"guard_screen_chat_ns\":{screen_chat:.0},\"guard_screen_agent_ns\":{screen_agent:.0},\"guard_screen_agent_content_only_ns\":{screen_agent_content:.0},\"agent_body_bytes\":{},\"agent_to_content_only\":{:.2}}}",
        agent.to_string().len(),
        screen_agent / screen_agent_content
    );
    println!(
        "{{\"body_bytes\":{},\"candidates\":{},\"validate_ns\":{validate:.0},\"key_authenticate_ns\":{authenticate:.0},\"key_admit_ns\":{admit:.0},\"policy_decide_ns\":{decision:.0},\"policy_decide_and_explain_ns\":{decision_and_header:.0},\"cache_key_ns\":{cache_key:.0}}}",
        body.to_string().len(),
        candidates.len()
    );
}
