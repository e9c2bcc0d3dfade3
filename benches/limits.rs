//! The per-request cost of the limits and the cache on a miss, in process:
//! charge the client's token bucket, hash the normalised request, probe the cache; and a
//! `[[keys]]` key's checks (identify, rpm bucket, allow-list) plus a budget reservation and
//! its settlement in the embedded ledger.
//! Run: `cargo bench --bench limits`.

use criterion::{criterion_group, criterion_main, Criterion};
use freeway::auth::Auth;
use freeway::cache::{self, Cache};
use freeway::client_ip::{bucket_id, client_ip};
use freeway::config::{AuthConfig, BudgetConfig, CacheConfig, KeyConfig};
use freeway::limits::bucket::Rule;
use freeway::limits::budget::{Budgets, Clock, Limits, SystemClock, Windows};
use freeway::limits::{Charge, Limiter};
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
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

    // A `[[keys]]` key with rpm, tpm, a budget and an allow-list: identify the key (sha256
    // and constant-time compare over 20 keys), charge its rpm bucket, check the model
    // against its allow-list, reserve the worst case in the embedded ledger, settle it.
    let entries: Vec<KeyConfig> = (0..20)
        .map(|i| KeyConfig {
            label: format!("app-{i}"),
            key: Some(format!("sk-app-{i}-0123456789abcdef")),
            hash: None,
            rpm: u32::MAX,
            tpm: u32::MAX,
            budget: BudgetConfig {
                daily_usd: 1e9,
                monthly_usd: 1e9,
            },
            models: vec!["groq/*".into(), "auto".into()],
        })
        .collect();
    let auth = Auth::with_keys(&AuthConfig::default(), &entries);
    let budgets = Budgets::new(None, Arc::new(SystemClock));
    let clock = SystemClock;
    c.bench_function("key_checks_plus_budget_reservation", |b| {
        b.iter(|| {
            let policy = auth
                .identify(Some(black_box(b"Bearer sk-app-7-0123456789abcdef")), None)
                .unwrap();
            let charges = [Charge {
                scope: "key",
                id: format!("krpm:{}", policy.label),
                rule,
            }];
            let v = limiter.charge_local(&charges, Instant::now());
            let allowed = policy.allows_selector(Some("auto"))
                && policy.allows_model(["groq/llama-3.3-70b", "llama-3.3-70b"].into_iter());
            let now = clock.now_ms();
            let hold = budgets
                .reserve_local(
                    &policy.label,
                    Limits::of(policy),
                    black_box(1_250_000),
                    1200,
                    now,
                    Windows::at(now),
                )
                .unwrap();
            // Settled at 0 tokens: millions of iterations a minute would fill any tpm.
            budgets.settle_local(hold, 900_000, 0);
            black_box((v, allowed))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
