//! Gateway keys: who may call the API.
//!
//! Keys are stored as sha256 digests only (literal keys are hashed at load), and the digest
//! of the presented key is compared against every stored one in constant time.

use crate::config::{parse_key_hash, resolve_secret, AuthConfig, KeyConfig};
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};
use subtle::ConstantTimeEq;

/// What a gateway key may do: its label and its own limits (`[[keys]]`; keys from
/// `[auth].keys` / `key_hashes` have none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyPolicy {
    pub label: String,
    /// Requests per minute (0 = none).
    pub rpm: u32,
    /// Tokens per minute (0 = none).
    pub tpm: u32,
    /// USD per UTC day / calendar month (0 = none).
    pub daily_usd: f64,
    pub monthly_usd: f64,
    /// Allowed model patterns; empty = all.
    pub models: Vec<String>,
}

impl KeyPolicy {
    fn plain(label: String) -> KeyPolicy {
        KeyPolicy {
            label,
            ..KeyPolicy::default()
        }
    }

    fn from_config(k: &KeyConfig) -> KeyPolicy {
        KeyPolicy {
            label: k.label.clone(),
            rpm: k.rpm,
            tpm: k.tpm,
            daily_usd: k.budget.daily_usd,
            monthly_usd: k.budget.monthly_usd,
            models: k.models.clone(),
        }
    }

    /// Whether a budget or a token limit applies (a reservation is needed per attempt).
    pub fn metered(&self) -> bool {
        self.daily_usd > 0.0 || self.monthly_usd > 0.0 || self.tpm > 0
    }

    /// The allow-list's model patterns (entries other than the selectors `auto` and
    /// `dynamic/…`).
    fn model_patterns(&self) -> impl Iterator<Item = &str> {
        self.models
            .iter()
            .map(String::as_str)
            .filter(|p| !is_selector(p))
    }

    /// Whether the client may ask for `requested` (the `model` field as sent; `None` =
    /// `auto`). Model names are checked against the candidates (see [`allows_model`]); a
    /// selector (`auto`, `dynamic/<route>`) is refused only when the list names selectors
    /// and not this one, or names no model pattern a candidate could match.
    ///
    /// [`allows_model`]: KeyPolicy::allows_model
    pub fn allows_selector(&self, requested: Option<&str>) -> bool {
        if self.models.is_empty() {
            return true;
        }
        let requested = requested.unwrap_or("auto");
        if !is_selector(requested) {
            return true;
        }
        let mut selectors = self.models.iter().filter(|p| is_selector(p)).peekable();
        selectors.peek().is_none() || selectors.any(|p| glob(p, requested))
    }

    /// Whether a model (any of its names: `provider/id`, `id`, aliases) is allowed.
    pub fn allows_model<'a>(&self, names: impl Iterator<Item = &'a str> + Clone) -> bool {
        if self.models.is_empty() {
            return true;
        }
        let mut patterns = self.model_patterns().peekable();
        if patterns.peek().is_none() {
            // Only selectors listed: every model behind them.
            return true;
        }
        patterns.any(|p| names.clone().any(|n| glob(p, n)))
    }
}

fn is_selector(name: &str) -> bool {
    name == "auto" || name.starts_with("dynamic/")
}

/// `*` matches any run of characters (including `/`); everything else literally.
pub fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

pub struct Auth {
    keys: Vec<([u8; 32], Arc<KeyPolicy>)>,
    public_paths: Vec<String>,
}

impl Auth {
    pub fn new(cfg: &AuthConfig) -> Auth {
        Auth::with_keys(cfg, &[])
    }

    /// `[auth]` plus the `[[keys]]` entries.
    pub fn with_keys(cfg: &AuthConfig, entries: &[KeyConfig]) -> Auth {
        let mut keys = Vec::new();
        for (i, k) in cfg.keys.iter().enumerate() {
            match resolve_secret(k) {
                Some(secret) => keys.push((
                    sha256(secret.as_bytes()),
                    Arc::new(KeyPolicy::plain(format!("key-{i}"))),
                )),
                None => log::warn!("auth.keys[{i}] does not resolve (unset env var?): ignored"),
            }
        }
        // Validated at config load; a bad entry cannot reach here.
        keys.extend(
            cfg.key_hashes
                .iter()
                .filter_map(|h| parse_key_hash(h).ok())
                .map(|(label, d)| (d, Arc::new(KeyPolicy::plain(label)))),
        );
        for (i, k) in entries.iter().enumerate() {
            let digest = match (&k.key, &k.hash) {
                (Some(spec), _) => match resolve_secret(spec) {
                    Some(secret) => sha256(secret.as_bytes()),
                    None => {
                        log::warn!(
                            "keys[{i}] (`{}`) does not resolve (unset env var?): ignored",
                            k.label
                        );
                        continue;
                    }
                },
                (None, Some(h)) => match parse_key_hash(&format!("{}:{h}", k.label)) {
                    Ok((_, d)) => d,
                    Err(_) => continue,
                },
                (None, None) => continue,
            };
            keys.push((digest, Arc::new(KeyPolicy::from_config(k))));
        }
        Auth {
            keys,
            public_paths: cfg.public_paths.clone(),
        }
    }

    /// The policy of every configured key (for `/v1/analytics`' budget lines).
    pub fn policies(&self) -> impl Iterator<Item = &Arc<KeyPolicy>> {
        self.keys.iter().map(|(_, p)| p)
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
        self.identify(authorization, x_api_key)
            .map(|p| p.label.as_str())
    }

    /// The policy of the key presented in the headers, if it is valid.
    pub fn identify(
        &self,
        authorization: Option<&[u8]>,
        x_api_key: Option<&[u8]>,
    ) -> Option<&Arc<KeyPolicy>> {
        if self.disabled() {
            static ANONYMOUS: OnceLock<Arc<KeyPolicy>> = OnceLock::new();
            return Some(ANONYMOUS.get_or_init(|| Arc::new(KeyPolicy::plain("anonymous".into()))));
        }
        let presented = bearer(authorization).or(x_api_key)?;
        let digest = sha256(trim(presented));
        let mut found = None;
        // No early exit: every stored key is compared.
        for (stored, policy) in &self.keys {
            if bool::from(stored.ct_eq(&digest)) {
                found = Some(policy);
            }
        }
        found
    }
}

/// The credential of an `Authorization: Bearer …` header (the scheme is case-insensitive,
/// RFC 7235).
pub fn bearer(authorization: Option<&[u8]>) -> Option<&[u8]> {
    authorization
        .and_then(|v| (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ")).then(|| &v[7..]))
}

pub fn trim(b: &[u8]) -> &[u8] {
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
    fn keys_entries_carry_their_policy() {
        let entries: Vec<KeyConfig> = toml::from_str::<toml::Value>(
            r#"keys = [
              { label = "bot", key = "sk-bot", rpm = 5, models = ["groq/*", "auto"] },
              { label = "ops", hash = "HASH" },
            ]"#
            .replace("HASH", &hex::encode(sha256(b"sk-ops")))
            .as_str(),
        )
        .unwrap()["keys"]
            .clone()
            .try_into()
            .unwrap();
        let a = Auth::with_keys(&AuthConfig::default(), &entries);
        let bot = a.identify(Some(b"Bearer sk-bot"), None).unwrap();
        assert_eq!((bot.label.as_str(), bot.rpm), ("bot", 5));
        assert_eq!(a.check(None, Some(b"sk-ops")), Some("ops"));
        assert!(bot.allows_selector(None));
        assert!(!bot.allows_selector(Some("dynamic/x")));
        assert!(bot.allows_model(["groq/llama", "llama"].into_iter()));
        assert!(!bot.allows_model(["openai/gpt", "gpt"].into_iter()));
    }

    #[test]
    fn globs() {
        assert!(glob("groq/*", "groq/llama-3"));
        assert!(glob("*", "anything"));
        assert!(glob("*llama*", "groq/llama-3"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXc"));
        assert!(!glob("groq/*", "openai/gpt"));
        assert!(glob("exact", "exact"));
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
