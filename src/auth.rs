//! Gateway keys: who may call the API.
//!
//! Keys are stored as sha256 digests only (literal keys are hashed at load), and the digest
//! of the presented key is compared against every stored one in constant time.

use crate::config::{parse_key_hash, resolve_secret, AuthConfig};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub struct Auth {
    keys: Vec<(String, [u8; 32])>,
    public_paths: Vec<String>,
}

impl Auth {
    pub fn new(cfg: &AuthConfig) -> Auth {
        let mut keys = Vec::new();
        for (i, k) in cfg.keys.iter().enumerate() {
            match resolve_secret(k) {
                Some(secret) => keys.push((format!("key-{i}"), sha256(secret.as_bytes()))),
                None => log::warn!("auth.keys[{i}] does not resolve (unset env var?): ignored"),
            }
        }
        // Validated at config load; a bad entry cannot reach here.
        keys.extend(cfg.key_hashes.iter().filter_map(|h| parse_key_hash(h).ok()));
        Auth {
            keys,
            public_paths: cfg.public_paths.clone(),
        }
    }

    /// True when no key is configured: every request is allowed.
    pub fn disabled(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn is_public(&self, path: &str) -> bool {
        self.public_paths.iter().any(|p| p == path)
    }

    /// The label of the key presented in the headers, if it is valid.
    /// `authorization` is the raw `Authorization` header, `x_api_key` the `x-api-key` one.
    pub fn check(&self, authorization: Option<&[u8]>, x_api_key: Option<&[u8]>) -> Option<&str> {
        if self.disabled() {
            return Some("anonymous");
        }
        // The scheme is case-insensitive (RFC 7235).
        let presented = authorization
            .and_then(|v| (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..]))
            .or(x_api_key)?;
        let digest = sha256(trim(presented));
        let mut found = None;
        // No early exit: every stored key is compared.
        for (label, stored) in &self.keys {
            if bool::from(stored.ct_eq(&digest)) {
                found = Some(label.as_str());
            }
        }
        found
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// `label:sha256hex` for `[auth].key_hashes`, as printed by `freeway hash-key`.
pub fn hash_key_line(label: &str, key: &str) -> String {
    format!("{label}:{}", hex::encode(sha256(key.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(&AuthConfig {
            keys: vec!["sk-literal".into()],
            key_hashes: vec![hash_key_line("ops", "sk-hashed")],
            public_paths: vec!["/health".into()],
        })
    }

    #[test]
    fn accepts_literal_and_hashed_keys() {
        let a = auth();
        assert_eq!(a.check(Some(b"Bearer sk-literal"), None), Some("key-0"));
        assert_eq!(a.check(None, Some(b"sk-hashed")), Some("ops"));
    }

    #[test]
    fn rejects_wrong_or_missing_keys() {
        let a = auth();
        assert_eq!(a.check(Some(b"Bearer sk-wrong"), None), None);
        assert_eq!(a.check(Some(b"Basic sk-literal"), None), None);
        assert_eq!(a.check(Some(b"BEARER sk-literal"), None), Some("key-0"));
        assert_eq!(a.check(Some(b"bEaReR  sk-literal"), None), Some("key-0"));
        assert_eq!(a.check(None, None), None);
    }

    #[test]
    fn no_keys_means_disabled() {
        let a = Auth::new(&AuthConfig {
            keys: vec!["env:FREEWAY_TEST_SURELY_UNSET".into()],
            key_hashes: vec![],
            public_paths: vec![],
        });
        assert!(a.disabled());
        assert!(a.check(None, None).is_some());
    }
}
