//! The one request pipeline: every model endpoint is charged to the per-client limits, and
//! every upstream attempt (chat or media) is recorded the same way — the attempt metric,
//! the endpoint label, the provider's token counts and the cost.

use crate::harness::*;
use crate::media::{post_form, provider};
use std::collections::HashMap;

/// An OpenAI-format provider serving every media type and chat; embeddings are priced.
fn media_provider() -> String {
    provider(
        "sim-openai",
        "openai",
        "/oa/v1",
        "",
        &[
            (
                "text-embedding-3-small",
                "embedding",
                "cost = { input_per_mtok = 20.0, output_per_mtok = 0.0 }",
            ),
            ("whisper-large-v3", "transcription", ""),
            ("gpt-4o-mini-tts", "speech", ""),
            (
                "gpt-image-1",
                "image",
                "sizes = [\"256x256\"]\n  cost = { per_image = 0.01 }",
            ),
            ("echo", "chat", ""),
        ],
    )
}

/// A tiny WAV (a header and a few samples): enough for the simulated providers.
fn wav() -> Vec<u8> {
    let mut w = b"RIFF\x2c\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x40\x1f\0\0\x80\x3e\0\0\x02\0\x10\0data\x08\0\0\0".to_vec();
    w.extend_from_slice(&[0, 0, 1, 0, 2, 0, 3, 0]);
    w
}

/// One request to the endpoint family `family`, from client IP `ip`.
fn request(
    gw: &Proc,
    family: &str,
    ip: &str,
    key: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut headers = vec![("x-forwarded-for", ip)];
    let auth;
    if let Some(k) = key {
        auth = format!("Bearer {k}");
        headers.push(("authorization", auth.as_str()));
    }
    let json = |path: &str, body: serde_json::Value| {
        post_with(&gw.url(path), None, body.to_string(), &headers)
    };
    match family {
        "chat" => json(
            "/v1/chat/completions",
            serde_json::json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        "responses" => json(
            "/v1/responses",
            serde_json::json!({"model": "echo", "input": "hi"}),
        ),
        "embeddings" => json(
            "/v1/embeddings",
            serde_json::json!({"model": "text-embedding-3-small", "input": "hello there"}),
        ),
        "speech" => json(
            "/v1/audio/speech",
            serde_json::json!({"model": "gpt-4o-mini-tts", "input": "hello", "voice": "alloy"}),
        ),
        "images" => json(
            "/v1/images/generations",
            serde_json::json!({"model": "gpt-image-1", "prompt": "a red square", "size": "256x256"}),
        ),
        "messages" => json(
            "/v1/messages",
            serde_json::json!({"model": "echo", "max_tokens": 16,
                               "messages": [{"role": "user", "content": "hi"}]}),
        ),
        "passthrough" => json(
            "/providers/sim-openai/chat/completions",
            serde_json::json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        "transcriptions" | "translations" => post_form(
            &gw.url(&format!("/v1/audio/{family}")),
            &[("model", "whisper-large-v3")],
            &wav(),
            &headers,
        ),
        "speech_to_speech" => post_form(
            &gw.url("/v1/audio/speech-to-speech"),
            &[("model", "echo"), ("voice", "alloy")],
            &wav(),
            &headers,
        ),
        other => panic!("no family {other}"),
    }
}

const FAMILIES: [&str; 10] = [
    "chat",
    "responses",
    "messages",
    "images",
    "embeddings",
    "transcriptions",
    "translations",
    "speech",
    "speech_to_speech",
    "passthrough",
];

fn assert_limited(gw: &Proc, family: &str, ip: &str, key: Option<&str>) {
    let (status, _, body) = request(gw, family, ip, key);
    assert_eq!(
        status,
        200,
        "{family}: first request: {}\n{}",
        String::from_utf8_lossy(&body),
        gw.log_text()
    );
    let (status, h, body) = request(gw, family, ip, key);
    if family == "messages" {
        // Anthropic's envelope: `{"type": "error", "error": {"type", "message"}}`.
        let v = json(&body);
        assert_eq!(status, 429, "{family}: {v}");
        assert_eq!(v["type"], "error", "{family}: {v}");
        assert_eq!(v["error"]["type"], "rate_limit_error", "{family}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    } else {
        let v = assert_error(status, &body, 429, "rate_limit_error");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{family}");
    }
    let retry: u64 = h
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{family}: no retry-after in {h:?}"));
    assert!(retry >= 1, "{family}: retry-after {retry}");
}

#[test]
fn every_model_endpoint_is_charged_to_the_per_ip_limit() {
    let sim = start_sim();
    let body = format!(
        "[limits]\nper_ip = {{ burst = 1, per_minute = 1 }}\ntrust_forwarded_for = true\n{}",
        media_provider()
    );
    let gw = start_gateway(&body, &sim.addr);
    for (i, family) in FAMILIES.iter().enumerate() {
        assert_limited(&gw, family, &format!("203.0.113.{}", i + 1), None);
    }
    // Local endpoints are never charged.
    for _ in 0..3 {
        let r = client()
            .get(gw.url("/v1/models"))
            .header("x-forwarded-for", "203.0.113.1")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[test]
fn every_model_endpoint_is_charged_to_the_per_key_limit() {
    let sim = start_sim();
    let keys: Vec<String> = FAMILIES.iter().map(|f| format!("sk-{f}")).collect();
    let quoted: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
    let body = format!(
        "[auth]\nkeys = [{}]\n[limits]\nper_ip = {{ per_minute = 0 }}\nper_key = {{ burst = 1, per_minute = 1 }}\n{}",
        quoted.join(", "),
        media_provider()
    );
    let gw = start_gateway(&body, &sim.addr);
    for (family, key) in FAMILIES.iter().zip(&keys) {
        // One IP for all: only the key's bucket can refuse.
        assert_limited(&gw, family, "198.51.100.9", Some(key));
    }
}

/// The request log's rows, newest last, as `endpoint` → columns.
pub(crate) fn log_rows(gw: &Proc, want: usize) -> Vec<HashMap<String, serde_json::Value>> {
    let db = gw.dir().join("freeway.db");
    let mut rows = Vec::new();
    wait_until(10, "request-log rows", || {
        let Ok(conn) = rusqlite::Connection::open(&db) else {
            return false;
        };
        let Ok(mut stmt) = conn.prepare(
            "SELECT endpoint, provider, model, status, prompt_tokens, completion_tokens, \
             tokens_estimated, cost_usd FROM request_log ORDER BY id",
        ) else {
            return false;
        };
        let names = [
            "endpoint",
            "provider",
            "model",
            "status",
            "prompt_tokens",
            "completion_tokens",
            "tokens_estimated",
            "cost_usd",
        ];
        let read = stmt.query_map([], |r| {
            let mut m = HashMap::new();
            for (i, n) in names.iter().enumerate() {
                let v: rusqlite::types::Value = r.get(i)?;
                let j = match v {
                    rusqlite::types::Value::Integer(x) => serde_json::json!(x),
                    rusqlite::types::Value::Real(x) => serde_json::json!(x),
                    rusqlite::types::Value::Text(x) => serde_json::json!(x),
                    _ => serde_json::Value::Null,
                };
                m.insert(n.to_string(), j);
            }
            Ok(m)
        });
        rows = match read {
            Ok(it) => it.filter_map(Result::ok).collect(),
            Err(_) => return false,
        };
        rows.len() >= want
    });
    rows
}

#[test]
fn media_requests_are_logged_with_real_labels_tokens_cost_and_attempts() {
    let sim = start_sim();
    let metrics_port = free_port();
    let body = format!(
        "[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n{}",
        media_provider()
    );
    let gw = start_gateway(&body, &sim.addr);
    let input = "the quick brown fox jumps over the lazy dog";
    let (status, _, b) = post(
        &gw.url("/v1/embeddings"),
        None,
        serde_json::json!({"model": "text-embedding-3-small", "input": input}).to_string(),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
    // What the simulated provider reported (it counts ~4 bytes a token).
    let reported = json(&b)["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(reported, input.len().div_ceil(4) as u64);
    for family in [
        "transcriptions",
        "translations",
        "speech",
        "speech_to_speech",
    ] {
        let (status, _, b) = request(&gw, family, "127.0.0.1", None);
        assert_eq!(status, 200, "{family}: {}", String::from_utf8_lossy(&b));
    }

    let rows = log_rows(&gw, 5);
    let by: HashMap<&str, &HashMap<String, serde_json::Value>> = rows
        .iter()
        .map(|r| (r["endpoint"].as_str().unwrap(), r))
        .collect();
    for label in [
        "embeddings",
        "transcriptions",
        "translations",
        "speech",
        "speech_to_speech",
    ] {
        assert!(by.contains_key(label), "no `{label}` row in {rows:?}");
        assert_eq!(by[label]["status"], 200, "{label}");
    }
    let e = by["embeddings"];
    assert_eq!(e["provider"], "sim-openai");
    assert_eq!(e["prompt_tokens"].as_u64(), Some(reported), "{e:?}");
    // Vectors are not completion tokens.
    assert_eq!(e["completion_tokens"].as_u64(), Some(0), "{e:?}");
    assert_eq!(e["tokens_estimated"].as_i64(), Some(0), "{e:?}");
    let cost = e["cost_usd"].as_f64().unwrap();
    let want = reported as f64 * 20.0 / 1e6;
    assert!((cost - want).abs() < 1e-12, "cost {cost} != {want}");

    // Every media attempt is counted like a chat attempt.
    let metrics = client()
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let attempts = |model: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("freeway_upstream_attempts_total{")
                    && l.contains(&format!("model=\"{model}\""))
                    && l.contains("outcome=\"success\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    assert_eq!(attempts("text-embedding-3-small"), 1, "{metrics}");
    // transcriptions, translations and the speech-to-speech transcript.
    assert_eq!(attempts("whisper-large-v3"), 3, "{metrics}");
    // speech, and the speech-to-speech answer.
    assert_eq!(attempts("gpt-4o-mini-tts"), 2, "{metrics}");
    for label in [
        "embeddings",
        "transcriptions",
        "translations",
        "speech",
        "speech_to_speech",
    ] {
        assert!(
            metrics.contains(&format!("endpoint=\"{label}\"")),
            "no `{label}` series in {metrics}"
        );
    }
}
