//! The audit log: one record per request, append-only, hash-chained, encrypted at rest
//! to an auditor's key that the gateway does not hold.
//!
//! A log is a directory of segment files `seg-NNNNNNNN.log`, JSON lines. A segment's
//! first line is its header: the segment's data key sealed to the auditor's public key
//! ([`crypto`]), the hash of the previous segment's last link, and its own hash. Every
//! other line is a record: a global sequence number, the previous link's hash, the
//! encrypted record (ChaCha20-Poly1305 under the segment's data key, bound to its
//! sequence number), and `hash = SHA-256(prev ‖ seq ‖ nonce ‖ ciphertext)`. So anyone
//! can check the chain ([`verify`]: an edited, deleted, reordered or inserted record
//! breaks it, and the first bad line is named) without being able to read a record; only
//! the private key reads them ([`export`]).
//!
//! The gateway writes through [`AuditLog`], a writer thread. Durability is explicit:
//! `Sync` acknowledges a record once it is fsynced; `Batch` acknowledges at once and
//! fsyncs every `batch` interval (a crash loses at most that window). On start the last
//! segment's torn final line, if a crash left one, is cut off; writing always continues in
//! a new segment (the gateway cannot reopen an old segment's data key, by design).
//! Limit: removing whole records from the end of the newest segment is not detectable
//! from the log alone; signed receipts anchor the head.

pub mod crypto;
pub mod export;
pub mod receipt;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crypto::{keygen, PublicKey, SecretKey, Wrapped};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit key: {0}")]
    Key(String),
    #[error("audit log is closed")]
    Closed,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What is recorded about one request. Never the prompt or the answer, unless the
/// gateway is configured to record content.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub time_ms: u64,
    /// The gateway's own id for the request (`x-request-id` in the answer): unique.
    pub request_id: String,
    /// The `x-request-id` the client sent, if any: kept beside the gateway's own, never
    /// in its place (a client could repeat one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    pub model: String,
    /// Where it went (`none` when refused), and that target's jurisdiction.
    pub target: String,
    pub jurisdiction: Option<String>,
    pub class: Option<String>,
    /// The routing decision, as in `x-bulwark-route`.
    pub decision: String,
    /// The guard's findings and actions, as in `x-bulwark-guard`.
    pub guard: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub latency_ms: u64,
    pub status: u16,
    pub cache: Option<String>,
    /// The watermark a local model put in the answer (`scheme; key=ID; ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// What this record is about; see [`Event`].
    #[serde(default)]
    pub event: Event,
    /// SHA-256 (hex) of the answer's bytes as the client received them: the whole body
    /// for `request`, every byte of the stream for `stream_end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_sha256: Option<String>,
    /// For `stream_end`: whether the stream ran to its end (false: the client left or
    /// the target failed part-way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    /// The error code of a refused request (`invalid_api_key`, `request_too_large`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `[audit] record_content`: the request body as the client sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<serde_json::Value>,
    /// With `[audit] record_content`: the answer as the client received it (UTF-8,
    /// lossy), cut at 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// For `tool_call`: which tool, and digests of what went in and came out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolCall>,
    /// The agent passport the request was made with (its id and chain of agents,
    /// issuer first); `key_id` is the key that issued it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passport: Option<PassportUse>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PassportUse {
    pub id: String,
    pub chain: Vec<String>,
}

/// One MCP tool call through the gateway (`model` holds the name the client used,
/// `target` the server).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ToolCall {
    pub server: String,
    /// The tool's name on its server.
    pub tool: String,
    /// SHA-256 (hex) of the arguments as sent (canonical JSON).
    pub arguments_sha256: String,
    /// SHA-256 (hex) of the result as the client received it; `None` when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_sha256: Option<String>,
    /// The result is an error result (the tool's own, or the gateway's refusal).
    pub is_error: bool,
}

/// Which moment of a request a record describes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A request and its whole answer (non-streamed), or its refusal.
    #[default]
    Request,
    /// A streamed answer, recorded before its first byte leaves (so, with `sync`
    /// durability, every stream a client saw start is in the log).
    StreamStart,
    /// The same stream when it ended: tokens, digest, duration, completed or cut.
    StreamEnd,
    /// An MCP tool call on `/mcp` (see [`ToolCall`]).
    ToolCall,
    /// An MCP resource read on `/mcp` ([`ToolCall`] names the server and the URI).
    ResourceRead,
    /// An MCP prompt fetched on `/mcp` ([`ToolCall`] names the server and the prompt).
    PromptGet,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Request => "request",
            Event::StreamStart => "stream_start",
            Event::StreamEnd => "stream_end",
            Event::ToolCall => "tool_call",
            Event::ResourceRead => "resource_read",
            Event::PromptGet => "prompt_get",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The response waits until the record is on disk.
    Sync,
    /// Group commit: fsync at most every interval.
    Batch(Duration),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub durability: Durability,
    pub segment_max_bytes: u64,
    pub segment_max_age: Duration,
}

#[derive(Serialize, Deserialize)]
struct Header {
    segment: u64,
    created_ms: u64,
    alg: String,
    prev: String,
    key: Wrapped,
    hash: String,
}

#[derive(Serialize, Deserialize)]
struct Line {
    seq: u64,
    prev: String,
    nonce: String,
    ct: String,
    hash: String,
}

fn header_hash(prev: &str, segment: u64, key: &Wrapped) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"header");
    h.update(segment.to_le_bytes());
    h.update(key.mlkem_ct.as_bytes());
    h.update(key.ephemeral.as_bytes());
    h.update(key.nonce.as_bytes());
    h.update(key.sealed.as_bytes());
    hex::encode(h.finalize())
}

fn link_hash(prev: &str, seq: u64, nonce: &str, ct: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(seq.to_le_bytes());
    h.update(nonce.as_bytes());
    h.update(ct.as_bytes());
    hex::encode(h.finalize())
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn segment_name(n: u64) -> String {
    format!("seg-{n:08}.log")
}

/// The segment files of a log, in order.
pub fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for entry in rd {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|r| r.strip_suffix(".log"))
            .and_then(|n| n.parse().ok())
        {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Where the chain breaks, if it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub line: usize,
    pub seq: Option<u64>,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} line {}", self.file, self.line)?;
        if let Some(s) = self.seq {
            write!(f, " (record {s})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// The result of checking a log's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub segments: usize,
    pub records: u64,
    pub last_hash: String,
    pub next_seq: u64,
    /// The first place the chain breaks; `None` if the whole log is intact.
    pub problem: Option<Problem>,
    /// Byte length of the last segment's intact prefix, when its tail is torn.
    pub torn_at: Option<(PathBuf, u64)>,
}

/// Walks the chain of every segment in `dir`. Needs no key. `visit` sees each intact
/// record's segment header key and line.
fn walk(
    dir: &Path,
    mut visit: impl FnMut(&Wrapped, u64, &[u8], &[u8]),
) -> Result<Verified, AuditError> {
    let segs = segments(dir)?;
    let mut prev = GENESIS.to_owned();
    let mut next_seq = 0u64;
    let mut records = 0u64;
    let count = segs.len();
    for (i, (n, path)) in segs.iter().enumerate() {
        let file = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let last_segment = i + 1 == count;
        let bytes = std::fs::read(path).map_err(io(path))?;
        let mut offset = 0usize;
        let mut key: Option<Wrapped> = None;
        let mut line_no = 0usize;
        let problem = |line: usize, seq: Option<u64>, reason: String| Problem {
            file: file.clone(),
            line,
            seq,
            reason,
        };
        // The chain breaks here: what was verified before this line, and why.
        macro_rules! broken {
            ($seq:expr, $reason:expr) => {
                return Ok(Verified {
                    segments: count,
                    records,
                    last_hash: prev,
                    next_seq,
                    problem: Some(problem(line_no, $seq, $reason.into())),
                    torn_at: None,
                })
            };
        }
        while offset < bytes.len() {
            line_no += 1;
            let Some(nl) = bytes[offset..].iter().position(|&b| b == b'\n') else {
                // A last line without its newline: torn by a crash (or truncated).
                let p = problem(line_no, None, "torn final record (incomplete line)".into());
                let torn = last_segment.then(|| (path.clone(), offset as u64));
                return Ok(Verified {
                    segments: count,
                    records,
                    last_hash: prev,
                    next_seq,
                    problem: Some(p),
                    torn_at: torn,
                });
            };
            let line = &bytes[offset..offset + nl];
            offset += nl + 1;
            if key.is_none() {
                let h: Header = match serde_json::from_slice(line) {
                    Ok(h) => h,
                    Err(e) => broken!(None, format!("bad segment header: {e}")),
                };
                if h.segment != *n {
                    broken!(
                        None,
                        format!("header says segment {}, file name says {n}", h.segment)
                    );
                }
                if h.prev != prev {
                    broken!(None, "segment does not continue the previous one (a segment or records before it are missing or altered)");
                }
                if header_hash(&h.prev, h.segment, &h.key) != h.hash {
                    broken!(None, "segment header altered");
                }
                prev = h.hash;
                key = Some(h.key);
                continue;
            }
            let l: Line = match serde_json::from_slice(line) {
                Ok(l) => l,
                Err(e) => broken!(None, format!("unreadable record: {e}")),
            };
            if l.seq != next_seq {
                broken!(
                    Some(l.seq),
                    format!("expected record {next_seq}, found {} (records deleted, inserted or reordered)", l.seq)
                );
            }
            if l.prev != prev {
                broken!(
                    Some(l.seq),
                    "does not link to the record before it (deleted, inserted or reordered)"
                );
            }
            if link_hash(&l.prev, l.seq, &l.nonce, &l.ct) != l.hash {
                broken!(Some(l.seq), "record altered (its hash does not match)");
            }
            if let (Some(k), Ok(nonce), Ok(ct)) = (&key, B64.decode(&l.nonce), B64.decode(&l.ct)) {
                visit(k, l.seq, &nonce, &ct);
            }
            prev = l.hash;
            next_seq += 1;
            records += 1;
        }
    }
    Ok(Verified {
        segments: count,
        records,
        last_hash: prev,
        next_seq,
        problem: None,
        torn_at: None,
    })
}

/// Checks the whole chain; needs no key.
pub fn verify(dir: &Path) -> Result<Verified, AuditError> {
    walk(dir, |_, _, _, _| {})
}

fn aad(seq: u64) -> [u8; 8] {
    seq.to_le_bytes()
}

/// Decrypts every intact record, in order, with the auditor's private keys (several
/// when the key was rotated: each segment is opened with whichever key it was sealed to).
pub fn export(dir: &Path, sks: &[SecretKey]) -> Result<(Vec<Record>, Verified), AuditError> {
    let mut keys: Vec<(Wrapped, [u8; 32])> = Vec::new();
    let mut out = Vec::new();
    let mut err = None;
    let v = walk(dir, |w, seq, nonce, ct| {
        if err.is_some() {
            return;
        }
        let key = match keys.iter().find(|(k, _)| k == w) {
            Some((_, k)) => *k,
            // After a key rotation, older segments are sealed to an older key.
            None => match sks.iter().find_map(|sk| crypto::unwrap(sk, w).ok()) {
                Some(k) => {
                    keys.push((w.clone(), k));
                    k
                }
                None => {
                    err = Some(AuditError::Key(format!(
                        "record {seq}: its segment's data key is sealed to none of the {} key(s) given; pass every auditor key the log was written to (--key old.key --key new.key)",
                        sks.len()
                    )));
                    return;
                }
            },
        };
        match crypto::open(&key, &aad(seq), nonce, ct).and_then(|p| {
            serde_json::from_slice::<Record>(&p)
                .map_err(|e| AuditError::Key(format!("record {seq}: {e}")))
        }) {
            Ok(r) => out.push(r),
            Err(e) => err = Some(e),
        }
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok((out, v)),
    }
}

enum Msg {
    Append(
        Vec<u8>,
        Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    ),
    Flush(mpsc::Sender<()>),
}

/// The writing end, held by the gateway.
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    durability: Durability,
}

struct Writer {
    opts: Options,
    pk: PublicKey,
    file: Option<(File, u64, Instant)>,
    segment: u64,
    key: [u8; 32],
    prev: String,
    seq: u64,
    dirty: bool,
    /// A failed write not yet cut back: nothing is written until it is.
    cut: Option<Saved>,
}

/// The writer's state before a write, to go back to when it fails.
struct Saved {
    seq: u64,
    prev: String,
    segment: u64,
    key: [u8; 32],
    /// The open segment's length, if one was open.
    size: Option<u64>,
}

impl Writer {
    fn start_segment(&mut self) -> Result<(), AuditError> {
        if let Some((f, _, _)) = &self.file {
            f.sync_data().map_err(io(&self.opts.dir))?;
        }
        self.segment += 1;
        self.key = crypto::random();
        let wrapped = crypto::wrap(&self.pk, &self.key)?;
        let hash = header_hash(&self.prev, self.segment, &wrapped);
        let header = Header {
            segment: self.segment,
            created_ms: now_ms(),
            alg: crypto::ALG.into(),
            prev: self.prev.clone(),
            key: wrapped,
            hash: hash.clone(),
        };
        let path = self.opts.dir.join(segment_name(self.segment));
        let mut f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut line = serde_json::to_vec(&header).map_err(|e| AuditError::Key(e.to_string()))?;
        line.push(b'\n');
        f.write_all(&line).map_err(io(&path))?;
        f.sync_data().map_err(io(&path))?;
        // The directory entry too, so the new file survives a crash.
        if let Ok(d) = File::open(&self.opts.dir) {
            let _ = d.sync_all();
        }
        self.prev = hash;
        self.file = Some((f, line.len() as u64, Instant::now()));
        Ok(())
    }

    /// Appends records with one write per segment touched and, with `sync`, fsyncs
    /// them. All or nothing: when anything fails (a full disk), whatever this call wrote
    /// is cut off again (segments it started are removed) and the sequence, the chain
    /// head and the segment are as they were, so the next append continues the chain
    /// without a gap and the log still verifies. If even the cut fails, the writer
    /// refuses to write until it succeeds.
    fn commit<'a>(
        &mut self,
        records: impl Iterator<Item = &'a [u8]>,
        sync: bool,
    ) -> Result<(), AuditError> {
        self.repair()?;
        let saved = Saved {
            seq: self.seq,
            prev: self.prev.clone(),
            segment: self.segment,
            key: self.key,
            size: self.file.as_ref().map(|f| f.1),
        };
        let mut res = self.append_all(records);
        if res.is_ok() && sync {
            res = self.sync();
        }
        if res.is_err() {
            self.cut = Some(saved);
            // Best effort now; `repair` runs again before the next write, whose caller
            // then hears of it.
            let _ = self.repair();
        }
        res
    }

    /// Puts the log back where it was before a failed write: removes segments started
    /// since, cuts the segment that was open to its old length, restores the state.
    fn repair(&mut self) -> Result<(), AuditError> {
        let Some(saved) = self.cut.take() else {
            return Ok(());
        };
        let result = (|| {
            for n in (saved.segment + 1)..=self.segment.max(saved.segment) {
                let path = self.opts.dir.join(segment_name(n));
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&path)(e)),
                }
            }
            self.file = None;
            if let Some(size) = saved.size {
                let path = self.opts.dir.join(segment_name(saved.segment));
                let f = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io(&path))?;
                f.set_len(size).map_err(io(&path))?;
                f.sync_all().map_err(io(&path))?;
                self.file = Some((f, size, Instant::now()));
            }
            if let Ok(d) = File::open(&self.opts.dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.seq = saved.seq;
                self.prev = saved.prev;
                self.segment = saved.segment;
                self.key = saved.key;
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                self.cut = Some(saved);
                Err(e)
            }
        }
    }

    /// Appends records with one write per segment touched.
    fn append_all<'a>(
        &mut self,
        records: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(), AuditError> {
        let mut buf = Vec::new();
        for plaintext in records {
            let rotate = match &self.file {
                None => true,
                Some((_, size, opened)) => {
                    *size + buf.len() as u64 >= self.opts.segment_max_bytes
                        || opened.elapsed() >= self.opts.segment_max_age
                }
            };
            if rotate {
                self.write_out(&mut buf)?;
                self.start_segment()?;
            }
            let (nonce, ct) = crypto::seal(&self.key, &aad(self.seq), plaintext)?;
            let (nonce, ct) = (B64.encode(nonce), B64.encode(ct));
            let hash = link_hash(&self.prev, self.seq, &nonce, &ct);
            let line = Line {
                seq: self.seq,
                prev: std::mem::take(&mut self.prev),
                nonce,
                ct,
                hash: hash.clone(),
            };
            serde_json::to_writer(&mut buf, &line).map_err(|e| AuditError::Key(e.to_string()))?;
            buf.push(b'\n');
            self.prev = hash;
            self.seq += 1;
        }
        self.write_out(&mut buf)
    }

    fn write_out(&mut self, buf: &mut Vec<u8>) -> Result<(), AuditError> {
        if buf.is_empty() {
            return Ok(());
        }
        let dir = self.opts.dir.clone();
        let (f, size, _) = self.file.as_mut().ok_or(AuditError::Closed)?;
        f.write_all(buf).map_err(io(&dir))?;
        *size += buf.len() as u64;
        buf.clear();
        self.dirty = true;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), AuditError> {
        if self.dirty {
            if let Some((f, _, _)) = &self.file {
                f.sync_data().map_err(io(&self.opts.dir))?;
            }
            self.dirty = false;
        }
        Ok(())
    }
}

impl AuditLog {
    /// Opens the log in `opts.dir` (creating it), cuts a torn final record a crash may
    /// have left, and starts the writer thread. Refuses a log whose chain is broken.
    pub fn open(opts: Options, pk: PublicKey) -> Result<AuditLog, AuditError> {
        std::fs::create_dir_all(&opts.dir).map_err(io(&opts.dir))?;
        let mut v = verify(&opts.dir)?;
        if let Some((path, len)) = v.torn_at.take() {
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(&path))?;
            f.set_len(len).map_err(io(&path))?;
            f.sync_all().map_err(io(&path))?;
            v = verify(&opts.dir)?;
        }
        if let Some(p) = &v.problem {
            return Err(AuditError::Key(format!("the audit log in {} is broken at {p}; keep it for investigation and start a new log directory", opts.dir.display())));
        }
        // Drop a header-only last segment left by a crash right after rotation? It is
        // harmless (it is part of the chain); writing continues in a new segment.
        let last_segment = segments(&opts.dir)?.last().map_or(0, |s| s.0);
        let durability = opts.durability;
        let mut w = Writer {
            opts,
            pk,
            file: None,
            segment: last_segment,
            key: [0; 32],
            prev: v.last_hash,
            seq: v.next_seq,
            dirty: false,
            cut: None,
        };
        let (tx, rx) = mpsc::channel::<Msg>();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let every = match durability {
                    Durability::Sync => Duration::ZERO,
                    Durability::Batch(d) => d,
                };
                let mut last_sync = Instant::now();
                loop {
                    let msg = if w.dirty && durability != Durability::Sync {
                        let wait = every.saturating_sub(last_sync.elapsed());
                        match rx.recv_timeout(wait) {
                            Ok(m) => Some(m),
                            Err(mpsc::RecvTimeoutError::Timeout) => None,
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    } else {
                        match rx.recv() {
                            Ok(m) => Some(m),
                            Err(_) => break,
                        }
                    };
                    // Take everything already queued: one write and (in sync mode) one
                    // fsync for the whole group, then acknowledge each record.
                    let mut group = Vec::new();
                    let mut flushes = Vec::new();
                    let mut next = msg;
                    while let Some(m) = next {
                        match m {
                            Msg::Append(bytes, ack) => group.push((bytes, ack)),
                            Msg::Flush(done) => flushes.push(done),
                        }
                        next = rx.try_recv().ok();
                        if group.len() >= 4096 {
                            break;
                        }
                    }
                    if !group.is_empty() {
                        let res = w
                            .commit(
                                group.iter().map(|(b, _)| b.as_slice()),
                                durability == Durability::Sync,
                            )
                            .map_err(|e| e.to_string());
                        for (_, ack) in group {
                            if let Some(ack) = ack {
                                let _ = ack.send(res.clone());
                            }
                        }
                    }
                    for done in flushes {
                        let _ = w.sync();
                        let _ = done.send(());
                    }
                    if durability != Durability::Sync && last_sync.elapsed() >= every {
                        let _ = w.sync();
                        last_sync = Instant::now();
                    }
                }
                let _ = w.sync();
            })
            .map_err(io(Path::new("audit-writer")))?;
        Ok(AuditLog { tx, durability })
    }

    /// Appends a record. With `Sync` durability the returned receiver resolves once it
    /// is on disk; with `Batch`, `None` (it will be within the batch interval).
    pub fn append(
        &self,
        record: &Record,
    ) -> Result<Option<tokio::sync::oneshot::Receiver<Result<(), String>>>, AuditError> {
        let bytes = serde_json::to_vec(record).map_err(|e| AuditError::Key(e.to_string()))?;
        let (ack, rx) = match self.durability {
            Durability::Sync => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                (Some(tx), Some(rx))
            }
            Durability::Batch(_) => (None, None),
        };
        self.tx
            .send(Msg::Append(bytes, ack))
            .map_err(|_| AuditError::Closed)?;
        Ok(rx)
    }

    /// Waits until everything appended so far is on disk.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }
}

/// Reads a key file.
pub fn read_key<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, AuditError> {
    let f = File::open(path).map_err(io(path))?;
    serde_json::from_reader(BufReader::new(f))
        .map_err(|e| AuditError::Key(format!("{}: {e}", path.display())))
}

/// Lines of a file, for tests and tools.
pub fn lines(path: &Path) -> Result<Vec<String>, AuditError> {
    let f = File::open(path).map_err(io(path))?;
    BufReader::new(f)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(io(path))
}

#[cfg(test)]
mod tests;
