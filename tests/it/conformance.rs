//! Conformance with what real clients send (issue 13's translation items), through the
//! official OpenAI Python SDK (`tests/sdk/conformance_check.py`) against simulated
//! providers that speak each provider's documented wire format, checking what the upstream
//! received and what the client got.

use crate::harness::*;
use serde_json::{json, Value};

/// Runs `conformance_check.py` with `args`; returns its stdout.
fn sdk_check(args: &[&str], context: &dyn Fn() -> String) -> String {
    let script = sdk_script("conformance_check.py");
    let args: Vec<&str> = std::iter::once(script.as_str())
        .chain(args.iter().copied())
        .collect();
    run_python(&args, "CONFORMANCE OK", context)
}

/// Structured outputs with nested Pydantic models, nested tools, a recursive model, unique
/// tool-call ids and `n` > 1 on Gemini, Anthropic and Workers AI, through the Python SDK.
#[test]
fn python_sdk_structured_outputs_tools_and_choices_on_native_providers() {
    let sim = start_sim();
    let gw = start_gateway(&natives(), &sim.addr);
    let models = json!({"gemini": GEMINI, "anthropic": ANTHROPIC, "workers": WORKERS});
    let models = models.to_string();
    sdk_check(
        &[
            "--mode",
            "native",
            "--base-url",
            &gw.url("/v1"),
            "--sim-url",
            &sim.url(""),
            "--models",
            &models,
        ],
        &|| gw.log_text(),
    );
    // Every provider was reached on its native path only.
    let reqs = sim_requests(&sim);
    for prefix in ["/gemini/v1beta/", "/anthropic/v1/messages", "/cf/client/"] {
        assert!(
            reqs.iter()
                .any(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix))),
            "{prefix}: {reqs:?}"
        );
    }
}

/// Gemini: nested `$ref`s inlined, `allOf` merged, `anyOf [X, null]` nullable (plain HTTP:
/// the exact upstream body), and a recursive schema refused with a 400 before any upstream
/// request.
#[test]
fn gemini_schemas_are_inlined_and_recursive_ones_refused() {
    let sim = start_sim();
    let gw = start_gateway(&natives(), &sim.addr);
    let schema = json!({
        "$defs": {"Money": {"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]}},
        "type": "object",
        "allOf": [{"properties": {"id": {"type": "string"}}, "required": ["id"]},
                  {"properties": {"total": {"$ref": "#/$defs/Money"},
                                  "tip": {"anyOf": [{"$ref": "#/$defs/Money"}, {"type": "null"}]}},
                   "required": ["total", "tip"]}]
    });
    let body = json!({"model": GEMINI, "messages": [{"role": "user", "content": "bill"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "bill", "strict": true, "schema": schema}}});
    let (status, _, b) = post(&gw.url("/v1/chat/completions"), None, body.to_string());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    let sent = json(&sim_last_body(&sim));
    let money = json!({"type": "object", "properties": {"amount": {"type": "number"}}, "required": ["amount"]});
    let mut tip = money.clone();
    tip["nullable"] = json!(true);
    assert_eq!(
        sent["generationConfig"]["responseSchema"],
        json!({"type": "object", "required": ["id", "total", "tip"],
               "properties": {"id": {"type": "string"}, "total": money, "tip": tip}})
    );
    // The answer follows the schema (the simulator answers a value valid against it).
    let answer: Value = serde_json::from_str(
        json(&b)["choices"][0]["message"]["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(answer["total"]["amount"].is_number() && answer["id"].is_string());

    let before = sim_requests(&sim).len();
    let recursive = json!({"$defs": {"Node": {"type": "object", "properties": {
        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}}, "$ref": "#/$defs/Node"});
    let body = json!({"model": GEMINI, "messages": [{"role": "user", "content": "tree"}],
        "tools": [{"type": "function", "function": {"name": "plant", "parameters": recursive}}]});
    let (status, _, b) = post(&gw.url("/v1/chat/completions"), None, body.to_string());
    let v = assert_error(status, &b, 400, "invalid_request_error");
    assert_eq!(v["error"]["param"], "tools", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("recursive"),
        "{v}"
    );
    assert_eq!(sim_requests(&sim).len(), before, "nothing goes upstream");
}

/// Anthropic JSON mode: a forced tool call upstream; the client gets JSON content (JSON
/// answer and stream), and Anthropic models can be routed JSON requests.
#[test]
fn anthropic_json_mode_is_a_forced_tool_read_back_as_content() {
    let sim = start_sim();
    let gw = start_gateway(&natives(), &sim.addr);
    let schema = json!({"type": "object", "properties": {"colours": {"type": "array", "items": {"type": "string"}}},
                        "required": ["colours"], "additionalProperties": false});
    for stream in [false, true] {
        let body = json!({"model": ANTHROPIC, "stream": stream, "messages": [{"role": "user", "content": "two colours"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "colours", "schema": schema}}});
        let (status, _, b) = post(&gw.url("/v1/chat/completions"), None, body.to_string());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
        let sent = json(&sim_last_body(&sim));
        assert_eq!(
            sent["tool_choice"],
            json!({"type": "tool", "name": "json_answer"})
        );
        assert_eq!(sent["tools"][0]["input_schema"], schema);
        assert!(sent.get("system").is_none(), "{sent}");
        let (content, finish) = if stream {
            let events = sse_data(&b);
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
            let chunks: Vec<Value> = events[..events.len() - 1]
                .iter()
                .map(|e| json(e.as_bytes()))
                .collect();
            assert!(chunks
                .iter()
                .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
            let text: String = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
                .collect();
            let finish = chunks
                .iter()
                .find_map(|c| c["choices"][0]["finish_reason"].as_str())
                .unwrap()
                .to_string();
            (text, finish)
        } else {
            let v = json(&b);
            assert!(
                v["choices"][0]["message"].get("tool_calls").is_none(),
                "{v}"
            );
            (
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                v["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        };
        let parsed: Value = serde_json::from_str(&content).unwrap();
        assert!(parsed["colours"][0].is_string(), "{content}");
        assert_eq!(finish, "stop");
    }
}

/// Workers AI receives the schema itself in `response_format.json_schema`.
#[test]
fn workers_ai_gets_the_json_schema_itself() {
    let sim = start_sim();
    let gw = start_gateway(&natives(), &sim.addr);
    let schema = json!({"type": "object", "properties": {"name": {"type": "string"}, "capital": {"type": "string"}},
                        "required": ["name", "capital"]});
    let body = json!({"model": WORKERS, "messages": [{"role": "user", "content": "India"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "country", "strict": true, "schema": schema}}});
    let (status, _, b) = post(&gw.url("/v1/chat/completions"), None, body.to_string());
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    let sent = json(&sim_last_body(&sim));
    assert_eq!(
        sent["response_format"],
        json!({"type": "json_schema", "json_schema": schema})
    );
    let answer: Value = serde_json::from_str(
        json(&b)["choices"][0]["message"]["content"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(answer["name"].is_string() && answer["capital"].is_string());
}

/// `n` > 1: Gemini serves it (candidateCount); with `auto`, only models whose API can are
/// candidates; a pinned Anthropic or Workers AI model gets a 400 that says so.
#[test]
fn several_choices_are_served_or_refused_clearly() {
    let sim = start_sim();
    let gw = start_gateway(&natives(), &sim.addr);
    let body = |model: &str| {
        json!({"model": model, "n": 3, "messages": [{"role": "user", "content": "three"}]})
            .to_string()
    };
    for _ in 0..4 {
        let (status, headers, b) = post(&gw.url("/v1/chat/completions"), None, body("auto"));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
        assert_eq!(headers["x-gateway-provider"], "sim-gemini");
        let v = json(&b);
        let idx: Vec<u64> = v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["index"].as_u64().unwrap())
            .collect();
        assert_eq!(idx, vec![0, 1, 2]);
    }
    assert_eq!(
        json(&sim_last_body(&sim))["generationConfig"]["candidateCount"],
        3
    );
    let before = sim_requests(&sim).len();
    for model in [ANTHROPIC, WORKERS] {
        let (status, _, b) = post(&gw.url("/v1/chat/completions"), None, body(model));
        let v = assert_error(status, &b, 400, "invalid_request_error");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("n > 1") && msg.contains("one choice per request"),
            "{msg}"
        );
    }
    assert_eq!(sim_requests(&sim).len(), before);
}

/// A Responses stream that dies mid-way ends with `response.failed` (Python's
/// `client.responses.stream`).
#[test]
fn responses_stream_failing_mid_way_ends_with_response_failed() {
    let sim = start_sim();
    // Two models: a broken stream cools its model down.
    let gw = start_gateway(&sim_provider("dropper", "drop", &["m-1", "m-2"]), &sim.addr);
    sdk_check(
        &[
            "--mode",
            "responses-drop",
            "--base-url",
            &gw.url("/v1"),
            "--model",
            "dropper/m-1",
        ],
        &|| gw.log_text(),
    );
    // The same over plain HTTP: the last two events.
    let (status, _, b) = post(
        &gw.url("/v1/responses"),
        None,
        json!({"model": "dropper/m-2", "stream": true, "input": "one two three four five"})
            .to_string(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    let events: Vec<Value> = sse_data(&b).iter().map(|e| json(e.as_bytes())).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        &kinds[kinds.len() - 2..],
        &["error", "response.failed"],
        "{kinds:?}"
    );
    let failed = &events.last().unwrap()["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "server_error");
}

/// `freeway demo`: its OpenAI-format `echo` and `auto` models call tools and answer JSON
/// that matches the schema (Python SDK: tool round trip, `parse`, streams).
#[test]
fn demo_models_call_tools_and_answer_structured_outputs() {
    let listen = format!("127.0.0.1:{}", free_port());
    let sim_listen = format!("127.0.0.1:{}", free_port());
    let dir = std::env::temp_dir().join(format!("freeway-conf-demo-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let demo = spawn(
        &["demo", "--listen", &listen, "--sim-listen", &sim_listen],
        listen.clone(),
        &dir,
        "demo",
    );
    // The simulator listens too before the demo answers.
    wait_until(20, "the demo's simulator", || {
        std::net::TcpStream::connect(&sim_listen).is_ok()
    });
    sdk_check(
        &[
            "--mode",
            "demo",
            "--base-url",
            &demo.url("/v1"),
            "--sim-url",
            &format!("http://{sim_listen}"),
        ],
        &|| demo.log_text(),
    );
}
