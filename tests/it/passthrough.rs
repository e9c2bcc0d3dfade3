//! `/providers/{name}/…`: native requests to one provider with its stored key.

use crate::harness::*;

const KEY: &str = "sk-gw-test";

#[test]
fn passthrough_forwards_bytes_exactly_with_the_provider_key() {
    let sim = start_sim();
    let gw = start_gateway(
        &format!(
            "[auth]\nkeys = [\"{KEY}\"]\n{}",
            sim_provider("alpha", "", &["m1"])
        ),
        &sim.addr,
    );
    // A 4 MiB native body, untouched (no model rewrite on this path).
    let text = "z".repeat(4 * 1024 * 1024);
    let body =
        format!(r#"{{"model":"anything","messages":[{{"role":"user","content":"{text}"}}]}}"#);
    let (status, headers, resp) = post_with(
        &gw.url("/providers/alpha/chat/completions?trace=1"),
        Some(KEY),
        body.clone(),
        &[("x-gateway-metadata", "{}"), ("x-api-key", KEY)],
    );
    assert_eq!(
        status,
        200,
        "{}",
        String::from_utf8_lossy(&resp[..resp.len().min(300)])
    );
    assert_eq!(headers["x-gateway-provider"], "alpha");
    let rec = sim_requests(&sim);
    let last = rec.last().unwrap();
    assert_eq!(last["path"], "/alpha/v1/chat/completions");
    assert_eq!(last["sha256"], sha256_hex(body.as_bytes()));
    assert_eq!(last["authorization"], "Bearer sk-upstream-alpha");
    assert!(last["x_api_key"].is_null());
    assert_eq!(last["x_gateway_headers"], serde_json::json!([]));

    // Streams pass through as they are.
    let (status, _, resp) = post(
        &gw.url("/providers/alpha/chat/completions"),
        Some(KEY),
        chat_body("m1", "a b", true),
    );
    assert_eq!(status, 200);
    assert_eq!(sse_data(&resp).last().map(String::as_str), Some("[DONE]"));

    let r = client()
        .get(gw.url("/providers/alpha/models"))
        .bearer_auth(KEY)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(&r.bytes().unwrap())["object"], "list");
}

#[test]
fn passthrough_refuses_unknown_providers_climbing_paths_and_strangers() {
    let sim = start_sim();
    let gw = start_gateway(
        &format!(
            "[auth]\nkeys = [\"{KEY}\"]\n{}",
            sim_provider("alpha", "", &["m1"])
        ),
        &sim.addr,
    );
    let (status, _, body) = post(
        &gw.url("/providers/nobody/chat/completions"),
        Some(KEY),
        "{}",
    );
    assert_error(status, &body, 404, "invalid_request_error");
    let (status, _, body) = post(
        &gw.url("/providers/alpha/../../etc/passwd"),
        Some(KEY),
        "{}",
    );
    assert!(status == 400 || status == 404, "{status}");
    assert!(json(&body)["error"].is_object());
    let (status, _, body) = post(&gw.url("/providers/alpha/chat/completions"), None, "{}");
    assert_error(status, &body, 401, "authentication_error");
    assert_eq!(sim_requests(&sim).len(), 0);
}
