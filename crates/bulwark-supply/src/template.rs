//! Chat templates are Jinja programs shipped inside model files and run on every
//! request. This looks for sandbox escapes, hidden instructions and URLs, invisible
//! characters, and drift from the pinned known-good template of the model's family.

use std::sync::OnceLock;

use regex::{Regex, RegexSet};
use sha2::{Digest, Sha256};

use crate::finding::{Finding, Severity};

/// Known-good chat templates: (family, substring of `general.name`, SHA-256 of the
/// template). A model whose name matches a family but whose template differs is flagged.
pub const KNOWN_TEMPLATES: &[(&str, &str, &str)] = &[(
    "SmolLM2 Instruct",
    "smollm2",
    "872be49dbb638044ad01b60388f48d469ff2980e5f0dccdc22ec907db54d0788",
)];

/// Jinja constructs that reach Python internals or side effects: none has a place in a
/// chat template.
const ESCAPES: &[(&str, &str)] = &[
    (
        r"__(class|mro|subclasses|globals|builtins|import|init|base|bases|dict|getattribute|reduce|reduce_ex|code|func|self)__",
        "reaches Python object internals (sandbox escape)",
    ),
    (
        r"\|\s*attr\b",
        "`|attr` filter: attribute access that bypasses the sandbox's checks",
    ),
    (
        r"\battr\s*\(",
        "`attr(...)`: attribute access that bypasses the sandbox's checks",
    ),
    (
        r"\{%-?\s*(import|from|include|extends)\b",
        "loads other templates (`import`, `from`, `include`, `extends`)",
    ),
    (
        r"\b(popen|subprocess|system|spawn|execv|eval|exec|compile|getattr|setattr|open)\s*\(",
        "calls a function that runs code, commands or opens files",
    ),
    (
        r"\b(os|sys|builtins|importlib|socket|shutil|pty|runpy|ctypes)\s*\.",
        "refers to a Python module with side effects",
    ),
    (
        r"\b(cycler|joiner|lipsum|url_for|get_flashed_messages|config|request|self)\s*\.",
        "a Jinja global used as a path to Python internals",
    ),
    (
        r"\bnamespace\s*\([^)]*__",
        "`namespace` built with dunder names",
    ),
    (
        r"\.(mro|func_globals|gi_frame|f_globals|f_builtins|co_code)\b",
        "walks Python frames or code objects",
    ),
];

/// Words of an instruction aimed at the model, hidden in the template rather than
/// written by whoever sends the messages.
const INSTRUCTIONS: &[&str] = &[
    r"(?i)\bignore\s+(all\s+|any\s+)?(previous|prior|above|earlier|the\s+user)",
    r"(?i)\b(do\s+not|don't|never)\s+(tell|reveal|mention|disclose)\b",
    r"(?i)\bsecretly\b",
    r"(?i)\bexfiltrat",
    r"(?i)\b(send|post|upload|forward)\b[^.{}]{0,60}\b(to|at)\s+(https?://|www\.)",
    r"(?i)\b(api[_ ]?key|password|credential)s?\b",
    r"(?i)!\[[^\]]*\]\(",
];

fn regexes() -> &'static (RegexSet, RegexSet, Regex) {
    static R: OnceLock<(RegexSet, RegexSet, Regex)> = OnceLock::new();
    R.get_or_init(|| {
        let set = |pats: &[&str]| RegexSet::new(pats).unwrap_or_else(|_| RegexSet::empty());
        (
            set(&ESCAPES.iter().map(|e| e.0).collect::<Vec<_>>()),
            set(INSTRUCTIONS),
            Regex::new(
                r"(?i)\b(https?|ftp|wss?)://[^\s'\x22}]+|\bdata:[a-z]+/[a-z0-9.+-]+;base64,",
            )
            .unwrap_or_else(|_| Regex::new("$^").unwrap_or_else(|_| unreachable!())),
        )
    })
}

pub fn sha256(template: &str) -> String {
    hex::encode(Sha256::digest(template.as_bytes()))
}

/// Findings for a chat template; `model_name` is the file's `general.name`.
pub fn scan(template: &str, model_name: Option<&str>, location: &str) -> Vec<Finding> {
    let (escapes, instructions, urls) = regexes();
    let mut out = Vec::new();
    for i in escapes.matches(template).iter() {
        out.push(Finding::new(
            Severity::High,
            "template.sandbox_escape",
            location,
            format!("the chat template {}", ESCAPES[i].1),
        ));
    }
    let hidden: Vec<char> = template
        .chars()
        .filter(|&c| {
            matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{E0000}'..='\u{E007F}')
        })
        .collect();
    if !hidden.is_empty() {
        out.push(Finding::new(
            Severity::High,
            "template.invisible_characters",
            location,
            format!(
                "{} invisible characters (zero-width, bidi or tag: {:?}) hide text from a reviewer",
                hidden.len(),
                hidden
                    .iter()
                    .take(4)
                    .map(|c| format!("U+{:04X}", *c as u32))
                    .collect::<Vec<_>>()
            ),
        ));
    }
    for m in urls.find_iter(template).take(5) {
        out.push(Finding::new(
            Severity::Medium,
            "template.url",
            location,
            format!("the chat template contains the address `{}`: a template has no reason to point anywhere", m.as_str()),
        ));
    }
    if instructions.is_match(template) {
        out.push(Finding::new(
            Severity::Medium,
            "template.hidden_instruction",
            location,
            "the chat template contains text that reads like an instruction to the model (ignore, do not reveal, send to...)",
        ));
    }
    let digest = sha256(template);
    let name = model_name.unwrap_or("").to_ascii_lowercase();
    if let Some((family, _, pinned)) = KNOWN_TEMPLATES
        .iter()
        .find(|(_, needle, _)| name.contains(needle))
    {
        if *pinned != digest {
            out.push(Finding::new(
                Severity::Medium,
                "template.drift",
                location,
                format!("the chat template (SHA-256 {digest}) differs from the known-good {family} template ({pinned})"),
            ));
        }
    }
    out
}
