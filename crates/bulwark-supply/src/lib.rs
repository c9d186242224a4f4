//! Model supply chain: Bulwark refuses weights it cannot vouch for.
//!
//! - [`registry`]: the manifest of known models (digests, provenance, scan results,
//!   signatures) and their verification;
//! - scanners for untrusted model files, each defensive and bounded: [`gguf`] (with the
//!   chat [`template`]), [`safetensors`], [`pickle`] (raw and in zip archives) and
//!   [`lora`] adapters, dispatched by content in [`scan`];
//! - [`hash`]: SHA-256 and BLAKE3 in one read; [`bom`]: the CycloneDX AI-BOM;
//!   [`sigstore`]: OpenSSF model-signing bundles.
//!
//! Model files are untrusted input: no scanner executes, allocates by a declared size,
//! or trusts an offset before checking it against the file.

pub mod bom;
pub mod finding;
pub mod gguf;
pub mod hash;
pub mod lora;
pub mod pickle;
pub mod registry;
pub mod safetensors;
pub mod scan;
pub mod sigstore;
pub mod template;

pub use finding::{Finding, Severity};

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read model file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "model file {path} has SHA-256 {actual}, but {expected} is pinned; refusing to load it. \
         Re-fetch the file (scripts/fetch-model.sh for the default model) or update the pinned digest \
         if you changed the model on purpose."
    )]
    Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

/// The SHA-256 of a file, as lower-case hex. Reads in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String, VerifyError> {
    let read_err = |source| VerifyError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks a file against a pinned lower-case hex SHA-256.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), VerifyError> {
    let actual = sha256_file(path)?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch {
            path: path.to_owned(),
            expected: expected.to_owned(),
            actual,
        })
    }
}

#[cfg(test)]
mod supply_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_match_and_mismatch() {
        let dir = std::env::temp_dir().join(format!("bulwark-supply-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let f = dir.join("m.gguf");
        std::fs::write(&f, b"abc").ok();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(verify_sha256(&f, abc).is_ok());
        let err = verify_sha256(&f, &"0".repeat(64));
        assert!(matches!(err, Err(VerifyError::Mismatch { ref actual, .. }) if actual == abc));
        assert!(matches!(
            verify_sha256(&dir.join("missing"), abc),
            Err(VerifyError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
