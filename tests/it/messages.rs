//! `POST /v1/messages` and `/v1/messages/count_tokens`: the official Anthropic Python SDK
//! against an Anthropic provider (native), an OpenAI-compatible one and Gemini (translated);
//! the native body byte for byte; Anthropic's error envelope for the gateway's own errors;
//! the request log and metrics.

use crate::harness::*;

const KEY: &str = "sk-gw-test";

fn provider(name: &str, kind: &str, base: &str, models: &[&str]) -> String {
    let mut s = format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"{kind}\"\nbase_url = \"http://{{sim}}{base}\"\n\
         api_key = \"key-{name}\"\nsimulated = true\n"
    );
    for m in models {
        s.push_str(&format!(
            "  [[providers.models]]\n  id = \"{m}\"\n  context_window = 200000\n  \
             capabilities = [\"tools\", \"json\", \"vision\", \"stream\"]\n  \
             cost = {{ input_per_mtok = 3.0, output_per_mtok = 15.0 }}\n"
        ));
    }
    s
}

fn config() -> String {
    format!(
        "[auth]\nkeys = [\"{KEY}\"]\n{}{}{}",
        provider(
            "sim-anthropic",
            "anthropic",
            "/anthropic/v1",
            &["claude-sonnet-4-5", "claude-fail-429", "claude-drop"]
        ),
        provider(
            "sim-openai",
            "openai",
            "/openai/v1",
            &["echo-1", "fail-429-1", "drop-1"]
        ),
        provider(
            "sim-gemini",
            "gemini",
            "/gemini/v1beta",
            &["gemini-2.5-flash", "gemini-fail-429", "gemini-drop"]
        ),
    )
}

#[test]
fn messages_anthropic_sdk_against_native_and_translated_providers() {
    let sim = start_sim();
    let gw = start_gateway(&config(), &sim.addr);
    let providers = serde_json::json!([
        [
            "anthropic",
            "anthropic",
            "sim-anthropic/claude-sonnet-4-5",
            "sim-anthropic/claude-fail-429",
            "sim-anthropic/claude-drop"
        ],
        [
            "openai",
            "openai",
            "sim-openai/echo-1",
            "sim-openai/fail-429-1",
            "sim-openai/drop-1"
        ],
        [
            "gemini",
            "gemini",
            "sim-gemini/gemini-2.5-flash",
            "sim-gemini/gemini-fail-429",
            "sim-gemini/gemini-drop"
        ],
    ]);
    let stdout = run_python(
        &[
            &sdk_script("messages_check.py"),
            "--base-url",
            &gw.url(""),
            "--sim-url",
            &sim.url(""),
            "--key",
            KEY,
            "--providers",
            &providers.to_string(),
        ],
        "MESSAGES CHECK OK",
        &|| gw.log_text(),
    );
    for label in ["[anthropic ", "[openai ", "[gemini "] {
        assert!(stdout.contains(label), "{label} not checked: {stdout}");
    }
}

#[test]
fn messages_native_body_is_the_clients_bytes_but_the_model() {
    let sim = start_sim();
    let gw = start_gateway(&config(), &sim.addr);
    // Odd spacing, key order, escapes, cache_control, thinking signatures, documents.
    let body = r#"{ "max_tokens" : 50,"system":[{"type":"text","text":"ctx \u00e9","cache_control":{"type":"ephemeral","ttl":"1h"}}],
      "messages":[{"role":"user","content":[{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":"JVBERi0xLjQK"},"cache_control":{"type":"ephemeral"}},{"type":"text","text":"hi"}]},
        {"role":"assistant","content":[{"type":"thinking","thinking":"hm","signature":"EqQBCgIYAhIM+/=="},{"type":"text","text":"yes"}]},
        {"role":"user","content":"more"}],
      "model":   "sim-anthropic/claude-sonnet-4-5"  , "metadata":{"user_id":"u"} }"#;
    let (status, headers, answer) = post_with(
        &gw.url("/v1/messages"),
        None,
        body,
        &[
            ("x-api-key", KEY),
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "prompt-caching-2024-07-31"),
        ],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let want = body.replacen(
        r#""sim-anthropic/claude-sonnet-4-5""#,
        r#""claude-sonnet-4-5""#,
        1,
    );
    assert_eq!(String::from_utf8(sim_last_body(&sim)).unwrap(), want);
    let rec = sim_requests(&sim).pop().unwrap();
    assert_eq!(rec["path"], "/anthropic/v1/messages");
    assert_eq!(rec["anthropic_version"], "2023-06-01");
    assert_eq!(rec["x_api_key"], "key-sim-anthropic");
    assert!(
        rec["header_names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == "anthropic-beta"),
        "{rec}"
    );
    let v = json(&answer);
    assert_eq!(v["type"], "message");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert_eq!(headers["x-gateway-provider"], "sim-anthropic");
    assert_eq!(headers["x-gateway-model"], "claude-sonnet-4-5");
    assert_eq!(headers["x-gateway-attempts"], "1");
    assert!(headers.contains_key("x-gateway-request-id"));

    // The request log: endpoint `messages`, the provider's tokens, their cost.
    let rows = crate::pipeline::log_rows(&gw, 1);
    let row = &rows[0];
    assert_eq!(row["endpoint"], "messages", "{rows:?}");
    assert_eq!(row["provider"], "sim-anthropic");
    let prompt = (want.len() / 4) as u64;
    assert_eq!(row["prompt_tokens"].as_u64(), Some(prompt), "{row:?}");
    assert_eq!(
        row["completion_tokens"].as_u64(),
        v["usage"]["output_tokens"].as_u64()
    );
    assert_eq!(row["tokens_estimated"].as_i64(), Some(0));
    let cost = row["cost_usd"].as_f64().unwrap();
    let expected =
        (prompt as f64 * 3.0 + v["usage"]["output_tokens"].as_f64().unwrap() * 15.0) / 1e6;
    assert!((cost - expected).abs() < 1e-12, "{cost} != {expected}");
    let metrics = gw.metrics(KEY);
    assert!(metrics.contains("endpoint=\"messages\""), "{metrics}");
}

#[test]
fn messages_gateway_errors_use_anthropics_envelope() {
    let sim = start_sim();
    let body = format!(
        "[limits]\nper_ip = {{ burst = 3, per_minute = 3 }}\n{}",
        config()
    );
    let gw = start_gateway(&body, &sim.addr);
    let anthropic_error = |status: u16, b: &[u8], want_status: u16, want_type: &str| {
        let v = json(b);
        assert_eq!(status, want_status, "{v}");
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], want_type, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(
            v.get("code").is_none() && v["error"].get("code").is_none(),
            "{v}"
        );
    };
    let msg = |model: &str| {
        serde_json::json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
            .to_string()
    };
    // Auth (the gateway's 401).
    let (s, _, b) = post(&gw.url("/v1/messages"), Some("wrong"), msg("auto"));
    anthropic_error(s, &b, 401, "authentication_error");
    // A malformed request.
    let (s, _, b) = post(&gw.url("/v1/messages"), Some(KEY), r#"{"messages":[]}"#);
    anthropic_error(s, &b, 400, "invalid_request_error");
    // Chat keeps OpenAI's envelope on the same gateway.
    let (s, _, b) = post(
        &gw.url("/v1/chat/completions"),
        Some("wrong"),
        chat_body("auto", "x", false),
    );
    assert_error(s, &b, 401, "authentication_error");
    // The per-IP limit (the gateway's 429).
    let mut limited = None;
    for _ in 0..6 {
        let (s, h, b) = post(&gw.url("/v1/messages/count_tokens"), Some(KEY), msg("auto"));
        if s == 429 {
            limited = Some((s, h, b));
            break;
        }
    }
    let (s, h, b) = limited.expect("the per-IP limit answered 429");
    anthropic_error(s, &b, 429, "rate_limit_error");
    assert!(h.contains_key("retry-after"));
}

#[test]
fn messages_no_capacity_is_an_overloaded_error_with_retry_after() {
    let sim = start_sim();
    let body = format!(
        "[auth]\nkeys = [\"{KEY}\"]\n{}",
        provider(
            "sim-busy",
            "openai",
            "/busy/v1",
            &["fail-429-a", "fail-429-b"]
        )
    );
    let gw = start_gateway(&body, &sim.addr);
    let req = serde_json::json!({"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    let (s, h, b) = post(&gw.url("/v1/messages"), Some(KEY), req.to_string());
    let v = json(&b);
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error", "{v}");
    assert!(h.contains_key("retry-after"));
}

#[test]
fn messages_chat_cannot_carry_go_to_anthropic_providers_only() {
    let sim = start_sim();
    let body = format!(
        "[auth]\nkeys = [\"{KEY}\"]\n{}{}",
        provider("sim-openai", "openai", "/openai/v1", &["echo-1"]),
        provider(
            "sim-anthropic",
            "anthropic",
            "/anthropic/v1",
            &["claude-sonnet-4-5"]
        ),
    );
    let gw = start_gateway(&body, &sim.addr);
    let pdf = serde_json::json!({"model": "auto", "max_tokens": 20, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}},
        {"type": "text", "text": "summarise"}]}]});
    for _ in 0..4 {
        let (s, h, b) = post(&gw.url("/v1/messages"), Some(KEY), pdf.to_string());
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        assert_eq!(h["x-gateway-provider"], "sim-anthropic");
    }
    // Pinned to the OpenAI-compatible model: refused, saying why.
    let mut pinned = pdf.clone();
    pinned["model"] = "sim-openai/echo-1".into();
    let (s, _, b) = post(&gw.url("/v1/messages"), Some(KEY), pinned.to_string());
    let v = json(&b);
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("document"),
        "{v}"
    );
    // count_tokens on the OpenAI-compatible provider: the gateway's estimate.
    let (s, _, b) = post(
        &gw.url("/v1/messages/count_tokens"),
        Some(KEY),
        serde_json::json!({"model": "sim-openai/echo-1", "messages": [{"role": "user", "content": "hello there"}]}).to_string(),
    );
    assert_eq!(s, 200);
    assert!(json(&b)["input_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn messages_work_on_the_demo_with_auto_and_claude() {
    let listen = format!("127.0.0.1:{}", free_port());
    let sim_listen = format!("127.0.0.1:{}", free_port());
    let dir = std::env::temp_dir().join(format!("freeway-messages-demo-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let demo = spawn(
        &["demo", "--listen", &listen, "--sim-listen", &sim_listen],
        listen.clone(),
        &dir,
        "demo",
    );
    for (model, provider, stream) in [
        ("auto", None, false),
        ("auto", None, true),
        ("claude", Some("sim-anthropic"), false),
        ("claude-sonnet-4-5", Some("sim-anthropic"), true),
    ] {
        let body = serde_json::json!({"model": model, "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": "hello demo"}]});
        let (s, h, b) = post_with(
            &demo.url("/v1/messages"),
            None,
            body.to_string(),
            &[("anthropic-version", "2023-06-01")],
        );
        let text = String::from_utf8_lossy(&b);
        assert_eq!(s, 200, "{model}: {text}");
        if let Some(p) = provider {
            assert_eq!(h["x-gateway-provider"], p);
        }
        if stream {
            assert!(text.starts_with("event: message_start"), "{text}");
            assert!(
                text.contains("text_delta")
                    && text.trim_end().ends_with(r#"{"type":"message_stop"}"#),
                "{text}"
            );
        } else {
            let v = json(&b);
            assert_eq!(v["type"], "message");
            assert!(
                v["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .contains("hello demo"),
                "{v}"
            );
        }
    }
}
