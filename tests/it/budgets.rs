//! Per-app keys (`[[keys]]`): budgets that hold under concurrency (one instance and two
//! sharing Redis), settlement of streams, release on failure, rpm/tpm per key, the model
//! allow-list, the cost told back to the client, and bring-your-own-key.

use crate::harness::*;
use crate::redis_proc::{redis_up, RedisProc};

/// Output tokens cost $0.001 each (input free unless `input` says otherwise).
fn priced(provider: &str, models: &[&str], extra: &str) -> String {
    let mut s = format!(
        "[[providers]]\nname = \"{provider}\"\nkind = \"openai\"\nbase_url = \"http://{{sim}}/{provider}/v1\"\n\
         simulated = true\n{extra}\n"
    );
    if !extra.contains("byok = \"require\"") {
        s.push_str(&format!("api_key = \"sk-upstream-{provider}\"\n"));
    }
    for m in models {
        s.push_str(&format!(
            "  [[providers.models]]\n  id = \"{m}\"\n  aliases = [\"shared\"]\n  context_window = 1000000\n  \
             max_output_tokens = 1000\n  capabilities = [\"stream\"]\n  \
             cost = {{ input_per_mtok = 2.0, output_per_mtok = 1000.0, cached_input_per_mtok = 1.0 }}\n"
        ));
    }
    s
}

fn key(label: &str, secret: &str, extra: &str) -> String {
    format!("[[keys]]\nlabel = \"{label}\"\nkey = \"{secret}\"\n{extra}\n")
}

fn ask(
    gw: &Proc,
    key: &str,
    model: &str,
    max_tokens: u32,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let body = serde_json::json!({"model": model, "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "hi"}]});
    post(&gw.url("/v1/chat/completions"), Some(key), body.to_string())
}

fn budget(gw: &Proc, key: &str) -> serde_json::Value {
    let r = client()
        .get(gw.url("/v1/budget"))
        .bearer_auth(key)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    json(&r.bytes().unwrap())
}

fn cost_header(h: &reqwest::header::HeaderMap) -> f64 {
    h.get("x-gateway-cost-usd")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no x-gateway-cost-usd in {h:?}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn a_tiny_daily_budget_stops_at_the_budget_and_json_answers_carry_their_cost() {
    let sim = start_sim();
    // Each answer: 5 output tokens ($0.005) plus a few input tokens at $2/M.
    let body = format!(
        "{}{}",
        priced("p", &["m"], ""),
        key("tiny", "sk-tiny", "budget = { daily_usd = 0.02 }")
    );
    let gw = start_gateway(&body, &sim.addr);
    let mut served = 0u64;
    let mut total = 0.0;
    let refusal = loop {
        let (status, h, b) = ask(&gw, "sk-tiny", "p/m", 5);
        if status != 200 {
            break (status, h, b);
        }
        served += 1;
        let v = json(&b);
        let u = &v["usage"];
        let want = u["prompt_tokens"].as_f64().unwrap() * 2.0 / 1e6
            + u["completion_tokens"].as_f64().unwrap() * 1000.0 / 1e6;
        assert!(close(u["cost"].as_f64().unwrap(), want), "{v}");
        assert!(close(cost_header(&h), want), "{h:?}");
        total += want;
        assert!(served < 10, "the budget never stopped the key");
    };
    let (status, h, b) = refusal;
    let v = assert_error(status, &b, 429, "rate_limit_error");
    assert_eq!(v["error"]["code"], "budget_exceeded", "{v}");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "retry-after {retry}");
    assert!(served >= 4, "served {served}");
    let b = budget(&gw, "sk-tiny");
    assert_eq!(b["label"], "tiny");
    assert_eq!(b["daily"]["limit_usd"], 0.02);
    let spent = b["daily"]["spent_usd"].as_f64().unwrap();
    assert!(close(spent, total), "{b}");
    // Past the limit by less than one request.
    assert!((0.02..0.02 + 0.0052).contains(&spent), "{b}");
    assert!(
        b["daily"]["resets_at"]
            .as_str()
            .unwrap()
            .ends_with("T00:00:00Z"),
        "{b}"
    );
    // The refusal is counted per key and window.
    let m = gw.metrics("sk-tiny");
    assert!(
        m.contains("freeway_budget_rejections_total{key=\"tiny\",window=\"daily\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("freeway_key_spend_usd_total{key=\"tiny\"}"),
        "{m}"
    );
    // Analytics: spend and requests per key label, with the budget line.
    let mut last = serde_json::Value::Null;
    wait_until(10, "analytics per key", || {
        let r = client()
            .get(gw.url("/v1/analytics?group_by=key"))
            .bearer_auth("sk-tiny")
            .send()
            .unwrap();
        last = json(&r.bytes().unwrap());
        last["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["key"] == "tiny"))
            .is_some_and(|g| g["requests"].as_u64() == Some(served + 1))
    });
    let g = last["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"] == "tiny")
        .unwrap();
    assert!(close(g["cost_usd"].as_f64().unwrap(), total), "{last}");
    assert_eq!(last["budgets"]["tiny"]["daily_usd"], 0.02, "{last}");
}

/// 50 requests at once against a budget of 3 requests' worth: at most one more is served.
fn burst(gws: &[&Proc], n: usize) -> usize {
    let ok = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for i in 0..n {
            let gw = gws[i % gws.len()];
            let ok = &ok;
            s.spawn(move || {
                if ask(gw, "sk-burst", "p/m", 5).0 == 200 {
                    ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    ok.into_inner()
}

// Input is free here, so a request's worst case is exactly its real cost: 5 × $0.001.
fn burst_config() -> String {
    let provider = priced("p", &["m"], "").replace("input_per_mtok = 2.0", "input_per_mtok = 0.0");
    format!(
        "{provider}{}",
        key("burst", "sk-burst", "budget = { daily_usd = 0.015 }")
    )
}

#[test]
fn fifty_concurrent_requests_spend_at_most_the_budget_plus_one_reservation() {
    let sim = start_sim();
    let gw = start_gateway(&burst_config(), &sim.addr);
    let served = burst(&[&gw], 50);
    assert!((3..=4).contains(&served), "served {served}");
    let spent = budget(&gw, "sk-burst")["daily"]["spent_usd"]
        .as_f64()
        .unwrap();
    assert!(spent <= 0.015 + 0.005 + 1e-9, "spent {spent}");
    assert!(
        close(spent, served as f64 * 0.005),
        "spent {spent}, served {served}"
    );
}

#[test]
fn two_instances_sharing_redis_share_one_budget_exactly() {
    let redis = RedisProc::start();
    let sim = start_sim();
    let storage = format!("redis_url = \"{}\"", redis.url());
    let a = start_gateway_shared(&burst_config(), &sim.addr, &storage);
    let b = start_gateway_shared(&burst_config(), &sim.addr, &storage);
    wait_until(10, "both instances see redis", || {
        redis_up(&a) && redis_up(&b)
    });
    let served = burst(&[&a, &b], 50);
    assert!((3..=4).contains(&served), "served {served}");
    for gw in [&a, &b] {
        let v = budget(gw, "sk-burst");
        let spent = v["daily"]["spent_usd"].as_f64().unwrap();
        assert!(close(spent, served as f64 * 0.005), "{v}");
        assert!(
            close(v["daily"]["reserved_usd"].as_f64().unwrap(), 0.0),
            "{v}"
        );
    }
    let health = json(
        &client()
            .get(a.url("/health"))
            .send()
            .unwrap()
            .bytes()
            .unwrap(),
    );
    assert_eq!(health["storage"]["budgets"]["mode"], "shared", "{health}");
    // Redis gone: each instance enforces on its own and says so.
    drop(redis);
    wait_until(10, "redis down", || !redis_up(&a));
    let (status, _, _) = ask(&a, "sk-burst", "p/m", 5);
    assert_eq!(status, 429, "the fallback starts from the shared spend");
    let health = json(
        &client()
            .get(a.url("/health"))
            .send()
            .unwrap()
            .bytes()
            .unwrap(),
    );
    assert_eq!(
        health["storage"]["budgets"]["mode"], "local fallback",
        "{health}"
    );
}

#[test]
fn an_aborted_stream_is_charged_for_what_was_delivered_and_failures_release_their_reservation() {
    let sim = start_sim();
    let body = format!(
        "{}{}{}",
        priced("p", &["m", "m-drop", "fail-500", "fo-fail-500"], "")
            .replace("input_per_mtok = 2.0", "input_per_mtok = 0.0"),
        priced("q", &["m"], "").replace("input_per_mtok = 2.0", "input_per_mtok = 0.0"),
        key("s", "sk-s", "budget = { daily_usd = 1.5 }"),
    );
    let gw = start_gateway(&body, &sim.addr);
    let text = "one two three four five six seven eight nine ten";
    let req = |model: &str| {
        serde_json::json!({"model": model, "stream": true, "max_tokens": 1000,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": text}]})
        .to_string()
    };
    // The provider breaks the stream after two words ("echo: ", "one "): 10 characters,
    // 3 tokens at the gateway's estimate, against $1 reserved.
    let (status, h, b) = post(
        &gw.url("/v1/chat/completions"),
        Some("sk-s"),
        req("p/m-drop"),
    );
    assert_eq!(status, 200);
    assert!(
        close(cost_header(&h), 1.0),
        "a stream's header is its reservation: {h:?}"
    );
    assert!(String::from_utf8_lossy(&b).contains("\"error\""));
    let v = budget(&gw, "sk-s");
    assert!(
        close(v["daily"]["spent_usd"].as_f64().unwrap(), 0.003),
        "{v}"
    );
    assert!(
        close(v["daily"]["reserved_usd"].as_f64().unwrap(), 0.0),
        "{v}"
    );
    // The whole answer would have cost 14 tokens; its last chunk says so.
    let (status, _, b) = post(&gw.url("/v1/chat/completions"), Some("sk-s"), req("p/m"));
    assert_eq!(status, 200);
    let last = sse_data(&b)
        .into_iter()
        .rev()
        .find(|d| d.contains("\"usage\""))
        .unwrap();
    let u = json(last.as_bytes())["usage"].clone();
    assert!(
        close(
            u["cost"].as_f64().unwrap(),
            u["completion_tokens"].as_f64().unwrap() * 0.001
        ),
        "{u}"
    );
    let spent = budget(&gw, "sk-s")["daily"]["spent_usd"].as_f64().unwrap();
    assert!(close(spent, 0.003 + u["cost"].as_f64().unwrap()), "{spent}");

    // Errors: every reservation ($1 each, more than what is left) is given back.
    for _ in 0..5 {
        let (status, _, _) = ask(&gw, "sk-s", "p/fail-500", 1000);
        assert!(status >= 500, "{status}");
    }
    let v = budget(&gw, "sk-s");
    assert!(
        close(v["daily"]["spent_usd"].as_f64().unwrap(), spent),
        "{v}"
    );
    assert!(
        close(v["daily"]["reserved_usd"].as_f64().unwrap(), 0.0),
        "{v}"
    );
    // Failover: the failed attempt's reservation is released, the answer settled.
    let body = serde_json::json!({"model": "p/fo-fail-500", "max_tokens": 1000,
        "messages": [{"role": "user", "content": "hi"}]});
    let (status, h, b) = post_with(
        &gw.url("/v1/chat/completions"),
        Some("sk-s"),
        body.to_string(),
        &[("x-gateway-fallback", "auto")],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h["x-gateway-attempts"], "2");
    let cost = json(&b)["usage"]["cost"].as_f64().unwrap();
    let v = budget(&gw, "sk-s");
    assert!(
        close(v["daily"]["spent_usd"].as_f64().unwrap(), spent + cost),
        "{v}"
    );
    assert!(
        close(v["daily"]["reserved_usd"].as_f64().unwrap(), 0.0),
        "{v}"
    );
}

#[test]
fn per_key_rpm_and_tpm() {
    let sim = start_sim();
    let body = format!(
        "{}{}{}",
        priced("p", &["m"], ""),
        key("r", "sk-r", "rpm = 2"),
        key("t", "sk-t", "tpm = 100"),
    );
    let gw = start_gateway(&body, &sim.addr);
    assert_eq!(ask(&gw, "sk-r", "p/m", 5).0, 200);
    assert_eq!(ask(&gw, "sk-r", "p/m", 5).0, 200);
    let (status, h, b) = ask(&gw, "sk-r", "p/m", 5);
    let v = assert_error(status, &b, 429, "rate_limit_error");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(h.contains_key("retry-after"));
    // Another key is not affected.
    assert_eq!(ask(&gw, "sk-t", "p/m", 5).0, 200);
    // tpm: each request reserves its prompt + 200 tokens and settles at its usage (~30).
    let mut served = 1;
    let (status, h, b) = loop {
        let r = ask(&gw, "sk-t", "p/m", 200);
        if r.0 != 200 {
            break r;
        }
        served += 1;
        assert!(served < 10, "tpm never refused");
    };
    let v = assert_error(status, &b, 429, "rate_limit_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Tokens per minute"),
        "{v}"
    );
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert!(served >= 2, "settled usage frees tokens: served {served}");
}

#[test]
fn the_allow_list_applies_to_pinned_models_aliases_and_auto() {
    let sim = start_sim();
    let body = format!(
        "{}{}{}{}",
        priced("groq", &["llama"], ""),
        priced("other", &["gpt"], ""),
        key("g", "sk-g", "models = [\"groq/*\", \"auto\"]"),
        key("all", "sk-all", ""),
    );
    let gw = start_gateway(&body, &sim.addr);
    let (status, _, b) = ask(&gw, "sk-g", "other/gpt", 5);
    let v = assert_error(status, &b, 403, "permission_error");
    assert_eq!(v["error"]["code"], "model_not_allowed");
    let (status, _, b) = ask(&gw, "sk-g", "gpt", 5);
    assert_error(status, &b, 403, "permission_error");
    let (status, _, b) = ask(&gw, "sk-g", "dynamic/x", 5);
    assert_error(status, &b, 403, "permission_error");
    assert_eq!(ask(&gw, "sk-g", "groq/llama", 5).0, 200);
    for model in ["shared", "auto", "shared", "auto", "shared", "auto"] {
        let (status, h, b) = ask(&gw, "sk-g", model, 5);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
        assert_eq!(h["x-gateway-provider"], "groq", "{model}");
    }
    assert_eq!(ask(&gw, "sk-all", "other/gpt", 5).0, 200);
    // `[auth].keys` still work alongside.
    let gw2 = start_gateway(
        &format!(
            "[auth]\nkeys = [\"sk-plain\"]\n{}{}",
            priced("groq", &["llama"], ""),
            key("g", "sk-g", "models = [\"other/*\"]")
        ),
        &sim.addr,
    );
    assert_eq!(ask(&gw2, "sk-plain", "groq/llama", 5).0, 200);
    assert_eq!(ask(&gw2, "sk-g", "groq/llama", 5).0, 403);
    assert_eq!(ask(&gw2, "sk-wrong", "groq/llama", 5).0, 401);
}

#[test]
fn usage_cost_through_the_openai_python_sdk() {
    let sim = start_sim();
    let body = format!("{}{}", priced("p", &["m"], ""), key("sdk", "sk-sdk", ""));
    let gw = start_gateway(&body, &sim.addr);
    let script = r#"
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="sk-sdk")
r = c.chat.completions.create(model="p/m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
u = r.usage
want = u.prompt_tokens * 2.0 / 1e6 + u.completion_tokens * 1000.0 / 1e6
assert abs(u.model_extra["cost"] - want) < 1e-9, (u, want)
last = None
for ch in c.chat.completions.create(model="p/m", max_tokens=5, stream=True, stream_options={"include_usage": True},
                                    messages=[{"role": "user", "content": "hi there"}]):
    last = ch
u = last.usage
want = u.prompt_tokens * 2.0 / 1e6 + u.completion_tokens * 1000.0 / 1e6
assert abs(u.model_extra["cost"] - want) < 1e-9, (u, want)
print("COST OK")
"#;
    run_python(&["-c", script, &gw.url("/v1")], "COST OK", &|| {
        gw.log_text()
    });
}

#[test]
fn bring_your_own_key_allow_and_require_and_the_key_is_never_kept() {
    let sim = start_sim();
    let body = format!(
        "[metrics]\nlisten = \"\"\n{}{}{}{}",
        priced("byo", &["m"], "byok = \"allow\""),
        priced("req", &["m"], "byok = \"require\""),
        priced("off", &["m"], ""),
        key("b", "sk-b", "budget = { daily_usd = 1.0 }"),
    );
    let gw = start_gateway(&body, &sim.addr);
    const CLIENT: &str = "sk-client-Secret-42-Zq9Xw7";
    let chat = |model: &str, headers: &[(&str, &str)], key: Option<&str>| {
        post_with(
            &gw.url("/v1/chat/completions"),
            key,
            chat_body(model, "hi", false),
            headers,
        )
    };
    let last_auth = || sim_requests(&sim).last().unwrap()["authorization"].clone();
    // allow: the client's key when sent, the provider's otherwise.
    let (status, _, b) = chat("byo/m", &[("x-gateway-provider-key", CLIENT)], Some("sk-b"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(last_auth(), format!("Bearer {CLIENT}"));
    assert_eq!(chat("byo/m", &[], Some("sk-b")).0, 200);
    assert_eq!(last_auth(), "Bearer sk-upstream-byo");
    // Identical requests with another key are not served from a cache of the client's.
    // require: 401 without one; Cloudflare's form works.
    let (status, _, b) = chat("req/m", &[], Some("sk-b"));
    assert_error(status, &b, 401, "authentication_error");
    let (status, _, b) = chat(
        "req/m",
        &[
            ("cf-aig-authorization", "Bearer sk-b"),
            ("authorization", &format!("Bearer {CLIENT}")),
        ],
        None,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(last_auth(), format!("Bearer {CLIENT}"));
    // off, or an unpinned model: refused.
    let (status, _, b) = chat("off/m", &[("x-gateway-provider-key", CLIENT)], Some("sk-b"));
    assert_error(status, &b, 400, "invalid_request_error");
    let (status, _, _) = chat("auto", &[("x-gateway-provider-key", CLIENT)], Some("sk-b"));
    assert_eq!(status, 400);
    // The provider rejecting a client's key is the client's 401; the provider's own key
    // stays in service.
    let bad = "sk-sim-401-client-key-Zq9Xw7";
    let (status, _, b) = chat("byo/m", &[("x-gateway-provider-key", bad)], Some("sk-b"));
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&b));
    assert!(!String::from_utf8_lossy(&b).contains(bad));
    assert_eq!(chat("byo/m", &[], Some("sk-b")).0, 200);
    // Not charged to the key's budget: only the provider-key request was.
    let v = budget(&gw, "sk-b");
    let spent = v["daily"]["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0 && spent < 0.02, "{v}");
    // Nowhere: logs, metrics, the store.
    let metrics = gw.metrics("sk-b");
    wait_until(10, "the request log", || {
        let r = client()
            .get(gw.url("/v1/analytics"))
            .bearer_auth("sk-b")
            .send()
            .unwrap();
        json(&r.bytes().unwrap())["totals"]["requests"]
            .as_u64()
            .unwrap_or(0)
            >= 7
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut store = Vec::new();
    for e in std::fs::read_dir(gw.dir()).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("freeway.db") {
            store.extend(std::fs::read(e.path()).unwrap_or_default());
        }
    }
    let log = gw.log_text();
    // "9Xw7": the last four characters, the form a key hint would take.
    for secret in [CLIENT, bad, "Zq9Xw7", "Secret-42", "9Xw7"] {
        assert!(!log.contains(secret), "log has {secret}");
        assert!(!metrics.contains(secret), "metrics have {secret}");
        assert!(
            memchr::memmem::find(&store, secret.as_bytes()).is_none(),
            "store has {secret}"
        );
    }
}
