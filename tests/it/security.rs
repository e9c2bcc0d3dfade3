//! What a hostile client tries, and what holds (docs/SECURITY.md names each test): memory
//! that follows declared lengths, slow bodies, keys echoed by providers, free key guessing,
//! a cache shared across keys, key hints on the public status page, encoded dot segments,
//! malformed and pipelined heads, unbounded timeouts.

use crate::harness::*;
use crate::resources::{
    metric, metrics_section, read_response, read_until_closed, status_kib, FLOOD,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const KEY: &str = "sk-gw-security-test-key";

fn connect(gw: &Proc) -> TcpStream {
    let s = TcpStream::connect(&gw.addr).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends raw bytes on a new connection and reads one response.
fn raw(gw: &Proc, request: &str) -> (u16, Vec<u8>) {
    let mut s = connect(gw);
    s.write_all(request.as_bytes()).unwrap();
    read_response(&mut s)
}

fn chat_with(
    gw: &Proc,
    model: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    post_with(
        &gw.url("/v1/chat/completions"),
        key,
        chat_body(model, "hello", false),
        headers,
    )
}

#[test]
fn memory_grows_with_body_bytes_received_not_with_the_declared_length() {
    let _one = FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    let sim = start_sim();
    let (metrics, maddr) = metrics_section();
    let gw = start_gateway_with(
        &[("max_body_bytes", "33554432")],
        &format!("{metrics}{}", sim_provider("p", "", &["m"])),
        &sim.addr,
    );
    for _ in 0..3 {
        assert_eq!(chat_with(&gw, "p/m", None, &[]).0, 200);
    }
    let rss0 = status_kib(gw.pid(), "VmRSS:");
    let n = 300;
    // Each declares 32 MiB, sends one byte of it, and waits.
    let head =
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n\
                content-length: 33554431\r\n\r\n{";
    let conns: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut s = connect(&gw);
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();
    wait_until(20, "every body's first byte held", || {
        metric(&maddr, "freeway_request_body_buffered_bytes") >= n as f64
    });
    let rss1 = status_kib(gw.pid(), "VmRSS:");
    let grew = rss1.saturating_sub(rss0);
    eprintln!("{n} connections declaring 32 MiB: VmRSS {rss0} -> {rss1} kB (+{grew} kB)");
    // At the declared length this would be gigabytes; a connection inside its body costs
    // at most 256 KiB (1/128 of what it declared), whatever it declared.
    assert!(
        grew < n as u64 * 256,
        "RSS grew by {grew} kB for {n} connections"
    );
    drop(conns);
    wait_until(10, "bodies released", || {
        metric(&maddr, "freeway_request_body_buffered_bytes") == 0.0
    });
}

#[test]
fn bodies_past_the_global_buffer_bound_get_503_until_memory_frees() {
    let sim = start_sim();
    let (metrics, maddr) = metrics_section();
    let gw = start_gateway_with(
        &[
            ("max_body_bytes", "1048576"),
            ("max_buffered_body_bytes", "1572864"),
        ],
        &format!("{metrics}{}", sim_provider("p", "", &["m"])),
        &sim.addr,
    );
    // One client holds ~1 MiB of an unfinished body.
    let mut holder = connect(&gw);
    holder
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\ncontent-length: 1048576\r\n\r\n",
        )
        .unwrap();
    holder.write_all(&vec![b' '; 1_000_000]).unwrap();
    wait_until(10, "the first body held", || {
        metric(&maddr, "freeway_request_body_buffered_bytes") >= 1_000_000.0
    });
    let text = "y".repeat(900_000);
    let body = chat_body("p/m", &text, false);
    let (status, h, b) = post(&gw.url("/v1/chat/completions"), None, body.clone());
    let v = assert_error(status, &b, 503, "service_unavailable");
    assert_eq!(v["error"]["code"], "body_buffers_full");
    assert_eq!(h["retry-after"], "1");
    drop(holder);
    wait_until(10, "memory freed", || {
        metric(&maddr, "freeway_request_body_buffered_bytes") == 0.0
    });
    let (status, _, b) = post(&gw.url("/v1/chat/completions"), None, body);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
}

#[test]
fn slow_bodies_are_cut_at_the_deadline_and_cannot_lock_others_out() {
    let sim = start_sim();
    let (metrics, maddr) = metrics_section();
    let cap = 6;
    let gw = start_gateway_with(
        &[
            ("max_connections", &cap.to_string()),
            ("body_timeout_seconds", "3"),
        ],
        &format!("{metrics}{}", sim_provider("p", "", &["m"])),
        &sim.addr,
    );
    let addr = gw.addr.clone();
    // `cap` clients trickle a body one byte at a time.
    let tricklers: Vec<_> = (0..cap)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.write_all(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\ncontent-length: 100\r\n\r\n{",
                )
                .unwrap();
                for _ in 0..40 {
                    std::thread::sleep(Duration::from_millis(250));
                    if s.write_all(b" ").is_err() {
                        break;
                    }
                }
                let mut got = Vec::new();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = s.read_to_end(&mut got);
                String::from_utf8_lossy(&got).to_string()
            })
        })
        .collect();
    wait_until(10, "every slot taken by a slow body", || {
        metric(&maddr, "freeway_connections_open") >= cap as f64
    });
    // Meanwhile an ordinary client is served: a slow body makes room like an idle head.
    let r = client().get(gw.url("/v1/models")).send().unwrap();
    assert_eq!(r.status(), 200);
    let answers: Vec<String> = tricklers.into_iter().map(|t| t.join().unwrap()).collect();
    let timed_out = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 408"))
        .count();
    let displaced = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 503"))
        .count();
    assert!(timed_out >= 1 && displaced >= 1, "{answers:#?}");
    assert_eq!(timed_out + displaced, cap, "{answers:#?}");
    let cut = answers
        .iter()
        .find(|a| a.starts_with("HTTP/1.1 408"))
        .unwrap();
    assert!(cut.contains("\"body_timeout\""), "{cut}");
}

#[test]
fn a_provider_that_echoes_its_key_never_leaks_it() {
    let sim = start_sim();
    // The simulator echoes a `…sim-401-full…` key whole, others masked as OpenAI does.
    let keys = [
        ("full", "sk-sim-401-full-0123456789abcdef"),
        ("masked", "sk-sim-401-masked-9876543210fedcba"),
        ("native", "sk-sim-401-native-5555555555aaaaaa"),
    ];
    let body: String = keys
        .iter()
        .map(|(name, key)| {
            sim_provider(name, "", &["m"]).replace(&format!("sk-upstream-{name}"), key)
        })
        .collect();
    let gw = start_gateway(&body, &sim.addr);
    let mut answers = Vec::new();
    // Native passthrough first (the others block their provider after the 401).
    let (status, _, b) = post(
        &gw.url("/providers/native/chat/completions"),
        None,
        chat_body("m", "hi", false),
    );
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&b));
    answers.push(String::from_utf8_lossy(&b).to_string());
    for (name, _) in &keys[..2] {
        let (status, _, b) = chat_with(&gw, &format!("{name}/m"), None, &[]);
        assert!(status >= 500, "{status}");
        answers.push(String::from_utf8_lossy(&b).to_string());
    }
    wait_until(10, "failures logged", || {
        let (_, b) = get_text(&gw, "/v1/analytics/failures");
        b.matches("Incorrect API key").count() >= 2
    });
    let (_, failures) = get_text(&gw, "/v1/analytics/failures");
    let log = gw.log_text();
    for (_, key) in keys {
        let tail = &key[key.len() - 8..];
        for (what, text) in answers.iter().map(|a| ("an answer", a.as_str())).chain([
            ("the failures API", failures.as_str()),
            ("the log", log.as_str()),
        ]) {
            assert!(!text.contains(key), "{what} holds {key}: {text}");
            assert!(
                !text.contains(tail),
                "{what} holds the tail of {key}: {text}"
            );
        }
    }
    assert!(
        answers.iter().all(|a| a.contains("[REDACTED]")),
        "{answers:?}"
    );
}

fn get_text(gw: &Proc, path: &str) -> (u16, String) {
    let r = client().get(gw.url(path)).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn failed_authentication_costs_the_ip_and_cannot_flood_the_log() {
    let sim = start_sim();
    let gw = start_gateway(
        &format!(
            "[auth]\nkeys = [\"{KEY}\"]\n[limits]\nper_ip = {{ burst = 5, per_minute = 1 }}\n{}",
            sim_provider("p", "", &["m"])
        ),
        &sim.addr,
    );
    for _ in 0..5 {
        assert_eq!(chat_with(&gw, "p/m", Some("sk-guess"), &[]).0, 401);
    }
    let (status, h, b) = chat_with(&gw, "p/m", Some("sk-guess"), &[]);
    assert_error(status, &b, 429, "rate_limit_error");
    assert!(h.contains_key("retry-after"));
    // Both the refused guesses and the refusal by the limit show in the metrics.
    let counted = |status: &str| -> f64 {
        gw.metrics(KEY)
            .lines()
            .filter(|l| {
                l.starts_with("freeway_requests_total{")
                    && l.contains("endpoint=\"chat\"")
                    && l.contains(&format!("status=\"{status}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    wait_until(5, "the guesses counted", || {
        counted("401") == 5.0 && counted("429") == 1.0
    });

    // Without the per-IP limit, a flood of keyless requests still keeps real rows.
    let gw = start_gateway(
        &format!(
            "[auth]\nkeys = [\"{KEY}\"]\n{}",
            sim_provider("p", "", &["m"])
        ),
        &sim.addr,
    );
    let flood = 150;
    for _ in 0..flood {
        assert_eq!(chat_with(&gw, "p/m", None, &[]).0, 401);
    }
    for _ in 0..3 {
        assert_eq!(chat_with(&gw, "p/m", Some(KEY), &[]).0, 200);
    }
    let db = gw.dir().join("freeway.db");
    let count = |status: i64| -> i64 {
        rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM request_log WHERE status = ?1",
                    [status],
                    |r| r.get(0),
                )
            })
            .unwrap_or(0)
    };
    wait_until(10, "the real rows logged", || count(200) == 3);
    let refused = count(401);
    // At most a minute's allowance (two, if the run straddles a minute boundary).
    assert!(
        (1..=120).contains(&refused) && refused < flood,
        "{refused} rows of 401"
    );
}

#[test]
fn each_key_has_its_own_cache_unless_shared_and_a_custom_key_replaces_the_body() {
    let sim = start_sim();
    let providers = sim_provider("p", "", &["m"]);
    let auth = "[auth]\nkeys = [\"sk-tenant-a\", \"sk-tenant-b\"]\n";
    let ttl = [("x-gateway-cache-ttl", "60")];
    let status = |gw: &Proc, key: &str, text: &str, extra: &[(&str, &str)]| {
        let mut headers = ttl.to_vec();
        headers.extend_from_slice(extra);
        let (s, h, b) = post_with(
            &gw.url("/v1/chat/completions"),
            Some(key),
            chat_body("p/m", text, false),
            &headers,
        );
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        h["x-gateway-cache-status"].to_str().unwrap().to_string()
    };
    let gw = start_gateway(&format!("{auth}{providers}"), &sim.addr);
    assert_eq!(status(&gw, "sk-tenant-a", "q", &[]), "MISS");
    assert_eq!(status(&gw, "sk-tenant-a", "q", &[]), "HIT");
    // Another key never gets the first key's answer.
    assert_eq!(status(&gw, "sk-tenant-b", "q", &[]), "MISS");
    // The client's cache key names the entry whatever the body (Cloudflare's semantics).
    let named = [("x-gateway-cache-key", "faq-1")];
    assert_eq!(status(&gw, "sk-tenant-a", "first", &named), "MISS");
    assert_eq!(status(&gw, "sk-tenant-a", "second", &named), "HIT");

    let shared = start_gateway(
        &format!("{auth}[cache]\nshared = true\n{providers}"),
        &sim.addr,
    );
    assert_eq!(status(&shared, "sk-tenant-a", "q", &[]), "MISS");
    assert_eq!(status(&shared, "sk-tenant-b", "q", &[]), "HIT");
}

#[test]
fn the_public_status_shows_no_key_hints_and_no_addresses() {
    let sim = start_sim();
    let dead = format!("127.0.0.1:{}", free_port());
    let body = format!(
        "[auth]\nkeys = [\"{KEY}\"]\n\
         [[providers]]\nname = \"pool\"\nkind = \"openai\"\nbase_url = \"http://{{sim}}/pool/v1\"\n\
         api_keys = [\"sk-long-pool-key-aaaaaaaa1111\", \"sk-long-pool-key-bbbbbbbb2222\"]\n\
           [[providers.models]]\n  id = \"m\"\n\
         [[providers]]\nname = \"gone\"\nkind = \"openai\"\nbase_url = \"http://{dead}/v1\"\n\
         api_key = \"sk-gone\"\n  [[providers.models]]\n  id = \"m\"\n"
    );
    let gw = start_gateway(&body, &sim.addr);
    let (status, _, b) = chat_with(&gw, "gone/m", Some(KEY), &[]);
    assert!(status >= 500, "{status}");
    let answer = String::from_utf8_lossy(&b);
    assert!(
        !answer.contains(&dead) && !answer.contains("127.0.0.1"),
        "{answer}"
    );
    assert!(answer.contains("refused the connection"), "{answer}");
    let public = gw.routing_status();
    let text = public.to_string();
    assert!(
        public["providers"]["pool"].get("keys").is_none(),
        "{public}"
    );
    assert!(
        !text.contains("1111") && !text.contains("127.0.0.1"),
        "{public}"
    );
    let r = client()
        .get(gw.url("/v1/routing/status"))
        .bearer_auth(KEY)
        .send()
        .unwrap();
    let with_key = json(&r.bytes().unwrap());
    assert_eq!(
        with_key["providers"]["pool"]["keys"][0]["key"], "#1 …1111",
        "{with_key}"
    );
}

#[test]
fn passthrough_refuses_encoded_dot_segments_odd_methods_and_strips_host_headers() {
    let sim = start_sim();
    let gw = start_gateway(&sim_provider("p", "", &["m"]), &sim.addr);
    for path in [
        "/providers/p/%2e%2e/admin",
        "/providers/p/..%2fadmin",
        "/providers/p/v1/..;/admin",
        "/providers/p/a\\..\\admin",
        "/providers/p/%252e%252e/admin",
    ] {
        let (status, body) = raw(&gw, &format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n"));
        assert_error(status, &body, 400, "invalid_request_error");
    }
    let (status, body) = raw(
        &gw,
        "TRACE /providers/p/models HTTP/1.1\r\nHost: gw\r\n\r\n",
    );
    assert_error(status, &body, 405, "invalid_request_error");
    assert_eq!(sim_count(&sim, "/p/"), 0, "nothing reached the provider");
    let (status, _, _) = post_with(
        &gw.url("/providers/p/chat/completions"),
        None,
        chat_body("m", "hi", false),
        &[
            ("api-key", "client-secret"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "host=evil.example"),
        ],
    );
    assert_eq!(status, 200);
    // The other credentials, cookies and hop-by-hop headers, sent raw (a client library
    // would drop or rewrite some of them itself).
    let body = chat_body("m", "hi", false);
    let (status, answer) = raw(
        &gw,
        &format!(
            "POST /providers/p/chat/completions HTTP/1.1\r\nHost: gw\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             X-Goog-Api-Key: client-secret\r\nX-Api-Key: client-secret\r\n\
             Cookie: session=client-secret\r\nProxy-Authorization: Basic Y2xpZW50\r\n\
             Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
             Trailer: x-checksum\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let last = sim_requests(&sim).pop().unwrap();
    let names = last["header_names"].to_string();
    assert!(names.contains("\"content-type\""), "{names}");
    for h in [
        "api-key",
        "x-forwarded-host",
        "forwarded",
        "x-goog-api-key",
        "x-api-key",
        "cookie",
        "proxy-authorization",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
    ] {
        assert!(
            !names.contains(&format!("\"{h}\"")),
            "{h} forwarded: {names}"
        );
    }
}

#[test]
fn malformed_heads_get_the_envelope_and_are_counted() {
    let sim = start_sim();
    let (metrics, maddr) = metrics_section();
    let gw = start_gateway(
        &format!("{metrics}{}", sim_provider("p", "", &["m"])),
        &sim.addr,
    );
    let many: String = (0..300).map(|i| format!("x-h{i}: v\r\n")).collect();
    let heads = [
        "GET http://evil.example/v1/models HTTP/1.1\r\nHost: gw\r\n\r\n".to_string(),
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".into(),
        "GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-A: b\r\n folded\r\n\r\n".into(),
        format!("GET /v1/models HTTP/1.1\r\nHost: gw\r\n{many}\r\n"),
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: xchunked\r\n\r\n".into(),
        "GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".into(),
    ];
    for head in &heads {
        let (status, body) = raw(&gw, head);
        let v = assert_error(status, &body, 400, "invalid_request_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Bad request"),
            "{v}"
        );
    }
    let counted = metric(
        &maddr,
        "freeway_connections_closed_total{reason=\"bad_request\"}",
    );
    assert_eq!(counted, heads.len() as f64);
    assert_alive(&gw);
}

#[test]
fn pipelined_requests_get_the_first_answer_with_connection_close() {
    let sim = start_sim();
    let gw = start_gateway(&sim_provider("p", "", &["m"]), &sim.addr);
    let one = "GET /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n";
    let mut s = connect(&gw);
    s.write_all(one.repeat(3).as_bytes()).unwrap();
    let (got, _) = read_until_closed(&mut s, Instant::now(), Duration::from_secs(10));
    let text = String::from_utf8_lossy(&got).to_lowercase();
    assert_eq!(text.matches("http/1.1 200").count(), 1, "{text}");
    assert!(text.contains("connection: close"), "{text}");
}

#[test]
fn timeouts_are_capped_the_dashboard_is_locked_down_and_bearer_is_case_insensitive() {
    let sim = start_sim();
    let gw = start_gateway_with(
        &[("upstream_timeout_ms", "1000")],
        &format!(
            "[auth]\nkeys = [\"{KEY}\"]\n{}",
            sim_provider("hang", "hang", &["m"])
        ),
        &sim.addr,
    );
    // Asking for ten minutes gets the configured second: the answer is a 504, not a hang.
    let (status, _, b) = chat_with(
        &gw,
        "hang/m",
        Some(KEY),
        &[("x-gateway-request-timeout", "600000")],
    );
    assert_error(status, &b, 504, "timeout");
    let r = client().get(gw.url("/usage")).send().unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'sha256-") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    // Asked without a key although keys are configured: the page holds no data.
    assert_eq!(r.status(), 200);
    let r = client()
        .get(gw.url("/v1/analytics"))
        .header("authorization", format!("bearer {KEY}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}
