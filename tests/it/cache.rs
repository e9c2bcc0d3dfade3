//! The response cache: exact hits, stream replay, bypass, persistence, coalescing, sharing.

use crate::harness::*;
use crate::redis_proc::{redis_up, RedisProc};
use std::time::Duration;

const TTL: (&str, &str) = ("x-gateway-cache-ttl", "60");

fn chat(
    gw: &Proc,
    text: &str,
    stream: bool,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    post_with(
        &gw.url("/v1/chat/completions"),
        None,
        chat_body("p/m", text, stream),
        headers,
    )
}

fn cache_status(h: &reqwest::header::HeaderMap) -> String {
    h.get("x-gateway-cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn content(body: &[u8]) -> String {
    json(body)["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn second_identical_request_is_a_hit_and_the_upstream_saw_one() {
    let sim = start_sim();
    let gw = start_gateway(&sim_provider("p", "", &["m"]), &sim.addr);
    let (s1, h1, b1) = chat(&gw, "cache me", false, &[TTL]);
    assert_eq!((s1, cache_status(&h1).as_str()), (200, "MISS"));
    let (s2, h2, b2) = chat(&gw, "cache me", false, &[TTL]);
    assert_eq!((s2, cache_status(&h2).as_str()), (200, "HIT"));
    assert_eq!(b1, b2);
    assert_eq!(h2["x-gateway-provider"], "p");
    assert_eq!(h2["x-gateway-attempts"], "0");
    assert_eq!(sim_count(&sim, "/p/"), 1);
    // Other content misses; no TTL asked and no default: BYPASS, never stored.
    assert_eq!(cache_status(&chat(&gw, "other", false, &[TTL]).1), "MISS");
    assert_eq!(cache_status(&chat(&gw, "plain", false, &[]).1), "BYPASS");
    assert_eq!(cache_status(&chat(&gw, "plain", false, &[TTL]).1), "MISS");
    // The Cloudflare spelling works too.
    assert_eq!(
        cache_status(&chat(&gw, "plain", false, &[("cf-aig-cache-ttl", "60")]).1),
        "HIT"
    );
    // A bad TTL is the client's error.
    let (s, _, b) = chat(&gw, "x", false, &[("x-gateway-cache-ttl", "soon")]);
    assert_error(s, &b, 400, "invalid_request_error");
}

#[test]
fn skip_cache_header_bypasses_and_cache_key_separates() {
    let sim = start_sim();
    let gw = start_gateway(&sim_provider("p", "", &["m"]), &sim.addr);
    chat(&gw, "skip", false, &[TTL]);
    for skip in ["x-gateway-skip-cache", "cf-aig-skip-cache"] {
        let (s, h, _) = chat(&gw, "skip", false, &[TTL, (skip, "true")]);
        assert_eq!((s, cache_status(&h).as_str()), (200, "BYPASS"));
    }
    assert_eq!(sim_count(&sim, "/p/"), 3);
    let (_, h, _) = chat(
        &gw,
        "skip",
        false,
        &[TTL, ("x-gateway-cache-key", "tenant-b")],
    );
    assert_eq!(cache_status(&h), "MISS");
    assert_eq!(cache_status(&chat(&gw, "skip", false, &[TTL]).1), "HIT");
}

#[test]
fn streamed_answers_are_stored_and_replayed_as_sse_the_openai_sdk_parses() {
    let sim = start_sim();
    let gw = start_gateway(&sim_provider("p", "", &["m"]), &sim.addr);
    // First as a stream: assembled into the cache from the events sent.
    let (s, h, b) = chat(&gw, "stream me please", true, &[TTL]);
    assert_eq!((s, cache_status(&h).as_str()), (200, "MISS"));
    assert!(String::from_utf8_lossy(&b).contains("[DONE]"));
    // Then as JSON: the same entry.
    let (_, h, b) = chat(&gw, "stream me please", false, &[TTL]);
    assert_eq!(cache_status(&h), "HIT");
    let text = content(&b);
    assert!(text.contains("stream me please"), "{text}");
    // And replayed as a stream to the official SDK.
    run_python(
        &[
            &sdk_script("cache_replay_check.py"),
            "--base-url",
            &gw.url("/v1"),
            "--model",
            "p/m",
            "--text",
            "stream me please",
            "--expect",
            &text,
        ],
        "CACHE REPLAY OK",
        &|| gw.log_text(),
    );
    assert_eq!(sim_count(&sim, "/p/"), 1);
}

#[test]
fn a_stream_that_breaks_midway_is_never_stored() {
    let sim = start_sim();
    let gw = start_gateway(&sim_provider("p", "drop", &["m"]), &sim.addr);
    let (s, h, b) = chat(&gw, "one two three four five", true, &[TTL]);
    assert_eq!((s, cache_status(&h).as_str()), (200, "MISS"));
    let events = sse_data(&b);
    assert!(
        events.last().is_some_and(|e| e.contains("\"error\"")),
        "{events:?}"
    );
    // Asked again (as JSON, which the sim now answers whole): not a HIT of the broken
    // stream. The model may be cooling down after it (503); either way, no HIT.
    sim_override(&sim, "/p/", "echo");
    let (s, h, _) = chat(&gw, "one two three four five", false, &[TTL]);
    assert_eq!(cache_status(&h), "MISS", "status {s}");
    assert!(s == 200 || s == 503, "{s}");
}

#[test]
fn a_restart_keeps_the_cached_answer() {
    let sim = start_sim();
    let mut gw = start_gateway(&sim_provider("p", "", &["m"]), &sim.addr);
    let (_, h, first) = chat(&gw, "remember me", false, &[TTL]);
    assert_eq!(cache_status(&h), "MISS");
    // Written behind the request: wait until the row is in the SQLite file.
    let db = gw.log.parent().unwrap().join("freeway.db");
    wait_until(10, "the entry on disk", || {
        rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row("SELECT COUNT(*) FROM response_cache", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .is_ok_and(|n| n == 1)
    });
    gw.restart();
    let (_, h, again) = chat(&gw, "remember me", false, &[TTL]);
    assert_eq!(cache_status(&h), "HIT");
    assert_eq!(first, again);
    assert_eq!(sim_count(&sim, "/p/"), 1);
}

#[test]
fn fifty_concurrent_identical_requests_make_one_upstream_call() {
    let sim = start_sim();
    // `slow`: the provider takes 200 ms, so all 50 arrive while the first is in flight.
    let gw = start_gateway(&sim_provider("p", "slow", &["m"]), &sim.addr);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
    let url = gw.url("/v1/chat/completions");
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let barrier = barrier.clone();
            let url = url.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let (s, h, b) =
                    post_with(&url, None, chat_body("p/m", "all at once", false), &[TTL]);
                (s, cache_status(&h), content(&b))
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(results.iter().all(|(s, _, _)| *s == 200), "{results:?}");
    assert_eq!(
        results.iter().filter(|(_, c, _)| c == "MISS").count(),
        1,
        "{results:?}"
    );
    assert!(results.iter().all(|(_, _, t)| t == &results[0].2));
    assert_eq!(sim_count(&sim, "/p/"), 1);
}

#[test]
fn two_instances_share_the_cache_through_redis_and_survive_its_outage() {
    let mut redis = RedisProc::start();
    let sim = start_sim();
    let body = sim_provider("p", "", &["m"]);
    let storage = format!("redis_url = \"{}\"", redis.url());
    let a = start_gateway_shared(&body, &sim.addr, &storage);
    let b = start_gateway_shared(&body, &sim.addr, &storage);
    wait_until(10, "both gateways on redis", || {
        redis_up(&a) && redis_up(&b)
    });
    assert_eq!(cache_status(&chat(&a, "shared", false, &[TTL]).1), "MISS");
    assert_eq!(cache_status(&chat(&b, "shared", false, &[TTL]).1), "HIT");
    // Stored before the last bytes went out: the other instance hits at once, streamed too.
    assert_eq!(cache_status(&chat(&a, "streamed", true, &[TTL]).1), "MISS");
    assert_eq!(cache_status(&chat(&b, "streamed", true, &[TTL]).1), "HIT");
    assert_eq!(sim_count(&sim, "/p/"), 2);

    redis.kill();
    let t = std::time::Instant::now();
    let (s, h, _) = chat(&a, "while down", false, &[TTL]);
    assert_eq!((s, cache_status(&h).as_str()), (200, "MISS"));
    let (s, _, _) = chat(&b, "while down", false, &[TTL]);
    assert_eq!(s, 200);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    redis.restart();
    wait_until(10, "both gateways back on redis", || {
        redis_up(&a) && redis_up(&b)
    });
    assert_eq!(cache_status(&chat(&a, "after", false, &[TTL]).1), "MISS");
    assert_eq!(cache_status(&chat(&b, "after", false, &[TTL]).1), "HIT");
}
