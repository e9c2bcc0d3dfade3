//! Every secret the config holds (provider keys and pool keys, extra provider headers given
//! as secrets, the gateway's own keys), and a scrubber that removes them from text that came
//! from outside — a provider's error body echoing the key it received ("Incorrect API key
//! provided: sk-…"), a stream's error event — before that text reaches a client, a log line,
//! the request log or a metric. Masked forms that keep a few characters of the key
//! (`sk-ab12****…wxyz`) are removed too.
//!
//! Only error paths call it; a request that succeeds never pays for it.

use crate::config::{resolve_secret, Config};
use std::borrow::Cow;

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Secrets shorter than this are not matched by their tail (too many false matches).
const MIN_TAIL_MATCH_LEN: usize = 12;

#[derive(Debug, Default, Clone)]
pub struct Secrets {
    list: Vec<String>,
}

impl Secrets {
    /// Every secret the config resolves to.
    pub fn from_config(config: &Config) -> Secrets {
        let mut list = Vec::new();
        for p in &config.providers {
            for spec in p.api_key.iter().chain(&p.api_keys) {
                list.extend(resolve_secret(spec));
            }
            for v in p.headers.values().filter(|v| v.starts_with("env:")) {
                list.extend(resolve_secret(v));
            }
        }
        for spec in &config.auth.keys {
            list.extend(resolve_secret(spec));
        }
        for k in &config.keys {
            list.extend(k.key.as_deref().and_then(resolve_secret));
        }
        Secrets::new(list)
    }

    pub fn new(list: impl IntoIterator<Item = String>) -> Secrets {
        let mut list: Vec<String> = list.into_iter().filter(|s| s.len() >= 4).collect();
        // Longest first, so a key that contains another is replaced whole.
        list.sort_by_key(|s| std::cmp::Reverse(s.len()));
        list.dedup();
        Secrets { list }
    }

    /// `text` with every secret, whole or masked, replaced by [`REDACTED`].
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for s in &self.list {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), REDACTED));
            }
        }
        let tails: Vec<&str> = self
            .list
            .iter()
            .filter(|s| s.len() >= MIN_TAIL_MATCH_LEN && s.is_char_boundary(s.len() - 4))
            .map(|s| &s[s.len() - 4..])
            .filter(|t| out.contains(t))
            .collect();
        if tails.is_empty() {
            return out;
        }
        // A masked key is one token (a run of key-like characters) that ends in a key's
        // last four characters and hides the rest behind `*`, `•`, `…` or `...`.
        let mut masked = String::with_capacity(out.len());
        let mut replaced = false;
        let mut rest: &str = &out;
        while let Some(start) = rest.find(is_token_char) {
            masked.push_str(&rest[..start]);
            let after = &rest[start..];
            let len = after.find(|c| !is_token_char(c)).unwrap_or(after.len());
            let token = &after[..len];
            let hides = token.contains(['*', '•', '…']) || token.contains("...");
            if hides && tails.iter().any(|t| token.contains(t)) {
                masked.push_str(REDACTED);
                replaced = true;
            } else {
                masked.push_str(token);
            }
            rest = &after[len..];
        }
        if !replaced {
            return out;
        }
        masked.push_str(rest);
        Cow::Owned(masked)
    }

    /// [`Self::scrub`] for bytes (an upstream body); invalid UTF-8 is replaced.
    pub fn scrub_bytes(&self, body: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(body);
        self.scrub(&text).into_owned().into_bytes()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '•' | '…' | '.' | '+' | '/' | '=')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        Secrets::new([
            "sk-proj-abcdefghijklmnop1234wxyz".to_string(),
            "gw-key-000000000042".into(),
            "ab".into(),
        ])
    }

    #[test]
    fn whole_keys_are_replaced() {
        let s = secrets();
        let t = s.scrub("Incorrect API key provided: sk-proj-abcdefghijklmnop1234wxyz. See docs");
        assert_eq!(t, "Incorrect API key provided: [REDACTED]. See docs");
        assert_eq!(s.scrub("bad key gw-key-000000000042"), "bad key [REDACTED]");
    }

    #[test]
    fn masked_forms_keeping_the_last_four_are_replaced() {
        let s = secrets();
        for masked in [
            "sk-proj-abcd****************wxyz",
            "sk-pro...wxyz",
            "sk-…wxyz",
            "********************wxyz",
        ] {
            let text = format!("Incorrect API key provided: {masked}. You can find your key");
            let out = s.scrub(&text);
            assert!(!out.contains("wxyz"), "{masked}: {out}");
            assert!(out.contains(REDACTED), "{masked}: {out}");
            assert!(out.ends_with("You can find your key"), "{out}");
        }
    }

    #[test]
    fn other_text_is_left_alone() {
        let s = secrets();
        // The tail alone, without a mask, is ordinary text; short secrets are not matched.
        let text = "wxyz is a word; ab is too; rate limit reached for 1234wxyz-model";
        assert_eq!(s.scrub(text), text);
        assert!(matches!(s.scrub(text), Cow::Borrowed(_)));
        assert!(Secrets::default().scrub("anything").contains("anything"));
    }

    #[test]
    fn every_configured_secret_is_scrubbed() {
        std::env::set_var("FREEWAY_SECRETS_TEST_HEADER", "hdr-secret-0000000000aaaa");
        let config = crate::config::Config::parse(
            r#"
[auth]
keys = ["gw-auth-secret-0000000001"]

[[keys]]
label = "app"
key = "gw-app-secret-0000000002"

[[providers]]
name = "p"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_keys = ["pool-secret-0000000003", "pool-secret-0000000004"]
headers = { "x-org-token" = "env:FREEWAY_SECRETS_TEST_HEADER" }
  [[providers.models]]
  id = "m"
"#,
        )
        .unwrap();
        let s = Secrets::from_config(&config);
        for secret in [
            "gw-auth-secret-0000000001",
            "gw-app-secret-0000000002",
            "pool-secret-0000000003",
            "pool-secret-0000000004",
            "hdr-secret-0000000000aaaa",
        ] {
            let text = format!("the provider said: {secret} is wrong");
            assert_eq!(
                s.scrub(&text),
                "the provider said: [REDACTED] is wrong",
                "{secret}"
            );
        }
    }

    #[test]
    fn bytes_are_scrubbed_too() {
        let s = secrets();
        let body = br#"{"error":{"message":"key sk-proj-abcdefghijklmnop1234wxyz is invalid"}}"#;
        let out = String::from_utf8(s.scrub_bytes(body)).unwrap();
        assert!(!out.contains("abcdefgh"), "{out}");
        assert!(
            out.contains(r#""message":"key [REDACTED] is invalid""#),
            "{out}"
        );
    }
}
