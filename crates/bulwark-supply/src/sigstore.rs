//! OpenSSF model-signing bundles (the `model_signing` tool, signing with a key): a
//! Sigstore bundle whose DSSE envelope carries an in-toto Statement v1 with the
//! predicate `https://model_signing/signature/v1.0`, listing every file of the model
//! directory with its SHA-256.
//!
//! Verification: the envelope's ECDSA signature (P-256 with SHA-256, P-384 with
//! SHA-384) over DSSE's pre-authentication encoding; the subject's root digest over the
//! listed digests; then every listed file hashed again, and no file in the directory
//! left unlisted. Every failure names the file or the check.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// DSSE v1 pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A verified signature: the model's name and the files it covers.
#[derive(Debug)]
pub struct Verified {
    pub model_name: String,
    pub files: Vec<(String, String)>,
}

fn verify_signature(public_key_pem: &str, message: &[u8], sig_der: &[u8]) -> Result<(), String> {
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::DecodePublicKey as _;
    if let Ok(vk) = p256::ecdsa::VerifyingKey::from_public_key_pem(public_key_pem) {
        let sig = p256::ecdsa::Signature::from_der(sig_der)
            .map_err(|e| format!("the signature is not a DER ECDSA P-256 signature: {e}"))?;
        return vk.verify(message, &sig).map_err(|_| {
            "the ECDSA P-256 signature does not verify with this public key".to_owned()
        });
    }
    if let Ok(vk) = p384::ecdsa::VerifyingKey::from_public_key_pem(public_key_pem) {
        let sig = p384::ecdsa::Signature::from_der(sig_der)
            .map_err(|e| format!("the signature is not a DER ECDSA P-384 signature: {e}"))?;
        return vk.verify(message, &sig).map_err(|_| {
            "the ECDSA P-384 signature does not verify with this public key".to_owned()
        });
    }
    Err("the public key is not a PEM EC P-256 or P-384 public key".into())
}

/// Paths model_signing never signs.
fn ignored(rel: &str) -> bool {
    rel.split('/')
        .next()
        .is_some_and(|first| matches!(first, ".git" | ".gitattributes" | ".github" | ".gitignore"))
}

fn files_under(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            files_under(&p, base, out);
        } else if let Ok(rel) = p.strip_prefix(base) {
            out.insert(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// Verifies `bundle` (the JSON of a `.sig` file) for the model directory `model`.
/// `bundle_path` is left out of the directory listing when it lies inside it.
pub fn verify(
    bundle: &[u8],
    bundle_path: Option<&Path>,
    public_key_pem: &str,
    model: &Path,
) -> Result<Verified, String> {
    let v: Value = serde_json::from_slice(bundle)
        .map_err(|e| format!("the signature bundle is not JSON: {e}"))?;
    let env = &v["dsseEnvelope"];
    let payload_type = env["payloadType"]
        .as_str()
        .ok_or("the bundle has no DSSE envelope")?;
    if payload_type != PAYLOAD_TYPE {
        return Err(format!(
            "DSSE payload type `{payload_type}` is not `{PAYLOAD_TYPE}`"
        ));
    }
    let payload = B64
        .decode(
            env["payload"]
                .as_str()
                .ok_or("the envelope has no payload")?,
        )
        .map_err(|e| format!("the envelope's payload is not base64: {e}"))?;
    let sigs = env["signatures"]
        .as_array()
        .filter(|s| !s.is_empty())
        .ok_or("the envelope has no signature")?;
    let mut last = String::new();
    let signed = sigs.iter().any(|s| {
        let Some(der) = s["sig"].as_str().and_then(|b| B64.decode(b).ok()) else {
            last = "a signature is not base64".into();
            return false;
        };
        match verify_signature(public_key_pem, &pae(payload_type, &payload), &der) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        }
    });
    if !signed {
        return Err(last);
    }
    let st: Value = serde_json::from_slice(&payload)
        .map_err(|e| format!("the signed statement is not JSON: {e}"))?;
    if st["_type"] != STATEMENT_TYPE {
        return Err(format!(
            "the statement type is {} rather than {STATEMENT_TYPE}",
            st["_type"]
        ));
    }
    if st["predicateType"] != PREDICATE_TYPE {
        return Err(format!(
            "the predicate type is {} rather than {PREDICATE_TYPE}",
            st["predicateType"]
        ));
    }
    let subject = st["subject"]
        .as_array()
        .filter(|s| s.len() == 1)
        .ok_or("the statement must have exactly one subject")?;
    let model_name = subject[0]["name"].as_str().unwrap_or("").to_owned();
    let root = subject[0]["digest"]["sha256"]
        .as_str()
        .ok_or("the subject has no SHA-256 digest")?;
    let pred = &st["predicate"];
    let method = pred["serialization"]["method"].as_str().unwrap_or("");
    if method != "files" {
        return Err(format!(
            "serialization method `{method}` is not supported (only `files`)"
        ));
    }
    let resources = pred["resources"]
        .as_array()
        .ok_or("the predicate lists no resources")?;
    let mut root_hasher = Sha256::new();
    let mut files = Vec::new();
    for r in resources {
        let (Some(name), Some(alg), Some(digest)) = (
            r["name"].as_str(),
            r["algorithm"].as_str(),
            r["digest"].as_str(),
        ) else {
            return Err("a resource lacks its name, algorithm or digest".into());
        };
        if alg != "sha256" {
            return Err(format!(
                "{name}: digest algorithm `{alg}` is not supported (only sha256)"
            ));
        }
        let raw = (0..digest.len())
            .step_by(2)
            .map(|i| {
                digest
                    .get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| format!("{name}: the digest is not hex"))?;
        root_hasher.update(&raw);
        if name.split('/').any(|c| c == ".." || c.is_empty()) || name.starts_with('/') {
            return Err(format!(
                "{name}: a resource name that escapes the model directory"
            ));
        }
        files.push((name.to_owned(), digest.to_ascii_lowercase()));
    }
    if hex::encode(root_hasher.finalize()) != root.to_ascii_lowercase() {
        return Err("the subject's root digest does not match the listed files".into());
    }
    // The files themselves.
    let listed: BTreeSet<String> = files.iter().map(|f| f.0.clone()).collect();
    let (dir, single) = if model.is_dir() {
        (model.to_path_buf(), None)
    } else {
        (
            model.parent().map(Path::to_path_buf).unwrap_or_default(),
            model.file_name().map(|n| n.to_string_lossy().into_owned()),
        )
    };
    for (name, digest) in &files {
        let p: PathBuf = dir.join(name);
        let got = crate::hash::file(&p, &|_| {})
            .map_err(|e| format!("{name}: listed in the signature but cannot be read: {e}"))?;
        if &got.sha256 != digest {
            return Err(format!("{name}: SHA-256 {} does not match the signed {digest}; the file changed after signing", got.sha256));
        }
    }
    let mut present = BTreeSet::new();
    match &single {
        Some(n) => {
            present.insert(n.clone());
        }
        None => files_under(&dir, &dir, &mut present),
    }
    let sig_rel = bundle_path
        .and_then(|b| std::fs::canonicalize(b).ok())
        .and_then(|b| {
            std::fs::canonicalize(&dir).ok().and_then(|d| {
                b.strip_prefix(d)
                    .ok()
                    .map(|r| r.to_string_lossy().into_owned())
            })
        });
    for f in present {
        if !listed.contains(&f) && !ignored(&f) && Some(&f) != sig_rel.as_ref() {
            return Err(format!(
                "{f}: in the model directory but not covered by the signature"
            ));
        }
    }
    Ok(Verified { model_name, files })
}
