//! `/v1/analytics` over a million request-log rows: the SQL behind a 30-day query.
//!
//!     cargo bench --bench analytics
//!
//! Loads 1,000,000 synthetic records spread over 30 days (5 providers, 20 models, 10 keys,
//! 3% failures) into a fresh SQLite file, then times the aggregate queries the dashboard
//! makes. Target: under 200 ms for the 30-day range.

use criterion::{criterion_group, criterion_main, Criterion};
use freeway::config::RedactIp;
use freeway::observe::db::{self, GroupBy};
use freeway::observe::record::{IpCache, IpRedactor, RequestRecord};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const ROWS: i64 = 1_000_000;
const DAY_MS: i64 = 86_400_000;

fn load(path: &std::path::Path) -> db::LogDb {
    let _ = std::fs::remove_file(path);
    let mut conn = db::LogDb::open(path).expect("open the bench database");
    let mut ips = IpCache::new(IpRedactor::new(RedactIp::Truncate, ""));
    let providers = ["groq", "gemini", "openrouter", "cerebras", "sambanova"];
    let start = 1_760_000_000_000_i64;
    let t = Instant::now();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..ROWS {
        let p = rng.usize(..providers.len());
        let status = match rng.u32(..100) {
            0 => 429,
            1 => 502,
            2 => 500,
            _ => 200,
        };
        batch.push(RequestRecord {
            ts_ms: start + i * 30 * DAY_MS / ROWS,
            request_id: format!("fw-bench{i:010}"),
            key_label: format!("key-{}", rng.u32(..10)),
            client_ip: Some(IpAddr::from([10, 0, 0, (i % 200) as u8])),
            method: "POST",
            endpoint: "chat",
            requested_model: Some("auto".into()),
            provider: providers[p].into(),
            model: format!("model-{}", rng.u32(..4)),
            attempts: 1 + u32::from(rng.u32(..20) == 0),
            status,
            cache_status: "BYPASS",
            streamed: rng.bool(),
            prompt_tokens: rng.u64(10..4000),
            completion_tokens: rng.u64(1..1000),
            duration_ms: rng.f64() * 3000.0 + 50.0,
            overhead_ms: rng.f64() * 0.3,
            cost_usd: rng.f64() * 0.001,
            ..Default::default()
        });
        if batch.len() == batch.capacity() {
            conn.insert(&batch, &mut ips).expect("insert");
            batch.clear();
        }
    }
    conn.insert(&batch, &mut ips).expect("insert");
    conn.execute_batch("ANALYZE").expect("analyze");
    eprintln!("loaded {ROWS} rows in {:.1} s", t.elapsed().as_secs_f64());
    conn
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("freeway-analytics-bench-{}", std::process::id()));
    let conn = load(&dir.join("bench.db"));
    let (from, to) = (1_760_000_000_000_i64, 1_760_000_000_000_i64 + 30 * DAY_MS);
    let mut g = c.benchmark_group("analytics_1m_rows");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    for group in [
        GroupBy::None,
        GroupBy::Provider,
        GroupBy::Model,
        GroupBy::Day,
    ] {
        g.bench_function(format!("30d_group_by_{}", group.name()), |b| {
            b.iter(|| {
                let a = db::analytics(&conn, from, to, i64::MAX, group).expect("query");
                assert_eq!(a.totals.requests, ROWS as u64);
            })
        });
    }
    g.bench_function("24h_group_by_hour", |b| {
        b.iter(|| db::analytics(&conn, to - DAY_MS, to, i64::MAX, GroupBy::Hour).expect("query"))
    });
    // The dashboard's "last 24 h": up to now (the last hour whole, from the rollup), from an
    // hour boundary.
    let now = to - 1;
    let day_ago = (now - DAY_MS).div_euclid(3_600_000) * 3_600_000;
    g.bench_function("24h_up_to_now_group_by_hour", |b| {
        b.iter(|| db::analytics(&conn, day_ago, now + 60_000, now, GroupBy::Hour).expect("query"))
    });
    g.bench_function("recent_failures_30d", |b| {
        b.iter(|| db::recent_failures(&conn, from, to, 50).expect("query"))
    });
    g.finish();

    // What the writer thread pays per record: a batch of 350 (25 ms of a busy gateway) in
    // one transaction, appended to the million-row store.
    let mut conn = conn;
    let mut ips = IpCache::new(IpRedactor::new(RedactIp::Truncate, ""));
    let mut g = c.benchmark_group("request_log_writer");
    g.throughput(criterion::Throughput::Elements(350));
    let mut ts = to;
    g.bench_function("insert_batch_of_350", |b| {
        b.iter_batched(
            || {
                (0..350)
                    .map(|i| {
                        ts += 3;
                        RequestRecord {
                            ts_ms: ts,
                            request_id: format!("fw-insert{ts:012}"),
                            key_label: "app".into(),
                            client_ip: Some(IpAddr::from([10, 0, 0, (i % 200) as u8])),
                            method: "POST",
                            endpoint: "chat",
                            requested_model: Some("auto".into()),
                            provider: "groq".into(),
                            model: format!("model-{}", i % 4),
                            attempts: 1,
                            status: 200,
                            cache_status: "BYPASS",
                            prompt_tokens: 200,
                            completion_tokens: 100,
                            duration_ms: 420.0,
                            overhead_ms: 0.05,
                            cost_usd: 0.0001,
                            ..Default::default()
                        }
                    })
                    .collect::<Vec<_>>()
            },
            |batch| conn.insert(&batch, &mut ips).expect("insert"),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
    drop(conn);
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
