//! Key material: generating a key, splitting a presented one, and comparing hashes in
//! constant time.
//!
//! A key reads `bk_<id>_<secret>`: `id` is 12 hex digits, public, and names the database
//! row; `secret` is 64 hex digits (256 random bits from the OS). Only SHA-256 of the whole
//! key is stored. A plain hash (not a password KDF) is the right tool here: the input is
//! 256 random bits, so there is nothing to brute-force, and checking must cost
//! microseconds on every request.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const PREFIX: &str = "bk_";
const ID_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;

/// SHA-256 of a presented key.
pub type KeyHash = [u8; 32];

pub fn hash(presented: &str) -> KeyHash {
    Sha256::digest(presented.as_bytes()).into()
}

/// True when `presented` hashes to `stored`, in time independent of where they differ.
pub fn matches(presented: &str, stored: &KeyHash) -> bool {
    hash(presented).ct_eq(stored).into()
}

/// A fresh `(id, plaintext key)`.
pub fn generate() -> Result<(String, String), getrandom::Error> {
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    getrandom::getrandom(&mut id)?;
    getrandom::getrandom(&mut secret)?;
    let id = hex::encode(id);
    let key = format!("{PREFIX}{id}_{}", hex::encode(secret));
    Ok((id, key))
}

/// The id part of a well-formed key, or `None`. Never says more than that about why.
pub fn id_of(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let well_formed = id.len() == ID_BYTES * 2
        && secret.len() == SECRET_BYTES * 2
        && id
            .bytes()
            .chain(secret.bytes())
            .all(|b| b.is_ascii_hexdigit());
    well_formed.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_match_their_hash() {
        let (id, key) = generate().unwrap();
        assert_eq!(id_of(&key), Some(id.as_str()));
        let stored = hash(&key);
        assert!(matches(&key, &stored));
        let mut other = key.clone();
        other.pop();
        other.push(if key.ends_with('0') { '1' } else { '0' });
        assert!(!matches(&other, &stored));
        assert_ne!(generate().unwrap().1, key);
    }

    #[test]
    fn malformed_keys_have_no_id() {
        for bad in [
            "",
            "bk_",
            "sk-abc",
            "bk_0123456789ab",
            "bk_0123456789ab_xyz",
            "bk_0123456789a_0000000000000000000000000000000000000000000000000000000000000000",
            "bk_0123456789zz_0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(id_of(bad), None, "{bad}");
        }
    }
}
