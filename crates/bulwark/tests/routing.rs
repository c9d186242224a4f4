//! Sovereignty routing through the real binary, against mock upstreams on loopback that
//! stand in different jurisdictions. Every assertion about where data went is made from
//! what the mocks actually received.

mod common;

use std::collections::BTreeMap;

use bulwark_policy::{within, DataClass, Trust};
use bulwark_testkit::{Bulwark, MockUpstream};
use common::{send_chat, start_with, TempDir};
use expect_test::expect;
use proptest::prelude::*;

struct Fleet {
    eu: MockUpstream,
    us: MockUpstream,
    anon: MockUpstream,
}

impl Fleet {
    async fn start() -> Fleet {
        let start = || async {
            MockUpstream::start()
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        };
        Fleet {
            eu: start().await,
            us: start().await,
            anon: start().await,
        }
    }

    /// Upstream blocks: `eu` (FR, private), `us` (US, foreign), `anon` (undeclared),
    /// `down` (FR, private, nothing listening), and two routes over them.
    fn config(&self, policy: &str) -> String {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        format!(
            r#"
[server]
jurisdiction = "FR"
{policy}
[[upstreams]]
name = "eu"
base_url = "{eu}"
jurisdiction = "FR"
trust = "private"
operator = "acme-fr"
models = {{ "eu-model" = "eu-upstream" }}

[[upstreams]]
name = "us"
base_url = "{us}"
jurisdiction = "US"
trust = "foreign"
models = {{ "us-model" = "us-upstream" }}

[[upstreams]]
name = "anon"
base_url = "{anon}"
models = {{ "anon-model" = "anon-upstream" }}

[[upstreams]]
name = "down"
base_url = "http://127.0.0.1:{dead}/v1"
jurisdiction = "FR"
trust = "private"
connect_timeout_ms = 500
models = {{ "down-model" = "down-upstream" }}

[[routes]]
model = "chat"
candidates = ["us-model", "eu-model", "anon-model"]

[[routes]]
model = "resilient"
candidates = ["down-model", "eu-model"]
"#,
            eu = self.eu.base_url(),
            us = self.us.base_url(),
            anon = self.anon.base_url(),
        )
    }

    /// Every raw body the mocks received, as JSON text.
    fn raw(&self) -> String {
        [&self.eu, &self.us, &self.anon]
            .iter()
            .flat_map(|m| m.received())
            .map(|(_, _, body)| body.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `(upstream, marker)` for everything the mocks received, markers being the user text.
    fn received(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (name, mock) in [("eu", &self.eu), ("us", &self.us), ("anon", &self.anon)] {
            for (_, _, body) in mock.received() {
                let text = body["messages"][0]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                out.push((name, text));
            }
        }
        out
    }
}

async fn gateway(dir: &TempDir, config: &str) -> Bulwark {
    let path = dir.write("bulwark.toml", config);
    start_with(Some(&path), &[]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_go_where_their_class_may_go() {
    let fleet = Fleet::start().await;
    let dir = TempDir::new("routing");
    let b = gateway(&dir, &fleet.config("")).await;
    let mut out = String::new();
    for class in [
        None,
        Some("internal"),
        Some("confidential"),
        Some("secret"),
        Some("top-secret"),
    ] {
        let marker = format!("marker-{}", class.unwrap_or("none"));
        let (status, route, body) = send_chat(&b, "chat", class, &marker).await;
        let target = route.split("; ").next().unwrap_or("");
        out += &format!(
            "{:<12} {status} {target} {}\n",
            class.unwrap_or("(none)"),
            body["error"]["code"]
        );
    }
    expect![[r#"
        (none)       200 target=us-model null
        internal     200 target=eu-model null
        confidential 200 target=eu-model null
        secret       403 target=none "policy_denied"
        top-secret   400  "invalid_data_class"
    "#]]
    .assert_eq(&out);
    expect![[
        r#"[("eu", "marker-internal"), ("eu", "marker-confidential"), ("us", "marker-none")]"#
    ]]
    .assert_eq(&format!("{:?}", fleet.received()));

    // The refusal explains itself: the rule and every candidate considered.
    let (_, route, body) = send_chat(&b, "chat", Some("secret"), "again").await;
    expect![[r#"target=none; class=secret; us-model=denied (secret data may not reach foreign targets); eu-model=denied (secret data may not reach private targets); anon-model=denied (no declared trust/jurisdiction, so public data only, not secret)"#]]
        .assert_eq(&route);
    let msg = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("No target may receive this secret request for `chat`"),
        "{msg}"
    );
    assert_eq!(body["error"]["type"], "permission_error");
}

#[tokio::test(flavor = "multi_thread")]
async fn falls_back_to_the_next_allowed_candidate() {
    let fleet = Fleet::start().await;
    let dir = TempDir::new("fallback");
    let b = gateway(&dir, &fleet.config("")).await;
    let (status, route, body) = send_chat(&b, "resilient", Some("confidential"), "fallback").await;
    assert_eq!(status, 200, "{body}");
    assert!(route.starts_with("target=eu-model;"), "{route}");
    assert!(route.ends_with("fallback_from=down-model(502)"), "{route}");
    assert_eq!(fleet.received(), vec![("eu", "fallback".to_owned())]);
    // A direct request to the dead upstream alone still says what happened.
    let (status, route, body) = send_chat(&b, "down-model", Some("confidential"), "nowhere").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("upstream_unavailable"))
    );
    assert!(route.contains("failed=down-model(502)"), "{route}");
}

// ----------------------------------------------------------------------------------------
// Property: over generated policies, no class ever reaches an upstream its rule forbids.
// ----------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct GenRule {
    trust: Vec<Trust>,
    jurisdictions: Option<Vec<&'static str>>,
}

fn gen_rule() -> impl Strategy<Value = GenRule> {
    (
        proptest::sample::subsequence(vec![Trust::Host, Trust::Private, Trust::Foreign], 0..=3),
        proptest::option::of(proptest::sample::subsequence(
            vec!["FR", "DE", "EU", "US"],
            0..=2,
        )),
    )
        .prop_map(|(trust, jurisdictions)| GenRule {
            trust,
            jurisdictions,
        })
}

fn toml_rule(class: DataClass, r: &GenRule) -> String {
    let trust: Vec<String> = r
        .trust
        .iter()
        .map(|t| format!("\"{}\"", t.as_str()))
        .collect();
    let mut s = format!("[policy.rules.{class}]\ntrust = [{}]\n", trust.join(", "));
    if let Some(j) = &r.jurisdictions {
        let j: Vec<String> = j.iter().map(|x| format!("\"{x}\"")).collect();
        s += &format!("jurisdictions = [{}]\n", j.join(", "));
    }
    s
}

/// The specification, written out plainly: may `class` reach an upstream with this
/// trust and jurisdiction (`None` for the undeclared one)?
fn may_reach(
    rules: &BTreeMap<DataClass, GenRule>,
    class: DataClass,
    target: Option<(Trust, &str)>,
) -> bool {
    let default = |c: DataClass| match c {
        DataClass::Public => vec![Trust::Host, Trust::Private, Trust::Foreign],
        DataClass::Internal | DataClass::Confidential => vec![Trust::Host, Trust::Private],
        DataClass::Secret => vec![Trust::Host],
    };
    let (trust, jurisdictions) = match rules.get(&class) {
        Some(r) => (r.trust.clone(), r.jurisdictions.clone()),
        None => (default(class), None),
    };
    match target {
        None => {
            class == DataClass::Public && trust.contains(&Trust::Foreign) && jurisdictions.is_none()
        }
        Some((t, place)) => {
            trust.contains(&t)
                && jurisdictions.is_none_or(|list| list.iter().any(|a| within(place, a)))
        }
    }
}

/// `PROPTEST_CASES` when set, else `default`.
fn long_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Personal data and credentials a request may carry: (text, is a credential).
const SENSITIVE: [(&str, bool); 4] = [
    ("", false),
    ("mail jane.doe@example.com", false),
    ("pay to DE89 3704 0044 0532 0130 00", false),
    ("token ghp_0123456789abcdefghijABCDEFGHIJ012345", true),
];

proptest! {
    // 12 cases in the suite (each starts a gateway); `PROPTEST_CASES=1000` for the long
    // run (bench/proptest-long.sh).
    #![proptest_config(ProptestConfig { cases: long_cases(12), failure_persistence: None, ..ProptestConfig::default() })]

    /// Also: personal data and credentials, pseudonymised or sent as is (which raises the
    /// class), never reach an upstream the resulting class may not reach, and when
    /// pseudonymised or redacted never reach any upstream at all.
    #[test]
    fn no_class_reaches_a_forbidden_upstream(
        rules in proptest::collection::btree_map(
            prop_oneof![Just(DataClass::Public), Just(DataClass::Internal), Just(DataClass::Confidential), Just(DataClass::Secret)],
            gen_rule(),
            0..4,
        ),
        pii_mode in prop_oneof![Just("pseudonymise"), Just("flag")],
        secret_mode in prop_oneof![Just("pseudonymise"), Just("redact"), Just("flag")],
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let fleet = Fleet::start().await;
            let dir = TempDir::new("prop");
            let mut policy: String = rules.iter().map(|(c, r)| toml_rule(*c, r)).collect();
            policy += &format!("[guard]\npii = \"{pii_mode}\"\nsecrets = \"{secret_mode}\"\n");
            let b = gateway(&dir, &fleet.config(&policy)).await;
            let mut answered = Vec::new();
            let mut n = 0;
            for class in DataClass::ALL {
                for model in ["chat", "eu-model", "us-model", "anon-model"] {
                    let (payload, credential) = SENSITIVE[n % SENSITIVE.len()];
                    n += 1;
                    // The class the content calls for when it is sent as is.
                    let sent_as_is = !payload.is_empty()
                        && if credential { secret_mode == "flag" } else { pii_mode == "flag" };
                    let effective = match (sent_as_is, credential) {
                        (false, _) => class,
                        (true, false) => class.max(DataClass::Confidential),
                        (true, true) => DataClass::Secret,
                    };
                    let marker = format!("{effective}|{model}|{n}");
                    let text = format!("{marker} {payload}");
                    let (status, _, body) = send_chat(&b, model, Some(class.as_str()), &text).await;
                    assert!(status == 200 || status == 403, "{marker}: {status} {body}");
                    if status == 200 {
                        answered.push(marker);
                    }
                }
            }
            let raw = fleet.raw();
            for (secret, credential) in SENSITIVE.iter().skip(1) {
                let value = secret.split_once(' ').map_or("", |(_, v)| v);
                let mode = if *credential { secret_mode } else { pii_mode };
                if mode != "flag" {
                    assert!(!raw.contains(value), "{value} reached an upstream in {mode} mode");
                }
            }
            let received: Vec<(&str, String)> = fleet
                .received()
                .into_iter()
                .map(|(u, text)| (u, text.split(' ').next().unwrap_or("").to_owned()))
                .collect();
            for (upstream, marker) in &received {
                let class: DataClass = marker.split('|').next().unwrap_or("").parse().unwrap_or_else(|e| panic!("{e}"));
                let target = match *upstream {
                    "eu" => Some((Trust::Private, "FR")),
                    "us" => Some((Trust::Foreign, "US")),
                    _ => None,
                };
                assert!(may_reach(&rules, class, target), "{marker} reached {upstream} under {rules:?}");
            }
            // Every answered request was delivered exactly once, and no refused one at all.
            let mut delivered: Vec<String> = received.into_iter().map(|(_, m)| m).collect();
            delivered.sort();
            answered.sort();
            assert_eq!(delivered, answered);
        });
    }
}
