//! Chat through the gateway: JSON, SSE, headers, body fidelity, failover basics.

use crate::harness::*;

const KEY: &str = "sk-gw-test";

fn auth() -> String {
    format!("[auth]\nkeys = [\"{KEY}\"]\n")
}

#[test]
fn chat_json_and_stream_carry_gateway_headers() {
    let sim = start_sim();
    let gw = start_gateway(
        &(auth() + &sim_provider("alpha", "", &["echo-1"])),
        &sim.addr,
    );
    let (status, headers, body) = post(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("auto", "hi there", false),
    );
    let v = json(&body);
    assert_eq!(status, 200, "{v}");
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .starts_with("echo: hi there"));
    for h in [
        "x-gateway-request-id",
        "x-gateway-attempts",
        "x-gateway-provider",
        "x-gateway-model",
        "x-gateway-cache-status",
        "x-gateway-overhead-ms",
    ] {
        assert!(headers.contains_key(h), "missing {h}");
    }
    assert_eq!(headers["x-gateway-provider"], "alpha");
    assert_eq!(headers["x-gateway-model"], "echo-1");
    assert_eq!(headers["x-gateway-attempts"], "1");

    let (status, headers, body) = post(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("alpha/echo-1", "streamed words", true),
    );
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(headers.contains_key("x-gateway-request-id"));
    let events = sse_data(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            json(e.as_bytes())["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(text.starts_with("echo: streamed words"), "{text}");
}

#[test]
fn provider_key_is_injected_and_gateway_key_never_forwarded() {
    let sim = start_sim();
    let gw = start_gateway(
        &(auth() + &sim_provider("alpha", "", &["echo-1"])),
        &sim.addr,
    );
    let (status, _, _) = post_with(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("auto", "x", false),
        &[("x-api-key", KEY), ("x-gateway-metadata", "{\"a\":1}")],
    );
    assert_eq!(status, 200);
    let rec = sim_requests(&sim);
    let last = rec.last().unwrap();
    assert_eq!(last["authorization"], "Bearer sk-upstream-alpha");
    assert!(
        last["x_api_key"].is_null(),
        "client x-api-key forwarded: {last}"
    );
    assert_eq!(last["x_gateway_headers"], serde_json::json!([]));
    assert_eq!(last["path"], "/alpha/v1/chat/completions");
}

/// A body well above Pingora's 64 KiB retry buffer, rewritten and relayed byte-exact.
fn big_body(model: &str, stream: bool, size: usize) -> String {
    let filler = "lorem ipsum dolor sit amet ".repeat(size / 27 + 1);
    // Compact JSON with the model first so the expected upstream body is easy to derive.
    format!(
        r#"{{"model":"{model}","stream":{stream},"temperature":0.2,"messages":[{{"role":"system","content":"be brief"}},{{"role":"user","content":"{}"}}]}}"#,
        &filler[..size]
    )
}

fn expected_upstream(body: &str, from: &str, to: &str) -> Vec<u8> {
    body.replacen(
        &format!(r#""model":"{from}""#),
        &format!(r#""model":"{to}""#),
        1,
    )
    .into_bytes()
}

#[test]
fn four_mib_body_reaches_upstream_byte_exact_json_and_stream() {
    let sim = start_sim();
    let gw = start_gateway(
        &(auth() + &sim_provider("alpha", "", &["echo-1"])),
        &sim.addr,
    );
    for stream in [false, true] {
        let body = big_body("shared", stream, 4 * 1024 * 1024);
        let (status, _, resp) = post(&gw.url("/v1/chat/completions"), Some(KEY), body.clone());
        assert_eq!(
            status,
            200,
            "{}",
            String::from_utf8_lossy(&resp[..resp.len().min(300)])
        );
        let mut want = expected_upstream(&body, "shared", "echo-1");
        if stream {
            // For accounting, the gateway asks a stream for its usage chunk (hidden again
            // from a client that did not ask for it).
            want.splice(
                1..1,
                br#""stream_options":{"include_usage":true},"#.iter().copied(),
            );
        }
        let got = sim_last_body(&sim);
        assert_eq!(got.len(), want.len(), "stream={stream}");
        assert!(got == want, "stream={stream}: upstream body differs");
        let rec = sim_requests(&sim);
        assert_eq!(rec.last().unwrap()["sha256"], sha256_hex(&want));
        assert_eq!(
            rec.last().unwrap()["content_length"],
            want.len().to_string()
        );
        if stream {
            assert_eq!(sse_data(&resp).last().map(String::as_str), Some("[DONE]"));
        }
    }
}

#[test]
fn large_body_fails_over_byte_exact() {
    let sim = start_sim();
    let providers = auth()
        + &sim_provider("broken", "fail-500", &["m-broken"])
        + &sim_provider("good", "", &["m-good"]);
    let gw = start_gateway(&providers, &sim.addr);
    let body = big_body("m-broken", false, 1024 * 1024);
    let (status, headers, resp) = post_with(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        body.replace("\"m-broken\"", "\"broken/m-broken\""),
        &[("x-gateway-fallback", "auto")],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(headers["x-gateway-attempts"], "2");
    assert_eq!(headers["x-gateway-provider"], "good");
    let rec = sim_requests(&sim);
    assert_eq!(rec.len(), 2);
    let sent = body.replace("\"m-broken\"", "\"broken/m-broken\"");
    assert_eq!(
        rec[0]["sha256"],
        sha256_hex(&expected_upstream(&sent, "broken/m-broken", "m-broken"))
    );
    assert_eq!(
        rec[1]["sha256"],
        sha256_hex(&expected_upstream(&sent, "broken/m-broken", "m-good"))
    );
}

#[test]
fn auto_spreads_across_providers() {
    let sim = start_sim();
    let gw = start_gateway(
        &(auth() + &sim_provider("alpha", "", &["m1"]) + &sim_provider("beta", "", &["m2"])),
        &sim.addr,
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (status, headers, _) = post(
            &gw.url("/v1/chat/completions"),
            Some(KEY),
            chat_body("auto", "x", false),
        );
        assert_eq!(status, 200);
        seen.insert(headers["x-gateway-provider"].to_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[test]
fn throttled_candidate_is_skipped_invisibly() {
    let sim = start_sim();
    let gw = start_gateway(
        &(auth() + &sim_provider("busy", "fail-429", &["m1"]) + &sim_provider("free", "", &["m2"])),
        &sim.addr,
    );
    for _ in 0..4 {
        let (status, headers, body) = post(
            &gw.url("/v1/chat/completions"),
            Some(KEY),
            chat_body("shared", "x", false),
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(headers["x-gateway-provider"], "free");
    }
}

#[test]
fn stream_that_dies_before_its_first_event_fails_over() {
    let sim = start_sim();
    let gw = start_gateway(
        &(auth()
            + &sim_provider("early", "drop-early", &["m1"])
            + &sim_provider("good", "", &["m2"])),
        &sim.addr,
    );
    for _ in 0..3 {
        let (status, headers, body) = post(
            &gw.url("/v1/chat/completions"),
            Some(KEY),
            chat_body("shared", "x y", true),
        );
        assert_eq!(status, 200);
        assert_eq!(headers["x-gateway-provider"], "good");
        assert_eq!(sse_data(&body).last().map(String::as_str), Some("[DONE]"));
    }
}

#[test]
fn stream_that_breaks_mid_way_ends_with_error_event_not_done() {
    let sim = start_sim();
    let gw = start_gateway(
        &(auth() + &sim_provider("dropper", "drop", &["m1"])),
        &sim.addr,
    );
    let (status, _, body) = post(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("auto", "a b c d e f", true),
    );
    assert_eq!(status, 200);
    let events = sse_data(&body);
    assert!(!events.iter().any(|e| e == "[DONE]"), "fake [DONE] sent");
    // Every event is whole JSON: the half event the provider sent was held back.
    for e in &events {
        json(e.as_bytes());
    }
    let last = json(events.last().unwrap().as_bytes());
    assert_eq!(last["error"]["type"], "upstream_error", "{last}");
    assert!(events.len() >= 2, "content before the failure was relayed");
    assert_alive(&gw);
}

/// Asserts an upstream failure's message is `want` and holds none of Pingora's internals.
fn assert_in_words(message: &str, want: &str) {
    assert_eq!(message, want);
    for internal in [
        "ConnectionClosed",
        "context:",
        "pingora",
        "ErrorType",
        "broke:",
        "sim:",
    ] {
        assert!(!message.contains(internal), "{internal} in {message:?}");
    }
}

#[test]
fn upstream_failures_reach_clients_in_words_without_pingora_internals() {
    let sim = start_sim();
    let gw = start_gateway(
        &(auth()
            + &sim_provider("dropper", "drop", &["m1"])
            + &sim_provider("cutter", "drop-mid-body", &["m2"])),
        &sim.addr,
    );
    // A stream broken mid-way ends with an error event that says so.
    let (status, _, body) = post(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("dropper/m1", "a b c d e f", true),
    );
    assert_eq!(status, 200);
    let last = json(sse_data(&body).last().unwrap().as_bytes());
    assert_in_words(
        last["error"]["message"].as_str().unwrap(),
        "the stream from `dropper/m1` failed: the provider closed the connection",
    );
    let failed = |path: &str, body: String| -> String {
        let (status, _, body) = post(&gw.url(path), Some(KEY), body);
        let v = assert_error(status, &body, 502, "upstream_error");
        v["error"]["message"].as_str().unwrap().to_string()
    };
    // A JSON answer cut half-way through its promised length.
    assert_in_words(
        &failed(
            "/v1/chat/completions",
            chat_body("cutter/m2", "a b c d e f", false),
        ),
        "Every upstream attempt failed (1 tried): cutter/m2: the provider closed the connection",
    );
    // Native passthrough: the connection dropped before the answer (Pingora's own path).
    assert_in_words(
        &failed(
            "/providers/dropper/chat/completions",
            chat_body("m1", "a b c", false),
        ),
        "Upstream failure: the provider closed the connection.",
    );
    assert_alive(&gw);
}
