//! The guard at the edge: every text of a request is scanned before anything is routed,
//! cached or sent; what it finds blocks the request, raises its data class, or is
//! redacted or pseudonymised in the body; pseudonymised values are put back in the
//! answer, streamed or not.
//!
//! Texts scanned: every string of the body, at any depth, known field or not, object
//! keys and long integers included ([`walk`]), so that nothing reaches an upstream
//! unread. Message content and the prompt are read by every detector, each alone and,
//! for instructions split across messages, all of them but the operator's joined; the
//! content is also read joined as the model reads it, for a value split across parts or
//! messages. The operator's own `system` and `developer` messages, tool definitions and
//! every other field are read by the rules alone (`Guard::scan_operator`), and all of it
//! for personal data and credentials, disguised or not. Nothing here sends anything
//! anywhere.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bulwark_api::{ApiError, ErrorKind};
use bulwark_config::{GuardAction, GuardConfig};
use bulwark_guard::encoder::Encoder;
use bulwark_guard::output::{CanaryWatch, LinkGate, SecretGate, Sensitive};
use bulwark_guard::pseudo::{Edit, How};
use bulwark_guard::{Category, Finding, Guard, Report, Restorer, Thresholds, Vault};
use bulwark_policy::DataClass;
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::{header, StatusCode};
use serde_json::Value;

use crate::sse::{self, Framer, Piece};

pub const GUARD_HEADER: &str = "x-bulwark-guard";

/// Largest answer body restored in one piece (a non-streamed answer).
const MAX_ANSWER: usize = 16 << 20;

pub struct EdgeGuard {
    /// Whether `[guard]` runs the second stage (`/v1/guard/scan` scans as it says).
    scan_with_encoder: bool,
    /// The scanner without the second stage, for configurations with `encoder = false`.
    first_stage: Guard,
    /// The scanner with the second stage, when it is loaded.
    both_stages: Option<Guard>,
    /// Keys the canaries: the same request gets the same canary (so caching still
    /// works), and nobody outside this process can predict it.
    canary_secret: [u8; 16],
}

/// What screening a request decided.
#[derive(Default)]
pub struct Screened {
    /// The class the request's content calls for (data sent as is).
    pub class: Option<DataClass>,
    /// The placeholders issued, when something was pseudonymised.
    pub vault: Option<Arc<Vault>>,
    /// The body was rewritten (redacted or pseudonymised).
    pub changed: bool,
    /// For `x-bulwark-guard`, when there is something to say.
    pub header: Option<String>,
    /// The canary placed in the system message, when there is one.
    pub canary: Option<String>,
    /// Credentials and personal data the request itself carried: an answer may repeat
    /// them to their sender; others in an answer are redacted or reported.
    pub known: Arc<HashSet<String>>,
}

/// A `system` or `developer` message: the operator's own instructions.
fn is_operator(message: &Value) -> bool {
    matches!(
        message.get("role").and_then(Value::as_str),
        Some("system" | "developer")
    )
}

/// How a string of a request body is read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// The operator's own instructions: `system`/`developer` content, tool and function
    /// definitions, the response format. Rules, smuggling, personal data, credentials.
    Operator,
    /// What the model is asked to read: user, assistant and tool message content, the
    /// prompt and suffix. Every detector, and all of them joined.
    Input,
    /// Every other string, any depth, any field, known or not (tool-call arguments,
    /// names, ids, metadata, stop sequences, URLs, object keys...): as `Operator`.
    Field,
}

/// One string of a request body, in the order [`walk`] meets them.
struct Leaf<'a> {
    role: Role,
    /// Message content or the prompt: joined with its neighbours to find a value split
    /// across parts or messages.
    content: bool,
    text: std::borrow::Cow<'a, str>,
}

/// A string that can carry nothing the guard looks for: one short word of letters
/// (`"user"`, `"function"`, `"string"`). Read anyway when it is content.
fn inert(s: &str) -> bool {
    s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_alphabetic() || matches!(b, b'_' | b'-' | b'.'))
}

/// A number written with enough digits to be an identifier (card, phone, tax number):
/// read as text, and rewritten as text when something is found in it.
fn long_integer(n: &serde_json::Number) -> Option<String> {
    let s = n.to_string();
    (s.bytes().filter(u8::is_ascii_digit).count() >= 9 && !s.contains(['.', 'e', 'E'])).then_some(s)
}

/// The role of the value under top-level field `key`.
fn top_role(key: &str) -> (Role, bool) {
    match key {
        "prompt" | "suffix" => (Role::Input, true),
        "tools" | "functions" | "response_format" | "tool_choice" | "function_call" => {
            (Role::Operator, false)
        }
        _ => (Role::Field, false),
    }
}

/// Every string of `body` (values, object keys, long integers) with its role, in a
/// fixed order that [`rewrite`] follows.
fn walk<'a>(body: &'a Value, out: &mut Vec<Leaf<'a>>) {
    /// An object key: a field of its own.
    fn key<'a>(k: &'a str, out: &mut Vec<Leaf<'a>>) {
        out.push(Leaf {
            role: Role::Field,
            content: false,
            text: k.into(),
        });
    }
    fn any<'a>(v: &'a Value, role: Role, content: bool, out: &mut Vec<Leaf<'a>>) {
        match v {
            Value::String(s) => out.push(Leaf {
                role,
                content,
                text: s.as_str().into(),
            }),
            Value::Number(n) => {
                if let Some(s) = long_integer(n) {
                    out.push(Leaf {
                        role,
                        content: false,
                        text: s.into(),
                    });
                }
            }
            Value::Array(items) => items.iter().for_each(|i| any(i, role, content, out)),
            Value::Object(map) => {
                for (k, v) in map {
                    key(k, out);
                    any(v, role, content, out);
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }
    /// A message: its content is `Input` (or `Operator`), its other fields `Field`
    /// (`Operator` for the operator's own); in content parts only `text` is content.
    fn message<'a>(m: &'a Value, out: &mut Vec<Leaf<'a>>) {
        let Value::Object(map) = m else {
            return any(m, Role::Field, false, out);
        };
        let (own, other) = if is_operator(m) {
            (Role::Operator, Role::Operator)
        } else {
            (Role::Input, Role::Field)
        };
        for (k, v) in map {
            key(k, out);
            match (k.as_str(), v) {
                ("content", Value::String(_)) => any(v, own, true, out),
                ("content", Value::Array(parts)) => {
                    for p in parts {
                        match p {
                            Value::Object(pm) => {
                                for (pk, pv) in pm {
                                    key(pk, out);
                                    if pk == "text" && pv.is_string() {
                                        any(pv, own, true, out);
                                    } else {
                                        any(pv, other, false, out);
                                    }
                                }
                            }
                            _ => any(p, own, true, out),
                        }
                    }
                }
                _ => any(v, other, false, out),
            }
        }
    }
    let Value::Object(map) = body else {
        return any(body, Role::Field, false, out);
    };
    for (k, v) in map {
        key(k, out);
        match (k.as_str(), v) {
            ("messages", Value::Array(msgs)) => msgs.iter().for_each(|m| message(m, out)),
            _ => {
                let (role, content) = top_role(k);
                any(v, role, content, out);
            }
        }
    }
}

/// Replaces the strings [`walk`] met, in the same order, where `new` has a text for
/// them; a long integer that is replaced becomes a string.
fn rewrite(body: &mut Value, new: &mut std::vec::IntoIter<Option<String>>) {
    fn any(v: &mut Value, new: &mut std::vec::IntoIter<Option<String>>) {
        match v {
            Value::String(s) => {
                if let Some(Some(t)) = new.next() {
                    *s = t;
                }
            }
            Value::Number(n) => {
                if long_integer(n).is_some() {
                    if let Some(Some(t)) = new.next() {
                        *v = Value::String(t);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| any(i, new)),
            Value::Object(map) => object(map, new),
            Value::Null | Value::Bool(_) => {}
        }
    }
    fn object(
        map: &mut serde_json::Map<String, Value>,
        new: &mut std::vec::IntoIter<Option<String>>,
    ) {
        let old = std::mem::take(map);
        for (k, mut v) in old {
            let k = new.next().flatten().unwrap_or(k);
            any(&mut v, new);
            map.insert(k, v);
        }
    }
    any(body, new)
}
/// Between two fields read together: no detector matches across a blank line.
const FIELD_SEPARATOR: &str = "\n\n";

/// Reads every non-content leaf that can carry something ([`inert`] ones cannot) in one
/// pass over them joined, and gives each leaf the findings that fall in it (spans
/// clipped to it). Injection and smuggling verdicts stay with the returned report,
/// whose findings are otherwise spread over the leaves.
fn read_fields(scanner: &Guard, leaves: &[Leaf<'_>], reports: &mut [Report]) -> Option<Report> {
    let mut joined = String::new();
    let mut spans = Vec::new();
    for (i, l) in leaves.iter().enumerate() {
        if l.content || inert(&l.text) {
            continue;
        }
        if !joined.is_empty() {
            joined.push_str(FIELD_SEPARATOR);
        }
        let start = joined.len();
        joined.push_str(&l.text);
        spans.push((i, start, joined.len()));
    }
    if spans.is_empty() {
        return None;
    }
    let mut report = scanner.scan_operator(&joined);
    for f in &report.findings {
        if !matches!(f.category, Category::Pii | Category::Secret) {
            continue;
        }
        for &(i, s, e) in &spans {
            if f.start < e && s < f.end {
                let mut g = f.clone();
                g.start = f.start.max(s) - s;
                g.end = f.end.min(e) - s;
                reports[i].findings.push(g);
            }
        }
    }
    report
        .findings
        .retain(|f| !matches!(f.category, Category::Pii | Category::Secret));
    Some(report)
}

/// A value found in content joined across parts or messages that no single part holds
/// whole.
struct Split {
    finding: Finding,
    value: String,
    parts: Vec<Part>,
}

/// The piece of a [`Split`] value in one leaf: its span there, and whether it is the
/// first (which carries the placeholder).
struct Part {
    leaf: usize,
    start: usize,
    end: usize,
    first: bool,
}

/// Personal data and credentials that appear only when the content leaves are read one
/// after the other, as the model reads them: `alice@exa` + `mple.com`, a PEM key cut in
/// two messages.
fn split_values(leaves: &[Leaf<'_>], reports: &[Report]) -> Vec<Split> {
    let content: Vec<(usize, &str)> = leaves
        .iter()
        .enumerate()
        .filter(|(_, l)| l.content)
        .map(|(i, l)| (i, l.text.as_ref()))
        .collect();
    if content.len() < 2 {
        return Vec::new();
    }
    let mut joined = String::new();
    let mut starts = Vec::with_capacity(content.len());
    for (_, t) in &content {
        starts.push(joined.len());
        joined.push_str(t);
    }
    let mut found = Vec::new();
    bulwark_guard::data::scan(&joined, &mut found);
    let which = |at: usize| starts.partition_point(|&s| s <= at).saturating_sub(1);
    bulwark_guard::resolve_overlaps(found)
        .into_iter()
        .filter(|f| f.end > f.start && which(f.start) != which(f.end - 1))
        // A value whole in the first text, followed by a word in the next
        // (`jane@example.com.` + `Forward`), is that value, not a longer one; a value the
        // first text holds only up to its very end (a PEM block cut in two) goes on.
        .filter(|f| {
            let k = which(f.start);
            let (leaf, start, len) = (content[k].0, f.start - starts[k], content[k].1.len());
            !reports[leaf]
                .findings
                .iter()
                .any(|g| g.kind == f.kind && g.start == start && g.end < len)
        })
        .filter_map(|f| {
            let value = joined.get(f.start..f.end)?.to_owned();
            let (first, last) = (which(f.start), which(f.end - 1));
            let parts = (first..=last)
                .map(|k| {
                    let base = starts[k];
                    let len = content[k].1.len();
                    Part {
                        leaf: content[k].0,
                        start: f.start.max(base) - base,
                        end: f.end.min(base + len) - base,
                        first: k == first,
                    }
                })
                .collect();
            Some(Split {
                finding: f,
                value,
                parts,
            })
        })
        .collect()
}

fn kinds<'a>(f: impl Iterator<Item = &'a Finding>) -> Vec<&'static str> {
    let mut k: Vec<&'static str> = f.map(|f| f.kind).collect();
    k.sort_unstable();
    k.dedup();
    k
}

/// The injection thresholds a configuration asks for: the model's, or its own block
/// threshold (flagging starts no later than blocking).
fn thresholds(cfg: &GuardConfig) -> Thresholds {
    let mut t = Thresholds::default();
    if let Some(b) = cfg.block_threshold {
        t.block = b;
        t.flag = t.flag.min(b);
    }
    t
}

fn action(cfg: &GuardConfig, c: Category) -> GuardAction {
    match c {
        Category::Pii => cfg.pii,
        Category::Secret => cfg.secrets,
        _ => cfg.injection,
    }
}

/// Runs `work` here, or, when it runs the second stage (`heavy`: milliseconds of CPU per
/// text), on a blocking thread so that the async workers stay free. `None` when that
/// thread failed (logged).
pub async fn off_workers<T: Send + 'static>(
    heavy: bool,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if !heavy {
        return Some(work());
    }
    match tokio::task::spawn_blocking(work).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(error = %e, "guard screening failed");
            None
        }
    }
}

impl EdgeGuard {
    /// A guard whose scanner uses the thresholds of `default` (`[guard]`), when on, and
    /// `encoder` for the configurations that ask for it.
    pub fn new(default: Option<&GuardConfig>, encoder: Option<Arc<Encoder>>) -> Self {
        let first_stage = Guard::new(default.map_or_else(Thresholds::default, thresholds));
        let both_stages = encoder.map(|e| first_stage.clone().with_encoder(Some(e)));
        EdgeGuard {
            scan_with_encoder: default.is_some_and(|d| d.encoder),
            first_stage,
            both_stages,
            canary_secret: *uuid::Uuid::new_v4().as_bytes(),
        }
    }

    /// The scanner a configuration needs: `None` when no guard is on (neither `[guard]`
    /// nor any profile); the encoder is loaded when one of them runs it.
    pub fn for_config(
        config: &bulwark_config::Config,
    ) -> Result<Option<Self>, bulwark_guard::encoder::EncoderError> {
        let on: Vec<&GuardConfig> = config
            .guard
            .iter()
            .chain(config.guard_profiles.values().flatten())
            .collect();
        if on.is_empty() {
            return Ok(None);
        }
        let encoder = if on.iter().any(|g| g.encoder) {
            let e = &config.guard_encoder;
            let started = std::time::Instant::now();
            let mut enc = Encoder::load(&e.dir)?;
            enc.max_tokens = e.max_tokens;
            tracing::info!(dir = %e.dir.display(), ms = started.elapsed().as_millis() as u64, "guard encoder loaded");
            Some(Arc::new(enc))
        } else {
            None
        };
        Ok(Some(EdgeGuard::new(config.guard.as_ref(), encoder)))
    }

    /// Whether screening under `cfg` runs the second stage (and so takes milliseconds
    /// of CPU: callers move it off the async workers).
    pub fn runs_encoder(&self, cfg: &GuardConfig) -> bool {
        cfg.encoder && self.both_stages.is_some()
    }

    fn scanner(&self, cfg: &GuardConfig) -> &Guard {
        self.stages(cfg.encoder)
    }

    /// The scanner of `/v1/guard/scan`: the thresholds of `[guard]`, and its second stage
    /// when `[guard]` runs one.
    pub fn for_scan(&self) -> &Guard {
        self.stages(self.scan_with_encoder)
    }

    fn stages(&self, encoder: bool) -> &Guard {
        match &self.both_stages {
            Some(g) if encoder => g,
            _ => &self.first_stage,
        }
    }

    /// Puts a canary at the start of the first system (or developer) message, if any.
    fn place_canary(&self, body: &mut Value) -> Option<String> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.canary_secret);
        h.update(body.to_string().as_bytes());
        let token: String = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let token = format!("bwc-{token}");
        let msgs = body.get_mut("messages")?.as_array_mut()?;
        let system = msgs.iter_mut().find(|m| is_operator(m))?;
        match system.get_mut("content")? {
            Value::String(s) => {
                // First, so that a model repeating its instructions emits the canary
                // before anything else of them, and a stream can be stopped in time.
                *s = format!("<!-- {token} -->\n{s}");
                Some(token)
            }
            _ => None,
        }
    }

    /// Scans and, as `cfg` says, rewrites `body`. An error is the 400 to answer with.
    /// `seed`: placeholders the caller was shown before (its MCP tool results), which
    /// keep standing for their values here and in the answer.
    pub fn screen(
        &self,
        body: &mut Value,
        cfg: &GuardConfig,
        seed: Option<Vault>,
    ) -> Result<Screened, ApiError> {
        let mut screened = self.screen_texts(body, cfg, seed)?;
        if cfg.canary {
            if let Some(token) = self.place_canary(body) {
                screened.canary = Some(token);
                screened.changed = true;
            }
        }
        Ok(screened)
    }

    fn screen_texts(
        &self,
        body: &mut Value,
        cfg: &GuardConfig,
        seed: Option<Vault>,
    ) -> Result<Screened, ApiError> {
        let mut leaves = Vec::new();
        walk(body, &mut leaves);
        let scanner = self.scanner(cfg);
        // The operator's own instructions ("You are the support bot of ACME...") read to
        // the learned models like the role-play attacks they were trained on: only the
        // rules (and smuggling, PII and credential scans) read them, and every other
        // field of the body.
        let empty = || Report {
            injection_score: 0.0,
            verdict: bulwark_guard::Verdict::Allow,
            findings: Vec::new(),
        };
        let mut reports: Vec<Report> = leaves
            .iter()
            .map(|l| match (l.content, l.role) {
                (false, _) => empty(),
                (true, Role::Input) => scanner.scan(&l.text),
                (true, _) => scanner.scan_operator(&l.text),
            })
            .collect();
        // Every other field (tool definitions, arguments, ids, metadata, keys...) in one
        // reading, joined: each is read as the operator's text is, and one reading of
        // many short strings costs a fraction of reading each alone.
        let fields = read_fields(scanner, &leaves, &mut reports);
        // A value split across content parts or messages: the content joined as the
        // model reads it, and what crosses a boundary.
        let pieces = split_values(&leaves, &reports);
        let mut known: HashSet<String> = leaves
            .iter()
            .zip(&reports)
            .flat_map(|(l, r)| {
                r.findings
                    .iter()
                    .filter(|f| matches!(f.category, Category::Secret | Category::Pii))
                    .filter_map(|f| l.text.get(f.start..f.end).map(str::to_owned))
            })
            .collect();
        known.extend(pieces.iter().map(|p| p.value.clone()));
        let mut injection = reports
            .iter()
            .chain(&fields)
            .map(|r| r.injection_score)
            .fold(0f32, f32::max);
        let mut why: Vec<String> = reports
            .iter()
            .chain(&fields)
            .flat_map(|r| r.of(Category::Injection).chain(r.of(Category::Smuggling)))
            .map(|f| f.reason.clone())
            .collect();
        // Every message but the operator's, joined: an instruction split across them is
        // still one instruction.
        let others: Vec<&str> = leaves
            .iter()
            .filter(|l| l.role == Role::Input && l.content)
            .map(|l| l.text.as_ref())
            .collect();
        if others.len() > 1 {
            let joined = others.join("\n");
            let r = scanner.scan_first_stage(&joined);
            if r.injection_score > injection {
                injection = r.injection_score;
                why.extend(
                    r.of(Category::Injection)
                        .map(|f| format!("{} (across messages)", f.reason)),
                );
            }
        }
        let all = || {
            reports
                .iter()
                .chain(&fields)
                .flat_map(|r| r.findings.iter())
                .chain(pieces.iter().map(|p| &p.finding))
        };
        let smuggled = kinds(all().filter(|f| f.category == Category::Smuggling));
        let mut notes = Vec::new();
        let thresholds = thresholds(cfg);
        if injection >= thresholds.flag || !smuggled.is_empty() {
            let blocking = injection >= thresholds.block;
            if blocking && cfg.injection == GuardAction::Block {
                why.dedup();
                return Err(ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!(
                        "The request was blocked by the guard: it looks like a prompt injection or jailbreak (score {injection:.2}): {}.",
                        why.first().map_or("", String::as_str)
                    ),
                )
                .with_code(bulwark_api::ErrorCode::PromptInjectionDetected));
            }
            if cfg.injection != GuardAction::Allow {
                notes.push(format!("injection={injection:.2}"));
                if !smuggled.is_empty() {
                    notes.push(format!("smuggling={}", smuggled.join(",")));
                }
            }
        }

        let mut screened = Screened {
            known: Arc::new(known),
            ..Screened::default()
        };
        for (cat, class, code) in [
            (
                Category::Pii,
                cfg.pii_class,
                bulwark_api::ErrorCode::PiiDetected,
            ),
            (
                Category::Secret,
                cfg.secret_class,
                bulwark_api::ErrorCode::SecretDetected,
            ),
        ] {
            let found = kinds(all().filter(|f| f.category == cat));
            if found.is_empty() {
                continue;
            }
            let action = action(cfg, cat);
            match action {
                GuardAction::Block => {
                    return Err(ApiError::new(
                        ErrorKind::InvalidRequest,
                        format!(
                            "The request was blocked by the guard: it contains {} ({}); remove it or ask for this key's guard settings to change.",
                            if cat == Category::Pii { "personal data" } else { "credentials" },
                            found.join(", ")
                        ),
                    )
                    .with_code(code));
                }
                GuardAction::Flag | GuardAction::Allow => {
                    screened.class = Some(screened.class.map_or(class, |c| c.max(class)));
                }
                GuardAction::Redact | GuardAction::Pseudonymise => screened.changed = true,
            }
            if action != GuardAction::Allow {
                notes.push(format!(
                    "{}={}:{}",
                    cat.as_str(),
                    action.as_str(),
                    found.join(",")
                ));
            }
        }
        if screened.changed {
            let mut vault = Vault::default();
            if let Some(seed) = &seed {
                vault.adopt(seed);
            }
            let rewrites = |f: &Finding| {
                matches!(f.category, Category::Pii | Category::Secret)
                    && matches!(
                        action(cfg, f.category),
                        GuardAction::Redact | GuardAction::Pseudonymise
                    )
            };
            let how = |f: &Finding| {
                if action(cfg, f.category) == GuardAction::Redact {
                    How::Redact
                } else {
                    How::Placeholder
                }
            };
            let mut new = Vec::with_capacity(leaves.len());
            for (i, (leaf, report)) in leaves.iter().zip(&reports).enumerate() {
                let mut edits: Vec<Edit<'_>> = pieces
                    .iter()
                    .filter(|p| rewrites(&p.finding))
                    .flat_map(|p| p.parts.iter().map(move |part| (p, part)))
                    .filter(|(_, part)| part.leaf == i)
                    .map(|(p, part)| Edit {
                        start: part.start,
                        end: part.end,
                        kind: p.finding.kind,
                        value: Some(&p.value),
                        how: if part.first {
                            how(&p.finding)
                        } else {
                            How::Drop
                        },
                    })
                    .collect();
                let split = edits.clone();
                edits.extend(
                    report
                        .findings
                        .iter()
                        .filter(|f| rewrites(f))
                        .filter(|f| !split.iter().any(|e| e.start < f.end && f.start < e.end))
                        .map(|f| Edit {
                            start: f.start,
                            end: f.end,
                            kind: f.kind,
                            value: None,
                            how: how(f),
                        }),
                );
                new.push((!edits.is_empty()).then(|| vault.edit(&leaf.text, &edits)));
            }
            drop(leaves);
            rewrite(body, &mut new.into_iter());
            if !vault.is_empty() {
                screened.vault = Some(Arc::new(vault));
            }
        } else if let Some(seed) = seed {
            // Nothing to rewrite here, but the answer may name what the seed holds.
            let mut vault = Vault::default();
            vault.adopt(&seed);
            if !vault.is_empty() {
                screened.vault = Some(Arc::new(vault));
            }
        }
        if !notes.is_empty() {
            screened.header = Some(notes.join("; "));
        }
        Ok(screened)
    }
}

/// The guard's pass over an answer on its way out: pseudonymised originals put back,
/// exfiltration links defused (`output`: redact, flag or allow), and a leaked canary
/// caught. A stream is filtered event by event as it passes; a non-streamed answer is
/// read once and all of it done in that one pass.
pub async fn finish(
    resp: Response,
    vault: Option<Arc<Vault>>,
    output: GuardAction,
    canary: Option<String>,
    known: Arc<HashSet<String>>,
) -> Response {
    if resp.status() != StatusCode::OK {
        return resp;
    }
    if !sse::is_event_stream(resp.headers()) {
        return screen_answer(resp, vault, output, canary.as_deref(), &known).await;
    }
    let gate = match output {
        GuardAction::Allow => None,
        a => Some(a != GuardAction::Flag),
    };
    if vault.is_none() && gate.is_none() && canary.is_none() {
        return resp;
    }
    let values = sensitive(vault.as_deref(), output, &known);
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(
        parts,
        Body::from_stream(filter_stream(body, vault, gate, canary, known, values)),
    )
}

/// What an answer's URLs must not carry: the values restored from placeholders, and
/// (unless the output guard is off) the personal data and credentials the request
/// carried.
fn sensitive(vault: Option<&Vault>, output: GuardAction, known: &HashSet<String>) -> Sensitive {
    let known: Vec<&str> = if output == GuardAction::Allow {
        Vec::new()
    } else {
        known.iter().map(String::as_str).collect()
    };
    Sensitive::new(vault.into_iter().flat_map(Vault::originals), known)
}

/// The placeholders a vault issued, as values no URL may carry.
fn placeholders(vault: &Vault) -> Sensitive {
    Sensitive::new(vault.placeholders(), std::iter::empty())
}

/// Most text of a stream kept to find personal data that spans two events.
const PII_TAIL: usize = 256;

/// Personal data an answer added (that its request did not carry), counted as the
/// answer passes, with only a short tail kept: memory stays bounded however long the
/// stream.
#[derive(Default)]
struct PiiTally {
    tail: String,
    kinds: Vec<&'static str>,
}

impl PiiTally {
    fn push(&mut self, text: &str, known: &HashSet<String>) {
        if text.is_empty() {
            return;
        }
        self.tail.push_str(text);
        for k in pii_added(std::iter::once(self.tail.as_str()), known) {
            if !self.kinds.contains(&k) {
                self.kinds.push(k);
            }
        }
        let mut cut = self.tail.len().saturating_sub(PII_TAIL);
        while !self.tail.is_char_boundary(cut) {
            cut += 1;
        }
        self.tail.drain(..cut);
    }
}

/// What each choice of a stream carries through the filter.
#[derive(Default)]
struct ChoiceFilter {
    /// Defuses URLs that hold a placeholder before it is restored: the gateway never
    /// writes a value it hid from the upstream into a URL the upstream wrote.
    hidden: Option<LinkGate>,
    restorer: Option<Restorer>,
    gate: Option<LinkGate>,
    secrets: Option<SecretGate>,
    canary: Option<CanaryWatch>,
    /// Personal data the answer added, when it is screened for it (named at the end
    /// of the stream).
    added: Option<PiiTally>,
    /// Each tool call's arguments, by its index: placeholders restored (JSON-escaped)
    /// after URLs that hold one are defused, when something was pseudonymised.
    tools: std::collections::BTreeMap<u64, (LinkGate, Restorer)>,
    /// Its finishing event has passed: nothing is held back any more.
    done: bool,
    /// `/delta/content` (chat) or `/text` (completions): where its text goes.
    slot: &'static str,
}

/// A tool call's arguments through the placeholder gate and the restorer.
fn pass_arguments(filter: &mut (LinkGate, Restorer), text: &str, last: bool) -> String {
    let (gate, restorer) = filter;
    let mut out = gate.push(text);
    if last {
        out.push_str(&gate.finish());
    }
    let mut restored = restorer.push(&out);
    if last {
        restored.push_str(&restorer.finish());
    }
    restored
}

impl ChoiceFilter {
    fn pass(&mut self, text: &str, last: bool, known: &HashSet<String>) -> String {
        let hidden;
        let text = match &mut self.hidden {
            Some(g) => {
                let mut out = g.push(text);
                if last {
                    out.push_str(&g.finish());
                }
                if !g.found.is_empty() {
                    tracing::warn!(
                        "a streamed answer wrote pseudonymised values into URLs; defused"
                    );
                    g.found.clear();
                }
                hidden = out;
                hidden.as_str()
            }
            None => text,
        };
        let mut t = match &mut self.restorer {
            Some(r) => {
                let mut t = r.push(text);
                if last {
                    t.push_str(&r.finish());
                }
                t
            }
            None => text.to_owned(),
        };
        if let Some(g) = &mut self.gate {
            let mut out = g.push(&t);
            if last {
                out.push_str(&g.finish());
                if !g.found.is_empty() {
                    tracing::warn!(findings = ?g.found, redacted = g.redact, "exfiltration-shaped URLs in a streamed answer");
                }
            }
            t = out;
        }
        if let Some(g) = &mut self.secrets {
            let mut out = g.push(&t);
            if last {
                out.push_str(&g.finish());
                if !g.found.is_empty() {
                    tracing::warn!(findings = ?g.found, redacted = g.redact, "credentials the request did not carry in a streamed answer");
                }
            }
            t = out;
        }
        if let Some(w) = &mut self.canary {
            let mut out = w.push(&t);
            if last {
                out.push_str(&w.finish());
            }
            t = out;
        }
        if let Some(a) = &mut self.added {
            a.push(&t, known);
        }
        t
    }

    fn leaked(&self) -> bool {
        self.canary.as_ref().is_some_and(|w| w.leaked)
    }
}

/// The event that ends a stream whose answer was leaking the system prompt.
fn leak_event() -> Bytes {
    let mut out = sse::event(&serde_json::json!({"error": {
        "message": "The answer was stopped: it was repeating this request's system prompt (its canary appeared).",
        "type": "invalid_request_error", "param": null, "code": "system_prompt_leak"}}))
    .to_vec();
    out.extend_from_slice(sse::DONE);
    Bytes::from(out)
}

/// Whether an SSE event is the stream's `data: [DONE]`.
fn is_done(event: &[u8]) -> bool {
    std::str::from_utf8(event).is_ok_and(|t| {
        t.lines().any(|l| {
            l.strip_prefix("data:")
                .is_some_and(|d| d.trim() == "[DONE]")
        })
    })
}

/// For a stream that ends (`[DONE]`, or its last byte) with choices that never sent a
/// `finish_reason`: one event per such choice with whatever its filters still hold
/// back (the word being written, a partial placeholder, tool-call arguments), through
/// the same filters, so no text is lost and none skips them. `last` is the most recent
/// event's JSON, whose `id`, `object`, `created` and `model` the new events repeat.
fn flush_unfinished(st: &mut StreamState, last: &Value) -> Vec<u8> {
    let mut open: Vec<(u64, &'static str)> = st
        .choices
        .iter()
        .filter(|(_, c)| !c.done)
        .map(|(i, c)| (*i, c.slot))
        .collect();
    open.sort_unstable();
    let mut out = Vec::new();
    for (index, slot) in open {
        let mut ev = last.clone();
        let choice = if slot == "/text" {
            serde_json::json!({"index": index, "text": "", "finish_reason": null})
        } else {
            serde_json::json!({"index": index, "delta": {}, "finish_reason": null})
        };
        if let Some(o) = ev.as_object_mut() {
            o.insert("choices".into(), Value::Array(vec![choice]));
            o.remove("usage");
        }
        let event = sse::event(&ev);
        let filtered = filter_event(st, event.clone(), true);
        // Nothing was held back: no event.
        if filtered != event {
            out.extend_from_slice(&filtered);
        }
    }
    out
}

/// What [`filter_stream`] keeps between chunks.
struct StreamState {
    framer: Framer,
    choices: HashMap<u64, ChoiceFilter>,
    vault: Option<Arc<Vault>>,
    gate: Option<bool>,
    canary: Option<String>,
    known: Arc<HashSet<String>>,
    values: Sensitive,
    /// The last event's JSON, for the events [`flush_unfinished`] writes.
    last: Value,
    stopped: bool,
}

/// The event that ends a stream with an event too long to screen.
fn unscreenable_event() -> Bytes {
    let err = bulwark_api::ApiError::new(
        bulwark_api::ErrorKind::BadGateway,
        format!(
            "The answer was stopped: it sent an event over {} MiB, which the guard cannot screen.",
            MAX_ANSWER >> 20
        ),
    )
    .with_code(bulwark_api::ErrorCode::UpstreamInvalidAnswer);
    let mut out = format!("data: {}\n\n", err.body_json()).into_bytes();
    out.extend_from_slice(sse::DONE);
    Bytes::from(out)
}

/// One whole event of a stream: `[DONE]` first releases what unfinished choices hold;
/// a repeated canary stops the stream.
fn on_event(st: &mut StreamState, b: Bytes, out: &mut Vec<Result<Bytes, axum::Error>>) {
    if is_done(&b) {
        let last = std::mem::take(&mut st.last);
        let held = flush_unfinished(st, &last);
        if !held.is_empty() {
            out.push(Ok(Bytes::from(held)));
        }
    } else if let Some(v) = sse::data_json(&b) {
        st.last = v;
    }
    let ev = filter_event(st, b, false);
    if st.choices.values().any(ChoiceFilter::leaked) {
        tracing::warn!("a streamed answer repeated the system prompt's canary; stream stopped");
        st.stopped = true;
        out.push(Ok(leak_event()));
    } else {
        out.push(Ok(ev));
    }
}

/// Filters a completion stream event by event, one [`ChoiceFilter`] per choice.
fn filter_stream(
    body: Body,
    vault: Option<Arc<Vault>>,
    gate: Option<bool>,
    canary: Option<String>,
    known: Arc<HashSet<String>>,
    values: Sensitive,
) -> impl futures_util::Stream<Item = Result<Bytes, axum::Error>> {
    let state = Arc::new(Mutex::new(StreamState {
        framer: Framer::new(MAX_ANSWER),
        choices: HashMap::new(),
        vault,
        gate,
        canary,
        known,
        values,
        last: Value::Null,
        stopped: false,
    }));
    let tail = Arc::clone(&state);
    let events = body.into_data_stream().flat_map(move |chunk| {
        let out: Vec<Result<Bytes, axum::Error>> = match chunk {
            Err(e) => vec![Err(e)],
            Ok(bytes) => {
                let mut guard = crate::lock(&state);
                let st = &mut *guard;
                let mut pieces = Vec::new();
                st.framer.push(&bytes, &mut pieces);
                let mut out: Vec<Result<Bytes, axum::Error>> = Vec::new();
                for p in pieces {
                    if st.stopped {
                        break;
                    }
                    match p {
                        // Bytes the framer gave up on cannot be screened: fail closed.
                        Piece::Raw(b) => {
                            tracing::warn!(
                                bytes = b.len(),
                                "a streamed answer sent an event too long to screen; stream stopped"
                            );
                            st.stopped = true;
                            out.push(Ok(unscreenable_event()));
                        }
                        Piece::Event(b) => on_event(st, b, &mut out),
                    }
                }
                out
            }
        };
        stream::iter(out)
    });
    // Personal data the answer added, named in a comment line at the end (headers left
    // long ago), as `x-bulwark-guard-output-pii` does for a JSON answer.
    let rest = stream::once(async move {
        let mut guard = crate::lock(&tail);
        let st = &mut *guard;
        if st.stopped {
            return None;
        }
        // An unterminated last event is screened like any other; then, for a stream cut
        // off without `[DONE]`, what the filters still hold goes out, filtered.
        let mut events = Vec::new();
        if let Some(rest) = st.framer.finish() {
            on_event(st, rest, &mut events);
        }
        let mut out: Vec<u8> = events.into_iter().flatten().flatten().collect();
        if st.stopped {
            return (!out.is_empty()).then(|| Ok(Bytes::from(out)));
        }
        let last = std::mem::take(&mut st.last);
        if !last.is_null() {
            out.extend(flush_unfinished(st, &last));
        }
        let mut kinds: Vec<&'static str> = st
            .choices
            .values()
            .filter_map(|c| c.added.as_ref())
            .flat_map(|a| a.kinds.iter().copied())
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        if !kinds.is_empty() {
            out.extend_from_slice(
                format!(": x-bulwark-guard-output-pii {}\n\n", kinds.join(",")).as_bytes(),
            );
        }
        (!out.is_empty()).then(|| Ok(Bytes::from(out)))
    })
    .filter_map(|b| async move { b });
    events.chain(rest)
}

/// The kinds of personal data in `texts` that the request did not carry, sorted.
fn pii_added<'a>(
    texts: impl Iterator<Item = &'a str>,
    known: &HashSet<String>,
) -> Vec<&'static str> {
    let mut kinds = Vec::new();
    for t in texts {
        let mut pii = Vec::new();
        bulwark_guard::pii::scan(t, &mut pii);
        kinds.extend(
            pii.iter()
                .filter(|f| t.get(f.start..f.end).is_some_and(|v| !known.contains(v)))
                .map(|f| f.kind),
        );
    }
    kinds.sort_unstable();
    kinds.dedup();
    kinds
}

/// One event through its choices' filters. `finish` ends every choice it carries, as
/// a `finish_reason` would.
fn filter_event(st: &mut StreamState, event: Bytes, finish: bool) -> Bytes {
    let StreamState {
        choices,
        vault,
        gate,
        canary,
        known,
        values,
        ..
    } = st;
    let gate = *gate;
    let Some(mut v) = sse::data_json(&event) else {
        return event;
    };
    let Some(list) = v.get_mut("choices").and_then(Value::as_array_mut) else {
        return event;
    };
    let mut changed = false;
    for c in list {
        let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
        let finished = c.get("finish_reason").is_some_and(|f| !f.is_null());
        let f = choices.entry(index).or_insert_with(|| ChoiceFilter {
            hidden: vault
                .as_ref()
                .map(|v| LinkGate::with_values(false, placeholders(v))),
            restorer: vault.as_ref().map(|v| Restorer::new(Arc::clone(v))),
            // A URL carrying a restored value is defused even with the output guard
            // off: the gateway itself would be writing the value into it.
            gate: (gate.is_some() || vault.is_some())
                .then(|| LinkGate::with_values(gate.unwrap_or(false), values.clone())),
            secrets: gate.map(|redact| SecretGate::new(redact, Arc::clone(known))),
            canary: canary.as_deref().map(CanaryWatch::new),
            added: gate.map(|_| PiiTally::default()),
            tools: Default::default(),
            done: false,
            slot: if c.pointer("/delta").is_some() {
                "/delta/content"
            } else {
                "/text"
            },
        });
        let slot = f.slot;
        let finished = finished || finish;
        f.done |= finished;
        let text = c
            .pointer(slot)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let out = f.pass(&text, finished, known);
        if let Some(v) = vault {
            changed |= restore_tool_deltas(c, &mut f.tools, v, finished);
        }
        if out == text {
            continue;
        }
        changed = true;
        if let Some(s) = c.pointer_mut(slot) {
            *s = Value::String(out);
        } else if !out.is_empty() {
            if let Some(d) = c.get_mut("delta").and_then(Value::as_object_mut) {
                d.insert("content".into(), Value::String(out));
            }
        }
    }
    // Untouched events go out byte for byte as they came.
    if changed {
        sse::event(&v)
    } else {
        event
    }
}

/// Restores placeholders in a streamed choice's tool-call argument deltas; at the
/// choice's end, whatever each call's filter held back goes out in this event. True when
/// the event changed.
fn restore_tool_deltas(
    choice: &mut Value,
    tools: &mut std::collections::BTreeMap<u64, (LinkGate, Restorer)>,
    vault: &Arc<Vault>,
    finished: bool,
) -> bool {
    let mut changed = false;
    let new = || {
        (
            LinkGate::with_values(false, placeholders(vault)),
            Restorer::json(Arc::clone(vault)),
        )
    };
    if let Some(calls) = choice
        .pointer_mut("/delta/tool_calls")
        .and_then(Value::as_array_mut)
    {
        for call in calls {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let Some(args) = call.pointer_mut("/function/arguments") else {
                continue;
            };
            let text = args.as_str().unwrap_or("").to_owned();
            let filter = tools.entry(index).or_insert_with(new);
            let out = pass_arguments(filter, &text, false);
            if out != text {
                *args = Value::String(out);
                changed = true;
            }
        }
    }
    if finished {
        let mut rest = Vec::new();
        for (index, filter) in tools.iter_mut() {
            let tail = pass_arguments(filter, "", true);
            if !tail.is_empty() {
                rest.push(serde_json::json!({"index": index, "function": {"arguments": tail}}));
            }
        }
        if !rest.is_empty() {
            if let Some(d) = choice.get_mut("delta").and_then(Value::as_object_mut) {
                match d.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    Some(list) => list.extend(rest),
                    None => {
                        d.insert("tool_calls".into(), Value::Array(rest));
                    }
                }
                changed = true;
            }
        }
    }
    changed
}

/// A non-streamed answer, read whole once: originals restored, then (for JSON answers)
/// a repeated canary withholds it and exfiltration-shaped image and link URLs become
/// `[BLOCKED_URL]` (`redact`) or are only named; either way `x-bulwark-guard-output`
/// says what was found.
async fn screen_answer(
    resp: Response,
    vault: Option<Arc<Vault>>,
    action: GuardAction,
    canary: Option<&str>,
    known: &HashSet<String>,
) -> Response {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    let screen = is_json && (action != GuardAction::Allow || canary.is_some());
    if vault.is_none() && !screen {
        return resp;
    }
    let values = sensitive(vault.as_deref(), action, known);
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_ANSWER).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "answer body failed while screening it");
            return crate::error::Error(
                ApiError::new(ErrorKind::BadGateway, "The answer could not be read.")
                    .with_code(bulwark_api::ErrorCode::UpstreamUnavailable),
            )
            .into_response();
        }
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let mut changed = false;
    let mut found: Vec<&'static str> = Vec::new();
    if let Some(vault) = &vault {
        let hidden = placeholders(vault);
        // Tool calls' arguments: a URL holding a placeholder defused, then the values
        // restored, escaped for the JSON text the arguments are.
        if let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) {
            for c in choices {
                let calls = c
                    .pointer_mut("/message/tool_calls")
                    .and_then(Value::as_array_mut);
                for call in calls.into_iter().flatten() {
                    if let Some(Value::String(args)) = call.pointer_mut("/function/arguments") {
                        let (defused, kinds) =
                            bulwark_guard::output::defuse_with(args, false, &hidden);
                        found.extend(kinds.into_iter().filter(|k| *k == "exfiltration_data"));
                        let restored = vault.restore_as(&defused, true);
                        changed |= restored != *args;
                        *args = restored;
                    }
                }
            }
        }
    }
    let mut texts: Vec<&mut String> = Vec::new();
    if let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) {
        for c in choices {
            // A choice has a message (chat) or a text (completion).
            let slot = if c.get("text").is_some() {
                c.get_mut("text")
            } else {
                c.get_mut("message").and_then(|m| m.get_mut("content"))
            };
            if let Some(Value::String(s)) = slot {
                texts.push(s);
            }
        }
    }
    if let Some(vault) = &vault {
        let hidden = placeholders(vault);
        for t in texts.iter_mut() {
            // A URL holding a placeholder is defused before anything is restored.
            let (defused, kinds) = bulwark_guard::output::defuse_with(t, false, &hidden);
            found.extend(kinds.into_iter().filter(|k| *k == "exfiltration_data"));
            let restored = vault.restore(&defused);
            changed |= restored != **t;
            **t = restored;
        }
    }
    let mut screened: Vec<String> = Vec::new();
    if screen {
        if let Some(token) = canary {
            let leaked = bytes.windows(token.len()).any(|w| w == token.as_bytes())
                || texts.iter().any(|t| t.contains(token));
            if leaked {
                tracing::warn!("an answer repeated the system prompt's canary; withheld");
                return crate::error::Error(
                    ApiError::new(
                        ErrorKind::PermissionDenied,
                        "The answer was withheld: it repeats this request's system prompt (its canary appeared).",
                    )
                    .with_code(bulwark_api::ErrorCode::SystemPromptLeak),
                )
                .into_response();
            }
        }
    }
    if screen || vault.is_some() {
        let redact = action == GuardAction::Redact;
        for t in texts.iter_mut() {
            let (mut out, mut kinds) = bulwark_guard::output::defuse_with(t, redact, &values);
            if action == GuardAction::Allow {
                // Only what the gateway itself restored into a URL is reported.
                kinds.retain(|k| *k == "exfiltration_data");
            } else {
                let (o, secrets) = bulwark_guard::output::redact_secrets("", &out, redact, known);
                out = o;
                kinds.extend(secrets);
                screened.push(out.clone());
            }
            found.extend(kinds);
            changed |= out != **t;
            **t = out;
        }
    }
    let pii_found = pii_added(screened.iter().map(String::as_str), known);
    if !pii_found.is_empty() {
        parts.headers.insert(
            "x-bulwark-guard-output-pii",
            crate::route::header_value(&pii_found.join(",")),
        );
    }
    if !found.is_empty() {
        found.sort_unstable();
        found.dedup();
        tracing::warn!(findings = %found.join(","), action = action.as_str(), "exfiltration-shaped URLs or credentials the request did not carry in an answer");
        parts.headers.insert(
            "x-bulwark-guard-output",
            crate::route::header_value(&format!("{}:{}", action.as_str(), found.join(","))),
        );
    }
    if !changed {
        return Response::from_parts(parts, Body::from(bytes));
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&v).map_or(bytes, Bytes::from);
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_stream_remembers_is_bounded_however_long_it_runs() {
        let known = HashSet::new();
        let mut tally = PiiTally::default();
        let piece = "Some ordinary words of a very long answer, over and over. ";
        for _ in 0..100_000 {
            tally.push(piece, &known);
            assert!(tally.tail.len() <= PII_TAIL + 4);
        }
        // Personal data split across two pieces is still seen.
        tally.push("write to jane.d", &known);
        tally.push("oe@example.com now", &known);
        assert_eq!(tally.kinds, ["email"]);
    }

    async fn filtered(chunks: &[&str]) -> String {
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = chunks
            .iter()
            .map(|c| Ok(Bytes::from(c.to_string())))
            .collect();
        let body = Body::from_stream(stream::iter(chunks));
        let known = Arc::new(HashSet::new());
        let values = sensitive(None, GuardAction::Redact, &known);
        let out: Vec<u8> = filter_stream(body, None, Some(true), None, known, values)
            .map(|b| b.map(|b| b.to_vec()).unwrap_or_default())
            .concat()
            .await;
        String::from_utf8(out).unwrap_or_default()
    }

    fn delta(text: &str) -> String {
        format!("data: {{\"id\":\"x\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{text:?}}},\"finish_reason\":null}}]}}\n\n")
    }

    fn texts(sse: &str) -> String {
        sse.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v.pointer("/choices/0/delta/content")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_stream_without_a_finish_reason_loses_no_held_back_text_and_skips_no_filter() {
        // Ended by `[DONE]`: the last word (held back while it might be a credential)
        // comes out in an event of its own before it, redacted.
        let out = filtered(&[
            &delta("the key is "),
            &delta("AKIAIOSFODNN7EXAMPLE"),
            "data: [DONE]\n\n",
        ])
        .await;
        assert!(!out.contains("AKIAIOSFODNN7EXAMPLE"), "{out}");
        assert!(texts(&out).starts_with("the key is ["), "{out}");
        assert!(out.trim_end().ends_with("data: [DONE]"), "{out}");
        // Cut off, its last event unterminated: screened, then released.
        let last = delta("東京と🦀 AKIAIOSFODNN7EXAMPLE");
        let out = filtered(&[&delta("Grüße "), last.trim_end()]).await;
        assert!(!out.contains("AKIAIOSFODNN7EXAMPLE"), "{out}");
        assert!(texts(&out).starts_with("Grüße 東京と🦀 ["), "{out}");
    }
}
