//! The request controls a client sends as headers (`x-gateway-*`, with the Cloudflare AI
//! Gateway spellings `cf-aig-*` as aliases), parsed once per model request into one typed
//! value stored on the request context. Nothing else reads these headers.

use crate::errors::ApiError;
use http::HeaderMap;

/// How the wait before re-trying a model grows with each retry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Backoff {
    #[default]
    Constant,
    Linear,
    Exponential,
}

/// The most a client may ask the gateway to wait between retries of one model.
pub const MAX_RETRY_DELAY_MS: u64 = 5000;

/// What the client asked for, beyond the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Controls {
    /// `x-gateway-fallback: auto`: a pinned model may fall back to `auto` candidates.
    pub fallback_auto: bool,
    /// `x-gateway-request-timeout` (ms to the first byte), before the cap.
    pub request_timeout_ms: Option<u64>,
    /// `x-gateway-cache-ttl` (seconds).
    pub cache_ttl: Option<u64>,
    /// `x-gateway-skip-cache: true`.
    pub skip_cache: bool,
    /// `x-gateway-cache-key`.
    pub cache_key: Option<String>,
    /// `x-gateway-metadata`: a JSON object (route conditions, the request log).
    pub metadata: Option<serde_json::Value>,
    /// The metadata header as sent (for the request log).
    pub metadata_raw: Option<String>,
    /// `x-gateway-max-attempts`, before the cap.
    pub max_attempts: Option<usize>,
    /// `x-gateway-retry-delay` (ms, at most [`MAX_RETRY_DELAY_MS`]).
    pub retry_delay_ms: u64,
    pub backoff: Backoff,
    /// `x-gateway-collect-log: false`: no request-log row (metrics still count it).
    pub collect_log: bool,
    /// `x-gateway-force-provider`: only this provider's models.
    pub force_provider: Option<String>,
    /// `x-gateway-stream-resume`: `Some(true)` resumes a text stream that fails mid-answer
    /// on the next capable model; `None`: the `[server] stream_resume` default.
    pub stream_resume: Option<bool>,
}

impl Default for Controls {
    fn default() -> Self {
        Controls {
            fallback_auto: false,
            request_timeout_ms: None,
            cache_ttl: None,
            skip_cache: false,
            cache_key: None,
            metadata: None,
            metadata_raw: None,
            max_attempts: None,
            retry_delay_ms: 0,
            backoff: Backoff::Constant,
            collect_log: true,
            force_provider: None,
            stream_resume: None,
        }
    }
}

fn truthy(v: &str) -> Result<bool, ()> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(()),
    }
}

/// `control` is the header's name without its prefix.
fn number(control: &str, v: &str, unit: &str) -> Result<u64, ApiError> {
    v.trim().parse::<u64>().map_err(|_| {
        ApiError::invalid(format!(
            "x-gateway-{control} must be a whole number of {unit}, not `{}`.",
            v.trim()
        ))
    })
}

impl Controls {
    /// Reads every control header in one pass over the request's headers.
    pub fn parse(headers: &HeaderMap) -> Result<Controls, ApiError> {
        let mut c = Controls::default();
        for (name, value) in headers {
            let name = name.as_str();
            let Some(control) = name
                .strip_prefix("x-gateway-")
                .or_else(|| name.strip_prefix("cf-aig-"))
            else {
                continue;
            };
            let Ok(v) = value.to_str() else {
                return Err(ApiError::invalid(format!(
                    "x-gateway-{control} must be visible ASCII text."
                )));
            };
            match control {
                "fallback" => c.fallback_auto = v.trim() == "auto",
                "request-timeout" => {
                    c.request_timeout_ms =
                        Some(number(control, v, "milliseconds")?).filter(|&ms| ms > 0)
                }
                "cache-ttl" => c.cache_ttl = Some(number(control, v, "seconds")?),
                "skip-cache" => c.skip_cache = truthy(v).unwrap_or(false),
                "cache-key" => c.cache_key = Some(v.to_string()),
                "metadata" => match serde_json::from_str::<serde_json::Value>(v) {
                    Ok(m @ serde_json::Value::Object(_)) => {
                        c.metadata = Some(m);
                        c.metadata_raw = Some(v.to_string());
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            "x-gateway-metadata must be a JSON object, e.g. {\"team\":\"support\"}.",
                        ))
                    }
                },
                "max-attempts" => match number(control, v, "attempts")? {
                    0 => return Err(ApiError::invalid(format!("x-gateway-{control} must be at least 1."))),
                    n => c.max_attempts = Some(n.min(usize::MAX as u64) as usize),
                },
                "retry-delay" => {
                    c.retry_delay_ms = number(control, v, "milliseconds")?.min(MAX_RETRY_DELAY_MS)
                }
                "backoff" => {
                    c.backoff = match v.trim().to_ascii_lowercase().as_str() {
                        "constant" => Backoff::Constant,
                        "linear" => Backoff::Linear,
                        "exponential" => Backoff::Exponential,
                        other => {
                            return Err(ApiError::invalid(format!(
                                "x-gateway-{control} must be `constant`, `linear` or `exponential`, not `{other}`."
                            )))
                        }
                    }
                }
                "collect-log" => {
                    c.collect_log = truthy(v).map_err(|_| {
                        ApiError::invalid(format!("x-gateway-{control} must be `true` or `false`."))
                    })?
                }
                "stream-resume" => {
                    c.stream_resume = Some(truthy(v).map_err(|_| {
                        ApiError::invalid(format!("x-gateway-{control} must be `true` or `false`."))
                    })?)
                }
                "force-provider" => {
                    c.force_provider = Some(v.trim().to_string()).filter(|p| !p.is_empty())
                }
                // Others (`x-gateway-provider-key`, response-only names) are not controls
                // of this request.
                _ => {}
            }
        }
        Ok(c)
    }

    /// Attempts allowed for this request: the client's ask, capped by the config.
    pub fn attempts(&self, configured: usize) -> usize {
        self.max_attempts.map_or(configured, |n| n.min(configured))
    }

    /// Whether a text stream that fails mid-answer resumes on another model: the client's
    /// ask, else the configured default.
    pub fn resume(&self, configured: crate::config::StreamResume) -> bool {
        self.stream_resume
            .unwrap_or(configured == crate::config::StreamResume::Text)
    }

    /// Time to the first byte: the client's ask, capped by the config.
    pub fn first_byte_ms(&self, configured: u64) -> u64 {
        self.request_timeout_ms
            .map_or(configured, |ms| ms.min(configured))
    }

    /// The wait before the `retry`-th re-try (1-based) of a model already tried.
    pub fn retry_delay(&self, retry: u32) -> std::time::Duration {
        let base = self.retry_delay_ms;
        let ms = match self.backoff {
            Backoff::Constant => base,
            Backoff::Linear => base.saturating_mul(u64::from(retry)),
            Backoff::Exponential => base.saturating_mul(1u64 << retry.saturating_sub(1).min(16)),
        };
        std::time::Duration::from_millis(ms.min(MAX_RETRY_DELAY_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Controls, ApiError> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        Controls::parse(&h)
    }

    #[test]
    fn no_headers_means_defaults() {
        assert_eq!(
            parse(&[("content-type", "x")]).unwrap(),
            Controls::default()
        );
    }

    #[test]
    fn both_spellings_are_read() {
        let c = parse(&[
            ("x-gateway-fallback", "auto"),
            ("cf-aig-cache-ttl", "60"),
            ("cf-aig-skip-cache", "true"),
            ("x-gateway-cache-key", "k1"),
            ("cf-aig-metadata", r#"{"team":"a"}"#),
            ("cf-aig-request-timeout", "1500"),
            ("x-gateway-max-attempts", "2"),
            ("cf-aig-retry-delay", "9000"),
            ("cf-aig-backoff", "exponential"),
            ("cf-aig-collect-log", "false"),
            ("x-gateway-force-provider", "groq"),
        ])
        .unwrap();
        assert!(c.fallback_auto && c.skip_cache && !c.collect_log);
        assert_eq!(c.cache_ttl, Some(60));
        assert_eq!(c.cache_key.as_deref(), Some("k1"));
        assert_eq!(c.metadata.unwrap()["team"], "a");
        assert_eq!(c.metadata_raw.as_deref(), Some(r#"{"team":"a"}"#));
        assert_eq!(c.request_timeout_ms, Some(1500));
        assert_eq!(c.max_attempts, Some(2));
        assert_eq!(c.retry_delay_ms, MAX_RETRY_DELAY_MS);
        assert_eq!(c.backoff, Backoff::Exponential);
        assert_eq!(c.force_provider.as_deref(), Some("groq"));
    }

    #[test]
    fn bad_values_are_refused_with_the_header_name() {
        for (k, v) in [
            ("x-gateway-metadata", "[1]"),
            ("x-gateway-metadata", "nope"),
            ("x-gateway-cache-ttl", "soon"),
            ("x-gateway-request-timeout", "-5"),
            ("cf-aig-max-attempts", "0"),
            ("x-gateway-backoff", "random"),
            ("x-gateway-collect-log", "maybe"),
            ("x-gateway-stream-resume", "perhaps"),
        ] {
            let e = parse(&[(k, v)]).unwrap_err();
            assert_eq!(e.status, 400, "{k}");
            let name = k.replace("cf-aig-", "x-gateway-");
            assert!(e.message.contains(&name), "{k}: {}", e.message);
        }
    }

    #[test]
    fn stream_resume_is_the_clients_ask_else_the_default() {
        use crate::config::StreamResume;
        let on = parse(&[("x-gateway-stream-resume", "true")]).unwrap();
        let off = parse(&[("x-gateway-stream-resume", "false")]).unwrap();
        assert!(on.resume(StreamResume::Off) && !off.resume(StreamResume::Text));
        assert!(Controls::default().resume(StreamResume::Text));
        assert!(!Controls::default().resume(StreamResume::Off));
    }

    #[test]
    fn caps_apply() {
        let c = parse(&[
            ("x-gateway-max-attempts", "9"),
            ("x-gateway-request-timeout", "600000"),
        ])
        .unwrap();
        assert_eq!(c.attempts(4), 4);
        assert_eq!(c.first_byte_ms(120_000), 120_000);
        assert_eq!(Controls::default().attempts(4), 4);
        assert_eq!(Controls::default().first_byte_ms(50), 50);
    }

    #[test]
    fn backoff_grows_as_named() {
        let mut c = Controls {
            retry_delay_ms: 100,
            ..Controls::default()
        };
        assert_eq!(c.retry_delay(3).as_millis(), 100);
        c.backoff = Backoff::Linear;
        assert_eq!(c.retry_delay(3).as_millis(), 300);
        c.backoff = Backoff::Exponential;
        assert_eq!(c.retry_delay(3).as_millis(), 400);
        assert_eq!(c.retry_delay(30).as_millis(), 5000);
    }
}
