//! SPEC.md's clarified contract, as clients see it: status codes when models are
//! rate-limited, the request controls, CORS, Workers AI's documented base URL, and the
//! official Anthropic SDK through native passthrough.

use crate::harness::*;
use std::time::{Duration, Instant};

/// Runs one case of `tests/sdk/contract_check.py` against `base_url`.
fn sdk_case(case: &str, base_url: &str, gw: &Proc) {
    let script = sdk_script("contract_check.py");
    run_python(
        &[&script, "--base-url", base_url, "--case", case],
        &format!("CONTRACT OK {case}"),
        &|| gw.log_text(),
    );
}

#[test]
fn every_capable_model_rate_limited_is_a_503_with_retry_after() {
    let sim = start_sim();
    let body = [
        sim_provider("one", "fail-429", &["m"]),
        sim_provider("two", "fail-429", &["m"]),
    ]
    .concat();
    let gw = start_gateway(&body, &sim.addr);
    // The first request meets two 429s; the second finds both models cooling.
    sdk_case("every-model-rate-limited", &gw.url("/v1"), &gw);
    assert_eq!(sim_count(&sim, "/one/") + sim_count(&sim, "/two/"), 2);
}

#[test]
fn a_pinned_rate_limited_model_is_a_429_in_the_gateways_envelope() {
    let sim = start_sim();
    let gw = start_gateway(&sim_provider("busy", "fail-429", &["m"]), &sim.addr);
    sdk_case("pinned-rate-limited", &gw.url("/v1"), &gw);
}

#[test]
fn request_controls_steer_attempts_providers_delays_and_logging() {
    let sim = start_sim();
    let body = [
        sim_provider("bad1", "fail-500", &["m"]),
        sim_provider("bad2", "fail-500", &["m"]),
        sim_provider("good", "", &["m"]),
        "[[routes]]\nname = \"chain\"\nmodels = [\"bad1/m\", \"bad2/m\", \"good/m\"]\n".into(),
        // A key pool whose first key is rate limited: the model is retried with the next.
        "[[providers]]\nname = \"pool\"\nkind = \"openai\"\nbase_url = \"http://{sim}/pool/v1\"\n\
         api_keys = [\"sk-a-sim-429\", \"sk-b-good\"]\nsimulated = true\n  [[providers.models]]\n  id = \"p\"\n  auto = false\n"
            .into(),
    ]
    .concat();
    let gw = start_gateway(&body, &sim.addr);
    sdk_case("controls", &gw.url("/v1"), &gw);

    // The wait before re-trying a model (its next key) is the one asked for.
    let t0 = Instant::now();
    let (status, h, b) = post_with(
        &gw.url("/v1/chat/completions"),
        None,
        chat_body("pool/p", "hi", false),
        &[
            ("x-gateway-retry-delay", "400"),
            ("cf-aig-backoff", "constant"),
        ],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h["x-gateway-attempts"], "2");
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t0.elapsed()
    );

    // No request-log row when the client asks for none; the next one is logged.
    let count = || -> i64 {
        rusqlite::Connection::open(gw.dir().join("freeway.db"))
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM request_log WHERE requested_model = 'good/m'",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap_or(0)
    };
    let (status, _, _) = post_with(
        &gw.url("/v1/chat/completions"),
        None,
        chat_body("good/m", "secret", false),
        &[("cf-aig-collect-log", "false")],
    );
    assert_eq!(status, 200);
    let (status, _, _) = post(
        &gw.url("/v1/chat/completions"),
        None,
        chat_body("good/m", "logged", false),
    );
    assert_eq!(status, 200);
    wait_until(10, "the logged request's row", || count() >= 1);
    assert_eq!(
        count(),
        1,
        "the request that asked not to be logged was logged"
    );
}

#[test]
fn cors_answers_preflights_and_exposes_the_gateway_headers_to_allowed_origins() {
    let sim = start_sim();
    let providers = sim_provider("p", "", &["m"]);
    let gw = start_gateway_with(
        &[("cors_origins", "[\"https://app.example\"]")],
        &providers,
        &sim.addr,
    );
    let pre = client()
        .request(reqwest::Method::OPTIONS, gw.url("/v1/chat/completions"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .unwrap();
    assert_eq!(pre.status(), 204);
    let h = pre.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert!(h["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(h["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let (status, h, _) = post_with(
        &gw.url("/v1/chat/completions"),
        None,
        chat_body("p/m", "hi", false),
        &[("origin", "https://app.example")],
    );
    assert_eq!(status, 200);
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert!(h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-gateway-provider"));
    // Another origin gets no CORS headers; the browser keeps the answer from it.
    let (_, h, _) = post_with(
        &gw.url("/v1/chat/completions"),
        None,
        chat_body("p/m", "hi", false),
        &[("origin", "https://evil.example")],
    );
    assert!(!h.contains_key("access-control-allow-origin"));
    // Off by default.
    let plain = start_gateway(&providers, &sim.addr);
    let (_, h, _) = post_with(
        &plain.url("/v1/chat/completions"),
        None,
        chat_body("p/m", "hi", false),
        &[("origin", "https://app.example")],
    );
    assert!(!h.contains_key("access-control-allow-origin"));
}

#[test]
fn a_workers_ai_base_url_written_as_cloudflare_documents_it_works() {
    let sim = start_sim();
    let model = "@cf/meta/llama-3.1-8b-instruct-fast";
    let body = format!(
        "[[providers]]\nname = \"cf\"\nkind = \"workers-ai\"\n\
         base_url = \"http://{{sim}}/cf/client/v4/accounts/acct9/ai/run\"\napi_key = \"k\"\n\
         simulated = true\n  [[providers.models]]\n  id = \"{model}\"\n"
    );
    let gw = start_gateway(&body, &sim.addr);
    let (status, _, b) = post(
        &gw.url("/v1/chat/completions"),
        None,
        chat_body(&format!("cf/{model}"), "hi", false),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    let path = sim_requests(&sim).pop().unwrap()["path"].clone();
    assert_eq!(path, format!("/cf/client/v4/accounts/acct9/ai/run/{model}"));
}

#[test]
fn the_anthropic_sdk_works_through_native_passthrough() {
    let sim = start_sim();
    let body = "[[providers]]\nname = \"claude\"\nkind = \"anthropic\"\n\
                base_url = \"http://{sim}/anthropic/v1\"\napi_key = \"key-claude\"\nsimulated = true\n\
                  [[providers.models]]\n  id = \"claude-sonnet-4-5\"\n";
    let gw = start_gateway(body, &sim.addr);
    sdk_case("anthropic-passthrough", &gw.url("/providers/claude"), &gw);
    let seen = sim_requests(&sim);
    assert_eq!(seen.len(), 2, "{seen:?}");
    for r in seen {
        // The SDK's own `/v1` and the base URL's `/v1` appear once.
        assert_eq!(r["path"], "/anthropic/v1/messages", "{r}");
        assert_eq!(r["x_api_key"], "key-claude");
    }
}
