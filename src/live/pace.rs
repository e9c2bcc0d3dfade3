//! Request and token rates per model and per provider, estimated with `pingora_limits::Rate`
//! (one-minute windows, read as a sliding window: the previous window weighted by how much of
//! it still falls in the last minute, plus the current one). The router folds them into a
//! model's weight so a model nearing its provider's `rpm`/`tpm` ceiling is drawn less often
//! before the provider starts answering 429 (see `routing::weight`).
//!
//! Tokens are reserved when an attempt starts (the prompt estimate plus `max_tokens`) and
//! corrected with the real usage when the answer ends. The estimators may over-count (hashed
//! slots), never under-count: the safe side for staying under a ceiling.

use crate::providers::Usage;
use crate::routing::load::Load;
use crate::routing::{ModelEntry, Needs};
use pingora_limits::rate::Rate;
use std::time::Duration;

/// Output tokens reserved when the request sets no `max_tokens`.
pub const DEFAULT_OUTPUT_RESERVE: u64 = 256;

pub struct Pace {
    requests: Rate,
    tokens: Rate,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            requests: Rate::new(Duration::from_secs(60)),
            tokens: Rate::new(Duration::from_secs(60)),
        }
    }
}

/// Keys: models by `provider/model`, providers by name (never equal: a model id has a `/`).
fn per_minute(rate: &Rate, key: &str) -> f64 {
    rate.rate_with(&key, |c| {
        (c.prev_samples.max(0) as f64) * (1.0 - c.current_interval_fraction)
            + c.curr_samples.max(0) as f64
    })
}

impl Pace {
    /// Counts an attempt on `model` of `provider` and reserves `tokens`.
    pub fn admit(&self, model: &str, provider: &str, tokens: u64) {
        let t = tokens.min(isize::MAX as u64) as isize;
        for key in [model, provider] {
            self.requests.observe(&key, 1);
            self.tokens.observe(&key, t);
        }
    }

    /// Replaces a reservation with the tokens really used.
    pub fn settle(&self, model: &str, provider: &str, reserved: u64, used: u64) {
        let delta = used as i128 - reserved as i128;
        let delta = delta.clamp(isize::MIN as i128 / 2, isize::MAX as i128 / 2) as isize;
        if delta != 0 {
            for key in [model, provider] {
                self.tokens.observe(&key, delta);
            }
        }
    }

    /// Counts an attempt and reserves its token estimate: the prompt estimate plus
    /// `max_tokens` (or [`DEFAULT_OUTPUT_RESERVE`]). Returns what was reserved.
    pub fn reserve(&self, model: &ModelEntry, needs: &Needs) -> u64 {
        let tokens = u64::from(needs.prompt_tokens)
            + needs
                .max_output_tokens
                .map_or(DEFAULT_OUTPUT_RESERVE, u64::from);
        self.admit(&model.qualified, &model.provider_name, tokens);
        tokens
    }

    /// Settles an answered attempt: real usage when the provider reported it, else the
    /// reservation stands.
    pub fn settle_answer(&self, model: &ModelEntry, reserved: u64, usage: Option<Usage>) {
        if let Some(u) = usage {
            let used = u.prompt_tokens + u.completion_tokens;
            self.settle(&model.qualified, &model.provider_name, reserved, used);
        }
    }

    /// A failed attempt used no tokens (the request still counts).
    pub fn release(&self, model: &ModelEntry, reserved: u64) {
        self.settle(&model.qualified, &model.provider_name, reserved, 0);
    }

    pub fn load(&self, model: &str, provider: &str) -> Load {
        Load {
            model_rpm: per_minute(&self.requests, model),
            model_tpm: per_minute(&self.tokens, model),
            provider_rpm: per_minute(&self.requests, provider),
            provider_tpm: per_minute(&self.tokens, provider),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_and_settles_tokens() {
        let p = Pace::default();
        for _ in 0..5 {
            p.admit("a/m", "a", 100);
        }
        p.admit("a/n", "a", 100);
        p.settle("a/m", "a", 100, 40);
        let l = p.load("a/m", "a");
        assert_eq!(l.model_rpm, 5.0);
        assert_eq!(l.provider_rpm, 6.0);
        assert_eq!(l.model_tpm, 440.0);
        assert_eq!(l.provider_tpm, 540.0);
    }
}
