//! Native providers end to end: the official OpenAI Python SDK through freeway against
//! simulated Gemini, Anthropic and Workers AI upstreams, plus failover and error paths
//! across native formats.

use crate::harness::*;

#[test]
fn openai_sdk_talks_to_native_providers_through_the_gateway() {
    let sim = start_sim();
    let gw = start_gateway(&natives(), &sim.addr);
    let openapi = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openapi/openapi.json");
    let models = serde_json::json!({"gemini": GEMINI, "anthropic": ANTHROPIC, "workers": WORKERS});
    let stdout = run_python(
        &[
            &sdk_script("native_check.py"),
            "--base-url",
            &gw.url("/v1"),
            "--sim-url",
            &sim.url(""),
            "--openapi",
            openapi,
            "--models",
            &models.to_string(),
        ],
        "NATIVE CHECK OK",
        &|| gw.log_text(),
    );
    for kind in ["[gemini ", "[anthropic ", "[workers "] {
        assert!(stdout.contains(kind), "{kind} not checked: {stdout}");
    }

    // Each provider was called on its native path, with its own auth header.
    let reqs = sim_requests(&sim);
    let on = |needle: &str| -> Vec<&serde_json::Value> {
        reqs.iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.contains(needle)))
            .collect()
    };
    let plain = on("/gemini/v1beta/models/gemini-2.5-flash:generateContent");
    let streamed = on("/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent");
    assert!(!plain.is_empty() && !streamed.is_empty(), "{reqs:?}");
    assert!(streamed.iter().all(|r| r["query"] == "alt=sse"));
    assert!(plain
        .iter()
        .all(|r| r["x_goog_api_key"] == "key-sim-gemini" && r["authorization"].is_null()));
    let messages = on("/anthropic/v1/messages");
    assert!(!messages.is_empty());
    assert!(messages
        .iter()
        .all(|r| r["x_api_key"] == "key-sim-anthropic" && r["anthropic_version"] == "2023-06-01"));
    let run = on("/cf/client/v4/accounts/acct123/ai/run/@cf/meta/llama-3.3-70b-instruct-fp8-fast");
    assert!(!run.is_empty(), "{reqs:?}");
    assert!(run
        .iter()
        .all(|r| r["authorization"] == "Bearer key-sim-workers"));
    assert!(reqs.iter().all(|r| !r["path"]
        .as_str()
        .unwrap_or("")
        .ends_with("/chat/completions")));
}

#[test]
fn native_error_bodies_reach_the_client_as_openai_envelopes() {
    let sim = start_sim();
    let body = [
        native_provider(
            "busy-gemini",
            "gemini",
            "/g/v1beta",
            "gemini-2.5-pro",
            "fail-429",
        ),
        native_provider(
            "down-claude",
            "anthropic",
            "/a/v1",
            "claude-haiku-4-5",
            "fail-500",
        ),
    ]
    .concat();
    let gw = start_gateway(&body, &sim.addr);
    let (status, headers, b) = post(
        &gw.url("/v1/chat/completions"),
        None,
        chat_body("busy-gemini/gemini-2.5-pro", "hi", false),
    );
    let v = assert_error(status, &b, 429, "rate_limit_error");
    assert_eq!(v["error"]["code"], "resource_exhausted", "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("busy-gemini"));
    assert_eq!(headers["retry-after"], "30");
    let (status, _, b) = post(
        &gw.url("/v1/chat/completions"),
        None,
        chat_body("down-claude/claude-haiku-4-5", "hi", true),
    );
    let v = assert_error(status, &b, 500, "upstream_error");
    assert_eq!(v["error"]["code"], "api_error", "{v}");
}

#[test]
fn failover_crosses_wire_formats_invisibly() {
    let sim = start_sim();
    let body = [
        native_provider("a-down", "anthropic", "/a/v1", "claude-x", "fail-500"),
        native_provider(
            "g-drop-early",
            "gemini",
            "/g/v1beta",
            "gemini-x",
            "drop-early",
        ),
        native_provider("w-ok", "workers-ai", "/w/ai", "@cf/x/y", ""),
    ]
    .concat();
    let gw = start_gateway(&body, &sim.addr);
    for stream in [false, true] {
        let (status, headers, b) = post_with(
            &gw.url("/v1/chat/completions"),
            None,
            chat_body("shared", "fail over please", stream),
            &[("x-gateway-fallback", "auto")],
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
        assert_eq!(headers["x-gateway-provider"], "w-ok");
        let text = if stream {
            sse_data(&b)
                .iter()
                .filter(|d| *d != "[DONE]")
                .filter_map(|d| {
                    json(d.as_bytes())["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect::<String>()
        } else {
            json(&b)["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert!(text.starts_with("echo: fail over please"), "{text}");
    }
}

#[test]
fn native_stream_broken_mid_way_ends_with_an_error_event() {
    let sim = start_sim();
    for (kind, base, model) in [
        ("gemini", "/g/v1beta", "gemini-x"),
        ("anthropic", "/a/v1", "claude-x"),
        ("workers-ai", "/w/ai", "@cf/x/y"),
    ] {
        let body = native_provider("dropper", kind, base, model, "drop");
        let gw = start_gateway(&body, &sim.addr);
        let (status, _, b) = post(
            &gw.url("/v1/chat/completions"),
            None,
            chat_body(
                &format!("dropper/{model}"),
                "one two three four five six",
                true,
            ),
        );
        assert_eq!(status, 200, "{kind}");
        let events = sse_data(&b);
        assert!(
            events.iter().any(|e| e.contains("\"content\":\"echo: ")),
            "{kind}: {events:?}"
        );
        let last = events.last().unwrap();
        assert!(
            json(last.as_bytes())["error"]["message"].is_string(),
            "{kind}: {last}"
        );
        assert!(!events.iter().any(|e| e == "[DONE]"), "{kind}");
    }
}
