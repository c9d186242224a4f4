//! What a scanner reports: one finding per problem, with where and why.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing; never blocks.
    Info,
    Low,
    /// Suspicious; a person should look.
    Medium,
    /// Dangerous or unverifiable: `require_verified` refuses the model.
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable identifier of the check, e.g. `gguf.tensor_out_of_file`.
    pub code: String,
    /// Where: the file, and inside it a byte offset, tensor, key or archive entry.
    pub location: String,
    /// What is wrong, for a person.
    pub reason: String,
}

impl Finding {
    pub fn new(
        severity: Severity,
        code: &str,
        location: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Finding {
            severity,
            code: code.to_owned(),
            location: location.into(),
            reason: reason.into(),
        }
    }
}

/// The worst severity among findings, if any.
pub fn worst(findings: &[Finding]) -> Option<Severity> {
    findings.iter().map(|f| f.severity).max()
}
