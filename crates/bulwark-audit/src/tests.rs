use super::*;

fn opts(dir: &Path, durability: Durability) -> Options {
    Options {
        dir: dir.to_owned(),
        durability,
        segment_max_bytes: 4096,
        segment_max_age: Duration::from_secs(3600),
    }
}

fn record(i: u64) -> Record {
    Record {
        time_ms: 1_700_000_000_000 + i,
        request_id: format!("req-{i}"),
        model: "m".into(),
        target: "eu".into(),
        status: 200,
        ..Record::default()
    }
}

/// A log of `n` records over several segments, and the keys.
fn log(n: u64) -> (tempfile::TempDir, SecretKey) {
    let dir = tempfile::tempdir().unwrap();
    let (pk, sk) = keygen();
    let log = AuditLog::open(
        opts(dir.path(), Durability::Batch(Duration::from_millis(5))),
        pk,
    )
    .unwrap();
    for i in 0..n {
        log.append(&record(i)).unwrap();
    }
    log.flush();
    drop(log);
    (dir, sk)
}

fn problem(dir: &Path) -> String {
    verify(dir)
        .unwrap()
        .problem
        .map(|p| p.to_string())
        .unwrap_or_else(|| "intact".into())
}

/// Rewrites the file holding record `seq`, with `f` applied to its lines.
fn edit(dir: &Path, seg: usize, f: impl FnOnce(&mut Vec<String>)) {
    let path = &segments(dir).unwrap()[seg].1;
    let mut l = lines(path).unwrap();
    f(&mut l);
    std::fs::write(path, l.join("\n") + "\n").unwrap();
}

#[test]
fn round_trip_over_segments_and_only_the_private_key_reads() {
    let (dir, sk) = log(60);
    let v = verify(dir.path()).unwrap();
    assert_eq!((v.records, v.problem), (60, None));
    assert!(v.segments > 2, "{} segments", v.segments);
    let (records, _) = export(dir.path(), std::slice::from_ref(&sk)).unwrap();
    assert_eq!(records, (0..60).map(record).collect::<Vec<_>>());
    // Another key opens nothing; the files never hold the plaintext.
    let (_, other) = keygen();
    assert!(export(dir.path(), &[other]).is_err());
    for (_, p) in segments(dir.path()).unwrap() {
        let text = std::fs::read_to_string(p).unwrap();
        assert!(!text.contains("req-1"));
    }
}

#[test]
fn tampering_is_found_and_named() {
    // Flip one character of a record's ciphertext.
    let (dir, _) = log(20);
    edit(dir.path(), 0, |l| {
        let mut line: Line = serde_json::from_str(&l[2]).unwrap();
        let mut ct = line.ct.into_bytes();
        ct[5] = if ct[5] == b'A' { b'B' } else { b'A' };
        line.ct = String::from_utf8(ct).unwrap();
        l[2] = serde_json::to_string(&line).unwrap();
    });
    assert_eq!(
        problem(dir.path()),
        "seg-00000001.log line 3 (record 1): record altered (its hash does not match)"
    );

    // Delete a record.
    let (dir, _) = log(20);
    edit(dir.path(), 0, |l| {
        l.remove(3);
    });
    assert_eq!(problem(dir.path()), "seg-00000001.log line 4 (record 3): expected record 2, found 3 (records deleted, inserted or reordered)");

    // Swap two records.
    let (dir, _) = log(20);
    edit(dir.path(), 0, |l| l.swap(2, 3));
    assert_eq!(problem(dir.path()), "seg-00000001.log line 3 (record 2): expected record 1, found 2 (records deleted, inserted or reordered)");

    // Renumber a forged insertion: the link breaks.
    let (dir, _) = log(20);
    edit(dir.path(), 0, |l| {
        let mut forged: Line = serde_json::from_str(&l[2]).unwrap();
        forged.ct = B64.encode(b"forged");
        forged.hash = link_hash(&forged.prev, forged.seq, &forged.nonce, &forged.ct);
        l[2] = serde_json::to_string(&forged).unwrap();
    });
    assert_eq!(problem(dir.path()), "seg-00000001.log line 4 (record 2): does not link to the record before it (deleted, inserted or reordered)");

    // Delete a whole middle segment.
    let (dir, _) = log(60);
    std::fs::remove_file(&segments(dir.path()).unwrap()[1].1).unwrap();
    assert!(
        problem(dir.path())
            .starts_with("seg-00000003.log line 1: segment does not continue the previous one"),
        "{}",
        problem(dir.path())
    );

    // Truncate mid-segment, inside a line.
    let (dir, _) = log(20);
    let path = segments(dir.path()).unwrap()[0].1.clone();
    let len = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert!(
        problem(dir.path()).contains("torn final record"),
        "{}",
        problem(dir.path())
    );
}

#[test]
fn a_torn_last_record_is_cut_on_open_and_the_chain_goes_on() {
    let (dir, sk) = log(10);
    let path = segments(dir.path()).unwrap().last().unwrap().1.clone();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"{\"seq\":10,\"prev\":\"ab").unwrap();
    drop(f);
    assert!(problem(dir.path()).contains("torn final record"));
    // The gateway restarts (here with a new auditor key: each segment carries its own
    // sealed data key, so keys can also be rotated this way).
    let (pk, sk2) = keygen();
    let log2 = AuditLog::open(opts(dir.path(), Durability::Sync), pk).unwrap();
    let ack = log2.append(&record(10)).unwrap();
    assert!(ack.is_some());
    log2.flush();
    drop(log2);
    let v = verify(dir.path()).unwrap();
    assert_eq!((v.records, v.problem), (11, None));
    // The old segments open with the old key only, the new one with the new key: one
    // key alone reads nothing, both read everything, in order.
    let err = export(dir.path(), std::slice::from_ref(&sk))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sealed to none of the 1 key(s)"), "{err}");
    assert!(export(dir.path(), std::slice::from_ref(&sk2)).is_err());
    let (records, _) = export(dir.path(), &[sk2, sk]).unwrap();
    assert_eq!(records, (0..11).map(record).collect::<Vec<_>>());
}

/// Appends `record(i)` with `sync` durability and waits for the writer's answer.
fn append_sync(log: &AuditLog, i: u64) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    match log.append(&record(i)) {
        Ok(Some(ack)) => rt.block_on(ack).map(|r| r.is_ok()).unwrap_or(false),
        Ok(None) => true,
        Err(_) => false,
    }
}

#[test]
fn a_full_disk_loses_no_acknowledged_record_and_the_chain_goes_on() {
    let fs = bulwark_testkit::Tmpfs::new(256 * 1024);
    let dir = fs.path().join("audit");
    // Leave a little room, then fill it with records from four threads at once.
    let ballast = fs.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 200 * 1024]).unwrap();
    let (pk, sk) = keygen();
    let mut o = opts(&dir, Durability::Sync);
    o.segment_max_bytes = 16 * 1024;
    let log = std::sync::Arc::new(AuditLog::open(o.clone(), pk.clone()).unwrap());
    let acked = std::sync::Mutex::new(Vec::new());
    let failed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (log, acked, failed) = (&log, &acked, &failed);
            s.spawn(move || {
                for i in 0..200u64 {
                    let n = t * 1000 + i;
                    if append_sync(log, n) {
                        acked.lock().unwrap().push(n);
                    } else {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert!(failed.into_inner() > 0, "the disk never filled");
    assert_eq!(problem(&dir), "intact");
    // Space returns: writing resumes on the same chain.
    std::fs::remove_file(&ballast).unwrap();
    for n in 9000..9050 {
        assert!(append_sync(&log, n), "record {n} after space returned");
        acked.lock().unwrap().push(n);
    }
    drop(log);
    let mut want = acked.into_inner().unwrap();
    want.sort_unstable();
    let check = |want: &[u64]| {
        assert_eq!(problem(&dir), "intact");
        let (records, v) = export(&dir, std::slice::from_ref(&sk)).unwrap();
        let mut got: Vec<u64> = records
            .iter()
            .map(|r| r.request_id[4..].parse().unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, want, "exactly the acknowledged records, all readable");
        assert_eq!(v.records as usize, want.len());
    };
    check(&want);
    // And a restart works and goes on.
    let log = AuditLog::open(o, pk).unwrap();
    assert!(append_sync(&log, 9999));
    drop(log);
    want.push(9999);
    check(&want);
}

#[test]
fn a_torn_write_at_every_byte_offset_is_cut_and_the_chain_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (pk, sk) = keygen();
    let log = AuditLog::open(opts(dir.path(), Durability::Sync), pk.clone()).unwrap();
    for i in 0..3 {
        assert!(append_sync(&log, i));
    }
    drop(log);
    let path = segments(dir.path()).unwrap().last().unwrap().1.clone();
    let whole = std::fs::read(&path).unwrap();
    // The last record's line.
    let start = whole[..whole.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let (records, _) = export(dir.path(), std::slice::from_ref(&sk)).unwrap();
    assert_eq!(records.len(), 3);
    for cut in start..whole.len() {
        let copy = tempfile::tempdir().unwrap();
        for (_, p) in segments(dir.path()).unwrap() {
            std::fs::copy(&p, copy.path().join(p.file_name().unwrap())).unwrap();
        }
        let torn = copy.path().join(path.file_name().unwrap());
        std::fs::write(&torn, &whole[..cut]).unwrap();
        let log = AuditLog::open(opts(copy.path(), Durability::Sync), pk.clone())
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert!(append_sync(&log, 100), "cut at {cut}");
        drop(log);
        assert_eq!(problem(copy.path()), "intact", "cut at {cut}");
        let (got, _) = export(copy.path(), std::slice::from_ref(&sk)).unwrap();
        let ids: Vec<&str> = got.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, ["req-0", "req-1", "req-100"], "cut at {cut}");
    }
}
