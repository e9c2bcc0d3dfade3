//! Per-client limits: per IP and per key, exact, and shared across instances via Redis.

use crate::harness::*;
use crate::redis_proc::{redis_up, RedisProc};
use std::time::{Duration, Instant};

fn limits(burst: u32, per_minute: u32) -> String {
    format!(
        "[limits]\nper_ip = {{ burst = {burst}, per_minute = {per_minute} }}\ntrust_forwarded_for = true\n"
    )
}

fn ask(gw: &Proc, ip: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    post_with(
        &gw.url("/v1/chat/completions"),
        None,
        chat_body("p/m", "hi", false),
        &[("x-forwarded-for", ip)],
    )
}

fn header_u64(h: &reqwest::header::HeaderMap, name: &str) -> u64 {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} in {h:?}"))
}

#[test]
fn eleventh_rapid_request_from_one_ip_is_refused_and_other_ips_are_not() {
    let sim = start_sim();
    let body = format!("{}{}", limits(10, 20), sim_provider("p", "", &["m"]));
    let gw = start_gateway(&body, &sim.addr);
    for i in 0..10u64 {
        let (status, h, b) = ask(&gw, "203.0.113.7");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
        assert_eq!(header_u64(&h, "x-ratelimit-limit"), 10);
        assert_eq!(header_u64(&h, "x-ratelimit-remaining"), 9 - i);
    }
    let (status, h, b) = ask(&gw, "203.0.113.7");
    let v = assert_error(status, &b, 429, "rate_limit_error");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(header_u64(&h, "x-ratelimit-limit"), 10);
    assert_eq!(header_u64(&h, "x-ratelimit-remaining"), 0);
    // 20/min: the next token is at most 3 s away.
    let retry = header_u64(&h, "retry-after");
    assert!((1..=3).contains(&retry), "retry-after {retry}");
    // A forged left-hand entry does not help: the right-most hop is the client.
    let (status, _, _) = ask(&gw, "198.51.100.1, 203.0.113.7");
    assert_eq!(status, 429);
    // Another client has its own bucket.
    let (status, h, _) = ask(&gw, "203.0.113.8");
    assert_eq!(status, 200);
    assert_eq!(header_u64(&h, "x-ratelimit-remaining"), 9);
    // Refused requests never reached the provider.
    assert_eq!(sim_count(&sim, "/p/"), 11);
    // Local endpoints are not limited.
    assert_eq!(
        client().get(gw.url("/health")).send().unwrap().status(),
        200
    );
}

#[test]
fn the_per_ip_limit_refills_at_the_configured_rate() {
    let sim = start_sim();
    // burst 1, 120/min: one token every 0.5 s.
    let body = format!("{}{}", limits(1, 120), sim_provider("p", "", &["m"]));
    let gw = start_gateway(&body, &sim.addr);
    let t0 = Instant::now();
    assert_eq!(ask(&gw, "192.0.2.1").0, 200);
    let (status, h, _) = ask(&gw, "192.0.2.1");
    assert_eq!(status, 429);
    assert_eq!(header_u64(&h, "retry-after"), 1);
    let mut refused = 1;
    loop {
        let (status, _, _) = ask(&gw, "192.0.2.1");
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        refused += 1;
        assert!(t0.elapsed() < Duration::from_secs(5), "never refilled");
        std::thread::sleep(Duration::from_millis(25));
    }
    let elapsed = t0.elapsed();
    // Not before the token is due (0.5 s after the first request), and about then.
    assert!(elapsed >= Duration::from_millis(450), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(refused >= 2, "{refused}");
}

#[test]
fn the_per_key_limit_counts_each_gateway_key() {
    let sim = start_sim();
    let body = format!(
        "[auth]\nkeys = [\"k-one\", \"k-two\"]\n[limits]\nper_ip = {{ per_minute = 0 }}\nper_key = {{ burst = 2, per_minute = 6 }}\n{}",
        sim_provider("p", "", &["m"])
    );
    let gw = start_gateway(&body, &sim.addr);
    let url = gw.url("/v1/chat/completions");
    let send = |key| post(&url, Some(key), chat_body("p/m", "hi", false));
    assert_eq!(send("k-one").0, 200);
    assert_eq!(send("k-one").0, 200);
    let (status, h, b) = send("k-one");
    let v = assert_error(status, &b, 429, "rate_limit_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gateway key"),
        "{v}"
    );
    assert_eq!(header_u64(&h, "retry-after"), 10);
    assert_eq!(send("k-two").0, 200);
}

#[test]
fn two_gateways_sharing_redis_admit_the_per_ip_limit_once() {
    let redis = RedisProc::start();
    let sim = start_sim();
    let body = format!("{}{}", limits(20, 20), sim_provider("p", "", &["m"]));
    let storage = format!("redis_url = \"{}\"", redis.url());
    let a = start_gateway_shared(&body, &sim.addr, &storage);
    let b = start_gateway_shared(&body, &sim.addr, &storage);
    wait_until(10, "both gateways on redis", || {
        redis_up(&a) && redis_up(&b)
    });
    let t0 = Instant::now();
    let mut admitted = 0;
    for i in 0..40 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let (status, _, _) = ask(gw, "203.0.113.50");
        assert!(status == 200 || status == 429, "{status}");
        admitted += usize::from(status == 200);
    }
    // 20 in the bucket, plus one per 3 s of test time: never 40.
    let refilled = (t0.elapsed().as_secs_f64() / 3.0).floor() as usize;
    assert!(
        (20..=20 + refilled).contains(&admitted),
        "admitted {admitted} (refill allowance {refilled})"
    );
}

#[test]
fn requests_keep_succeeding_while_redis_is_down_and_shared_limits_resume() {
    let mut redis = RedisProc::start();
    let sim = start_sim();
    // 5 per IP, refilled one per 12 s: nothing refills during the test.
    let body = format!("{}{}", limits(5, 5), sim_provider("p", "", &["m"]));
    let storage = format!("redis_url = \"{}\"", redis.url());
    let a = start_gateway_shared(&body, &sim.addr, &storage);
    let b = start_gateway_shared(&body, &sim.addr, &storage);
    wait_until(10, "both gateways on redis", || {
        redis_up(&a) && redis_up(&b)
    });
    let shared_limit_holds = |ip: &str| {
        for gw in [&a, &b, &a, &b, &a] {
            assert_eq!(ask(gw, ip).0, 200);
        }
        assert_eq!(
            ask(&b, ip).0,
            429,
            "the 6th request across both must be refused"
        );
    };
    shared_limit_holds("198.51.100.10");

    redis.kill();
    let t = Instant::now();
    for gw in [&a, &b] {
        for _ in 0..3 {
            let (status, h, body) = ask(gw, "198.51.100.11");
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            assert!(h.get("x-ratelimit-remaining").is_some());
        }
    }
    // No request waited on the dead Redis for long.
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    wait_until(5, "health to report redis down", || !redis_up(&a));
    let health = json(
        &client()
            .get(a.url("/health"))
            .send()
            .unwrap()
            .bytes()
            .unwrap(),
    );
    assert_eq!(
        health["storage"]["redis"]["mode"], "local fallback",
        "{health}"
    );
    assert!(health["storage"]["redis"]["error"].is_string(), "{health}");

    redis.restart();
    wait_until(10, "both gateways back on redis", || {
        redis_up(&a) && redis_up(&b)
    });
    shared_limit_holds("198.51.100.12");
    assert!(
        a.log_text().contains("redis unreachable"),
        "{}",
        a.log_text()
    );
}
