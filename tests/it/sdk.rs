//! `freeway demo` as a newcomer meets it: the official OpenAI Python SDK against it, with
//! every JSON body and stream chunk validated against OpenAI's published OpenAPI schema;
//! and its log while the simulated providers fail on purpose.

use crate::harness::*;
use std::time::{Duration, Instant};

#[test]
fn openai_python_sdk_chats_and_streams_through_demo() {
    let demo = start_demo(&[]);
    let openapi = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openapi/openapi.json");
    run_python(
        &[
            &sdk_script("openai_sdk_check.py"),
            "--base-url",
            &demo.url("/v1"),
            "--openapi",
            openapi,
        ],
        "SDK CHECK OK",
        &|| demo.log_text(),
    );
}

/// Polls `send` every 250 ms (a model cooling down after a failure answers 503 meanwhile)
/// until it answers `want`; returns the body.
fn until_status(what: &str, want: u16, send: impl Fn() -> (u16, Vec<u8>)) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = send();
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {status}: {}",
            String::from_utf8_lossy(&body)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Drives the demo's deliberate failures — a stream dropped mid-way, the same model dropping
/// a JSON answer, a Claude-style stream on it, a 500, a 429, the flaky provider — then a
/// healthy request, and returns the whole log once the last access line is in it.
fn demo_log_after_deliberate_failures(env: &[(&str, &str)]) -> String {
    let demo = start_demo(env);
    let chat = |model: &str, stream: bool| {
        let (s, _, b) = post(
            &demo.url("/v1/chat/completions"),
            None,
            chat_body(model, "one two three four five six", stream),
        );
        (s, b)
    };
    let body = until_status("the dropped stream", 200, || chat("sim-lab/drop", true));
    let last = json(sse_data(&body).last().unwrap().as_bytes());
    assert_eq!(last["error"]["type"], "upstream_error", "{last}");
    until_status("the dropped JSON answer", 502, || {
        chat("sim-lab/drop", false)
    });
    let body = until_status("the dropped Claude-style stream", 200, || {
        let (s, _, b) = post(
            &demo.url("/v1/messages"),
            None,
            serde_json::json!({"model": "sim-lab/drop", "max_tokens": 50, "stream": true,
                "messages": [{"role": "user", "content": "one two three four five six"}]})
            .to_string(),
        );
        (s, b)
    });
    assert!(
        String::from_utf8_lossy(&body).contains("event: error"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    until_status("the failing model", 500, || chat("sim-lab/fail-500", false));
    until_status("the throttled model", 429, || {
        chat("sim-throttled/busy-large", false)
    });
    for _ in 0..4 {
        chat("sim-flaky/flaky-medium", false);
    }
    until_status("a healthy request", 200, || {
        chat("sim-alpha/echo-large", false)
    });
    let marker = if env.contains(&("FREEWAY_LOG_FORMAT", "text")) {
        "POST chat 200 sim-alpha/echo-large"
    } else {
        "\"requested_model\":\"sim-alpha/echo-large\""
    };
    wait_until(10, "the last access line", || {
        demo.log_text().contains(marker)
    });
    demo.log_text()
}

const LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

/// What both log formats promise: no Pingora "Fail to filter request" for the simulator's
/// own drops, no colour codes off a terminal, no ERROR line (every failure here was
/// deliberate and handled), and the dropped stream reported at WARN.
fn assert_quiet_about_deliberate_failures(log: &str, levels: &[&str]) {
    assert!(!log.contains("Fail to filter request"), "{log}");
    assert!(!log.contains("\x1b["), "colour codes in a file:\n{log}");
    assert!(!levels.contains(&"ERROR"), "an ERROR line:\n{log}");
    assert!(
        log.lines()
            .zip(levels)
            .any(|(l, lv)| *lv == "WARN" && l.contains("the stream from `sim-lab/drop` failed")),
        "the dropped stream is not reported at WARN:\n{log}"
    );
}

#[test]
fn demo_logs_one_json_line_per_event_and_deliberate_drops_are_no_errors() {
    // Stdout is a file here, not a terminal: JSON, as the README says.
    let log = demo_log_after_deliberate_failures(&[]);
    let mut levels = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{log}"));
        let level = if v["type"] == "access" {
            assert!(v["request_id"].is_string(), "{line}");
            "INFO"
        } else {
            let level = v["level"].as_str().unwrap_or_default();
            let level = LEVELS
                .into_iter()
                .find(|l| *l == level)
                .unwrap_or_else(|| panic!("no level: {line}"));
            assert!(v["fields"]["message"].is_string(), "no message: {line}");
            level
        };
        levels.push(level);
    }
    assert!(log.contains("freeway demo: gateway on http://"), "{log}");
    assert_quiet_about_deliberate_failures(&log, &levels);
}

#[test]
fn demo_text_logs_have_one_shape_and_no_colour_codes_off_a_terminal() {
    let log = demo_log_after_deliberate_failures(&[("FREEWAY_LOG_FORMAT", "text")]);
    let mut levels = Vec::new();
    for line in log.lines() {
        // `<RFC 3339 time, UTC>  <LEVEL> <message>`, tracing's lines and access lines alike.
        let mut words = line.split_whitespace();
        let time = words.next().unwrap_or_default();
        let level = words.next().unwrap_or_default();
        assert!(
            time.len() >= 20 && time.as_bytes()[4] == b'-' && time.ends_with('Z'),
            "no time first: {line:?}\n{log}"
        );
        assert!(LEVELS.contains(&level), "no level second: {line:?}\n{log}");
        levels.push(level);
    }
    assert!(
        log.contains("INFO access: POST chat 502 sim-lab/drop"),
        "{log}"
    );
    assert_quiet_about_deliberate_failures(&log, &levels);
}
