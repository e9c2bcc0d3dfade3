//! Helpers shared by the files' test modules: sample records, a fresh store, batched
//! inserts, a spread of traffic over several hours, and an analytics comparison that
//! tolerates float rounding.

use super::aggregate::Aggregate;
use super::insert::LogDb;
use super::query::Analytics;
use crate::config::RedactIp;
use crate::observe::record::{IpCache, IpRedactor, RequestRecord};

pub(super) fn rec(ts_ms: i64, provider: &str, status: u16, ms: f64) -> RequestRecord {
    RequestRecord {
        ts_ms,
        request_id: format!("r{ts_ms}"),
        key_label: "k".into(),
        method: "POST",
        endpoint: "chat",
        provider: provider.into(),
        model: "m".into(),
        attempts: 1,
        status,
        cache_status: "BYPASS",
        prompt_tokens: 10,
        completion_tokens: 5,
        duration_ms: ms,
        cost_usd: 0.001,
        ..Default::default()
    }
}

pub(super) fn temp_db(name: &str) -> LogDb {
    let dir = std::env::temp_dir().join(format!("freeway-db-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    LogDb::open(&dir.join("t.db")).unwrap()
}

pub(super) fn insert(c: &mut LogDb, records: &[RequestRecord]) -> rusqlite::Result<()> {
    let mut ips = IpCache::new(IpRedactor::new(RedactIp::Off, ""));
    c.insert(records, &mut ips)
}

pub(super) fn assert_same(a: &Analytics, b: &Analytics) {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 * x.abs().max(1.0);
    let same = |x: &Aggregate, y: &Aggregate| {
        let mut x = x.clone();
        let mut y = y.clone();
        assert!(close(x.cost_usd, y.cost_usd), "{x:?} {y:?}");
        assert!(close(x.avg_overhead_ms, y.avg_overhead_ms), "{x:?} {y:?}");
        (x.cost_usd, x.avg_overhead_ms, x.overhead_sum) = (0.0, 0.0, 0.0);
        (y.cost_usd, y.avg_overhead_ms, y.overhead_sum) = (0.0, 0.0, 0.0);
        assert_eq!(x, y);
    };
    same(&a.totals, &b.totals);
    assert_eq!(
        a.groups.keys().collect::<Vec<_>>(),
        b.groups.keys().collect::<Vec<_>>()
    );
    for (k, g) in &a.groups {
        same(g, &b.groups[k]);
    }
}

/// Records over ~5 hours from several providers, keys and statuses, written in batches
/// so rollup rows are merged across transactions.
pub(super) fn spread(c: &mut LogDb) {
    let mut rng = fastrand::Rng::with_seed(11);
    let all: Vec<RequestRecord> = (0..3000)
        .map(|i| {
            let mut r = rec(
                i * 6_000 + rng.i64(0..5_000),
                ["a", "b", "c"][rng.usize(..3)],
                [200, 200, 200, 429, 502][rng.usize(..5)],
                (rng.f64() * 20_000_000.0).round() / 1000.0,
            );
            r.key_label = format!("k{}", rng.u32(..3));
            r.attempts = 1 + u32::from(rng.bool());
            r.cache_status = if rng.u32(..4) == 0 { "HIT" } else { "MISS" };
            r.cost_usd = rng.f64() / 1000.0;
            r.overhead_ms = rng.u32(..1000) as f64 / 1000.0;
            r
        })
        .collect();
    for chunk in all.chunks(97) {
        insert(c, chunk).unwrap();
    }
}
