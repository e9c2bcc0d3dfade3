//! Per-client limits: a token bucket per client IP and per gateway key, charged once per
//! client request right after authentication (however many upstream attempts follow).
//!
//! Buckets are exact. In process they live in [`bucket::Buckets`]; with
//! `[storage].redis_url` they live in Redis and are charged by one Lua script that checks
//! and takes from every bucket of the request atomically, on Redis's clock, so N instances
//! share one limit (never "limit × N"). While Redis is unreachable each instance falls back
//! to its own buckets and says so in `/health`.
//!
//! `pingora_limits` serves the router instead ([`pace`]): request and token rate estimates
//! per model and provider, where an estimate that may over-count is what is wanted.
//! [`slots`] caps the requests in flight to each provider (`[[providers]].max_connections`).

pub mod bucket;
pub mod budget;

use crate::live::redis_link::RedisLink;
use bucket::{Buckets, Rule, Take};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One bucket a request is charged against.
#[derive(Debug, Clone)]
pub struct Charge {
    /// `ip` or `key`: which limit (metrics, messages).
    pub scope: &'static str,
    /// `ip:203.0.113.7`, `key:team-a`.
    pub id: String,
    pub rule: Rule,
}

/// The outcome for the request, and what its `x-ratelimit-*` headers say (the tightest
/// bucket: `limit` is its burst, `remaining` the whole tokens left).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub admitted: bool,
    pub scope: &'static str,
    pub limit: u32,
    pub remaining: u32,
    /// Until the refusing bucket has a token again (zero when admitted).
    pub retry_after: Duration,
}

impl Verdict {
    /// `retry-after` in whole seconds, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

pub struct Limiter {
    local: Buckets,
    redis: Option<Arc<RedisLink>>,
}

/// Takes a token from every bucket (`KEYS`) or from none. `ARGV`: burst and per-minute rate
/// per key. Returns `{refused_index (0 = admitted), wait_ms, remaining...}`.
const TAKE_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local toks = {}
local refused, wait = 0, 0
for i = 1, #KEYS do
  local cap = tonumber(ARGV[2 * i - 1])
  local rate = tonumber(ARGV[2 * i]) / 60000.0
  local b = redis.call('HMGET', KEYS[i], 't', 'ts')
  local tok, ts = tonumber(b[1]), tonumber(b[2])
  if tok == nil or ts == nil then tok, ts = cap, now end
  if now > ts then tok = math.min(cap, tok + (now - ts) * rate) end
  toks[i] = tok
  if tok < 1 and refused == 0 then
    refused = i
    wait = math.ceil((1 - tok) / rate)
  end
end
local out = {refused, wait}
for i = 1, #KEYS do
  local cap = tonumber(ARGV[2 * i - 1])
  local rate = tonumber(ARGV[2 * i]) / 60000.0
  local tok = toks[i]
  if refused == 0 then tok = tok - 1 end
  redis.call('HSET', KEYS[i], 't', tostring(tok), 'ts', now)
  redis.call('PEXPIRE', KEYS[i], math.ceil(cap / rate) + 1000)
  out[#out + 1] = math.floor(tok)
end
return out
";

fn script() -> &'static redis::Script {
    static S: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    S.get_or_init(|| redis::Script::new(TAKE_SCRIPT))
}

impl Limiter {
    pub fn new(redis: Option<Arc<RedisLink>>) -> Limiter {
        Limiter {
            local: Buckets::default(),
            redis,
        }
    }

    /// Charges one request; `None` when no limit applies to it.
    pub async fn charge(&self, charges: &[Charge]) -> Option<Verdict> {
        if charges.is_empty() {
            return None;
        }
        if let Some(link) = &self.redis {
            if let Some(v) = charge_redis(link, charges).await {
                return Some(v);
            }
        }
        Some(self.charge_local(charges, Instant::now()))
    }

    /// The in-process charge at `now`: all buckets or none.
    pub fn charge_local(&self, charges: &[Charge], now: Instant) -> Verdict {
        let mut tightest: Option<Verdict> = None;
        for (i, c) in charges.iter().enumerate() {
            match self.local.take(&c.id, c.rule, now) {
                Take::Admitted { remaining } => {
                    if tightest.is_none_or(|t| remaining < t.remaining) {
                        tightest = Some(Verdict {
                            admitted: true,
                            scope: c.scope,
                            limit: c.rule.burst,
                            remaining,
                            retry_after: Duration::ZERO,
                        });
                    }
                }
                Take::Refused { retry_after } => {
                    for earlier in &charges[..i] {
                        self.local.refund(&earlier.id, earlier.rule);
                    }
                    return Verdict {
                        admitted: false,
                        scope: c.scope,
                        limit: c.rule.burst,
                        remaining: 0,
                        retry_after,
                    };
                }
            }
        }
        // `charges` is not empty, so `tightest` is set.
        tightest.unwrap_or(Verdict {
            admitted: true,
            scope: "",
            limit: 0,
            remaining: 0,
            retry_after: Duration::ZERO,
        })
    }

    /// Forgets idle in-process buckets (called periodically).
    pub fn sweep(&self) {
        self.local.sweep(Duration::from_secs(3600), Instant::now());
    }
}

async fn charge_redis(link: &RedisLink, charges: &[Charge]) -> Option<Verdict> {
    let out: Vec<i64> = link
        .call("rate limit", |mut conn| async move {
            let mut inv = script().prepare_invoke();
            for c in charges {
                inv.key(format!("fw:rl:{}", c.id));
                inv.arg(c.rule.burst).arg(c.rule.per_minute);
            }
            inv.invoke_async(&mut conn).await
        })
        .await?;
    let (refused, wait_ms) = (*out.first()?, *out.get(1)?);
    if refused > 0 {
        let c = charges.get(refused as usize - 1)?;
        return Some(Verdict {
            admitted: false,
            scope: c.scope,
            limit: c.rule.burst,
            remaining: 0,
            retry_after: Duration::from_millis(wait_ms.max(0) as u64),
        });
    }
    let (c, remaining) = charges
        .iter()
        .zip(out.iter().skip(2))
        .min_by_key(|(_, r)| **r)?;
    Some(Verdict {
        admitted: true,
        scope: c.scope,
        limit: c.rule.burst,
        remaining: (*remaining).max(0) as u32,
        retry_after: Duration::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(scope: &'static str, id: &str, burst: u32) -> Charge {
        Charge {
            scope,
            id: id.into(),
            rule: Rule {
                burst,
                per_minute: 60,
            },
        }
    }

    #[test]
    fn a_refusal_by_one_bucket_takes_from_none() {
        let l = Limiter::new(None);
        let now = Instant::now();
        let both = [charge("ip", "ip:a", 5), charge("key", "key:k", 1)];
        let v = l.charge_local(&both, now);
        assert!(v.admitted);
        assert_eq!((v.scope, v.limit, v.remaining), ("key", 1, 0));
        let v = l.charge_local(&both, now);
        assert!(!v.admitted);
        assert_eq!(v.scope, "key");
        assert_eq!(v.retry_after_secs(), 1);
        // The refused request did not cost the IP bucket a token: 4 left, 3 after this.
        let v = l.charge_local(&both[..1], now);
        assert_eq!(v.remaining, 3);
    }
}
