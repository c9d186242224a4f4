use super::*;

fn setup() -> (tempfile::TempDir, Authority, Verifier) {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::load_or_create(&dir.path().join(KEY_FILE)).unwrap();
    let verifier = Verifier::new(authority.public(), Revocations::in_dir(dir.path()));
    (dir, authority, verifier)
}

fn scope(hours: u64) -> Scope {
    Scope {
        key_id: "k-123".into(),
        agent: "planner".into(),
        models: vec!["smollm2".into(), "remote".into()],
        tools: vec!["notes__read".into(), "files__*".into()],
        max_class: DataClass::Internal,
        expires: SystemTime::now() + Duration::from_secs(hours * 3600),
        budget_tokens: None,
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

#[test]
fn a_passport_allows_what_it_names_and_nothing_else() {
    let (_dir, authority, verifier) = setup();
    let token = authority.issue(&scope(2)).unwrap();
    assert!(token.starts_with(PREFIX));
    let p = verifier.verify(&token).unwrap();
    assert_eq!(
        (p.key_id.as_str(), p.chain.clone()),
        ("k-123", vec!["planner".to_owned()])
    );
    assert!(p
        .authorize(&Request::Model("smollm2", DataClass::Internal), now())
        .is_ok());
    assert!(p.authorize(&Request::Tool("notes__read"), now()).is_ok());
    assert!(p.authorize(&Request::Tool("files__search"), now()).is_ok());
    for (req, why) in [
        (
            Request::Model("other", DataClass::Public),
            "does not allow the model `other`",
        ),
        (
            Request::Model("smollm2", DataClass::Confidential),
            "may not send `confidential` data",
        ),
        (
            Request::Tool("notes__write"),
            "does not allow the tool `notes__write`",
        ),
    ] {
        let e = p.authorize(&req, now()).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
    // Expired: the same passport two hours and a minute later.
    let later = now() + Duration::from_secs(2 * 3600 + 60);
    assert!(matches!(
        p.authorize(&Request::Tool("notes__read"), later),
        Err(PassportError::Expired)
    ));
}

#[test]
fn forged_revoked_and_malformed_passports_are_refused() {
    let (dir, authority, verifier) = setup();
    let token = authority.issue(&scope(1)).unwrap();
    // Another gateway's passport.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Authority::load_or_create(&other_dir.path().join(KEY_FILE)).unwrap();
    let foreign = other.issue(&scope(1)).unwrap();
    assert!(
        matches!(verifier.verify(&foreign), Err(PassportError::Forged)),
        "{:?}",
        verifier.verify(&foreign).err()
    );
    // A changed byte.
    let mut bytes = token.clone().into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert!(verifier.verify(&tampered).is_err());
    assert!(matches!(
        verifier.verify("sk-not-a-passport"),
        Err(PassportError::Malformed(_))
    ));
    assert!(matches!(
        verifier.verify("bwp_%%%"),
        Err(PassportError::Malformed(_))
    ));
    // Revoked: by its id, from the next use on; its children with it.
    let p = verifier.verify(&token).unwrap();
    let child = attenuate(
        &token,
        &Narrowing {
            agent: "sub".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(verifier.verify(&child).is_ok());
    Revocations::in_dir(dir.path()).revoke(&p.id).unwrap();
    assert!(matches!(
        verifier.verify(&token),
        Err(PassportError::Revoked)
    ));
    assert!(matches!(
        verifier.verify(&child),
        Err(PassportError::Revoked)
    ));
    // The key file is kept: a second start signs with the same key.
    let again = Authority::load_or_create(&dir.path().join(KEY_FILE)).unwrap();
    assert_eq!(again.public().to_bytes(), authority.public().to_bytes());
}

#[test]
fn a_derived_passport_narrows_and_can_never_widen() {
    let (_dir, authority, verifier) = setup();
    let root = authority.issue(&scope(2)).unwrap();
    let child = attenuate(
        &root,
        &Narrowing {
            agent: "researcher".into(),
            models: Some(vec!["smollm2".into()]),
            tools: Some(vec!["files__*".into()]),
            max_class: Some(DataClass::Public),
            expires: Some(now() + Duration::from_secs(3600)),
            budget_tokens: None,
        },
    )
    .unwrap();
    let grandchild = attenuate(
        &child,
        &Narrowing {
            agent: "reader".into(),
            tools: Some(vec!["files__read".into()]),
            ..Default::default()
        },
    )
    .unwrap();
    let p = verifier.verify(&grandchild).unwrap();
    assert_eq!(p.chain, ["planner", "researcher", "reader"]);
    assert!(p
        .authorize(&Request::Model("smollm2", DataClass::Public), now())
        .is_ok());
    assert!(p.authorize(&Request::Tool("files__read"), now()).is_ok());
    for req in [
        Request::Model("remote", DataClass::Public),
        Request::Model("smollm2", DataClass::Internal),
        Request::Tool("files__search"),
        Request::Tool("notes__read"),
    ] {
        assert!(p.authorize(&req, now()).is_err());
    }
    assert!(p
        .authorize(
            &Request::Tool("files__read"),
            now() + Duration::from_secs(3700)
        )
        .is_err());
    // Trying to widen: models, tools, class and expiry beyond the parent's.
    let wider = attenuate(
        &child,
        &Narrowing {
            agent: "greedy".into(),
            models: Some(vec!["remote".into(), "other".into()]),
            tools: Some(vec!["*".into()]),
            max_class: Some(DataClass::Secret),
            expires: Some(now() + Duration::from_secs(20 * 24 * 3600)),
            budget_tokens: None,
        },
    )
    .unwrap();
    let w = verifier.verify(&wider).unwrap();
    for req in [
        Request::Model("remote", DataClass::Public),
        Request::Model("other", DataClass::Public),
        Request::Model("smollm2", DataClass::Secret),
        Request::Tool("notes__read"),
    ] {
        assert!(w.authorize(&req, now()).is_err());
    }
    assert!(w
        .authorize(
            &Request::Tool("files__read"),
            now() + Duration::from_secs(3700)
        )
        .is_err());
    // Facts a holder adds do not count either: a block claiming a model.
    let forged_fact = {
        let parent = UnverifiedBiscuit::from_base64(parse(&child).unwrap()).unwrap();
        let block = BlockBuilder::new()
            .code("model(\"other\"); tool(\"notes__read\"); max_class(3);")
            .unwrap();
        format!(
            "{PREFIX}{}",
            parent.append(block).unwrap().to_base64().unwrap()
        )
    };
    let f = verifier.verify(&forged_fact).unwrap();
    assert!(f
        .authorize(&Request::Model("other", DataClass::Public), now())
        .is_err());
    assert!(f.authorize(&Request::Tool("notes__read"), now()).is_err());
}

#[test]
fn names_with_quotes_cannot_inject_datalog() {
    let (_dir, authority, verifier) = setup();
    let mut s = scope(1);
    s.agent = "x\"); model(\"other".into();
    s.models = vec!["a\"); tool(\"*".into()];
    let token = authority.issue(&s).unwrap();
    let p = verifier.verify(&token).unwrap();
    assert!(p
        .authorize(&Request::Model("other", DataClass::Public), now())
        .is_err());
    assert!(p
        .authorize(&Request::Model("a\"); tool(\"*", DataClass::Public), now())
        .is_ok());
}

#[test]
fn issuing_checks_its_arguments() {
    let (_dir, authority, _) = setup();
    let mut s = scope(1);
    s.expires = SystemTime::now() - Duration::from_secs(1);
    assert!(authority.issue(&s).is_err());
    s.expires = SystemTime::now() + MAX_LIFETIME + Duration::from_secs(3600);
    assert!(authority.issue(&s).is_err());
    let mut s = scope(1);
    s.agent = " ".into();
    assert!(authority.issue(&s).is_err());
}

#[test]
fn token_budgets_are_spent_by_a_passport_and_everything_derived_from_it() {
    let (dir, authority, _) = setup();
    let verifier = Verifier::new(authority.public(), Revocations::in_dir(dir.path()))
        .with_spending(Spending::in_dir(dir.path()));
    let model = Request::Model("smollm2", DataClass::Public);
    let root = authority
        .issue(&Scope {
            budget_tokens: Some(100),
            ..scope(1)
        })
        .unwrap();
    let child = attenuate(
        &root,
        &Narrowing {
            agent: "child".into(),
            budget_tokens: Some(30),
            ..Default::default()
        },
    )
    .unwrap();
    // A derived passport that claims more than its parent has gets no more.
    let greedy = attenuate(
        &root,
        &Narrowing {
            agent: "greedy".into(),
            budget_tokens: Some(1_000_000),
            ..Default::default()
        },
    )
    .unwrap();
    let (root, child, greedy) = (
        verifier.verify(&root).unwrap(),
        verifier.verify(&child).unwrap(),
        verifier.verify(&greedy).unwrap(),
    );
    child.spend(29);
    assert!(child.authorize(&model, now()).is_ok());
    child.spend(1);
    assert!(matches!(
        child.authorize(&model, now()),
        Err(PassportError::BudgetSpent)
    ));
    // The child's tokens were the root's too: 30 of 100.
    assert!(root.authorize(&model, now()).is_ok());
    greedy.spend(69);
    assert!(greedy.authorize(&model, now()).is_ok());
    greedy.spend(1);
    for p in [&root, &greedy] {
        assert!(matches!(
            p.authorize(&model, now()),
            Err(PassportError::BudgetSpent)
        ));
    }
    // A derived block that states its own spent counts fools no check but its own.
    let forged_counts = {
        let parent = UnverifiedBiscuit::from_base64(
            parse(
                &authority
                    .issue(&Scope {
                        budget_tokens: Some(100),
                        ..scope(1)
                    })
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let block = BlockBuilder::new()
            .code("agent(\"liar\"); used(0, 0); used(1, 0);")
            .unwrap();
        format!(
            "{PREFIX}{}",
            parent.append(block).unwrap().to_base64().unwrap()
        )
    };
    let liar = verifier.verify(&forged_counts).unwrap();
    liar.spend(100);
    assert!(matches!(
        liar.authorize(&model, now()),
        Err(PassportError::BudgetSpent)
    ));
    // Tools spend no tokens, but a spent passport is spent for them too.
    assert!(matches!(
        root.authorize(&Request::Tool("notes__read"), now()),
        Err(PassportError::BudgetSpent)
    ));
    // Kept across restarts.
    verifier.spending.flush().unwrap();
    let again = Verifier::new(authority.public(), Revocations::in_dir(dir.path()))
        .with_spending(Spending::in_dir(dir.path()));
    let root_again = again
        .verify(
            &authority
                .issue(&Scope {
                    budget_tokens: Some(100),
                    ..scope(1)
                })
                .unwrap(),
        )
        .unwrap();
    assert!(
        root_again.authorize(&model, now()).is_ok(),
        "a new passport starts at zero"
    );
    assert_eq!(
        again.spending.used(&root.revocation_ids),
        vec![100],
        "the old one's count was kept"
    );
    // A passport without a budget is not limited by spending.
    let free = verifier
        .verify(&authority.issue(&scope(1)).unwrap())
        .unwrap();
    free.spend(u64::MAX);
    assert!(free.authorize(&model, now()).is_ok());
    assert!(authority
        .issue(&Scope {
            budget_tokens: Some(0),
            ..scope(1)
        })
        .is_err());
}
