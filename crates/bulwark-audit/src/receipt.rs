//! Signed receipts: each answer can carry `x-bulwark-receipt`, a statement of what was
//! asked, what was answered, by which model, by which route and when, signed twice
//! (ML-DSA-65 and Ed25519; a receipt is valid only if both verify), so that a client can
//! later prove what the gateway did, even against a quantum adversary, as long as either
//! scheme holds.
//!
//! Format: `base64url(payload JSON) "." base64url(Ed25519 sig) "." base64url(ML-DSA-65
//! sig)`, both over the payload bytes (ML-DSA with the context `bulwark-receipt-v1`).

use base64::engine::general_purpose::STANDARD as B64;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64U;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use ml_dsa::{KeyGen, MlDsa65};
use serde::{Deserialize, Serialize};

use crate::AuditError;

const CONTEXT: &[u8] = b"bulwark-receipt-v1";

/// What a receipt says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub v: u32,
    pub time_ms: u64,
    pub request_id: String,
    /// SHA-256 of the request body (as JSON, re-serialised by the gateway).
    pub request_sha256: String,
    /// SHA-256 of the response body; `None` for a streamed answer (the receipt goes out
    /// in the headers, before the stream).
    pub response_sha256: Option<String>,
    pub model: String,
    /// SHA-256 of the model file for in-process models.
    pub model_sha256: Option<String>,
    pub route: String,
    pub status: u16,
    /// The watermark the answer's text carries (`scheme; key=ID; ...`), when a local
    /// model marked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
}

/// Receipt signing key (the gateway's). Seeds only; the key pairs are derived.
#[derive(Serialize, Deserialize)]
pub struct SigningKey {
    pub alg: String,
    pub mldsa65_seed: String,
    pub ed25519_seed: String,
}

/// Receipt verifying key (anyone's).
#[derive(Clone, Serialize, Deserialize)]
pub struct VerifyingKey {
    pub alg: String,
    pub mldsa65: String,
    pub ed25519: String,
}

pub const ALG: &str = "ML-DSA-65+Ed25519";

fn bad(m: &str) -> AuditError {
    AuditError::Key(m.to_owned())
}

fn seed(s: &str) -> Result<[u8; 32], AuditError> {
    B64.decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("receipt key seed"))
}

pub fn keygen() -> (VerifyingKey, SigningKey) {
    let (a, b): ([u8; 32], [u8; 32]) = (crate::crypto::random(), crate::crypto::random());
    let sk = SigningKey {
        alg: ALG.into(),
        mldsa65_seed: B64.encode(a),
        ed25519_seed: B64.encode(b),
    };
    let vk = Signer::new(&sk)
        .map(|s| s.verifying_key())
        .unwrap_or_else(|_| VerifyingKey {
            alg: ALG.into(),
            mldsa65: String::new(),
            ed25519: String::new(),
        });
    (vk, sk)
}

/// The gateway's signer, with both key pairs expanded once.
pub struct Signer {
    mldsa: <MlDsa65 as KeyGen>::KeyPair,
    ed: ed25519_dalek::SigningKey,
}

impl Signer {
    pub fn new(sk: &SigningKey) -> Result<Signer, AuditError> {
        let mldsa = MlDsa65::key_gen_internal(&seed(&sk.mldsa65_seed)?.into());
        let ed = ed25519_dalek::SigningKey::from_bytes(&seed(&sk.ed25519_seed)?);
        Ok(Signer { mldsa, ed })
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey {
            alg: ALG.into(),
            mldsa65: B64.encode(self.mldsa.verifying_key().encode()),
            ed25519: B64.encode(self.ed.verifying_key().to_bytes()),
        }
    }

    /// The header value for `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuditError> {
        let payload = serde_json::to_vec(claims).map_err(|e| bad(&e.to_string()))?;
        let sig = self.sign_detached(&payload, CONTEXT)?;
        Ok(format!("{}.{sig}", B64U.encode(&payload)))
    }

    /// Both signatures over `payload`, as `base64url(Ed25519).base64url(ML-DSA-65)`;
    /// `context` separates what is signed (receipts, model manifests) so that a
    /// signature made for one can never pass as the other.
    pub fn sign_detached(&self, payload: &[u8], context: &[u8]) -> Result<String, AuditError> {
        let mut ed_msg = context.to_vec();
        ed_msg.extend_from_slice(payload);
        // Receipts (v1) sign the bare payload with Ed25519; kept for compatibility.
        let ed = if context == CONTEXT {
            self.ed.sign(payload)
        } else {
            self.ed.sign(&ed_msg)
        };
        let pq = self
            .mldsa
            .signing_key()
            .sign_deterministic(payload, context)
            .map_err(|_| bad("ML-DSA signing"))?;
        Ok(format!(
            "{}.{}",
            B64U.encode(ed.to_bytes()),
            B64U.encode(pq.encode())
        ))
    }
}

/// Checks both signatures of a receipt and returns what it says.
pub fn verify(vk: &VerifyingKey, receipt: &str) -> Result<Claims, AuditError> {
    let mut parts = receipt.trim().splitn(2, '.');
    let (Some(p), Some(sig)) = (parts.next(), parts.next()) else {
        return Err(bad("a receipt has three dot-separated parts"));
    };
    let payload = B64U
        .decode(p)
        .map_err(|_| bad("receipt payload encoding"))?;
    verify_detached(vk, &payload, CONTEXT, sig)?;
    serde_json::from_slice(&payload).map_err(|e| bad(&format!("receipt payload: {e}")))
}

/// Checks a signature made by [`Signer::sign_detached`]: both halves must verify.
pub fn verify_detached(
    vk: &VerifyingKey,
    payload: &[u8],
    context: &[u8],
    signature: &str,
) -> Result<(), AuditError> {
    let mut parts = signature.trim().split('.');
    let (Some(e), Some(m), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad(
            "a signature has two dot-separated parts (Ed25519, ML-DSA-65)",
        ));
    };
    let mut ed_msg = context.to_vec();
    ed_msg.extend_from_slice(payload);
    let ed_payload: &[u8] = if context == CONTEXT { payload } else { &ed_msg };
    let ed_sig = ed25519_dalek::Signature::from_slice(
        &B64U
            .decode(e)
            .map_err(|_| bad("Ed25519 signature encoding"))?,
    )
    .map_err(|_| bad("Ed25519 signature"))?;
    let ed_vk = ed25519_dalek::VerifyingKey::from_bytes(
        &B64.decode(&vk.ed25519)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("Ed25519 verifying key"))?,
    )
    .map_err(|_| bad("Ed25519 verifying key"))?;
    ed_vk
        .verify(ed_payload, &ed_sig)
        .map_err(|_| bad("the Ed25519 signature does not verify"))?;
    let pq_bytes = B64U
        .decode(m)
        .map_err(|_| bad("ML-DSA signature encoding"))?;
    let pq_sig = ml_dsa::Signature::<MlDsa65>::try_from(pq_bytes.as_slice())
        .map_err(|_| bad("ML-DSA signature"))?;
    let vk_bytes = B64
        .decode(&vk.mldsa65)
        .map_err(|_| bad("ML-DSA verifying key"))?;
    let enc = ml_dsa::EncodedVerifyingKey::<MlDsa65>::try_from(vk_bytes.as_slice())
        .map_err(|_| bad("ML-DSA verifying key size"))?;
    let pq_vk = ml_dsa::VerifyingKey::<MlDsa65>::decode(&enc);
    if !pq_vk.verify_with_context(payload, context, &pq_sig) {
        return Err(bad("the ML-DSA-65 signature does not verify"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            v: 1,
            time_ms: 1,
            request_id: "r".into(),
            request_sha256: "aa".into(),
            response_sha256: Some("bb".into()),
            model: "m".into(),
            model_sha256: None,
            route: "target=m".into(),
            status: 200,
            watermark: None,
        }
    }

    #[test]
    fn both_signatures_must_verify() {
        let (vk, sk) = keygen();
        let s = Signer::new(&sk).unwrap();
        let r = s.sign(&claims()).unwrap();
        assert_eq!(verify(&vk, &r).unwrap(), claims());
        // Another payload under the same signatures.
        let parts: Vec<&str> = r.split('.').collect();
        let mut other = claims();
        other.status = 500;
        let forged = format!(
            "{}.{}.{}",
            B64U.encode(serde_json::to_vec(&other).unwrap()),
            parts[1],
            parts[2]
        );
        assert!(verify(&vk, &forged)
            .unwrap_err()
            .to_string()
            .contains("Ed25519"));
        // A valid Ed25519 signature with a broken ML-DSA one.
        let mut pq = B64U.decode(parts[2]).unwrap();
        pq[10] ^= 1;
        let half = format!("{}.{}.{}", parts[0], parts[1], B64U.encode(pq));
        assert!(verify(&vk, &half)
            .unwrap_err()
            .to_string()
            .contains("ML-DSA"));
        // Another gateway's key.
        let (vk2, _) = keygen();
        assert!(verify(&vk2, &r).is_err());
    }
}
