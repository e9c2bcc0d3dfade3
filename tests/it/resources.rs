//! Bounded resources: the request-head deadline (slowloris), the keep-alive idle timeout,
//! the head size cap, `server.max_connections` (displacing idle connections, refusing when
//! all are busy), 10,000 idle connections within a memory bound, and per-provider
//! `max_connections`.

use crate::harness::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A `[metrics]` listener of its own: scraping on the main port would itself be a client
/// connection, counted and possibly displacing one under test.
pub(crate) fn metrics_section() -> (String, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    (format!("[metrics]\nlisten = \"{addr}\"\n"), addr)
}

/// One sample from the Prometheus text (`name{labels}` exactly as printed), 0 if absent.
pub(crate) fn metric(metrics_addr: &str, series: &str) -> f64 {
    let url = format!("http://{metrics_addr}/metrics");
    // The metrics listener may start a moment after the main one.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        match client().get(&url).send() {
            Ok(r) => break r.text().unwrap(),
            Err(e) if Instant::now() < deadline && e.is_connect() => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{url}: {e}"),
        }
    };
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Reads until the gateway closes the connection: `(bytes received, when it closed)`.
pub(crate) fn read_until_closed(
    s: &mut TcpStream,
    start: Instant,
    limit: Duration,
) -> (Vec<u8>, Duration) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, start.elapsed()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the gateway did not close the connection within {limit:?}")
            }
            Err(_) => return (got, start.elapsed()), // reset: closed too
        }
    }
}

/// Whether the gateway has closed `s` (non-blocking check).
fn is_closed(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let closed = match { s }.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => panic!("an idle connection received bytes"),
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// One HTTP/1.1 response with a `content-length` from `s`: `(status, body)`.
pub(crate) fn read_response(s: &mut TcpStream) -> (u16, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).unwrap();
        assert_eq!(n, 1, "closed mid-head: {}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, body)
}

fn assert_models_answer(gw: &Proc) {
    let r = client().get(gw.url("/v1/models")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn slowloris_clients_are_cut_at_the_header_timeout_while_others_are_served() {
    let (metrics, maddr) = metrics_section();
    let gw = start_gateway_with(&[("header_timeout_seconds", "1")], &metrics, "127.0.0.1:1");
    let start = Instant::now();

    // One byte every 200 ms, never finishing the head.
    let mut dribbler = TcpStream::connect(&gw.addr).unwrap();
    let mut w = dribbler.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        for b in head.iter().chain(std::iter::repeat(&b'a')) {
            if w.write_all(&[*b]).is_err() || start.elapsed() > Duration::from_secs(10) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    // Half a head, then silence; and nothing at all.
    let mut partial = TcpStream::connect(&gw.addr).unwrap();
    partial
        .write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut silent = TcpStream::connect(&gw.addr).unwrap();

    // Meanwhile, a normal client is answered.
    std::thread::sleep(Duration::from_millis(300));
    assert_models_answer(&gw);

    let limit = Duration::from_secs(10);
    let (got, closed) = read_until_closed(&mut dribbler, start, limit);
    assert!(
        closed >= Duration::from_millis(500) && closed < Duration::from_secs(5),
        "dribbler closed after {closed:?}"
    );
    // Usually the 408 arrives; the client's next byte may reset the connection first.
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    writer.join().unwrap();

    let (got, closed) = read_until_closed(&mut partial, start, limit);
    assert!(closed >= Duration::from_millis(500) && closed < Duration::from_secs(5));
    let text = String::from_utf8(got).unwrap();
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let v = assert_error(408, body.as_bytes(), 408, "invalid_request_error");
    assert_eq!(v["error"]["code"], "header_timeout");

    let (got, closed) = read_until_closed(&mut silent, start, limit);
    assert!(closed >= Duration::from_millis(500) && closed < Duration::from_secs(5));
    assert!(
        got.is_empty(),
        "a silent connection is closed without a word"
    );

    assert_eq!(
        metric(
            &maddr,
            r#"freeway_connections_closed_total{reason="header_timeout"}"#
        ),
        3.0
    );
    assert_models_answer(&gw);
}

#[test]
fn kept_alive_connection_serves_requests_then_closes_after_the_idle_timeout() {
    let (metrics, maddr) = metrics_section();
    let gw = start_gateway_with(
        &[("keepalive_timeout_seconds", "1")],
        &metrics,
        "127.0.0.1:1",
    );
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    for _ in 0..3 {
        s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let (status, body) = read_response(&mut s);
        assert_eq!(status, 200);
        assert_eq!(json(&body)["object"], "list");
    }
    let (got, idle) = read_until_closed(&mut s, Instant::now(), Duration::from_secs(10));
    assert!(got.is_empty());
    assert!(
        idle >= Duration::from_millis(500) && idle < Duration::from_secs(5),
        "closed after {idle:?}"
    );
    assert_eq!(
        metric(
            &maddr,
            r#"freeway_connections_closed_total{reason="idle_timeout"}"#
        ),
        1.0
    );
}

#[test]
fn oversized_request_head_gets_431() {
    let (metrics, maddr) = metrics_section();
    let gw = start_gateway_with(&[("max_header_bytes", "2048")], &metrics, "127.0.0.1:1");
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    let head = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(4000)
    );
    s.write_all(head.as_bytes()).unwrap();
    let (status, body) = read_response(&mut s);
    let v = assert_error(status, &body, 431, "invalid_request_error");
    assert_eq!(v["error"]["code"], "header_too_large");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_header_bytes"));
    // A head under the cap is fine.
    let mut s = TcpStream::connect(&gw.addr).unwrap();
    let head = format!(
        "GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1500)
    );
    s.write_all(head.as_bytes()).unwrap();
    assert_eq!(read_response(&mut s).0, 200);
    assert_eq!(
        metric(
            &maddr,
            r#"freeway_connections_closed_total{reason="header_too_large"}"#
        ),
        1.0
    );
}

fn slow_provider(name: &str, model: &str, delay_ms: u64, max_connections: u32) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"http://{{sim}}/{name}/v1\"\napi_key = \"k\"\n\
         max_connections = {max_connections}\n\
         headers = {{ \"x-sim-behavior\" = \"slow\", \"x-sim-delay-ms\" = \"{delay_ms}\" }}\n  [[providers.models]]\n  id = \"{model}\"\n  \
         capabilities = [\"stream\"]\n"
    )
}

#[test]
fn at_max_connections_idle_connections_make_room_and_busy_ones_get_503() {
    let sim = start_sim();
    let (metrics, maddr) = metrics_section();
    let gw = start_gateway_with(
        &[("max_connections", "3")],
        &(metrics + &slow_provider("slowpoke", "m-slow", 2000, 0)),
        &sim.addr,
    );
    let open = || metric(&maddr, "freeway_connections_open");

    // Three idle connections fill the gateway; a client with a request still gets in, in
    // place of the connection idle longest.
    let mut idle: Vec<TcpStream> = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(&gw.addr).unwrap());
        let want = idle.len() as f64;
        wait_until(10, "the connection to be admitted", || open() == want);
    }
    assert_models_answer(&gw);
    let (got, _) = read_until_closed(&mut idle[0], Instant::now(), Duration::from_secs(5));
    assert!(got.is_empty());
    assert!(!is_closed(&idle[1]) && !is_closed(&idle[2]));
    assert_eq!(
        metric(
            &maddr,
            r#"freeway_connections_closed_total{reason="evicted"}"#
        ),
        1.0
    );
    drop(idle);
    wait_until(10, "the idle connections to close", || open() == 0.0);

    // Three requests in flight fill it with busy connections: the next client gets a 503.
    let url = gw.url("/v1/chat/completions");
    let busy: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || post(&url, None, chat_body("m-slow", "hi", false)).0)
        })
        .collect();
    wait_until(10, "three requests upstream", || {
        sim_count(&sim, "/slowpoke/") == 3
    });
    let (status, headers, body) = post(&url, None, chat_body("m-slow", "hi", false));
    let v = assert_error(status, &body, 503, "service_unavailable");
    assert_eq!(v["error"]["code"], "too_many_connections");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        metric(
            &maddr,
            r#"freeway_connections_rejected_total{reason="max_connections"}"#
        ),
        1.0
    );
    for b in busy {
        assert_eq!(b.join().unwrap(), 200);
    }
}

#[test]
fn a_provider_at_max_connections_is_skipped_like_a_busy_model() {
    let sim = start_sim();
    let (metrics, maddr) = metrics_section();
    let body = metrics
        + &slow_provider("solo", "m-solo", 1500, 1)
        + &sim_provider("spare", "", &["m-spare"]);
    let gw = start_gateway(&body, &sim.addr);
    let url = gw.url("/v1/chat/completions");

    let held = {
        let url = url.clone();
        std::thread::spawn(move || post(&url, None, chat_body("solo/m-solo", "one", false)))
    };
    wait_until(10, "the first request upstream", || {
        sim_count(&sim, "/solo/") == 1
    });
    assert_eq!(
        metric(
            &maddr,
            r#"freeway_upstream_inflight_requests{provider="solo"}"#
        ),
        1.0
    );

    // With fallback, the second request goes to the other provider (solo never sees it:
    // checked below).
    let (status, headers, resp) = post_with(
        &url,
        None,
        chat_body("solo/m-solo", "two", false),
        &[("x-gateway-fallback", "auto")],
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
    assert_eq!(headers["x-gateway-provider"], "spare");
    // Pinned without fallback: a clear 503 naming the cap.
    let (status, _, resp) = post(&url, None, chat_body("solo/m-solo", "three", false));
    let v = assert_error(status, &resp, 503, "service_unavailable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_connections"),
        "{v}"
    );
    // Native passthrough to the full provider: 503, come back in a second.
    let (status, headers, resp) = post(
        &gw.url("/providers/solo/chat/completions"),
        None,
        chat_body("m-solo", "five", false),
    );
    let v = assert_error(status, &resp, 503, "service_unavailable");
    assert_eq!(headers["retry-after"], "1", "{v}");
    assert_eq!(
        sim_count(&sim, "/solo/"),
        1,
        "solo never saw a second request"
    );
    assert!(
        metric(
            &maddr,
            r#"freeway_upstream_saturated_total{provider="solo"}"#
        ) >= 2.0
    );

    let (status, headers, _) = held.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["x-gateway-provider"], "solo");
    // The slot came back.
    let (status, headers, _) = post(&url, None, chat_body("solo/m-solo", "four", false));
    assert_eq!(status, 200);
    assert_eq!(headers["x-gateway-provider"], "solo");
    // (The slot is released just after the answer's last byte.)
    wait_until(10, "solo's slot to be released", || {
        metric(
            &maddr,
            r#"freeway_upstream_inflight_requests{provider="solo"}"#,
        ) == 0.0
    });
}

/// The flood tests each hold 10,000 sockets in this process: one at a time.
pub(crate) static FLOOD: Mutex<()> = Mutex::new(());

pub(crate) fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Opens `n` idle connections to a gateway capped at `cap` with a 4 s head deadline and
/// checks: normal requests are answered meanwhile, the gateway's peak RSS stays within
/// `base + per_conn × held`, and every idle connection is closed by the deadline.
fn flood(n: usize, cap: usize) {
    let _one = FLOOD.lock().unwrap_or_else(|e| e.into_inner());
    let (metrics, maddr) = metrics_section();
    let cap_s = cap.to_string();
    let gw = start_gateway_with(
        &[
            ("max_connections", cap_s.as_str()),
            ("header_timeout_seconds", "4"),
        ],
        &metrics,
        "127.0.0.1:1",
    );
    assert_models_answer(&gw);
    wait_until(10, "the first client's connection to close", || {
        metric(&maddr, "freeway_connections_open") == 0.0
    });
    let base_kib = status_kib(gw.pid(), "VmRSS:");

    let start = Instant::now();
    let idle: Vec<TcpStream> = (0..n)
        .map(|i| {
            TcpStream::connect(&gw.addr)
                .unwrap_or_else(|e| panic!("connection {i} of {n} failed: {e}"))
        })
        .collect();
    let opened = start.elapsed();
    let held = n.min(cap);
    wait_until(10, "the gateway to take every connection in", || {
        let m = |s: &str| metric(&maddr, s);
        m("freeway_connections_accepted_total") as usize > n
    });
    let open_now = metric(&maddr, "freeway_connections_open") as usize;
    assert!(open_now <= cap, "{open_now} open over a cap of {cap}");
    assert!(
        open_now >= held.saturating_sub(50),
        "{open_now} open, {held} expected"
    );

    // Normal clients are answered while the idle ones sit there.
    for _ in 0..20 {
        assert_models_answer(&gw);
    }
    let rss_kib = status_kib(gw.pid(), "VmRSS:");
    let still_open = idle.iter().filter(|s| !is_closed(s)).count();
    let since_start = start.elapsed();
    // Every connection beyond the cap made room; so did the first normal request (the
    // next ones find the room it left, or a connection it left to close).
    let displaced = metric(
        &maddr,
        r#"freeway_connections_closed_total{reason="evicted"}"#,
    ) as usize;
    let beyond = (n + 1).saturating_sub(cap);
    assert!(
        (beyond..=beyond + 20).contains(&displaced),
        "{displaced} displaced, {beyond}..={} expected",
        beyond + 20
    );
    assert_eq!(
        metric(
            &maddr,
            r#"freeway_connections_rejected_total{reason="max_connections"}"#
        ),
        0.0
    );
    if since_start < Duration::from_secs(3) {
        assert!(
            still_open + 25 >= held,
            "{still_open} of {held} idle connections open after {since_start:?}"
        );
    }

    wait_until(15, "every idle connection to be cut", || {
        idle.iter().all(is_closed)
    });
    let cut_after = start.elapsed();
    let peak_kib = status_kib(gw.pid(), "VmHWM:");
    let timed_out = metric(
        &maddr,
        r#"freeway_connections_closed_total{reason="header_timeout"}"#,
    ) as usize;
    println!(
        "flood of {n} over a cap of {cap}: opened in {opened:?}, {open_now} held, \
         {displaced} displaced, {timed_out} cut at the head deadline after {cut_after:?}; \
         RSS {base_kib} KiB before, {rss_kib} KiB with them open, peak {peak_kib} KiB"
    );
    assert!(timed_out + 25 >= held, "{timed_out} timed out of {held}");
    assert!(
        cut_after >= Duration::from_millis(3500),
        "cut before the 4 s deadline: {cut_after:?}"
    );
    // An idle connection costs ~15 KiB (measured: Pingora's accept task ~9 KiB, the socket's
    // stream and write buffer, the head-deadline wait). The bound, 24 KiB each plus 32 MiB
    // for the allocator, fails if a per-connection buffer comes back: with Pingora's
    // default 64 KiB read buffer an idle connection cost ~80 KiB.
    let budget_kib = base_kib + 24 * held as u64 + 32 * 1024;
    assert!(
        peak_kib <= budget_kib,
        "peak RSS {peak_kib} KiB over {budget_kib} KiB ({base_kib} KiB + {held} connections)"
    );
    assert_models_answer(&gw);
    // (The gateway sees the last client's close a moment after the client does.)
    wait_until(10, "every connection closed", || {
        metric(&maddr, "freeway_connections_open") == 0.0
    });
}

#[test]
fn ten_thousand_idle_connections_are_held_within_memory_and_cut_at_the_header_timeout() {
    flood(10_000, 10_000);
}

#[test]
fn ten_thousand_idle_connections_over_a_2000_cap_are_shed_within_memory() {
    flood(10_000, 2_000);
}
