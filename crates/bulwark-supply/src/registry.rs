//! The model registry: `models.json` in the data directory, one entry per model with
//! what its files must hash to, what the scanners found, where it came from, and an
//! optional signature (ML-DSA-65 and Ed25519, both must verify) over the entry.
//!
//! The file is rewritten whole and atomically (temporary file, fsync, rename).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::finding::{Finding, Severity};
use crate::scan::{self, Format, ModelInfo};

pub const FILE: &str = "models.json";
/// Separates manifest signatures from every other use of the same key.
pub const SIGNATURE_CONTEXT: &[u8] = b"bulwark-model-manifest-v1";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Registry {
    pub version: u32,
    pub models: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Absolute path.
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub blake3: String,
    pub format: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    /// `file:PATH` or `pypi:PACKAGE==VERSION`.
    pub source: String,
    pub format: String,
    pub files: Vec<FileEntry>,
    /// Architecture, parameters, quantisation, context length, licence, chat-template
    /// digest, kind: what the files say about the model.
    #[serde(flatten)]
    pub info: ModelInfo,
    pub added_ms: u64,
    /// Findings of the scanners at `added_ms` (info-level ones left out).
    pub findings: Vec<Finding>,
    /// Not covered by the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
    /// The outcome of the last `models verify`; not covered by the signature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub alg: String,
    /// `base64url(Ed25519).base64url(ML-DSA-65)` over [`Entry::signed_bytes`].
    pub value: String,
    pub signed_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// `verified` or `failed`.
    pub state: String,
    pub checked_ms: u64,
    pub signed: bool,
    /// What failed, when it did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl Entry {
    /// What a signature covers: the entry without its signature and verification.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut e = self.clone();
        e.signature = None;
        e.verification = None;
        serde_json::to_vec(&e).unwrap_or_default()
    }

    pub fn worst(&self) -> Option<Severity> {
        crate::finding::worst(&self.findings)
    }

    /// The state `/v1/models` shows: `verified`, `failed`, or `registered` (never
    /// verified since it was added).
    pub fn state(&self) -> &str {
        self.verification
            .as_ref()
            .map_or("registered", |v| v.state.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid model registry: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl Registry {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(FILE)
    }

    /// The registry in `data_dir`; empty when there is none yet.
    pub fn load(data_dir: &Path) -> Result<Registry, RegistryError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| RegistryError::Corrupt {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry {
                version: 1,
                ..Registry::default()
            }),
            Err(source) => Err(RegistryError::Io { path, source }),
        }
    }

    pub fn save(&self, data_dir: &Path) -> Result<(), RegistryError> {
        let path = Self::path(data_dir);
        let io = |source| RegistryError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// The entry that holds `file` (compared by canonical path).
    pub fn by_file(&self, file: &Path) -> Option<&Entry> {
        let want = std::fs::canonicalize(file).ok()?;
        self.models
            .values()
            .find(|e| e.files.iter().any(|f| f.path == want))
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Hashes and scans `path` (a file, or a directory of model files) into an entry.
/// `progress(done, total)` is called as bytes are hashed.
pub fn describe(
    name: &str,
    path: &Path,
    source: String,
    progress: &dyn Fn(u64, u64),
) -> Result<Entry, RegistryError> {
    let root = std::fs::canonicalize(path).map_err(|source| RegistryError::Io {
        path: path.to_owned(),
        source,
    })?;
    let reports = scan::path(&root);
    let model_files: Vec<_> = reports
        .iter()
        .filter(|r| r.format != Format::Other)
        .collect();
    if model_files.is_empty() {
        return Err(RegistryError::Invalid(format!(
            "{}: no model file found (GGUF, safetensors, or a PyTorch/pickle checkpoint)",
            path.display()
        )));
    }
    let total: u64 = model_files
        .iter()
        .filter_map(|r| std::fs::metadata(&r.path).ok().map(|m| m.len()))
        .sum();
    let mut done = 0u64;
    let mut files = Vec::new();
    for r in &model_files {
        let d = crate::hash::file(&r.path, &|n| progress(done + n, total)).map_err(|source| {
            RegistryError::Io {
                path: r.path.clone(),
                source,
            }
        })?;
        done += d.size;
        files.push(FileEntry {
            path: r.path.clone(),
            size: d.size,
            sha256: d.sha256,
            blake3: d.blake3,
            format: r.format.as_str().to_owned(),
        });
    }
    let info: ModelInfo = model_files
        .iter()
        .find_map(|r| r.info.clone())
        .unwrap_or_default();
    let mut formats: Vec<&str> = model_files.iter().map(|r| r.format.as_str()).collect();
    formats.dedup();
    Ok(Entry {
        name: name.to_owned(),
        source,
        format: formats.join("+"),
        files,
        info,
        added_ms: now_ms(),
        findings: reports
            .into_iter()
            .flat_map(|r| r.findings)
            .filter(|f| f.severity > Severity::Info)
            .collect(),
        signature: None,
        verification: None,
    })
}

/// What `verify` checks a signature with.
pub enum Signatures<'a> {
    /// Signatures are not checked.
    Ignore,
    /// Checked when present.
    IfPresent(&'a bulwark_audit::receipt::VerifyingKey),
    /// Must be present and valid.
    Required(&'a bulwark_audit::receipt::VerifyingKey),
}

/// Re-hashes and re-scans an entry's files and checks its signature. Every problem
/// names the file and the check; an empty list means verified.
pub fn verify(entry: &Entry, sigs: &Signatures<'_>, progress: &dyn Fn(u64, u64)) -> Vec<String> {
    let mut problems = Vec::new();
    let total: u64 = entry.files.iter().map(|f| f.size).sum();
    let mut done = 0;
    for f in &entry.files {
        match crate::hash::file(&f.path, &|n| progress(done + n, total)) {
            Err(e) => problems.push(format!(
                "{}: cannot be read ({e}); restore the file or `bulwark models add` it again",
                f.path.display()
            )),
            Ok(d) => {
                if d.sha256 != f.sha256 || d.blake3 != f.blake3 || d.size != f.size {
                    problems.push(format!(
                        "{}: digest check failed: SHA-256 {} (size {}) where the registry has {} (size {}); the file changed since it was added. Restore it, or `bulwark models add` it again if the change is intended",
                        f.path.display(),
                        d.sha256,
                        d.size,
                        f.sha256,
                        f.size
                    ));
                }
            }
        }
        done += f.size;
        for finding in scan::file(&f.path).findings {
            if finding.severity >= Severity::High {
                problems.push(format!(
                    "{}: scan check failed: {} ({}: {})",
                    f.path.display(),
                    finding.reason,
                    finding.code,
                    finding.location
                ));
            }
        }
    }
    let check = |vk| {
        match &entry.signature {
        None => Some("no signature: sign it with `bulwark models sign NAME --key signing.key`".to_owned()),
        Some(s) => bulwark_audit::receipt::verify_detached(vk, &entry.signed_bytes(), SIGNATURE_CONTEXT, &s.value)
            .err()
            .map(|e| format!("signature check failed: {e}; the entry changed since it was signed, or it was signed with another key")),
    }
    };
    match sigs {
        Signatures::Ignore => {}
        Signatures::IfPresent(vk) => {
            if entry.signature.is_some() {
                problems.extend(check(vk));
            }
        }
        Signatures::Required(vk) => problems.extend(check(vk)),
    }
    problems
}

/// Signs an entry (replacing any earlier signature).
pub fn sign(
    entry: &mut Entry,
    signer: &bulwark_audit::receipt::Signer,
) -> Result<(), RegistryError> {
    entry.signature = None;
    entry.verification = None;
    let value = signer
        .sign_detached(&entry.signed_bytes(), SIGNATURE_CONTEXT)
        .map_err(|e| RegistryError::Invalid(e.to_string()))?;
    entry.signature = Some(Signature {
        alg: bulwark_audit::receipt::ALG.to_owned(),
        value,
        signed_ms: now_ms(),
    });
    Ok(())
}
