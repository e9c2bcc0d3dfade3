//! One request's log record, built in the `logging` phase from the request context.
//! Prompt and response bodies are never part of it.

use crate::config::RedactIp;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// What the gateway did for one request. Fields are moved out of the context, not copied:
/// the request path pays for a box and a few moves; formatting (the client IP, JSON) is the
/// writer thread's job.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestRecord {
    /// Unix milliseconds at the request's arrival.
    pub ts_ms: i64,
    pub request_id: String,
    /// Gateway key label (`key-0`, or the label of a hashed key); empty when unauthenticated.
    pub key_label: String,
    /// The client's address, not yet redacted: the writer redacts it (see
    /// `[observability].redact_ip`) before it is written anywhere.
    #[serde(skip)]
    pub client_ip: Option<IpAddr>,
    pub method: &'static str,
    /// Canonical endpoint name (`chat`, `models`, …; `other` for unknown paths).
    pub endpoint: &'static str,
    /// The request path (capped), kept only where the endpoint name does not imply it
    /// (`other`, `passthrough`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub requested_model: Option<String>,
    /// Provider and model that served (or were last tried); empty for local endpoints.
    pub provider: String,
    pub model: String,
    pub attempts: u32,
    /// Why each failed attempt failed (`provider/model: why`).
    pub failures: Vec<String>,
    pub status: u16,
    pub cache_status: &'static str,
    pub streamed: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// True when the provider reported no usage and the gateway estimated the tokens.
    pub tokens_estimated: bool,
    /// Times in milliseconds, to the microsecond ([`ms`]).
    pub ttft_ms: Option<f64>,
    pub duration_ms: f64,
    pub overhead_ms: f64,
    pub cost_usd: f64,
    /// `x-gateway-metadata` (or `cf-aig-metadata`) as sent, capped.
    pub metadata: Option<String>,
    /// The guardrails that matched (prompt and answer), in config order.
    pub guardrails: Vec<String>,
    /// Images generated for the answer (`images` endpoint; 0 elsewhere).
    pub images: u32,
}

/// The method's name without an allocation (`OTHER` for extension methods).
pub fn method_name(m: &http::Method) -> &'static str {
    match *m {
        http::Method::POST => "POST",
        http::Method::GET => "GET",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// Milliseconds to the microsecond: the precision the store keeps (and writes cheaply).
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Longest path and metadata kept in a record.
pub const MAX_FIELD: usize = 1024;

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn cap(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// How client IPs are written.
#[derive(Clone)]
pub struct IpRedactor {
    mode: RedactIp,
    salt: Vec<u8>,
}

impl std::fmt::Debug for IpRedactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpRedactor")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl IpRedactor {
    pub fn new(mode: RedactIp, salt: &str) -> IpRedactor {
        let salt = if salt.is_empty() {
            fastrand::u64(..).to_le_bytes().to_vec()
        } else {
            salt.as_bytes().to_vec()
        };
        IpRedactor { mode, salt }
    }

    pub fn redact(&self, ip: IpAddr) -> String {
        match (self.mode, ip) {
            (RedactIp::Off, ip) => ip.to_string(),
            (RedactIp::Truncate, IpAddr::V4(v4)) => {
                let [a, b, c, _] = v4.octets();
                format!("{a}.{b}.{c}.0/24")
            }
            (RedactIp::Truncate, IpAddr::V6(v6)) => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
            }
            (RedactIp::Hash, ip) => {
                let mut h = Sha256::new();
                h.update(&self.salt);
                h.update(ip.to_string().as_bytes());
                let d = h.finalize();
                format!("h:{}", hex::encode(&d[..8]))
            }
        }
    }
}

/// The writer's redacted-IP strings, by address: a gateway's clients are few and repeat, so
/// each is formatted (or hashed) once, not once per request.
pub struct IpCache {
    redactor: IpRedactor,
    slots: Vec<Option<(IpAddr, String)>>,
}

impl IpCache {
    const SLOTS: usize = 256;

    pub fn new(redactor: IpRedactor) -> IpCache {
        IpCache {
            redactor,
            slots: vec![None; Self::SLOTS],
        }
    }

    /// The redacted form of `ip`.
    pub fn get(&mut self, ip: IpAddr) -> &str {
        let octets = match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        let mixed = (octets ^ (octets >> 64)) as u64;
        let slot = (mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize % Self::SLOTS;
        let hit = matches!(&self.slots[slot], Some((cached, _)) if *cached == ip);
        if !hit {
            self.slots[slot] = Some((ip, self.redactor.redact(ip)));
        }
        match &self.slots[slot] {
            Some((_, s)) => s,
            None => unreachable!("the slot was just filled"),
        }
    }
}

/// The cost of `prompt` and `completion` tokens at per-million-token prices.
pub fn cost_usd(prompt: u64, completion: u64, input_per_mtok: f64, output_per_mtok: f64) -> f64 {
    (prompt as f64 * input_per_mtok + completion as f64 * output_per_mtok) / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_redaction_modes() {
        let ip: IpAddr = "203.0.113.77".parse().unwrap();
        assert_eq!(
            IpRedactor::new(RedactIp::Off, "").redact(ip),
            "203.0.113.77"
        );
        assert_eq!(
            IpRedactor::new(RedactIp::Truncate, "").redact(ip),
            "203.0.113.0/24"
        );
        let v6: IpAddr = "2001:db8:abcd:12::1".parse().unwrap();
        assert_eq!(
            IpRedactor::new(RedactIp::Truncate, "").redact(v6),
            "2001:db8:abcd::/48"
        );
        let h = IpRedactor::new(RedactIp::Hash, "salt");
        assert_eq!(h.redact(ip), h.redact(ip));
        assert!(!h.redact(ip).contains("203"));
        assert_ne!(
            h.redact(ip),
            IpRedactor::new(RedactIp::Hash, "other").redact(ip)
        );
    }

    #[test]
    fn ip_cache_returns_each_address_redacted() {
        let mut c = IpCache::new(IpRedactor::new(RedactIp::Truncate, ""));
        for i in 0..1000u32 {
            let ip = IpAddr::from((0x0a00_0000 + i * 7).to_be_bytes());
            let want = IpRedactor::new(RedactIp::Truncate, "").redact(ip);
            assert_eq!(c.get(ip), want);
            assert_eq!(c.get(ip), want);
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(c.get(v6), "2001:db8:0::/48");
    }

    #[test]
    fn cost_uses_per_million_prices() {
        assert!((cost_usd(1_000_000, 500_000, 0.5, 2.0) - 1.5).abs() < 1e-9);
        assert_eq!(cap("héllo".into(), 2), "h");
    }
}
