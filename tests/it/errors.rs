//! Every bad input gets an OpenAI-shaped error, and the gateway keeps serving.

use crate::harness::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const KEY: &str = "sk-gw-test";

fn gateway(sim: &Proc, providers: &str) -> Proc {
    start_gateway(
        &format!("[auth]\nkeys = [\"{KEY}\"]\n{providers}"),
        &sim.addr,
    )
}

#[test]
fn client_mistakes_get_400_envelopes() {
    let sim = start_sim();
    let gw = gateway(&sim, &sim_provider("alpha", "", &["m1"]));
    let url = gw.url("/v1/chat/completions");
    let cases: &[(&str, &str)] = &[
        ("{not json", "not valid JSON"),
        ("", "empty"),
        ("[1,2,3]", "not a chat completion"),
        (r#"{"model":42,"messages":[]}"#, "`model` must be a string"),
        (
            r#"{"model":"auto","messages":"hello"}"#,
            "`messages` must be",
        ),
        (r#"{"model":"auto"}"#, "`messages` is required"),
        (
            r#"{"model":"auto","stream":"yes","messages":[{"role":"user","content":"x"}]}"#,
            "`stream` must be a boolean",
        ),
        (
            r#"{"model":"auto","max_tokens":"lots","messages":[{"role":"user","content":"x"}]}"#,
            "`max_tokens`",
        ),
    ];
    for (body, needle) in cases {
        let (status, _, resp) = post(&url, Some(KEY), body.to_string());
        let v = assert_error(status, &resp, 400, "invalid_request_error");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{body}: {v}"
        );
    }
    let (status, _, resp) = post(&url, Some(KEY), chat_body("no-such-model", "x", false));
    let v = assert_error(status, &resp, 400, "invalid_request_error");
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");
    assert_eq!(
        sim_requests(&sim).len(),
        0,
        "bad requests must not reach a provider"
    );
    assert_alive(&gw);
}

#[test]
fn missing_or_wrong_key_is_401() {
    let sim = start_sim();
    let gw = gateway(&sim, &sim_provider("alpha", "", &["m1"]));
    let url = gw.url("/v1/chat/completions");
    for key in [None, Some("sk-wrong")] {
        let (status, _, resp) = post(&url, key, chat_body("auto", "x", false));
        let v = assert_error(status, &resp, 401, "authentication_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
    }
    // Public paths stay open.
    assert_eq!(
        client().get(gw.url("/v1/models")).send().unwrap().status(),
        200
    );
    assert_eq!(
        client().get(gw.url("/health")).send().unwrap().status(),
        200
    );
    let (status, _, _) = post_with(
        &url,
        None,
        chat_body("auto", "x", false),
        &[("x-api-key", KEY)],
    );
    assert_eq!(status, 200);
    // After a 401 the connection is not reused: `Connection: close`, then the server closes
    // it (read_to_end ends only at EOF; a kept-alive connection would time out instead).
    let body = chat_body("auto", "x", false);
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-wrong\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .expect("the connection was kept open after a 401");
    let text = String::from_utf8_lossy(&resp).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 401"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    // The dashboard page holds no data: it needs no key (its data calls do).
    let r = client().get(gw.url("/usage")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("<html"));
}

#[test]
fn oversize_body_is_413_declared_or_chunked() {
    let sim = start_sim();
    let gw = gateway(&sim, &sim_provider("alpha", "", &["m1"]));
    // Declared too large: answered before a byte of the body is sent.
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n", 9 * 1024 * 1024).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let v = assert_error(413, body.as_bytes(), 413, "invalid_request_error");
    assert_eq!(v["error"]["code"], "body_too_large");

    // Chunked, with no Content-Length: the limit is enforced while reading.
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    let chunk = vec![b'a'; 1024 * 1024];
    for _ in 0..10 {
        if write!(s, "{:X}\r\n", chunk.len()).is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    assert_eq!(sim_requests(&sim).len(), 0);
    assert_alive(&gw);
}

#[test]
fn unknown_path_and_wrong_method_are_enveloped() {
    let sim = start_sim();
    let gw = gateway(&sim, &sim_provider("alpha", "", &["m1"]));
    let r = client()
        .get(gw.url("/v1/nothing"))
        .bearer_auth(KEY)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.bytes().unwrap(), 404, "invalid_request_error");
    let r = client()
        .get(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    assert_error(status, &r.bytes().unwrap(), 405, "invalid_request_error");
}

#[test]
fn client_disconnecting_mid_stream_leaves_gateway_serving() {
    let sim = start_sim();
    let gw = gateway(
        &sim,
        &(sim_provider("slowpoke", "slow", &["m1"]) + &sim_provider("fast", "", &["m2"])),
    );
    let body = chat_body(
        "slowpoke/m1",
        "one two three four five six seven eight",
        true,
    );
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s); // gone mid-stream
    for _ in 0..3 {
        let (status, _, _) = post(
            &gw.url("/v1/chat/completions"),
            Some(KEY),
            chat_body("fast/m2", "x", true),
        );
        assert_eq!(status, 200);
    }
    assert_alive(&gw);
    // The gateway notices at its next write (the provider sends a chunk every 200 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !gw.log_text().contains("client disconnected mid-stream") {
        assert!(std::time::Instant::now() < deadline, "{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn upstream_refusing_connections_is_502_naming_the_attempt() {
    let sim = start_sim();
    let dead_port = free_port();
    let providers = format!(
        "[[providers]]\nname = \"dead\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{dead_port}/v1\"\napi_key = \"k\"\n  [[providers.models]]\n  id = \"m\"\n"
    );
    let gw = gateway(&sim, &providers);
    let (status, headers, resp) = post(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("auto", "x", false),
    );
    let v = assert_error(status, &resp, 502, "upstream_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("dead/m"),
        "{v}"
    );
    assert_eq!(headers["x-gateway-attempts"], "1");
    assert_alive(&gw);
}

#[test]
fn upstream_tls_failure_is_502() {
    // An https provider whose port speaks plain HTTP: the TLS handshake fails.
    let sim = start_sim();
    let providers = format!(
        "[[providers]]\nname = \"badtls\"\nkind = \"openai\"\nbase_url = \"https://{}/v1\"\napi_key = \"k\"\n  [[providers.models]]\n  id = \"m\"\n",
        sim.addr
    );
    let gw = gateway(&sim, &providers);
    let (status, _, resp) = post(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("auto", "x", false),
    );
    let v = assert_error(status, &resp, 502, "upstream_error");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("tls"),
        "{v}"
    );
    assert_eq!(
        sim_requests(&sim).len(),
        0,
        "no plaintext request may be sent"
    );
    assert_alive(&gw);
}

#[test]
fn silent_upstream_times_out_with_504() {
    let sim = start_sim();
    let gw = gateway(&sim, &sim_provider("stuck", "hang", &["m1"]));
    let (status, _, resp) = post_with(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("auto", "x", false),
        &[("x-gateway-request-timeout", "300")],
    );
    assert_error(status, &resp, 504, "timeout");
    assert_alive(&gw);
}

#[test]
fn pinned_throttled_model_passes_429_through() {
    let sim = start_sim();
    let gw = gateway(&sim, &sim_provider("busy", "fail-429", &["m1"]));
    let (status, headers, resp) = post(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("busy/m1", "x", false),
    );
    assert_error(status, &resp, 429, "rate_limit_error");
    assert_eq!(headers["retry-after"], "30");
}

#[test]
fn config_check_names_the_bad_key() {
    let dir = std::env::temp_dir().join(format!("freeway-cfg-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[server]\nmax_attempts = \"many\"\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["-t", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.max_attempts"), "{err}");
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");

    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/freeway.toml");
    let out = std::process::Command::new(BIN)
        .args(["-t", "--config", shipped])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
