//! Health-aware routing: cooldowns, probes, spreading, daily caps, routes.

use crate::harness::*;
use std::collections::BTreeMap;

const KEY: &str = "sk-gw-test";

fn provider(name: &str, headers: &[(&str, &str)], model: &str, extra: &str) -> String {
    let headers: Vec<String> = headers
        .iter()
        .map(|(k, v)| format!("\"{k}\" = \"{v}\""))
        .collect();
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"http://{{sim}}/{name}/v1\"\n\
         api_key = \"sk-{name}\"\nsimulated = true\nheaders = {{ {} }}\n  [[providers.models]]\n  id = \"{model}\"\n  \
         aliases = [\"shared\"]\n  context_window = 131072\n  capabilities = [\"tools\", \"json\", \"stream\"]\n{extra}",
        headers.join(", ")
    )
}

fn gateway(sim: &Proc, providers: &[String], extra: &str) -> Proc {
    start_gateway(
        &format!(
            "[auth]\nkeys = [\"{KEY}\"]\n{extra}\n{}",
            providers.concat()
        ),
        &sim.addr,
    )
}

/// `/v1/routing/status` as an authorized caller sees it (with key-pool hints).
fn status_with_key(gw: &Proc) -> serde_json::Value {
    let r = client()
        .get(gw.url("/v1/routing/status"))
        .bearer_auth(KEY)
        .send()
        .unwrap();
    json(&r.bytes().unwrap())
}

fn chat(gw: &Proc, model: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    post(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body(model, "hello", false),
    )
}

#[test]
fn rate_limited_model_is_skipped_for_its_retry_after() {
    let sim = start_sim();
    let gw = gateway(
        &sim,
        &[
            provider("busy", &[("x-sim-behavior", "fail-429")], "m-busy", ""),
            provider("free", &[], "m-free", ""),
        ],
        "",
    );
    // Pinned with fallback: the 429 model is tried first, the request still succeeds.
    let (status, headers, body) = post_with(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("busy/m-busy", "x", false),
        &[("x-gateway-fallback", "auto")],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["x-gateway-attempts"], "2");
    let st = gw.model_status("busy/m-busy");
    assert_eq!(st["status"], "cooldown", "{st}");
    assert!(st["reasons"][0].as_str().unwrap().contains("429"), "{st}");
    let until = st["cooldown_until"].as_str().expect("cooldown_until set");
    assert!(until.ends_with('Z'));
    for _ in 0..20 {
        let (status, headers, _) = chat(&gw, "shared");
        assert_eq!(status, 200);
        assert_eq!(headers["x-gateway-provider"], "free");
    }
    assert_eq!(
        sim_count(&sim, "/busy/"),
        1,
        "the cooling model was not skipped"
    );
    // Pinned without fallback while cooling after a 429: the client's own rate limit
    // there, 429 naming why, with when to come back.
    let (status, headers, body) = chat(&gw, "busy/m-busy");
    let v = assert_error(status, &body, 429, "rate_limit_error");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "retry-after {retry}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cooling down"),
        "{v}"
    );
}

#[test]
fn recovered_model_comes_back_through_a_single_probe() {
    let sim = start_sim();
    let gw = gateway(
        &sim,
        &[
            provider(
                "busy",
                &[
                    ("x-sim-behavior", "fail-429"),
                    ("x-sim-retry-after", "1"),
                    ("x-sim-delay-ms", "400"),
                ],
                "m-busy",
                "",
            ),
            provider("free", &[], "m-free", ""),
        ],
        "",
    );
    let (status, _, _) = post_with(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("busy/m-busy", "x", false),
        &[("x-gateway-fallback", "auto")],
    );
    assert_eq!(status, 200);
    assert_eq!(gw.model_status("busy/m-busy")["status"], "cooldown");
    // The provider recovers, but answers slowly: the probe stays in flight a while.
    sim_override(&sim, "/busy/", "slow");
    wait_until(10, "the cooldown to end", || {
        gw.model_status("busy/m-busy")["status"] != "cooldown"
    });
    let before = sim_count(&sim, "/busy/");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let url = gw.url("/v1/chat/completions");
            std::thread::spawn(move || post(&url, Some(KEY), chat_body("shared", "x", false)).0)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert_eq!(
        sim_count(&sim, "/busy/") - before,
        1,
        "exactly one probe while recovering"
    );
    let st = gw.model_status("busy/m-busy");
    assert_eq!(st["status"], "available", "{st}");
    // Proven healthy again: it takes traffic.
    sim_override(&sim, "/busy/", "echo");
    wait_until(10, "traffic on the recovered model", || {
        chat(&gw, "shared");
        sim_count(&sim, "/busy/") - before > 1
    });
}

#[test]
fn flaky_provider_gets_a_smaller_share_and_clients_see_no_failures() {
    let sim = start_sim();
    let gw = gateway(
        &sim,
        &[
            provider("steady1", &[], "m1", ""),
            provider("steady2", &[], "m2", ""),
            provider("flaky", &[("x-sim-behavior", "flaky")], "m3", ""),
        ],
        "",
    );
    let url = gw.url("/v1/chat/completions");
    let results: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..250)
                        .map(|_| {
                            let (status, headers, _) =
                                post(&url, Some(KEY), chat_body("auto", "x", false));
                            (
                                status,
                                headers["x-gateway-provider"]
                                    .to_str()
                                    .unwrap_or("")
                                    .to_string(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let failures = results.iter().filter(|(s, _)| *s != 200).count();
    let mut served: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, p) in &results {
        *served.entry(p.as_str()).or_default() += 1;
    }
    let upstream: BTreeMap<&str, usize> = ["steady1", "steady2", "flaky"]
        .into_iter()
        .map(|p| (p, sim_count_all(&sim, &format!("/{p}/"))))
        .collect();
    println!(
        "1000 requests: {failures} failed; served by {served:?}; upstream attempts {upstream:?}"
    );
    assert_eq!(failures, 0);
    assert!(
        upstream["flaky"] * 2 < upstream["steady1"].min(upstream["steady2"]),
        "{upstream:?}"
    );
}

/// Every request the sim has seen for provider path `/<name>/…`.
fn sim_count_all(sim: &Proc, prefix: &str) -> usize {
    let body = client()
        .get(sim.url("/_sim/requests"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    json(&body)["by_prefix"][prefix.trim_matches('/')]
        .as_u64()
        .unwrap_or(0) as usize
}

#[test]
fn stream_failing_after_the_role_chunk_still_fails_over() {
    let sim = start_sim();
    let gw = gateway(
        &sim,
        &[
            provider("early", &[("x-sim-behavior", "drop-after-role")], "m1", ""),
            provider("good", &[], "m2", ""),
        ],
        "",
    );
    for _ in 0..4 {
        let (status, headers, body) = post(
            &gw.url("/v1/chat/completions"),
            Some(KEY),
            chat_body("shared", "a b", true),
        );
        assert_eq!(status, 200);
        assert_eq!(headers["x-gateway-provider"], "good");
        let events = sse_data(&body);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let roles = events.iter().filter(|e| e.contains("\"role\"")).count();
        assert_eq!(
            roles, 1,
            "the failed provider's role chunk leaked: {events:?}"
        );
    }
}

#[test]
fn daily_cap_skips_the_model_and_survives_kill_9() {
    let sim = start_sim();
    let dir_marker = provider("capped", &[], "m-capped", "  daily_limit = 3\n");
    let mut gw = gateway(
        &sim,
        &[dir_marker, provider("spare", &[], "m-spare", "")],
        "",
    );
    for _ in 0..3 {
        assert_eq!(chat(&gw, "capped/m-capped").0, 200);
    }
    let (status, _, body) = chat(&gw, "capped/m-capped");
    let v = assert_error(status, &body, 503, "service_unavailable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("daily limit reached (3/3"),
        "{v}"
    );
    let st = gw.model_status("capped/m-capped");
    assert_eq!(
        (
            st["status"].as_str(),
            st["headroom"].as_f64(),
            st["daily_used"].as_u64()
        ),
        (Some("exhausted"), Some(0.0), Some(3))
    );
    // The alias still works through the other provider.
    let (status, headers, _) = chat(&gw, "shared");
    assert_eq!(
        (status, headers["x-gateway-provider"].to_str().unwrap()),
        (200, "spare")
    );

    // Wait until the count is committed (flushed every second), then kill -9 and restart.
    let db = gw.log.parent().unwrap().join("freeway.db");
    wait_until(10, "the daily count to be committed", || {
        freeway::store::Store::open(&db)
            .and_then(|s| {
                s.daily_counts(&freeway::time::day_string(freeway::time::utc_day(
                    std::time::SystemTime::now(),
                )))
            })
            .is_ok_and(|c| c.get("capped/m-capped") == Some(&3))
    });
    gw.restart();
    let st = gw.model_status("capped/m-capped");
    assert_eq!(
        (
            st["status"].as_str(),
            st["headroom"].as_f64(),
            st["daily_used"].as_u64()
        ),
        (Some("exhausted"), Some(0.0), Some(3)),
        "{st}"
    );
    assert_eq!(chat(&gw, "capped/m-capped").0, 503);
}

#[test]
fn all_models_down_gives_503_with_a_reason_per_model() {
    let sim = start_sim();
    let gw = gateway(
        &sim,
        &[
            provider("down1", &[("x-sim-behavior", "fail-500")], "m1", ""),
            provider("down2", &[("x-sim-behavior", "fail-500")], "m2", ""),
        ],
        "",
    );
    let (status, headers, body) = chat(&gw, "auto");
    assert_error(status, &body, 502, "upstream_error");
    assert_eq!(headers["x-gateway-attempts"], "2");
    let (status, _, body) = chat(&gw, "auto");
    let v = assert_error(status, &body, 503, "service_unavailable");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("down1/m1`: cooling down")
            && msg.contains("down2/m2`: cooling down")
            && msg.contains("HTTP 500"),
        "{msg}"
    );
    assert_eq!(v["error"]["code"], "no_capacity");
}

#[test]
fn provider_rejecting_its_key_is_disabled_loudly() {
    let sim = start_sim();
    let gw = gateway(
        &sim,
        &[
            provider("badkey", &[("x-sim-behavior", "fail-401")], "m1", ""),
            provider("good", &[], "m2", ""),
        ],
        "",
    );
    let (status, _, _) = post_with(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("badkey/m1", "x", false),
        &[("x-gateway-fallback", "auto")],
    );
    assert_eq!(status, 200);
    let st = gw.model_status("badkey/m1");
    assert_eq!(st["status"], "unconfigured", "{st}");
    assert!(
        st["reasons"][0]
            .as_str()
            .unwrap()
            .contains("rejected its API key"),
        "{st}"
    );
    assert_eq!(
        gw.routing_status()["providers"]["badkey"]["configured"],
        false
    );
    for _ in 0..5 {
        assert_eq!(chat(&gw, "shared").0, 200);
    }
    assert_eq!(sim_count(&sim, "/badkey/"), 1);
    assert!(gw.log_text().contains("rejected its API key"));
}

#[test]
fn named_routes_chain_and_metadata_rules() {
    let sim = start_sim();
    let routes = r#"
[[routes]]
name = "support"
models = ["broken/m-broken", "good/m-good"]
  [[routes.rules]]
  when = { plan = "pro" }
  models = ["other/m-other"]
"#;
    let gw = gateway(
        &sim,
        &[
            provider("broken", &[("x-sim-behavior", "fail-500")], "m-broken", ""),
            provider("good", &[], "m-good", ""),
            provider("other", &[], "m-other", ""),
            routes.to_string(),
        ],
        "",
    );
    let (status, headers, _) = chat(&gw, "dynamic/support");
    assert_eq!(status, 200);
    assert_eq!(
        (
            headers["x-gateway-provider"].to_str().unwrap(),
            headers["x-gateway-attempts"].to_str().unwrap()
        ),
        ("good", "2")
    );
    let (status, headers, _) = post_with(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("dynamic/support", "x", false),
        &[("x-gateway-metadata", r#"{"plan":"pro"}"#)],
    );
    assert_eq!(status, 200);
    assert_eq!(headers["x-gateway-provider"], "other");
    let (status, _, body) = chat(&gw, "dynamic/nope");
    assert_error(status, &body, 400, "invalid_request_error");
    let (status, _, body) = post_with(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("auto", "x", false),
        &[("x-gateway-metadata", "not json")],
    );
    assert_error(status, &body, 400, "invalid_request_error");
}

/// A provider with several keys: (model, api_keys TOML array).
fn pooled(name: &str, model: &str, keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"http://{{sim}}/{name}/v1\"\n\
         api_keys = [{}]\nsimulated = true\n  [[providers.models]]\n  id = \"{model}\"\n  \
         context_window = 131072\n  capabilities = [\"tools\", \"json\", \"stream\"]\n",
        keys.join(", ")
    )
}

/// The keys the simulated provider saw, in order.
fn keys_seen(sim: &Proc) -> Vec<String> {
    sim_requests(sim)
        .iter()
        .filter_map(|r| {
            r["authorization"]
                .as_str()
                .map(|a| a.trim_start_matches("Bearer ").to_string())
        })
        .collect()
}

#[test]
fn a_key_pool_rests_a_rate_limited_key_and_serves_with_the_others() {
    let sim = start_sim();
    let gw = gateway(
        &sim,
        &[pooled(
            "pool",
            "m",
            &["sk-a-sim-429", "sk-b-good", "sk-c-good"],
        )],
        "",
    );
    // The only model: a 429 on one key must not fail the request, nor cool the model.
    for _ in 0..9 {
        let (status, _, body) = chat(&gw, "pool/m");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    let seen = keys_seen(&sim);
    assert_eq!(
        seen.iter().filter(|k| k.contains("sim-429")).count(),
        1,
        "the limited key rests after its 429: {seen:?}"
    );
    assert_eq!(seen.len(), 10, "9 answers and one 429: {seen:?}");
    for good in ["sk-b-good", "sk-c-good"] {
        assert!(
            seen.iter().filter(|k| *k == good).count() >= 4,
            "rotation: {seen:?}"
        );
    }
    assert_eq!(gw.model_status("pool/m")["status"], "available");
    let keys = &status_with_key(&gw)["providers"]["pool"]["keys"];
    // A short key is named by its place in the pool only (its tail would be most of it).
    assert_eq!(keys[0]["key"], "#1", "{keys}");
    assert_eq!(keys[0]["status"], "resting", "{keys}");
    assert!(keys[0]["until"].as_str().unwrap().ends_with('Z'));
    assert_eq!(keys[1]["status"], "available", "{keys}");
}

#[test]
fn a_rejected_key_leaves_the_pool_and_a_pool_of_rejected_keys_blocks_the_provider() {
    let sim = start_sim();
    let gw = gateway(
        &sim,
        &[
            pooled("half", "m", &["sk-x-sim-401", "sk-y-good"]),
            pooled("dead", "d", &["sk-p-sim-401", "sk-q-sim-401"]),
        ],
        "",
    );
    for _ in 0..4 {
        let (status, headers, body) = chat(&gw, "half/m");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(headers["x-gateway-provider"], "half");
    }
    let rejected = keys_seen(&sim)
        .iter()
        .filter(|k| k.contains("sim-401"))
        .count();
    assert_eq!(rejected, 1, "a rejected key is not tried again");
    let status = status_with_key(&gw);
    let half = &status["providers"]["half"];
    assert_eq!(half["configured"], true, "{half}");
    assert_eq!(half["keys"][0]["status"], "rejected", "{half}");
    assert!(half["keys"][0]["reason"].as_str().unwrap().contains("401"));

    // Every key refused: the provider is blocked, loudly, as with a single bad key.
    let (status, _, body) = chat(&gw, "dead/d");
    assert!(status >= 500, "{status} {}", String::from_utf8_lossy(&body));
    let dead = &status_with_key(&gw)["providers"]["dead"];
    assert_eq!(dead["configured"], false, "{dead}");
    assert_eq!(dead["keys"][0]["status"], "rejected");
    assert_alive(&gw);
}
