//! Provider endpoint pools: several simulated upstreams (one `freeway sim` process per
//! endpoint) behind one provider's `base_urls`, actively and passively health-checked.

use crate::harness::*;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const KEY: &str = "sk-gw-pools";

/// A gateway config with one pooled provider `pool` (model `pool/m`) over `sims`.
fn pool_config(sims: &[&Proc], health_check: &str) -> String {
    format!(
        "[auth]\nkeys = [\"{KEY}\"]\n[metrics]\nlisten = \"\"\n{}",
        pool_provider(sims, health_check)
    )
}

fn pool_provider(sims: &[&Proc], health_check: &str) -> String {
    format!(
        "[[providers]]\nname = \"pool\"\nkind = \"openai\"\n{}\napi_key = \"sk-upstream-pool\"\n\
         simulated = true\nhealth_check = {{ {health_check} }}\n  [[providers.models]]\n  id = \"m\"\n",
        base_urls(sims)
    )
}

fn base_urls(sims: &[&Proc]) -> String {
    let urls: Vec<String> = sims
        .iter()
        .map(|s| format!("\"http://{}/pool/v1\"", s.addr))
        .collect();
    format!("base_urls = [{}]", urls.join(", "))
}

fn chat(gw: &Proc) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    post(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("pool/m", "hi", false),
    )
}

/// Chat requests a sim received (every kind of request it logged).
fn received(sim: &Proc) -> u64 {
    sim_log(sim)["total"].as_u64().unwrap()
}

fn sim_log(sim: &Proc) -> Value {
    let body = client()
        .get(sim.url("/_sim/requests"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    json(&body)
}

fn status(gw: &Proc, key: Option<&str>) -> Value {
    let mut req = client().get(gw.url("/v1/routing/status"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    json(&req.send().unwrap().bytes().unwrap())
}

/// The pool's endpoints in the routing status (as an authorized caller sees them).
fn endpoints(gw: &Proc) -> Vec<Value> {
    status(gw, Some(KEY))["providers"]["pool"]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn healthy(gw: &Proc, i: usize) -> bool {
    endpoints(gw)[i]["healthy"] == true
}

/// `freeway_endpoint_healthy` of the endpoint at `sim`.
fn healthy_metric(gw: &Proc, sim_addr: &str) -> Option<String> {
    let want = format!("freeway_endpoint_healthy{{endpoint=\"{sim_addr}\",provider=\"pool\"}} ");
    gw.metrics(KEY)
        .lines()
        .find_map(|l| l.strip_prefix(want.as_str()).map(str::to_string))
}

#[test]
fn load_spreads_over_healthy_endpoints_and_status_and_metrics_show_them() {
    let sims = [start_sim(), start_sim(), start_sim()];
    let refs: Vec<&Proc> = sims.iter().collect();
    let gw = start_gateway(&pool_config(&refs, "interval_seconds = 0.2"), "");
    // Four clients at once: the fewest requests in flight wins, so all three serve.
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..30 {
                    let (s, _, b) = chat(&gw);
                    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
                }
            });
        }
    });
    for sim in &sims {
        let n = received(sim);
        assert!(n >= 10, "an endpoint got only {n} of 120 requests");
    }
    // Checks carry the provider's key, like requests do.
    for sim in &sims {
        wait_until(10, "health checks", || {
            sim_log(sim)["listings"].as_u64().unwrap() >= 2
        });
        assert_eq!(
            sim_log(sim)["listing_authorization"],
            "Bearer sk-upstream-pool"
        );
    }
    wait_until(10, "a check of every endpoint", || {
        endpoints(&gw).iter().all(|e| e["last_check"].is_string())
    });
    let eps = endpoints(&gw);
    assert_eq!(eps.len(), 3);
    for (e, sim) in eps.iter().zip(&sims) {
        assert_eq!(e["healthy"], true, "{e}");
        assert_eq!(e["in_flight"], 0, "{e}");
        assert!(e["latency_ms"].is_number(), "{e}");
        assert_eq!(e["last_error"], Value::Null, "{e}");
        assert_eq!(e["address"], sim.addr.as_str(), "{e}");
    }
    // Without a key: the same health, no addresses.
    let public = status(&gw, None);
    let text = public.to_string();
    for sim in &sims {
        assert!(!text.contains(&sim.addr), "address shown publicly: {text}");
    }
    let public_eps = public["providers"]["pool"]["endpoints"].as_array().unwrap();
    assert_eq!(public_eps.len(), 3);
    assert_eq!(public_eps[0]["endpoint"], "#1");
    assert_eq!(public_eps[0]["healthy"], true);
    assert!(public_eps[0].get("address").is_none());
    // Metrics: health and requests per endpoint, labelled by host:port.
    let m = gw.metrics(KEY);
    for sim in &sims {
        assert_eq!(healthy_metric(&gw, &sim.addr).as_deref(), Some("1"), "{m}");
        let line = format!(
            "freeway_endpoint_requests_total{{endpoint=\"{}\",outcome=\"success\",provider=\"pool\"}}",
            sim.addr
        );
        assert!(m.contains(&line), "{line} not in metrics:\n{m}");
    }
    assert!(!m.contains("sk-upstream-pool"));
}

#[test]
fn an_endpoint_that_dies_mid_run_leaves_the_pool_with_no_failed_request() {
    let [a, b, mut c] = [start_sim(), start_sim(), start_sim()];
    let c_addr = c.addr.clone();
    let gw = start_gateway(
        &pool_config(
            &[&a, &b, &c],
            "interval_seconds = 0.2, timeout_ms = 300, unhealthy_after = 2, healthy_after = 2",
        ),
        "",
    );
    let sent = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while sent.fetch_add(1, Ordering::SeqCst) < 500 {
                    let (status, _, body) = chat(&gw);
                    if status != 200 {
                        failed.fetch_add(1, Ordering::SeqCst);
                        eprintln!("failed: {status} {}", String::from_utf8_lossy(&body));
                    }
                }
            });
        }
        wait_until(60, "150 requests", || sent.load(Ordering::SeqCst) >= 150);
        assert!(received(&c) > 0, "the third endpoint served before it died");
        c.kill();
    });
    assert!(sent.load(Ordering::SeqCst) >= 500);
    assert_eq!(failed.load(Ordering::SeqCst), 0, "client-visible failures");
    wait_until(10, "the dead endpoint out of the pool", || !healthy(&gw, 2));
    assert!(healthy(&gw, 0) && healthy(&gw, 1));
    let err = endpoints(&gw)[2]["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!err.contains("127.0.0.1"), "an address in the error: {err}");
    assert_eq!(healthy_metric(&gw, &c_addr).as_deref(), Some("0"));
    // After the ejection every request is served by the two left.
    let before = received(&a) + received(&b);
    for _ in 0..20 {
        assert_eq!(chat(&gw).0, 200);
    }
    assert_eq!(received(&a) + received(&b), before + 20);
}

#[test]
fn a_hanging_endpoint_is_bypassed_after_the_timeout_within_the_same_request() {
    let [a, b] = [start_sim(), start_sim()];
    let gw = start_gateway_with(
        &[("upstream_timeout_ms", "800")],
        &pool_config(
            &[&a, &b],
            "interval_seconds = 600, unhealthy_after = 2, healthy_after = 1",
        ),
        "",
    );
    // The first checks pass; then the first endpoint hangs (checks are ten minutes apart:
    // only real requests can find out).
    wait_until(10, "the first checks", || {
        endpoints(&gw).iter().all(|e| e["last_check"].is_string())
    });
    sim_override(&a, "/", "hang");
    let mut retried = 0;
    for _ in 0..6 {
        let (status, h, body) = chat(&gw);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        if h["x-gateway-attempts"] == "2" {
            retried += 1;
        }
    }
    assert!(retried >= 1, "no request was retried on the other endpoint");
    assert!(
        received(&a) >= 1,
        "the hanging endpoint never got a request"
    );
    // Two timeouts in a row took it out: later requests go straight to the other one.
    wait_until(5, "the hanging endpoint out", || !healthy(&gw, 0));
    let err = endpoints(&gw)[0]["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("timeout"), "{err}");
    let (status, h, _) = chat(&gw);
    assert_eq!(status, 200);
    assert_eq!(h["x-gateway-attempts"], "1");
}

#[test]
fn failing_checks_eject_an_endpoint_until_it_passes_healthy_after_checks() {
    let [a, b] = [start_sim(), start_sim()];
    let gw = start_gateway(
        &pool_config(
            &[&a, &b],
            "interval_seconds = 0.2, unhealthy_after = 2, healthy_after = 3",
        ),
        "",
    );
    sim_override(&b, "/", "fail-500");
    wait_until(10, "the failing endpoint out", || !healthy(&gw, 1));
    let err = endpoints(&gw)[1]["last_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("HTTP 500"), "{err}");
    let b_before = received(&b);
    for _ in 0..10 {
        assert_eq!(chat(&gw).0, 200);
    }
    assert_eq!(
        received(&b),
        b_before,
        "no request reached the ejected endpoint"
    );
    // Every endpoint out: the provider is skipped like a model in cooldown.
    sim_override(&a, "/", "fail-500");
    wait_until(10, "both endpoints out", || !healthy(&gw, 0));
    let (status, _, body) = chat(&gw);
    let v = assert_error(status, &body, 503, "service_unavailable");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("every endpoint"), "{msg}");
    let model = status_model(&gw);
    assert_ne!(model["status"], "available", "{model}");
    // Back: after `healthy_after` passed checks, requests reach both again.
    sim_override(&a, "/", "echo");
    sim_override(&b, "/", "echo");
    wait_until(10, "both endpoints back", || {
        healthy(&gw, 0) && healthy(&gw, 1)
    });
    for _ in 0..10 {
        assert_eq!(chat(&gw).0, 200);
    }
    assert!(
        received(&b) > b_before,
        "the recovered endpoint serves again"
    );
    assert_eq!(endpoints(&gw)[1]["last_error"], Value::Null);
}

fn status_model(gw: &Proc) -> Value {
    status(gw, None)["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "pool/m")
        .cloned()
        .unwrap()
}

#[test]
fn reload_adds_and_removes_endpoints_under_load() {
    let [a, b, c] = [start_sim(), start_sim(), start_sim()];
    let gw = start_gateway(&pool_config(&[&a, &b], "interval_seconds = 0.5"), "");
    let path = gw.dir().join("freeway.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    match chat(&gw).0 {
                        200 => ok.fetch_add(1, Ordering::SeqCst),
                        _ => failed.fetch_add(1, Ordering::SeqCst),
                    };
                }
            });
        }
        let rewrite = |sims: &[&Proc]| {
            let text = original.replace(&base_urls(&[&a, &b]), &base_urls(sims));
            std::fs::write(&path, text).unwrap();
            gw.signal("HUP");
        };
        wait_until(20, "load", || ok.load(Ordering::SeqCst) >= 20);
        // Add a third endpoint: it takes requests.
        rewrite(&[&a, &b, &c]);
        wait_until(20, "the added endpoint serving", || received(&c) >= 10);
        assert_eq!(endpoints(&gw).len(), 3);
        // Remove the first: it gets no more requests (in-flight ones finished).
        rewrite(&[&b, &c]);
        wait_until(20, "two endpoints", || endpoints(&gw).len() == 2);
        let others = || received(&b) + received(&c);
        let settle = |n: u64| {
            let target = others() + n;
            wait_until(20, "requests on the others", || others() >= target);
        };
        settle(20);
        let a_after = received(&a);
        settle(40);
        assert_eq!(
            received(&a),
            a_after,
            "the removed endpoint still got requests"
        );
        stop.store(true, Ordering::SeqCst);
    });
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during reloads"
    );
    let eps = endpoints(&gw);
    assert_eq!(eps[0]["address"], b.addr.as_str());
    assert_eq!(eps[1]["address"], c.addr.as_str());
    assert_eq!(
        healthy_metric(&gw, &a.addr),
        None,
        "the removed endpoint's metric"
    );
}
