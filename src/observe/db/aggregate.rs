//! Sums over requests: latency buckets and percentiles, [`Aggregate`] (what analytics
//! returns per group, and what a rollup row stores, its histogram blob included) and
//! [`Row`], the requests of one latency bucket. Separate because the rollup writes these
//! sums and the queries read them: the common ground below both.

use crate::observe::record::RequestRecord;
use serde::Serialize;

/// Latency bucket: 16 per e-fold of (1 + ms), about 6% wide. Percentiles are read from
/// bucket counts, so they are exact to within one bucket.
pub fn lat_bucket(ms: f64) -> i64 {
    ((ms.max(0.0) + 1.0).ln() * 16.0).round() as i64
}

fn bucket_ms(b: i64) -> f64 {
    ((b as f64) / 16.0).exp() - 1.0
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

/// Aggregates over a set of requests.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Aggregate {
    pub requests: u64,
    pub success: u64,
    pub failure: u64,
    /// Answered 429.
    pub rate_limited: u64,
    /// Served after at least one failed attempt.
    pub failovers: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub cache_hits: u64,
    pub cache_hit_rate: f64,
    pub avg_overhead_ms: f64,
    pub latency_ms: Percentiles,
    #[serde(skip)]
    buckets: Vec<(i64, u64)>,
    #[serde(skip)]
    pub(super) overhead_sum: f64,
}

impl Aggregate {
    /// Adds requests that share one latency bucket.
    pub(super) fn add(&mut self, row: &Row) {
        self.add_sums(row);
        self.add_bucket(row.bucket, row.n);
    }

    pub(super) fn add_sums(&mut self, row: &Row) {
        self.requests += row.n;
        self.success += row.ok;
        self.failure += row.n.saturating_sub(row.ok);
        self.rate_limited += row.limited;
        self.failovers += row.failovers;
        self.prompt_tokens += row.prompt;
        self.completion_tokens += row.completion;
        self.cost_usd += row.cost;
        self.cache_hits += row.hits;
        self.overhead_sum += row.overhead;
    }

    fn add_bucket(&mut self, bucket: i64, n: u64) {
        // Buckets beyond 255 (answers over ~2.4 hours) share the last one.
        let bucket = bucket.clamp(0, 255);
        match self.buckets.binary_search_by_key(&bucket, |b| b.0) {
            Ok(i) => self.buckets[i].1 += n,
            Err(i) => self.buckets.insert(i, (bucket, n)),
        }
    }

    pub(super) fn merge(&mut self, other: &Aggregate) {
        self.add_sums(&Row {
            bucket: 0,
            n: other.requests,
            ok: other.success,
            limited: other.rate_limited,
            failovers: other.failovers,
            prompt: other.prompt_tokens,
            completion: other.completion_tokens,
            cost: other.cost_usd,
            hits: other.cache_hits,
            overhead: other.overhead_sum,
        });
        for &(b, n) in &other.buckets {
            self.add_bucket(b, n);
        }
    }

    /// The histogram as stored in the rollup: `(bucket: u8, count: LEB128)` pairs.
    pub(super) fn encode_hist(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buckets.len() * 2);
        for &(b, mut n) in &self.buckets {
            out.push(b as u8);
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        out
    }

    /// Adds a histogram written by [`Aggregate::encode_hist`] (a truncated tail is ignored).
    pub(super) fn add_hist(&mut self, mut blob: &[u8]) {
        while let [b, rest @ ..] = blob {
            let (mut n, mut shift, mut used) = (0u64, 0u32, 0);
            for &byte in rest {
                used += 1;
                n |= u64::from(byte & 0x7f) << shift.min(63);
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            if used == 0 {
                return;
            }
            self.add_bucket(i64::from(*b), n);
            blob = &rest[used..];
        }
    }

    pub(super) fn finish(&mut self) {
        if self.requests == 0 {
            return;
        }
        self.cache_hit_rate = self.cache_hits as f64 / self.requests as f64;
        self.avg_overhead_ms = self.overhead_sum / self.requests as f64;
        let quantile = |q: f64| {
            let rank = (q * self.requests as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for &(b, n) in &self.buckets {
                seen += n;
                if seen >= rank {
                    return (bucket_ms(b) * 10.0).round() / 10.0;
                }
            }
            0.0
        };
        self.latency_ms = Percentiles {
            p50: quantile(0.5),
            p90: quantile(0.9),
            p99: quantile(0.99),
        };
    }
}

/// Requests that share one latency bucket, summed.
#[derive(Default)]
pub(super) struct Row {
    pub(super) bucket: i64,
    pub(super) n: u64,
    pub(super) ok: u64,
    pub(super) limited: u64,
    pub(super) failovers: u64,
    pub(super) prompt: u64,
    pub(super) completion: u64,
    pub(super) cost: f64,
    pub(super) hits: u64,
    pub(super) overhead: f64,
}

impl Row {
    pub(super) fn of(r: &RequestRecord) -> Row {
        let ok = r.status < 400;
        Row {
            bucket: lat_bucket(r.duration_ms),
            n: 1,
            ok: ok.into(),
            limited: (r.status == 429).into(),
            failovers: (ok && r.attempts > 1).into(),
            prompt: r.prompt_tokens,
            completion: r.completion_tokens,
            cost: r.cost_usd,
            hits: (r.cache_status == "HIT").into(),
            overhead: r.overhead_ms,
        }
    }
}

/// Reads `n, ok, limited, failovers, prompt, completion, cost, hits, overhead` (a rollup
/// row's sums) from column `at` on.
pub(super) fn row_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Row> {
    let count = |i: usize| r.get::<_, i64>(at + i).map(|v| v.max(0) as u64);
    Ok(Row {
        bucket: 0,
        n: count(0)?,
        ok: count(1)?,
        limited: count(2)?,
        failovers: count(3)?,
        prompt: count(4)?,
        completion: count(5)?,
        cost: r.get(at + 6)?,
        hits: count(7)?,
        overhead: r.get(at + 8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_large_counts() {
        let mut a = Aggregate::default();
        for (b, n) in [
            (0, 1),
            (17, 127),
            (18, 128),
            (200, u64::from(u32::MAX) * 3),
            (300, 5),
        ] {
            a.add_bucket(b, n);
        }
        let mut back = Aggregate::default();
        back.add_hist(&a.encode_hist());
        assert_eq!(back.buckets, a.buckets);
        assert_eq!(a.buckets.last(), Some(&(255, 5)));
        back.add_hist(&[7, 0x80]); // truncated: ignored, no panic
    }
}
