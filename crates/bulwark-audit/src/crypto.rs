//! Hybrid post-quantum key wrapping: a data key is sealed to the auditor's public key so
//! that only the holder of the private key can open it, as long as either ML-KEM-768 or
//! X25519 holds.
//!
//! wrap: ML-KEM-768 encapsulation gives `ss1` and `ct`; an ephemeral X25519 exchange with
//! the auditor's X25519 key gives `ss2`; KEK = HKDF-SHA256(ikm = ss1 ‖ ss2,
//! salt = "bulwark-audit-v1", info = ct ‖ ephemeral ‖ recipient X25519 key); the data key
//! is sealed with ChaCha20-Poly1305 under the KEK.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use ml_kem::kem::{Decapsulate, Encapsulate};
use ml_kem::{EncodedSizeUser, KemCore, MlKem768};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::AuditError;

type Ek = <MlKem768 as KemCore>::EncapsulationKey;
type Dk = <MlKem768 as KemCore>::DecapsulationKey;

const SALT: &[u8] = b"bulwark-audit-v1";
pub const ALG: &str = "ML-KEM-768+X25519/HKDF-SHA256/ChaCha20-Poly1305";

/// The auditor's public key: what the gateway holds.
#[derive(Clone, Serialize, Deserialize)]
pub struct PublicKey {
    pub alg: String,
    pub mlkem768: String,
    pub x25519: String,
}

/// The auditor's private key: never on the gateway.
#[derive(Serialize, Deserialize)]
pub struct SecretKey {
    pub alg: String,
    pub mlkem768: String,
    pub x25519: String,
}

/// A data key sealed to a public key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Wrapped {
    pub mlkem_ct: String,
    pub ephemeral: String,
    pub nonce: String,
    pub sealed: String,
}

fn bad(what: &str) -> AuditError {
    AuditError::Key(what.to_owned())
}

fn b64(s: &str, what: &str) -> Result<Vec<u8>, AuditError> {
    B64.decode(s).map_err(|_| bad(what))
}

fn arr32(v: &[u8], what: &str) -> Result<[u8; 32], AuditError> {
    v.try_into().map_err(|_| bad(what))
}

/// A fresh key pair.
pub fn keygen() -> (PublicKey, SecretKey) {
    let (dk, ek) = MlKem768::generate(&mut OsRng);
    let x = x25519_dalek::StaticSecret::random_from_rng(OsRng);
    let xp = x25519_dalek::PublicKey::from(&x);
    (
        PublicKey {
            alg: ALG.into(),
            mlkem768: B64.encode(ek.as_bytes()),
            x25519: B64.encode(xp.as_bytes()),
        },
        SecretKey {
            alg: ALG.into(),
            mlkem768: B64.encode(dk.as_bytes()),
            x25519: B64.encode(x.to_bytes()),
        },
    )
}

fn kek(ss1: &[u8], ss2: &[u8], ct: &[u8], eph: &[u8], recipient: &[u8]) -> [u8; 32] {
    let mut ikm = Vec::with_capacity(64);
    ikm.extend_from_slice(ss1);
    ikm.extend_from_slice(ss2);
    let mut info = Vec::with_capacity(ct.len() + 64);
    info.extend_from_slice(ct);
    info.extend_from_slice(eph);
    info.extend_from_slice(recipient);
    let hk = hkdf::Hkdf::<Sha256>::new(Some(SALT), &ikm);
    let mut out = [0u8; 32];
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = hk.expand(&info, &mut out);
    out
}

pub fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

/// Seals `data_key` to `pk`.
pub fn wrap(pk: &PublicKey, data_key: &[u8; 32]) -> Result<Wrapped, AuditError> {
    let ek_bytes = b64(&pk.mlkem768, "public key (ML-KEM)")?;
    let ek = Ek::from_bytes(
        &ml_kem::Encoded::<Ek>::try_from(ek_bytes.as_slice())
            .map_err(|_| bad("public key (ML-KEM) size"))?,
    );
    let (ct, ss1) = ek
        .encapsulate(&mut OsRng)
        .map_err(|_| bad("ML-KEM encapsulation"))?;
    let recipient = arr32(
        &b64(&pk.x25519, "public key (X25519)")?,
        "public key (X25519) size",
    )?;
    let eph = x25519_dalek::EphemeralSecret::random_from_rng(OsRng);
    let eph_pub = x25519_dalek::PublicKey::from(&eph);
    let ss2 = eph.diffie_hellman(&x25519_dalek::PublicKey::from(recipient));
    let k = kek(&ss1, ss2.as_bytes(), &ct, eph_pub.as_bytes(), &recipient);
    let nonce: [u8; 12] = random();
    let sealed = ChaCha20Poly1305::new((&k).into())
        .encrypt(Nonce::from_slice(&nonce), data_key.as_slice())
        .map_err(|_| bad("sealing the data key"))?;
    Ok(Wrapped {
        mlkem_ct: B64.encode(ct),
        ephemeral: B64.encode(eph_pub.as_bytes()),
        nonce: B64.encode(nonce),
        sealed: B64.encode(sealed),
    })
}

/// Opens a sealed data key with the private key.
pub fn unwrap(sk: &SecretKey, w: &Wrapped) -> Result<[u8; 32], AuditError> {
    let dk_bytes = b64(&sk.mlkem768, "private key (ML-KEM)")?;
    let dk = Dk::from_bytes(
        &ml_kem::Encoded::<Dk>::try_from(dk_bytes.as_slice())
            .map_err(|_| bad("private key (ML-KEM) size"))?,
    );
    let ct_bytes = b64(&w.mlkem_ct, "wrapped key")?;
    let ct = ml_kem::Ciphertext::<MlKem768>::try_from(ct_bytes.as_slice())
        .map_err(|_| bad("wrapped key size"))?;
    let ss1 = dk
        .decapsulate(&ct)
        .map_err(|_| bad("ML-KEM decapsulation"))?;
    let x = x25519_dalek::StaticSecret::from(arr32(
        &b64(&sk.x25519, "private key (X25519)")?,
        "private key (X25519) size",
    )?);
    let eph = arr32(&b64(&w.ephemeral, "wrapped key")?, "wrapped key")?;
    let ss2 = x.diffie_hellman(&x25519_dalek::PublicKey::from(eph));
    let recipient = x25519_dalek::PublicKey::from(&x);
    let k = kek(&ss1, ss2.as_bytes(), &ct_bytes, &eph, recipient.as_bytes());
    let nonce = b64(&w.nonce, "wrapped key")?;
    if nonce.len() != 12 {
        return Err(bad("wrapped key nonce"));
    }
    let key = ChaCha20Poly1305::new((&k).into())
        .decrypt(
            Nonce::from_slice(&nonce),
            b64(&w.sealed, "wrapped key")?.as_slice(),
        )
        .map_err(|_| bad("this private key does not open the segment's data key"))?;
    arr32(&key, "data key size")
}

/// Encrypts one record; `aad` binds it to its place in the log.
pub fn seal(
    key: &[u8; 32],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; 12], Vec<u8>), AuditError> {
    let nonce: [u8; 12] = random();
    let ct = ChaCha20Poly1305::new(key.into())
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| bad("record encryption"))?;
    Ok((nonce, ct))
}

pub fn open(key: &[u8; 32], aad: &[u8], nonce: &[u8], ct: &[u8]) -> Result<Vec<u8>, AuditError> {
    if nonce.len() != 12 {
        return Err(bad("record nonce"));
    }
    ChaCha20Poly1305::new(key.into())
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| bad("record decryption (wrong key, or the record was altered)"))
}
