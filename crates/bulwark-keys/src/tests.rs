use super::*;

fn keys() -> Keys {
    Keys::new(Store::in_memory().unwrap(), false).unwrap()
}

#[test]
fn open_until_the_first_key_then_closed() {
    let keys = keys();
    assert!(matches!(keys.authenticate(None), Ok(None)));
    assert!(matches!(keys.authenticate(Some("unused")), Ok(None)));
    let (record, plaintext) = keys.create(&KeySpec::named("ci")).unwrap();
    assert_eq!(record.spec.tenant(), "ci");
    assert_eq!(keys.authenticate(None).err(), Some(AuthError::Missing));
    let key = keys.authenticate(Some(&plaintext)).unwrap().unwrap();
    assert_eq!(key.id(), record.id);
    // Same id, another secret.
    let forged = format!(
        "{}{}",
        &plaintext[..plaintext.len() - 1],
        if plaintext.ends_with('a') { 'b' } else { 'a' }
    );
    assert_eq!(
        keys.authenticate(Some(&forged)).err(),
        Some(AuthError::Invalid)
    );
    assert_eq!(
        keys.authenticate(Some("sk-not-ours")).err(),
        Some(AuthError::Invalid)
    );

    keys.revoke(&record.id).unwrap();
    assert_eq!(
        keys.authenticate(Some(&plaintext)).err(),
        Some(AuthError::Invalid)
    );
    // A revoked key still counts as "keys exist": the gate does not reopen.
    assert_eq!(keys.authenticate(None).err(), Some(AuthError::Missing));
    assert!(matches!(
        keys.revoke("000000000000"),
        Err(KeysError::NotFound(_))
    ));
}

#[test]
fn required_before_any_key() {
    let keys = Keys::new(Store::in_memory().unwrap(), true).unwrap();
    assert_eq!(keys.authenticate(None).err(), Some(AuthError::Missing));
}

#[test]
fn the_database_never_holds_the_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let keys = Keys::new(Store::open(&path).unwrap(), false).unwrap();
    let (_, plaintext) = keys.create(&KeySpec::named("a")).unwrap();
    drop(keys);
    let secret = plaintext.rsplit('_').next().unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
}

#[test]
fn another_process_revoking_is_seen_on_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let server = Keys::new(Store::open(&path).unwrap(), false).unwrap();
    let cli = Keys::new(Store::open(&path).unwrap(), false).unwrap();
    let (record, plaintext) = cli.create(&KeySpec::named("a")).unwrap();
    assert!(server.authenticate(Some(&plaintext)).unwrap().is_some());
    cli.revoke(&record.id).unwrap();
    assert_eq!(
        server.authenticate(Some(&plaintext)).err(),
        Some(AuthError::Invalid)
    );
}

#[test]
fn migrations_are_versioned_and_reopening_keeps_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/keys.db");
    let (_, plaintext) = Keys::new(Store::open(&path).unwrap(), false)
        .unwrap()
        .create(&KeySpec::named("a"))
        .unwrap();
    let keys = Keys::new(Store::open(&path).unwrap(), false).unwrap();
    assert!(keys.authenticate(Some(&plaintext)).unwrap().is_some());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, 4);
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(&path).err().unwrap().to_string();
    assert!(err.contains("newer than this Bulwark knows"), "{err}");
}

#[test]
fn a_version_1_database_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    // A database as the first release wrote it, with one key.
    let (_, plaintext) = Keys::new(Store::open(&path).unwrap(), false)
        .unwrap()
        .create(&KeySpec::named("old"))
        .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "ALTER TABLE keys DROP COLUMN guard; ALTER TABLE keys DROP COLUMN watermark;
         ALTER TABLE keys DROP COLUMN tools; PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(conn);
    let keys = Keys::new(Store::open(&path).unwrap(), false).unwrap();
    let key = keys.authenticate(Some(&plaintext)).unwrap().unwrap();
    assert_eq!(
        (
            key.record.spec.name.as_str(),
            key.record.spec.guard.as_deref(),
            key.record.spec.watermark,
            key.record.spec.tools.len()
        ),
        ("old", None, false, 0)
    );
    let spec = KeySpec {
        guard: Some("strict".into()),
        watermark: true,
        tools: vec!["files__*".into()],
        ..KeySpec::named("new")
    };
    let (record, _) = keys.create(&spec).unwrap();
    assert_eq!(record.spec.guard.as_deref(), Some("strict"));
    assert!(record.spec.watermark);
    assert_eq!(record.spec.tools, ["files__*"]);
}

#[test]
fn request_limit() {
    let keys = keys();
    let spec = KeySpec {
        rpm: Some(3),
        ..KeySpec::named("a")
    };
    let (_, plaintext) = keys.create(&spec).unwrap();
    let key = keys.authenticate(Some(&plaintext)).unwrap().unwrap();
    let t = 1_000_000;
    for _ in 0..3 {
        assert_eq!(keys.admit(&key, "m", t), Ok(()));
    }
    assert_eq!(
        keys.admit(&key, "m", t + 1_000),
        Err(Limited::Requests {
            retry_after_ms: 59_000
        })
    );
    assert_eq!(keys.admit(&key, "m", t + 60_000), Ok(()));
}

#[test]
fn token_limit_and_budget_and_usage_persist() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let keys = Keys::new(Store::open(&path).unwrap(), false).unwrap();
    let spec = KeySpec {
        tpm: Some(100),
        budget_tokens: Some(250),
        budget_period: Some(Period::Day),
        ..KeySpec::named("a")
    };
    let (record, plaintext) = keys.create(&spec).unwrap();
    let key = keys.authenticate(Some(&plaintext)).unwrap().unwrap();
    // Early today (UTC), so that "later" below is still today.
    let now = Day::of(now_ms()).start_ms() + 1_000;
    assert_eq!(keys.admit(&key, "m", now), Ok(()));
    keys.record_tokens(&key, "m", 70, 50, now);
    assert!(matches!(
        keys.admit(&key, "m", now + 1),
        Err(Limited::Tokens {
            retry_after_ms: 59_999
        })
    ));
    assert_eq!(keys.admit(&key, "m", now + 60_000), Ok(()));
    keys.record_tokens(&key, "m", 100, 40, now + 60_000);
    // 260 of 250 used today: refused until tomorrow (UTC).
    let later = now + 120_000;
    match keys.admit(&key, "m", later) {
        Err(Limited::Budget { retry_after_ms }) => {
            assert_eq!(
                later + retry_after_ms,
                Period::Day.next(Day::of(later)).start_ms()
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(key.budget(later), Some((260, 250)));
    keys.flush().unwrap();
    drop(keys);

    // A restart keeps the budget spent and the usage.
    let keys = Keys::new(Store::open(&path).unwrap(), false).unwrap();
    let key = keys.authenticate(Some(&plaintext)).unwrap().unwrap();
    assert!(matches!(
        keys.admit(&key, "m", later),
        Err(Limited::Budget { .. })
    ));
    let usage = keys.usage(&record.id).unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].model, "m");
    assert_eq!(
        usage[0].usage,
        Usage {
            requests: 2,
            prompt_tokens: 170,
            completion_tokens: 90
        }
    );
    // Tomorrow the budget starts again.
    let tomorrow = Period::Day.next(Day::of(later)).start_ms() + 1;
    assert_eq!(keys.admit(&key, "m", tomorrow), Ok(()));
}

#[test]
fn concurrent_admission_never_overshoots() {
    let keys = Arc::new(keys());
    let (_, plaintext) = keys
        .create(&KeySpec {
            rpm: Some(50),
            ..KeySpec::named("a")
        })
        .unwrap();
    let key = keys.authenticate(Some(&plaintext)).unwrap().unwrap();
    let now = now_ms();
    let admitted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (keys, key) = (&keys, &key);
                s.spawn(move || {
                    (0..100)
                        .filter(|_| keys.admit(key, "m", now).is_ok())
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(admitted, 50);
}

#[test]
fn spec_problems() {
    let cases: Vec<(KeySpec, &str)> = vec![
        (
            KeySpec::named(""),
            "name must be 1 to 200 printable characters, without invisible ones or spaces at either end",
        ),
        (
            KeySpec {
                tenant: Some("t1\u{200B}".into()),
                ..KeySpec::named("a")
            },
            "tenant must be 1 to 200 printable characters, without invisible ones or spaces at either end",
        ),
        (
            KeySpec {
                tenant: Some(" t1".into()),
                ..KeySpec::named("a")
            },
            "tenant must be 1 to 200 printable characters, without invisible ones or spaces at either end",
        ),
        (
            KeySpec {
                rpm: Some(0),
                ..KeySpec::named("a")
            },
            "rpm must be at least 1 (leave it out for no limit)",
        ),
        (
            KeySpec {
                budget_period: Some(Period::Day),
                ..KeySpec::named("a")
            },
            "budget_period needs budget_tokens",
        ),
        (
            KeySpec {
                max_class: Some(DataClass::Internal),
                default_class: Some(DataClass::Secret),
                ..KeySpec::named("a")
            },
            "default_class secret is above max_class internal",
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(spec.problem().as_deref(), Some(want));
    }
    assert_eq!(KeySpec::named("ok").problem(), None);
}
