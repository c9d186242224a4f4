use expect_test::{expect, Expect};
use proptest::prelude::*;

use super::*;

fn res(trust: Option<Trust>, jurisdiction: Option<&str>) -> Residency {
    Residency {
        jurisdiction: jurisdiction.map(str::to_owned),
        operator: None,
        trust,
    }
}

/// The fleet every table row is decided against, in preference order.
fn fleet() -> Vec<(&'static str, Residency)> {
    vec![
        ("local", Residency::host(Some("FR".into()))),
        ("vllm-fr", res(Some(Trust::Private), Some("FR"))),
        ("vllm-de", res(Some(Trust::Private), Some("DE"))),
        ("azure-eu", res(Some(Trust::Foreign), Some("EU"))),
        ("openai-us", res(Some(Trust::Foreign), Some("US"))),
        ("unknown", Residency::default()),
    ]
}

fn check(policy: &Policy, expect: Expect) {
    let fleet = fleet();
    let candidates: Vec<Candidate<'_>> = fleet
        .iter()
        .map(|(n, r)| Candidate {
            name: n,
            residency: r,
        })
        .collect();
    let out: String = DataClass::ALL
        .iter()
        .map(|&class| {
            decide(class, &candidates, policy)
                .explain()
                .replace("; ", "\n    ")
                + "\n"
        })
        .collect();
    expect.assert_eq(&out);
}

#[test]
fn default_policy() {
    check(
        &Policy::default(),
        expect![[r#"
            class=public
                local=allowed
                vllm-fr=allowed
                vllm-de=allowed
                azure-eu=allowed
                openai-us=allowed
                unknown=allowed
            class=internal
                local=allowed
                vllm-fr=allowed
                vllm-de=allowed
                azure-eu=denied (internal data may not reach foreign targets)
                openai-us=denied (internal data may not reach foreign targets)
                unknown=denied (no declared trust/jurisdiction, so public data only, not internal)
            class=confidential
                local=allowed
                vllm-fr=allowed
                vllm-de=allowed
                azure-eu=denied (confidential data may not reach foreign targets)
                openai-us=denied (confidential data may not reach foreign targets)
                unknown=denied (no declared trust/jurisdiction, so public data only, not confidential)
            class=secret
                local=allowed
                vllm-fr=denied (secret data may not reach private targets)
                vllm-de=denied (secret data may not reach private targets)
                azure-eu=denied (secret data may not reach foreign targets)
                openai-us=denied (secret data may not reach foreign targets)
                unknown=denied (no declared trust/jurisdiction, so public data only, not secret)
        "#]],
    );
}

#[test]
fn eu_residency_policy() {
    // Internal data may use foreign clouds inside the EU; confidential stays on French
    // private servers or the host; public data avoids undeclared targets entirely.
    let policy = Policy::with_rules([
        (
            DataClass::Public,
            Rule::trust(&[Trust::Host, Trust::Private, Trust::Foreign]).within(&["EU", "US"]),
        ),
        (
            DataClass::Internal,
            Rule::trust(&[Trust::Host, Trust::Private, Trust::Foreign]).within(&["EU"]),
        ),
        (
            DataClass::Confidential,
            Rule::trust(&[Trust::Host, Trust::Private]).within(&["FR"]),
        ),
    ]);
    check(
        &policy,
        expect![[r#"
            class=public
                local=allowed
                vllm-fr=allowed
                vllm-de=allowed
                azure-eu=allowed
                openai-us=allowed
                unknown=denied (public data is restricted to listed jurisdictions and this target declares none)
            class=internal
                local=allowed
                vllm-fr=allowed
                vllm-de=allowed
                azure-eu=allowed
                openai-us=denied (internal data may not leave for US)
                unknown=denied (no declared trust/jurisdiction, so public data only, not internal)
            class=confidential
                local=allowed
                vllm-fr=allowed
                vllm-de=denied (confidential data may not leave for DE)
                azure-eu=denied (confidential data may not reach foreign targets)
                openai-us=denied (confidential data may not reach foreign targets)
                unknown=denied (no declared trust/jurisdiction, so public data only, not confidential)
            class=secret
                local=allowed
                vllm-fr=denied (secret data may not reach private targets)
                vllm-de=denied (secret data may not reach private targets)
                azure-eu=denied (secret data may not reach foreign targets)
                openai-us=denied (secret data may not reach foreign targets)
                unknown=denied (no declared trust/jurisdiction, so public data only, not secret)
        "#]],
    );
}

#[test]
fn host_without_jurisdiction_fails_jurisdiction_rules() {
    let policy = Policy::with_rules([(
        DataClass::Confidential,
        Rule::trust(&[Trust::Host]).within(&["EU"]),
    )]);
    let host = Residency::host(None);
    assert_eq!(
        policy.check(DataClass::Confidential, &host),
        Verdict::Denied(Denial::Jurisdiction {
            class: DataClass::Confidential,
            jurisdiction: None
        })
    );
    assert_eq!(policy.check(DataClass::Secret, &host), Verdict::Allowed);
}

#[test]
fn regions() {
    assert!(within("FR", "EU"));
    assert!(within("fr", "eu"));
    assert!(within("NO", "EEA"));
    assert!(!within("NO", "EU"));
    assert!(within("EU", "EEA"));
    assert!(
        !within("EU", "FR"),
        "a target that only says EU is not known to be in France"
    );
    assert!(!within("US", "EU"));
}

#[test]
fn classes_parse() {
    assert_eq!(
        "Confidential".parse::<DataClass>(),
        Ok(DataClass::Confidential)
    );
    assert!("top-secret".parse::<DataClass>().is_err());
    assert!(DataClass::Public < DataClass::Internal && DataClass::Confidential < DataClass::Secret);
}

fn trust() -> impl Strategy<Value = Option<Trust>> {
    prop_oneof![
        Just(None),
        Just(Some(Trust::Host)),
        Just(Some(Trust::Private)),
        Just(Some(Trust::Foreign))
    ]
}

fn place() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("FR".to_owned())),
        Just(Some("DE".to_owned())),
        Just(Some("EU".to_owned())),
        Just(Some("US".to_owned())),
        Just(Some("NO".to_owned()))
    ]
}

fn class() -> impl Strategy<Value = DataClass> {
    prop_oneof![
        Just(DataClass::Public),
        Just(DataClass::Internal),
        Just(DataClass::Confidential),
        Just(DataClass::Secret)
    ]
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        proptest::collection::btree_set(
            prop_oneof![
                Just(Trust::Host),
                Just(Trust::Private),
                Just(Trust::Foreign)
            ],
            0..4,
        ),
        proptest::option::of(proptest::collection::btree_set(
            prop_oneof![
                Just("FR".to_owned()),
                Just("EU".to_owned()),
                Just("EEA".to_owned()),
                Just("US".to_owned())
            ],
            0..3,
        )),
    )
        .prop_map(|(trust, jurisdictions)| Rule {
            trust,
            jurisdictions,
        })
}

proptest! {
    /// Whatever the policy says, an undeclared target sees only public data, and an
    /// allowed target always satisfies its class's rule.
    #[test]
    fn allowed_targets_satisfy_their_rule(
        rules in proptest::collection::vec((class(), rule()), 0..4),
        c in class(),
        t in trust(),
        j in place(),
    ) {
        let policy = Policy::with_rules(rules);
        let target = Residency { jurisdiction: j.clone(), operator: None, trust: t };
        if policy.check(c, &target) == Verdict::Allowed {
            if !target.declared() {
                prop_assert_eq!(c, DataClass::Public);
            }
            let rule = policy.rule(c).cloned().unwrap_or_else(|| Rule::trust(&[]));
            prop_assert!(rule.trust.contains(&t.unwrap_or(Trust::Foreign)));
            if let Some(places) = &rule.jurisdictions {
                let j = j.unwrap_or_default();
                prop_assert!(places.iter().any(|p| within(&j, p)));
            }
        }
    }

    /// Raising the class never widens where a request may go under the default policy.
    #[test]
    fn default_policy_is_monotone(t in trust(), j in place()) {
        let policy = Policy::default();
        let target = Residency { jurisdiction: j, operator: None, trust: t };
        let allowed: Vec<bool> = DataClass::ALL.iter().map(|&c| policy.check(c, &target) == Verdict::Allowed).collect();
        for w in allowed.windows(2) {
            prop_assert!(w[0] || !w[1], "{:?}", allowed);
        }
    }
}
