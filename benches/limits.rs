//! The per-request cost of the limits and the cache on a miss, in process:
//! charge the client's token bucket, hash the normalised request, probe the cache.
//! Run: `cargo bench --bench limits`.

use criterion::{criterion_group, criterion_main, Criterion};
use freeway::cache::{self, Cache};
use freeway::client_ip::{bucket_id, client_ip};
use freeway::config::CacheConfig;
use freeway::limits::bucket::Rule;
use freeway::limits::{Charge, Limiter};
use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

fn body() -> Vec<u8> {
    // A typical small chat request (~1 KiB).
    let msgs: Vec<_> = (0..6)
        .map(|i| serde_json::json!({"role": if i % 2 == 0 { "user" } else { "assistant" },
                                     "content": format!("Message {i}: tell me something about the number {i} and why it matters. ").repeat(2)}))
        .collect();
    serde_json::to_vec(
        &serde_json::json!({"model": "auto", "messages": msgs, "temperature": 0.2, "stream": true}),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let limiter = Limiter::new(None);
    // Never refused, so the admitted path (the common one) is what is measured.
    let rule = Rule {
        burst: u32::MAX,
        per_minute: u32::MAX,
    };
    let peer: IpAddr = "203.0.113.7".parse().unwrap();
    let cache = Cache::in_memory(&CacheConfig::default());
    let body = body();
    println!("request body: {} bytes", body.len());

    c.bench_function("limit_check_ip", |b| {
        b.iter(|| {
            let ip = client_ip(Some(peer), std::iter::empty(), false, &[]).unwrap();
            let charges = [Charge {
                scope: "ip",
                id: format!("ip:{}", bucket_id(ip)),
                rule,
            }];
            black_box(limiter.charge_local(&charges, Instant::now()))
        })
    });
    c.bench_function("cache_lookup_miss_1k_body", |b| {
        b.iter(|| {
            let key = cache::key("chat", "auto", black_box(&body), None).unwrap();
            black_box(cache.get_local(&key))
        })
    });
    c.bench_function("limit_check_plus_cache_miss", |b| {
        b.iter(|| {
            let ip = client_ip(Some(peer), std::iter::empty(), false, &[]).unwrap();
            let charges = [Charge {
                scope: "ip",
                id: format!("ip:{}", bucket_id(ip)),
                rule,
            }];
            let v = limiter.charge_local(&charges, Instant::now());
            let key = cache::key("chat", "auto", black_box(&body), None).unwrap();
            black_box((v, cache.get_local(&key)))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
