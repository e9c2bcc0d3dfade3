//! Stream resume (`x-gateway-stream-resume: true`): a text stream whose provider dies or
//! stalls mid-answer is continued by the next candidate in the same client stream, read
//! through the official SDKs (tests/sdk/resume_check.py). The simulated `story` models tell
//! one fixed text (`freeway::sim::story::STORY`) and continue it from a partial assistant
//! turn in their own format, so the client's text must be exactly the story: nothing lost,
//! nothing repeated at the seam.

use crate::harness::*;
use freeway::sim::story::STORY;
use serde_json::Value;
use std::process::Command;

const KEY: &str = "sk-gw-test";

/// A provider block of `kind` at the simulator, with `extra` lines (e.g. `continuation`).
fn provider(name: &str, kind: &str, extra: &str, models: &[&str]) -> String {
    let mut s = format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"{kind}\"\nbase_url = \"http://{{sim}}/{name}/v1\"\n\
         api_key = \"key-{name}\"\nsimulated = true\n{extra}\n"
    );
    for m in models {
        s.push_str(&format!(
            "  [[providers.models]]\n  id = \"{m}\"\n  context_window = 200000\n  \
             capabilities = [\"tools\", \"stream\"]\n  cost = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}\n"
        ));
    }
    s
}

/// A gateway in front of the simulator: the dying first models (`sim-a`), the continuing
/// ones of each format, and one route per scenario (`dynamic/<name>`: first, second).
fn gateway(sim: &Proc, routes: &[(&str, &str, &str)]) -> Proc {
    let mut body = format!(
        "[auth]\nkeys = [\"{KEY}\"]\n{}{}{}{}{}",
        provider(
            "sim-a",
            "openai",
            "",
            &[
                "story-die-4",
                "story-die-5",
                "story-die-6",
                "story-die-7",
                "story-die-8",
                "story-die-9",
                "story-die-10",
                "story-error-10",
                "story-stall-4"
            ]
        ),
        provider("sim-claude", "anthropic", "", &["story"]),
        provider(
            "sim-prefix",
            "openai",
            "continuation = \"prefix\"",
            &["story-repeat"]
        ),
        provider(
            "sim-vllm",
            "openai",
            "continuation = \"continue_final_message\"",
            &["story"]
        ),
        provider(
            "sim-plain",
            "openai",
            "",
            &["story", "story-die-4", "story-fail-500", "story-stall-0"]
        ),
    );
    for (name, first, second) in routes {
        body.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\nmodels = [\"{first}\", \"{second}\"]\n"
        ));
    }
    start_gateway(&body, &sim.addr)
}

/// One streamed answer through the SDK check: (exit ok, its report).
fn sdk(gw: &Proc, model: &str, api: &str, extra: &[&str]) -> (bool, Value) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/resume_check.py");
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python");
    let out = Command::new(python)
        .args([
            script,
            "--base-url",
            &gw.url("/v1"),
            "--model",
            model,
            "--api",
            api,
        ])
        .args(extra)
        .output()
        .expect("the test venv (.venv, see scripts/setup.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no report from resume_check.py:\n{stdout}\n{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                gw.log_text()
            )
        });
    (out.status.success(), report)
}

/// The continuation request the simulator recorded for a model of `prefix`.
fn continuation(sim: &Proc, prefix: &str) -> Value {
    sim_requests(sim)
        .into_iter()
        .rev()
        .find(|r| {
            r["path"].as_str().is_some_and(|p| p.starts_with(prefix)) && r.get("partial").is_some()
        })
        .unwrap_or_else(|| {
            panic!(
                "no continuation request at {prefix}: {:?}",
                sim_requests(sim)
            )
        })
}

/// The first `n` words of the story, as the dying model sent them.
fn words(n: usize) -> String {
    STORY.split_inclusive(' ').take(n).collect()
}

fn assert_one_story(what: &str, ok: bool, r: &Value, finish: &str, gw: &Proc) {
    assert!(ok, "{what}: the SDK raised: {r}\n{}", gw.log_text());
    assert_eq!(r["text"], STORY, "{what}: {r}");
    assert_eq!(r["finishes"], serde_json::json!([finish]), "{what}: {r}");
    assert_eq!(r["errors"], serde_json::json!([]), "{what}: {r}");
}

#[test]
fn a_chat_stream_that_dies_is_finished_by_the_next_model_in_its_format() {
    let sim = start_sim();
    let gw = gateway(
        &sim,
        &[
            ("claude", "sim-a/story-die-4", "sim-claude/story"),
            ("prefix", "sim-a/story-die-5", "sim-prefix/story-repeat"),
            ("vllm", "sim-a/story-die-6", "sim-vllm/story"),
            ("stall", "sim-a/story-stall-4", "sim-plain/story"),
            ("error", "sim-a/story-error-10", "sim-claude/story"),
        ],
    );

    // Anthropic: the partial answer as a prefill, its trailing space trimmed (Anthropic
    // refuses it), the space restored at the seam.
    let (ok, r) = sdk(&gw, "dynamic/claude", "chat", &[]);
    assert_one_story("anthropic prefill", ok, &r, "stop", &gw);
    assert_eq!(
        r["models"],
        serde_json::json!(["story-die-4", "story"]),
        "{r}"
    );
    let c = continuation(&sim, "/sim-claude/");
    assert_eq!(c["continuation"], "prefill");
    assert_eq!(c["partial"], words(4).trim_end());
    // Usage adds both attempts: the dying one's estimate and the continuation's own.
    let u = &r["usage"];
    assert!(u["completion_tokens"].as_u64().unwrap() > 20, "{r}");

    // A prefix-mode provider whose model repeats the seam's last words: cut.
    let (ok, r) = sdk(&gw, "dynamic/prefix", "chat", &[]);
    assert_one_story("prefix with overlap", ok, &r, "stop", &gw);
    let c = continuation(&sim, "/sim-prefix/");
    assert_eq!(c["continuation"], "prefix");
    assert_eq!(c["partial"], words(5));

    // vLLM's continue_final_message.
    let (ok, r) = sdk(&gw, "dynamic/vllm", "chat", &[]);
    assert_one_story("continue_final_message", ok, &r, "stop", &gw);
    assert_eq!(
        continuation(&sim, "/sim-vllm/")["continuation"],
        "continue_final_message"
    );

    // A provider that stalls past stream_idle_timeout_ms; the next has no prefix mode: the
    // partial answer and an instruction to continue.
    let (ok, r) = sdk(&gw, "dynamic/stall", "chat", &[]);
    assert_one_story("instruct after a stall", ok, &r, "stop", &gw);
    let c = continuation(&sim, "/sim-plain/");
    assert_eq!(c["continuation"], "instruct");
    assert_eq!(c["partial"], words(4));

    // A provider that reports an error event mid-stream.
    let (ok, r) = sdk(&gw, "dynamic/error", "chat", &[]);
    assert_one_story("after an error event", ok, &r, "stop", &gw);
    assert_eq!(
        continuation(&sim, "/sim-claude/")["partial"],
        words(10).trim_end()
    );

    let metrics = gw.metrics(KEY);
    assert!(
        metrics.contains("freeway_stream_resumes_total{outcome=\"resumed\"} 5"),
        "{metrics}"
    );
    // The request log says where each stream was resumed.
    wait_until(10, "the request log rows", || {
        let b = get_json(&gw, "/v1/analytics/failures");
        b["data"].as_array().is_some_and(|rows| {
            rows.iter()
                .filter(|r| {
                    r["failures"].as_array().into_iter().flatten().any(|f| {
                        f.as_str()
                            .is_some_and(|f| f.contains("stream resumed on `"))
                    })
                })
                .map(|r| r["attempts"].as_u64())
                .collect::<Vec<_>>()
                == vec![Some(2); 5]
        })
    });
}

/// The JSON a keyed `GET path` answers.
fn get_json(gw: &Proc, path: &str) -> Value {
    let resp = client().get(gw.url(path)).bearer_auth(KEY).send().unwrap();
    json(&resp.bytes().unwrap())
}

#[test]
fn the_client_sees_one_stream_one_done_and_the_trailer() {
    let sim = start_sim();
    let gw = gateway(&sim, &[("r", "sim-a/story-die-4", "sim-plain/story")]);
    let body = r#"{"model":"dynamic/r","stream":true,"messages":[{"role":"user","content":"go"}]}"#;
    let (s, h, b) = post_with(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        body,
        &[("x-gateway-stream-resume", "true")],
    );
    assert_eq!(s, 200);
    // Headers went out with the first attempt; the trailer tells the rest.
    assert_eq!(h["x-gateway-attempts"], "1");
    let text = String::from_utf8_lossy(&b);
    assert_eq!(text.matches("data: [DONE]").count(), 1, "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    assert!(
        text.contains(": x-gateway-attempts: 2; x-gateway-resumed-on: sim-plain/story"),
        "{text}"
    );
    let chunks: Vec<Value> = sse_data(&b)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let ids: std::collections::BTreeSet<String> =
        chunks.iter().map(|c| c["id"].to_string()).collect();
    let created: std::collections::BTreeSet<String> =
        chunks.iter().map(|c| c["created"].to_string()).collect();
    assert_eq!((ids.len(), created.len()), (1, 1), "{text}");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, STORY);
    let roles = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["role"].is_string())
        .count();
    let finishes = chunks
        .iter()
        .filter(|c| c["choices"][0]["finish_reason"].is_string())
        .count();
    assert_eq!((roles, finishes), (1, 1), "{text}");
}

#[test]
fn without_resume_a_dying_stream_ends_with_the_error_event_as_before() {
    let sim = start_sim();
    let gw = gateway(&sim, &[("r", "sim-a/story-die-4", "sim-plain/story")]);
    let (ok, r) = sdk(&gw, "dynamic/r", "chat", &["--no-resume"]);
    assert!(!ok, "{r}");
    assert_eq!(r["text"], words(4), "{r}");
    assert_eq!(r["finishes"], serde_json::json!([]), "{r}");
    assert_eq!(
        sim_count(&sim, "/sim-plain/"),
        0,
        "no continuation was asked"
    );
}

#[test]
fn a_tool_call_stream_is_never_resumed() {
    let sim = start_sim();
    let gw = gateway(
        &sim,
        &[
            ("r", "sim-a/story-die-4", "sim-plain/story"),
            ("m", "sim-a/story-die-5", "sim-plain/story"),
        ],
    );
    // Chat: some text, then a tool call, then the provider dies.
    let (ok, r) = sdk(&gw, "dynamic/r", "chat", &["--tools"]);
    assert!(!ok, "the stream ends with the error event: {r}");
    assert!(r["tool_calls"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["text"], words(4), "{r}");
    // Messages: a text block, then a tool_use block started, then the provider dies.
    let (ok, r) = sdk(&gw, "dynamic/m", "messages", &["--tools"]);
    assert!(!ok, "the stream ends with the error event: {r}");
    assert_eq!(r["tool_calls"], 1, "{r}");
    assert_eq!(r["text"], words(4), "{r}");
    assert_eq!(
        sim_count(&sim, "/sim-plain/"),
        0,
        "no continuation was asked"
    );
    let metrics = gw.metrics(KEY);
    assert!(
        metrics.contains("freeway_stream_resumes_total{outcome=\"refused\"} 2"),
        "{metrics}"
    );
}

#[test]
fn responses_and_messages_text_streams_resume_too() {
    let sim = start_sim();
    let gw = gateway(
        &sim,
        &[
            ("resp", "sim-a/story-die-7", "sim-plain/story"),
            ("msg", "sim-a/story-die-8", "sim-claude/story"),
            ("msg-openai", "sim-a/story-die-9", "sim-prefix/story-repeat"),
        ],
    );
    let (ok, r) = sdk(&gw, "dynamic/resp", "responses", &[]);
    assert_one_story("responses", ok, &r, "completed", &gw);
    assert_eq!(continuation(&sim, "/sim-plain/")["partial"], words(7));

    // Messages: the continuation goes to Anthropic as a prefill (through the translation).
    let (ok, r) = sdk(&gw, "dynamic/msg", "messages", &[]);
    assert_one_story("messages on anthropic", ok, &r, "end_turn", &gw);
    let c = continuation(&sim, "/sim-claude/");
    assert_eq!(c["continuation"], "prefill");
    assert_eq!(c["partial"], words(8).trim_end());

    let (ok, r) = sdk(&gw, "dynamic/msg-openai", "messages", &[]);
    assert_one_story("messages on a prefix provider", ok, &r, "end_turn", &gw);
    assert_eq!(continuation(&sim, "/sim-prefix/")["partial"], words(9));
}

#[test]
fn when_no_model_continues_the_stream_ends_with_the_error_event() {
    let sim = start_sim();
    let gw = gateway(
        &sim,
        &[
            // The only other candidate answers 500.
            ("r", "sim-a/story-die-4", "sim-plain/story-fail-500"),
            // The continuation joins, then dies too, with no candidate left.
            ("again", "sim-a/story-die-5", "sim-plain/story-die-4"),
        ],
    );
    let (ok, r) = sdk(&gw, "dynamic/r", "chat", &[]);
    assert!(!ok, "{r}");
    assert_eq!(r["text"], words(4), "{r}");
    let errors = r["errors"].to_string();
    assert!(errors.contains("no other model continued it"), "{errors}");

    let (ok, r) = sdk(&gw, "dynamic/again", "chat", &[]);
    assert!(!ok, "{r}");
    // The first model's five words, then the continuation's until it died.
    assert_eq!(r["text"], words(8), "{r}");
    assert_eq!(r["finishes"], serde_json::json!([]), "{r}");

    let metrics = gw.metrics(KEY);
    for line in [
        "freeway_stream_resumes_total{outcome=\"failed\"} 2",
        "freeway_stream_resumes_total{outcome=\"resumed\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
}

#[test]
fn a_continuation_must_start_within_the_request_timeout() {
    let sim = start_sim();
    // The continuation opens its stream, then sends nothing; the request's timeout (1 s,
    // below stream_idle_timeout_ms) bounds the wait for its first content.
    let gw = gateway(
        &sim,
        &[("r", "sim-a/story-die-4", "sim-plain/story-stall-0")],
    );
    let body = r#"{"model":"dynamic/r","stream":true,"messages":[{"role":"user","content":"go"}]}"#;
    let (s, _, b) = post_with(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        body,
        &[
            ("x-gateway-stream-resume", "true"),
            ("x-gateway-request-timeout", "1000"),
        ],
    );
    assert_eq!(s, 200);
    let text = String::from_utf8_lossy(&b);
    let events = sse_data(&b);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    let message = last["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no other model continued it")
            && message.contains("the continuation sent no content in time"),
        "{text}"
    );
    assert!(!text.contains("[DONE]"), "{text}");
}
