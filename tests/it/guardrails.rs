//! Guardrails end to end: block, redact and flag on prompts and answers, JSON and streams,
//! through the OpenAI Python SDK (`tests/sdk/guardrails_check.py`), then what the provider
//! received, the Anthropic Messages endpoint, the metric and the request-log field.

use crate::harness::*;

/// One guardrail per gateway key (`key-0` … `key-5`), so one gateway serves every case.
fn config() -> String {
    let keys: Vec<String> = (0..6).map(|i| format!("\"sk-gw-{i}\"")).collect();
    let mut s = format!("[auth]\nkeys = [{}]\n", keys.join(", "));
    s.push_str(&sim_provider("sim-openai", "", &["echo-1"]));
    s.push_str(
        "[[providers]]\nname = \"sim-anthropic\"\nkind = \"anthropic\"\n\
         base_url = \"http://{sim}/anthropic/v1\"\napi_key = \"key-anthropic\"\nsimulated = true\n  \
         [[providers.models]]\n  id = \"claude-sonnet-4-5\"\n  context_window = 200000\n  \
         capabilities = [\"tools\", \"json\", \"vision\", \"stream\"]\n",
    );
    for (i, name, on, matcher, action) in [
        (0, "prompt-block", "prompt", "pii = [\"email\"]", "block"),
        (
            1,
            "prompt-redact",
            "prompt",
            "pii = [\"email\", \"credit_card\"]",
            "redact",
        ),
        (2, "prompt-flag", "prompt", "words = [\"bluebird\"]", "flag"),
        (
            3,
            "response-block",
            "response",
            "pii = [\"credit_card\"]",
            "block",
        ),
        (
            4,
            "response-redact",
            "response",
            "pii = [\"email\", \"phone\"]",
            "redact",
        ),
        (
            5,
            "response-flag",
            "response",
            "words = [\"bluebird\"]",
            "flag",
        ),
    ] {
        s.push_str(&format!(
            "[[guardrails]]\nname = \"{name}\"\non = \"{on}\"\n{matcher}\naction = \"{action}\"\n\
             keys = [\"key-{i}\"]\n"
        ));
    }
    s
}

#[test]
fn guardrails_block_redact_and_flag_prompts_and_answers() {
    let sim = start_sim();
    let gw = start_gateway(&config(), &sim.addr);
    run_python(
        &[
            &sdk_script("guardrails_check.py"),
            "--base-url",
            &gw.url("/v1"),
            "--sim-url",
            &sim.url(""),
        ],
        "GUARDRAILS CHECK OK",
        &|| gw.log_text(),
    );

    // The provider received the redaction, never the address (checked here too, on the
    // simulator's record of the last body).
    let (status, h, _) = post(
        &gw.url("/v1/chat/completions"),
        Some("sk-gw-1"),
        chat_body("sim-openai/echo-1", "write to ann@example.org", false),
    );
    assert_eq!(status, 200);
    assert_eq!(h["x-gateway-guardrails"], "prompt-redact");
    let upstream = String::from_utf8(sim_last_body(&sim)).unwrap();
    assert!(upstream.contains("write to [REDACTED:email]"), "{upstream}");
    assert!(!upstream.contains("ann@example.org"), "{upstream}");

    // A key without a guardrail is untouched and not flagged.
    let (status, h, body) = post(
        &gw.url("/v1/chat/completions"),
        Some("sk-gw-2"),
        chat_body("sim-openai/echo-1", "write to ann@example.org", false),
    );
    assert_eq!(status, 200);
    assert!(h.get("x-gateway-guardrails").is_none());
    assert!(String::from_utf8_lossy(&body).contains("ann@example.org"));

    // Anthropic Messages: the native provider gets the redacted prompt; a blocked prompt
    // gets Anthropic's error envelope.
    let messages_with = |key: &str, text: &str, stream: bool| {
        let body = serde_json::json!({"model": "sim-anthropic/claude-sonnet-4-5", "max_tokens": 64,
            "stream": stream,
            "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]});
        post_with(
            &gw.url("/v1/messages"),
            None,
            body.to_string(),
            &[("x-api-key", key), ("anthropic-version", "2023-06-01")],
        )
    };
    let messages = |key: &str, text: &str| messages_with(key, text, false);
    let (status, _, body) = messages("sk-gw-1", "card 4111 1111 1111 1111");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let upstream = String::from_utf8(sim_last_body(&sim)).unwrap();
    assert!(
        upstream.contains("card [REDACTED:credit_card]"),
        "{upstream}"
    );
    let (status, _, body) = messages("sk-gw-0", "me@example.com");
    assert_eq!(status, 400);
    let v = json(&body);
    assert_eq!(v["type"], "error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prompt-block"),
        "{v}"
    );
    assert!(!String::from_utf8_lossy(&body).contains("me@example.com"));
    let (status, _, body) = messages("sk-gw-4", "reach me@example.com");
    assert_eq!(status, 200);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("[REDACTED:email]") && !text.contains("me@example.com"),
        "{text}"
    );
    // Native Anthropic streams: text deltas redacted, or ended by an error event.
    let (status, _, body) = messages_with("sk-gw-4", "reach me@example.com today", true);
    assert_eq!(status, 200);
    let events = String::from_utf8_lossy(&body);
    let streamed: String = sse_data(&body)
        .iter()
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_string))
        .collect();
    assert!(
        streamed.contains("reach [REDACTED:email] today"),
        "{events}"
    );
    assert!(
        !events.contains("me@example.com") && events.contains("message_stop"),
        "{events}"
    );
    let lead = "the quick brown fox jumps over the lazy dog ".repeat(3);
    let (status, _, body) =
        messages_with("sk-gw-3", &format!("{lead}card 4111 1111 1111 1111"), true);
    let events = String::from_utf8_lossy(&body);
    assert!(!events.contains("4111"), "{events}");
    if status == 200 {
        assert!(
            events.contains("event: error") && events.contains("response-block"),
            "{events}"
        );
        assert!(!events.contains("message_stop"), "{events}");
    } else {
        assert_eq!(status, 400, "{events}");
    }

    // The metric, and the request log's list.
    let metrics = gw.metrics("sk-gw-0");
    for (guardrail, action, on) in [
        ("prompt-block", "block", "prompt"),
        ("prompt-redact", "redact", "prompt"),
        ("prompt-flag", "flag", "prompt"),
        ("response-block", "block", "response"),
        ("response-redact", "redact", "response"),
        ("response-flag", "flag", "response"),
    ] {
        let labels = [
            format!("guardrail=\"{guardrail}\""),
            format!("action=\"{action}\""),
            format!("on=\"{on}\""),
        ];
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("freeway_guardrail_hits_total{")
                    && labels.iter().all(|x| l.contains(x.as_str()))),
            "{guardrail} missing:\n{metrics}"
        );
    }
    let logged = || -> Vec<String> {
        rusqlite::Connection::open(gw.dir().join("freeway.db"))
            .and_then(|c| {
                c.prepare("SELECT guardrails FROM request_log WHERE guardrails IS NOT NULL")?
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_until(10, "guardrails in the request log", || {
        logged().iter().any(|g| g == r#"["response-redact"]"#)
    });
    assert!(logged().iter().any(|g| g == r#"["prompt-block"]"#));
}
