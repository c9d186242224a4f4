//! `bulwark redteam` against the real binary in front of a mock model that repeats
//! everything it is sent (system prompt, links and all): with the guard on, what the
//! gateway must stop is reported stopped; with the guard off, the same probes are
//! reported as getting through, so the report tells the two apart.

mod common;

use std::collections::BTreeMap;

use bulwark_testkit::MockUpstream;
use common::{run, start_with, TempDir};
use serde_json::Value;

/// Runs the red team against a gateway with `guard` as its `[guard]` section; the
/// report's counts per category and outcome, and the report itself.
async fn red_team(tag: &str, guard: &str) -> (BTreeMap<String, BTreeMap<String, u64>>, Value) {
    let mock = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new(tag);
    let cfg = dir.write(
        "bulwark.toml",
        &format!(
            "[[upstreams]]\nname = \"mock\"\nbase_url = \"{}\"\nmodels = {{ \"echo\" = \"echo-all\" }}\n{guard}\n",
            mock.base_url()
        ),
    );
    let b = start_with(Some(&cfg), &[]).await;
    let out = dir.0.join("report");
    let (ok, stdout, stderr) = run(&[
        "redteam",
        "--target",
        &b.url(""),
        "--out",
        out.to_str().unwrap_or(""),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("probes got through"), "{stdout}");
    let report: Value = serde_json::from_slice(
        &std::fs::read(out.join("redteam.json")).unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let html = std::fs::read_to_string(out.join("redteam.html")).unwrap_or_default();
    assert!(html.starts_with("<!doctype html>") && html.contains("direct_injection"));
    assert!(
        !html.contains("<script") && !html.contains("http-equiv"),
        "not self-contained"
    );
    let summary: BTreeMap<String, BTreeMap<String, u64>> =
        serde_json::from_value(report["summary"].clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report["results"].as_array().map(Vec::len), Some(84));
    assert_eq!(report["model"], "echo", "the first model /v1/models lists");
    for (cat, counts) in &summary {
        assert!(
            !counts.contains_key("error"),
            "{cat}: {counts:?}\n{report:#}"
        );
    }
    (summary, report)
}

fn count(s: &BTreeMap<String, BTreeMap<String, u64>>, cat: &str, outcome: &str) -> u64 {
    s.get(cat)
        .and_then(|c| c.get(outcome))
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_red_team_tells_a_guarded_deployment_from_an_open_one() {
    // Guard on, with the canary: nothing asked of the echoing model gets out.
    let (on, report) = red_team("redteam-on", "[guard]\ncanary = true\n").await;
    for cat in [
        "exfiltration",
        "prompt_extraction",
        "secret_leak",
        "encoding",
    ] {
        assert_eq!(count(&on, cat, "through"), 0, "{cat}: {:?}", on.get(cat));
    }
    assert_eq!(
        count(&on, "benign_control", "false_alarm"),
        0,
        "{:?}",
        on.get("benign_control")
    );
    assert_eq!(count(&on, "benign_control", "answered"), 8);
    let stopped =
        count(&on, "direct_injection", "blocked") + count(&on, "direct_injection", "flagged");
    assert!(stopped >= 10, "{:?}", on.get("direct_injection"));
    assert!(
        report["through"].as_u64().unwrap_or(99) < 15,
        "{}",
        report["through"]
    );

    // Guard off: the same probes are reported as getting through.
    let (off, report) = red_team("redteam-off", "[guard]\nenabled = false\n").await;
    for (cat, n) in [
        ("direct_injection", 16),
        ("exfiltration", 6),
        ("prompt_extraction", 6),
        ("pii_leak", 6),
        ("secret_leak", 6),
        ("tool_result_injection", 6),
    ] {
        assert_eq!(count(&off, cat, "through"), n, "{cat}: {:?}", off.get(cat));
    }
    assert!(
        report["through"].as_u64().unwrap_or(0) >= 70,
        "{}",
        report["through"]
    );
}
