//! Exact token buckets in process memory: the per-IP and per-key limits when no Redis is
//! configured (or while it is unreachable). A token bucket needs exact counts per client,
//! which `pingora_limits`' estimators (built to over-count, never under-count, across
//! hashed slots) do not give: a client could be refused because another shares its slot.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Requests it holds when full.
    pub burst: u32,
    /// Refill rate.
    pub per_minute: u32,
}

impl Rule {
    fn per_sec(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    /// How long an idle bucket takes to refill completely (after that it can be forgotten).
    pub fn full_after(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.burst) / self.per_sec())
    }
}

/// The result of taking one token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Take {
    /// Admitted; whole tokens left.
    Admitted { remaining: u32 },
    /// Refused; when the next token will be there.
    Refused { retry_after: Duration },
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, rule: Rule, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rule.per_sec()).min(f64::from(rule.burst));
        self.at = now.max(self.at);
    }
}

const SHARDS: usize = 16;

/// Buckets by id (`ip:1.2.3.4`, `key:label`), sharded to keep lock contention low.
pub struct Buckets {
    shards: [Mutex<HashMap<String, Bucket>>; SHARDS],
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
}

impl Buckets {
    fn shard(&self, id: &str) -> &Mutex<HashMap<String, Bucket>> {
        // FNV-1a: cheap, and ids are not attacker-chosen in a way that matters for 16 shards.
        let mut h: u32 = 0x811c_9dc5;
        for b in id.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        &self.shards[h as usize % SHARDS]
    }

    /// Takes one token from bucket `id` at time `now`.
    pub fn take(&self, id: &str, rule: Rule, now: Instant) -> Take {
        let mut shard = self.shard(id).lock();
        let bucket = match shard.get_mut(id) {
            Some(b) => b,
            None => shard.entry(id.to_string()).or_insert(Bucket {
                tokens: f64::from(rule.burst),
                at: now,
            }),
        };
        bucket.refill(rule, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Take::Admitted {
                remaining: bucket.tokens.floor() as u32,
            }
        } else {
            let wait = (1.0 - bucket.tokens) / rule.per_sec();
            Take::Refused {
                retry_after: Duration::from_secs_f64(wait),
            }
        }
    }

    /// Gives back a token taken from `id` (another bucket of the same request refused it).
    pub fn refund(&self, id: &str, rule: Rule) {
        if let Some(b) = self.shard(id).lock().get_mut(id) {
            b.tokens = (b.tokens + 1.0).min(f64::from(rule.burst));
        }
    }

    /// Forgets buckets idle for longer than `idle` (a full bucket is the same as none).
    pub fn sweep(&self, idle: Duration, now: Instant) {
        for shard in &self.shards {
            shard
                .lock()
                .retain(|_, b| now.saturating_duration_since(b.at) < idle);
        }
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule {
        burst: 10,
        per_minute: 20,
    };

    #[test]
    fn burst_then_refused_with_the_time_to_the_next_token() {
        let b = Buckets::default();
        let t0 = Instant::now();
        for i in 0..10 {
            assert_eq!(
                b.take("ip:a", RULE, t0),
                Take::Admitted { remaining: 9 - i }
            );
        }
        match b.take("ip:a", RULE, t0) {
            Take::Refused { retry_after } => {
                assert!(
                    (retry_after.as_secs_f64() - 3.0).abs() < 1e-6,
                    "{retry_after:?}"
                )
            }
            t => panic!("{t:?}"),
        }
        // Another client has its own bucket.
        assert_eq!(b.take("ip:b", RULE, t0), Take::Admitted { remaining: 9 });
    }

    #[test]
    fn refills_at_the_configured_rate_with_an_injected_clock() {
        let b = Buckets::default();
        let t0 = Instant::now();
        for _ in 0..10 {
            b.take("k", RULE, t0);
        }
        // 20/min = one token every 3 s.
        let refused = |t| matches!(b.take("k", RULE, t), Take::Refused { .. });
        assert!(refused(t0 + Duration::from_millis(2_999)));
        assert_eq!(
            b.take("k", RULE, t0 + Duration::from_secs(3)),
            Take::Admitted { remaining: 0 }
        );
        assert!(refused(t0 + Duration::from_secs(4)));
        // After a long idle time the bucket is full again, never fuller.
        assert_eq!(
            b.take("k", RULE, t0 + Duration::from_secs(3600)),
            Take::Admitted { remaining: 9 }
        );
    }

    #[test]
    fn refund_and_sweep() {
        let b = Buckets::default();
        let t0 = Instant::now();
        b.take("k", RULE, t0);
        b.refund("k", RULE);
        assert_eq!(b.take("k", RULE, t0), Take::Admitted { remaining: 9 });
        b.sweep(RULE.full_after(), t0 + Duration::from_secs(31));
        assert!(b.is_empty());
    }
}
