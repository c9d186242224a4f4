//! `bulwark models scan`: recognise each file by its content and run its scanner.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::finding::{Finding, Severity};
use crate::{gguf, pickle, safetensors};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Gguf,
    Safetensors,
    /// A raw pickle (or several in a row: PyTorch's legacy format).
    Pickle,
    /// A zip archive: PyTorch's current checkpoint format, scanned for pickles.
    Zip,
    Other,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Gguf => "gguf",
            Format::Safetensors => "safetensors",
            Format::Pickle => "pickle",
            Format::Zip => "zip",
            Format::Other => "other",
        }
    }
}

/// What a model file says about the model, where the format says it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    /// The name the file gives itself (`general.name`).
    pub model_name: Option<String>,
    pub architecture: Option<String>,
    pub parameters: Option<u64>,
    pub quantisation: Option<String>,
    pub context_length: Option<u64>,
    pub license: Option<String>,
    pub chat_template_sha256: Option<String>,
    /// `model` or `adapter`.
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub path: PathBuf,
    pub format: Format,
    pub findings: Vec<Finding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<ModelInfo>,
}

impl FileReport {
    /// A report on something that is not (or could not be read as) a model file.
    fn other(path: &Path, findings: Vec<Finding>) -> Self {
        FileReport {
            path: path.to_owned(),
            format: Format::Other,
            findings,
            info: None,
        }
    }

    pub fn worst(&self) -> Option<Severity> {
        crate::finding::worst(&self.findings)
    }
}

const PICKLE_EXTENSIONS: &[&str] = &["pkl", "pickle", "bin", "pt", "pth", "ckpt", "joblib", "dat"];

/// Recognises a file by its first bytes (the extension only breaks ties).
pub fn sniff(path: &Path) -> std::io::Result<Format> {
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut head = [0u8; 16];
    let mut n = 0;
    while n < head.len() {
        let k = f.read(&mut head[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let head = &head[..n];
    if head.starts_with(b"GGUF") {
        return Ok(Format::Gguf);
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(Format::Zip);
    }
    if head.len() >= 9 {
        let len = u64::from_le_bytes(head[..8].try_into().unwrap_or([0; 8]));
        if head[8] == b'{' && len >= 2 && len <= size - 8 {
            return Ok(Format::Safetensors);
        }
    }
    if pickle::looks_like_pickle(head) {
        return Ok(Format::Pickle);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    Ok(if PICKLE_EXTENSIONS.contains(&ext.as_str()) {
        Format::Pickle
    } else if ext == "gguf" {
        Format::Gguf
    } else if ext == "safetensors" {
        Format::Safetensors
    } else {
        Format::Other
    })
}

fn unreadable(location: &str, e: &std::io::Error) -> Finding {
    Finding::new(Severity::High, "file.unreadable", location, e.to_string())
}

/// Largest raw pickle read into memory for scanning.
const MAX_PICKLE: u64 = 4 << 30;

/// Scans one file.
pub fn file(path: &Path) -> FileReport {
    let loc = path.display().to_string();
    let format = match sniff(path) {
        Ok(f) => f,
        Err(e) => return FileReport::other(path, vec![unreadable(&loc, &e)]),
    };
    let (findings, info) = match format {
        Format::Gguf => {
            let (g, mut findings) = gguf::scan(path);
            let info = g.as_ref().map(|g| {
                if g.str("general.type") == Some("adapter") {
                    findings.extend(crate::lora::check_gguf(g, path));
                }
                gguf_info(g)
            });
            (findings, info)
        }
        Format::Safetensors => {
            let (st, mut findings) = safetensors::scan(path);
            if let Some(st) = &st {
                if st
                    .tensors
                    .iter()
                    .any(|t| t.name.contains(".lora_A.") || t.name.contains(".lora_B."))
                {
                    findings.extend(crate::lora::check_safetensors(st, path));
                }
            }
            let info = st.map(|st| ModelInfo {
                parameters: Some(
                    st.tensors
                        .iter()
                        .map(safetensors::Tensor::elements)
                        .fold(0u64, u64::saturating_add),
                ),
                quantisation: st.tensors.first().map(|t| t.dtype.clone()),
                license: st.metadata.get("license").cloned(),
                architecture: st.metadata.get("architecture").cloned(),
                kind: Some(
                    if st.tensors.iter().any(|t| t.name.contains("lora_")) {
                        "adapter"
                    } else {
                        "model"
                    }
                    .into(),
                ),
                ..ModelInfo::default()
            });
            (findings, info)
        }
        Format::Zip => (
            std::fs::File::open(path).map_or_else(
                |e| vec![unreadable(&loc, &e)],
                |f| pickle::scan_zip(std::io::BufReader::new(f), &loc, 0),
            ),
            None,
        ),
        Format::Pickle => {
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let findings = if size > MAX_PICKLE {
                vec![Finding::new(
                    Severity::High,
                    "pickle.too_large",
                    loc.clone(),
                    format!("{size} bytes: too large to scan"),
                )]
            } else {
                std::fs::read(path).map_or_else(
                    |e| vec![unreadable(&loc, &e)],
                    |b| pickle::scan_bytes(&b, &loc),
                )
            };
            (findings, None)
        }
        Format::Other => (Vec::new(), None),
    };
    let mut findings = findings;
    if let Some(l) = info.as_ref().and_then(|i| i.license.as_deref()) {
        if let Some(why) = licence_restriction(l) {
            findings.push(Finding::new(
                Severity::Low,
                "license.restricted",
                format!("{}: license", path.display()),
                format!("licence `{l}` {why}: check it allows your use"),
            ));
        }
    }
    FileReport {
        path: path.to_owned(),
        format,
        findings,
        info,
    }
}

/// What a licence identifier restricts, for the licences that commonly do.
pub fn licence_restriction(licence: &str) -> Option<&'static str> {
    let l = licence.to_ascii_lowercase();
    let parts: Vec<&str> = l.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    if parts.contains(&"nc") || l.contains("noncommercial") || l.contains("non-commercial") {
        Some("forbids commercial use")
    } else if parts.contains(&"nd") {
        Some("forbids derivatives (fine-tunes, adapters, quantisations)")
    } else if l.contains("research") {
        Some("limits use to research")
    } else if l.contains("llama")
        || l.contains("gemma")
        || l.contains("openrail")
        || l.contains("other")
    {
        Some("carries use restrictions beyond an open-source licence")
    } else {
        None
    }
}

pub fn gguf_info(g: &gguf::Gguf) -> ModelInfo {
    ModelInfo {
        model_name: g.str("general.name").map(str::to_owned),
        architecture: g.architecture().map(str::to_owned),
        parameters: Some(g.parameters()),
        quantisation: Some(g.quantisation()),
        context_length: g.context_length(),
        license: g.str("general.license").map(str::to_owned),
        chat_template_sha256: g.chat_template().map(crate::template::sha256),
        kind: Some(g.str("general.type").unwrap_or("model").to_owned()),
    }
}

/// Scans a file, or every file under a directory (symbolic links are reported, not
/// followed).
pub fn path(p: &Path) -> Vec<FileReport> {
    let mut out = Vec::new();
    walk(p, 0, &mut out);
    out
}

fn walk(p: &Path, depth: u32, out: &mut Vec<FileReport>) {
    let meta = match std::fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) => {
            out.push(FileReport::other(
                p,
                vec![unreadable(&p.display().to_string(), &e)],
            ));
            return;
        }
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(p)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        out.push(FileReport::other(
            p,
            vec![Finding::new(
                Severity::Medium,
                "file.symlink",
                p.display().to_string(),
                format!("a symbolic link to `{target}`: not followed"),
            )],
        ));
    } else if meta.is_dir() {
        if depth > 16 {
            return;
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        entries.sort();
        for e in entries {
            walk(&e, depth + 1, out);
        }
    } else {
        out.push(file(p));
    }
}
