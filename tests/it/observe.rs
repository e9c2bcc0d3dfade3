//! Observability: the request log, `/v1/analytics`, Prometheus metrics, the access log, a
//! clean-shutdown flush, and the `/usage` dashboard in a real headless browser.

use crate::harness::*;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

const KEY: &str = "sk-gw-observe";

fn provider(name: &str, behavior: &str, model: &str, auto: bool, cost: &str) -> String {
    let headers = if behavior.is_empty() {
        String::new()
    } else {
        format!("headers = {{ \"x-sim-behavior\" = \"{behavior}\" }}\n")
    };
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"http://{{sim}}/{name}/v1\"\n\
         api_key = \"sk-{name}\"\nsimulated = true\n{headers}  [[providers.models]]\n  id = \"{model}\"\n  \
         context_window = 131072\n  capabilities = [\"stream\"]\n  auto = {auto}\n  cost = {cost}\n"
    )
}

/// good serves; busy always answers 429; broken and flop always answer 500.
fn mixed_gateway(sim: &Proc, extra: &str) -> Proc {
    let providers = [
        provider(
            "good",
            "",
            "m-good",
            true,
            "{ input_per_mtok = 1.0, output_per_mtok = 2.0 }",
        ),
        provider("busy", "fail-429", "m-busy", false, "{}"),
        provider("broken", "fail-500", "m-broken", false, "{}"),
        provider("flop", "fail-500", "m-flop", false, "{}"),
    ];
    start_gateway(
        &format!(
            "[auth]\nkeys = [\"{KEY}\"]\n{extra}\n{}",
            providers.concat()
        ),
        &sim.addr,
    )
}

fn chat(gw: &Proc, model: &str, stream: bool, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let mut body: serde_json::Value =
        serde_json::from_str(&chat_body(model, "count these words", stream)).unwrap();
    if stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    let (status, _, body) = post_with(
        &gw.url("/v1/chat/completions"),
        Some(KEY),
        body.to_string(),
        headers,
    );
    (status, body)
}

/// `(prompt, completion)` tokens the client was told about.
fn usage_of(body: &[u8], stream: bool) -> (u64, u64) {
    let v = if stream {
        sse_data(body)
            .iter()
            .filter(|e| e.as_str() != "[DONE]")
            .map(|e| json(e.as_bytes()))
            .find(|v| v["usage"].is_object())
            .expect("a usage chunk")
    } else {
        json(body)
    };
    (
        v["usage"]["prompt_tokens"].as_u64().unwrap(),
        v["usage"]["completion_tokens"].as_u64().unwrap(),
    )
}

fn get(url: &str, key: Option<&str>) -> (u16, Vec<u8>) {
    let mut req = client().get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().expect("GET failed");
    let status = r.status().as_u16();
    (status, r.bytes().unwrap().to_vec())
}

/// The value of one sample line (`name{labels} value`) in Prometheus text, 0 if absent.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Runs the scripted mix and returns the tokens the clients were told about.
fn run_script(gw: &Proc) -> (u64, u64) {
    let (mut prompt, mut completion) = (0, 0);
    let mut add = |(p, c): (u64, u64)| {
        prompt += p;
        completion += c;
    };
    for _ in 0..5 {
        let (s, b) = chat(gw, "good/m-good", false, &[]);
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        add(usage_of(&b, false));
    }
    for _ in 0..2 {
        let (s, b) = chat(
            gw,
            "good/m-good",
            true,
            &[("x-gateway-metadata", "{\"team\":\"obs\"}")],
        );
        assert_eq!(s, 200);
        add(usage_of(&b, true));
    }
    // A failure: one upstream 500, passed through.
    let (s, b) = chat(gw, "broken/m-broken", false, &[]);
    assert_eq!(s, 500, "{}", String::from_utf8_lossy(&b));
    // A failover: flop answers 500, then auto serves it from good.
    let (s, b) = chat(gw, "flop/m-flop", false, &[("x-gateway-fallback", "auto")]);
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    add(usage_of(&b, false));
    // Rate-limited upstream, surfaced to the client.
    let (s, b) = chat(gw, "busy/m-busy", false, &[]);
    assert_eq!(s, 429, "{}", String::from_utf8_lossy(&b));
    // Rejected by the gateway itself: a wrong key, an unknown model.
    let (s, _, _) = post(
        &gw.url("/v1/chat/completions"),
        Some("sk-wrong"),
        chat_body("auto", "x", false),
    );
    assert_eq!(s, 401);
    let (s, _) = chat(gw, "nobody/nothing", false, &[]);
    assert_eq!(s, 400);
    (prompt, completion)
}

const SCRIPT_REQUESTS: u64 = 12;

fn analytics(gw: &Proc, query: &str) -> serde_json::Value {
    let (s, b) = get(&gw.url(&format!("/v1/analytics?{query}")), Some(KEY));
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
    json(&b)
}

fn wait_for_records(gw: &Proc, n: u64) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(10, "request log records", || {
        last = analytics(gw, "group_by=provider");
        last["totals"]["requests"].as_u64() == Some(n)
    });
    last
}

#[test]
fn analytics_and_metrics_report_exactly_what_the_script_did() {
    let sim = start_sim();
    let metrics_port = free_port();
    let gw = mixed_gateway(
        &sim,
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics_port}\""),
    );
    let (prompt, completion) = run_script(&gw);
    assert!(prompt > 0 && completion > 0);

    // Dashboard polling is not logged: these must not change the counts.
    for _ in 0..3 {
        let _ = get(&gw.url("/health"), None);
        let _ = analytics(&gw, "");
    }

    let a = wait_for_records(&gw, SCRIPT_REQUESTS);
    let t = &a["totals"];
    assert_eq!(t["requests"], SCRIPT_REQUESTS, "{a}");
    assert_eq!(t["success"], 8, "{a}");
    assert_eq!(t["failure"], 4, "{a}");
    assert_eq!(t["rate_limited"], 1, "{a}");
    assert_eq!(t["failovers"], 1, "{a}");
    assert_eq!(t["prompt_tokens"], prompt, "{a}");
    assert_eq!(t["completion_tokens"], completion, "{a}");
    assert_eq!(t["cache_hits"], 0, "{a}");
    let cost = (prompt as f64 * 1.0 + completion as f64 * 2.0) / 1e6;
    assert!(
        (t["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
        "{a}"
    );
    assert!(t["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{a}");

    let by: BTreeMap<String, serde_json::Value> = a["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["key"].as_str().unwrap().to_string(), g.clone()))
        .collect();
    assert_eq!(by["good"]["requests"], 8, "{a}");
    assert_eq!(by["good"]["failovers"], 1, "{a}");
    assert_eq!(by["broken"]["failure"], 1, "{a}");
    assert_eq!(by["busy"]["rate_limited"], 1, "{a}");
    assert_eq!(by["(none)"]["requests"], 2, "{a}"); // 401 and 400: no provider

    let m = analytics(&gw, "group_by=model");
    assert!(m["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["key"] == "good/m-good"));
    let k = analytics(&gw, "group_by=key");
    let keys: Vec<&str> = k["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["(none)", "key-0"], "{k}");
    let h = analytics(&gw, "group_by=hour&from=0");
    let hours: u64 = h["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(hours, SCRIPT_REQUESTS);

    // Recent failures name each failed attempt.
    let (s, b) = get(&gw.url("/v1/analytics/failures"), Some(KEY));
    assert_eq!(s, 200);
    let f = json(&b);
    let rows = f["data"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "{f}"); // 500, failover, 429, 401, 400
    let failover = rows
        .iter()
        .find(|r| r["provider"] == "good")
        .expect("the failover row");
    assert_eq!(failover["attempts"], 2);
    assert!(
        failover["failures"][0]
            .as_str()
            .unwrap()
            .contains("flop/m-flop"),
        "{f}"
    );

    // Bad parameters: the OpenAI envelope, naming the parameter.
    for q in ["group_by=planet", "from=yesterday", "from=2000&to=1000"] {
        let (s, b) = get(&gw.url(&format!("/v1/analytics?{q}")), Some(KEY));
        let v = assert_error(s, &b, 400, "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().len() > 10, "{v}");
    }
    let (s, b) = get(&gw.url("/v1/analytics"), None);
    assert_error(s, &b, 401, "authentication_error");

    // Prometheus, on the metrics port and on /metrics for authorised callers.
    let (s, _) = get(&gw.url("/metrics"), None);
    assert_eq!(s, 401);
    let (s, main_port) = get(&gw.url("/metrics"), Some(KEY));
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&main_port).contains("freeway_requests_total"));
    let (s, body) = get(&format!("http://127.0.0.1:{metrics_port}/metrics"), None);
    assert_eq!(s, 200);
    let text = String::from_utf8(body).unwrap();
    let chat = |p: &str, m: &str, st: &str| {
        sample(
            &text,
            &format!("freeway_requests_total{{endpoint=\"chat\",model=\"{m}\",provider=\"{p}\",status=\"{st}\"}}"),
        )
    };
    assert_eq!(chat("good", "m-good", "200"), 8.0, "{text}");
    assert_eq!(chat("broken", "m-broken", "500"), 1.0, "{text}");
    assert_eq!(chat("busy", "m-busy", "429"), 1.0, "{text}");
    assert_eq!(chat("", "", "401"), 1.0, "{text}");
    assert_eq!(chat("", "", "400"), 1.0, "{text}");
    let attempts = |p: &str, m: &str, o: &str| {
        sample(
            &text,
            &format!(
                "freeway_upstream_attempts_total{{model=\"{m}\",outcome=\"{o}\",provider=\"{p}\"}}"
            ),
        )
    };
    assert_eq!(attempts("good", "m-good", "success"), 8.0, "{text}");
    assert_eq!(
        attempts("broken", "m-broken", "upstream_error"),
        1.0,
        "{text}"
    );
    assert_eq!(attempts("flop", "m-flop", "upstream_error"), 1.0, "{text}");
    assert_eq!(attempts("busy", "m-busy", "rate_limited"), 1.0, "{text}");
    assert_eq!(
        sample(&text, "freeway_rate_limited_total{scope=\"upstream\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "freeway_cache_requests_total{result=\"bypass\"}"),
        10.0
    );
    assert_eq!(
        sample(
            &text,
            "freeway_tokens_total{direction=\"prompt\",model=\"m-good\",provider=\"good\"}"
        ),
        prompt as f64
    );
    assert_eq!(
        sample(
            &text,
            "freeway_tokens_total{direction=\"completion\",model=\"m-good\",provider=\"good\"}"
        ),
        completion as f64
    );
    assert_eq!(sample(&text, "freeway_log_records_dropped_total"), 0.0);
    assert_eq!(
        sample(
            &text,
            "freeway_model_state{model=\"m-busy\",provider=\"busy\",state=\"cooldown\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "freeway_model_daily_headroom{model=\"m-good\",provider=\"good\"}"
        ),
        1.0
    );
    for name in [
        "freeway_request_duration_seconds_bucket",
        "freeway_time_to_first_token_seconds_bucket",
        "freeway_gateway_overhead_seconds_bucket",
        "freeway_inflight_requests",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert!(
        !text.contains(KEY) && !text.contains("fw-"),
        "no keys or request ids in labels"
    );

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (package prometheus) is needed");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The JSON access log: one line per logged request.
    let log = gw.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with("{\"type\":\"access\""))
        .map(|l| json(l.as_bytes()))
        .filter(|l| l["endpoint"] == "chat")
        .collect();
    assert_eq!(lines.len() as u64, SCRIPT_REQUESTS, "{log}");
    let streamed = lines.iter().find(|l| l["streamed"] == true).unwrap();
    assert_eq!(streamed["metadata"], "{\"team\":\"obs\"}");
    assert!(streamed["ttft_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(streamed["cache_status"], "BYPASS");
    assert!(
        !log.contains("count these words"),
        "prompts are never logged"
    );
}

fn sigterm_and_wait(gw: &mut Proc) {
    let pid = gw.pid().to_string();
    let ok = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(ok.success());
    wait_until(15, "the gateway to exit", || {
        std::fs::metadata(format!("/proc/{pid}")).is_err()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
    });
}

#[test]
fn sigterm_flushes_every_record_with_the_ip_redacted() {
    let sim = start_sim();
    let mut gw = mixed_gateway(&sim, "[observability]\nredact_ip = true\n");
    let n = 40;
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..n / 4 {
                    assert_eq!(chat(&gw, "good/m-good", false, &[]).0, 200);
                }
            });
        }
    });
    // No wait for the writer: the shutdown must drain what is queued.
    let db = gw.log.parent().unwrap().join("freeway.db");
    sigterm_and_wait(&mut gw);
    std::thread::sleep(Duration::from_millis(100));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (rows, ips): (i64, String) = conn
        .query_row(
            "SELECT count(*), group_concat(DISTINCT client_ip) FROM request_log",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(rows, n as i64, "{}", gw.log_text());
    assert_eq!(ips, "127.0.0.0/24");
}

#[test]
fn request_log_off_keeps_metrics_and_says_analytics_is_off() {
    let sim = start_sim();
    let gw = mixed_gateway(&sim, "[observability]\nrequest_log = false\n");
    assert_eq!(chat(&gw, "good/m-good", false, &[]).0, 200);
    let (s, b) = get(&gw.url("/v1/analytics"), Some(KEY));
    let v = assert_error(s, &b, 503, "service_unavailable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("request_log"),
        "{v}"
    );
    let (_, m) = get(&gw.url("/metrics"), Some(KEY));
    assert!(String::from_utf8_lossy(&m).contains("provider=\"good\",status=\"200\""));
}

// ---------- the dashboard, in headless Chromium over WebDriver ----------

struct Driver {
    child: std::process::Child,
    base: String,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = client()
            .delete(format!("{}/session/{}", self.base, self.session))
            .send();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    fn start(profile: &std::path::Path) -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (package chromium-driver) is needed");
        let base = format!("http://127.0.0.1:{port}");
        wait_until(20, "chromedriver", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:loggingPrefs": {"browser": "ALL"},
        "goog:chromeOptions": {
            "binary": chromium_binary(),
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--window-size=1440,1640", "--hide-scrollbars",
                     format!("--user-data-dir={}", profile.display())]
        }}}});
        let mut d = Driver {
            child,
            base,
            session: String::new(),
        };
        let v = d.call("POST", "/session", Some(caps));
        d.session = v["sessionId"]
            .as_str()
            .expect("a WebDriver session")
            .to_string();
        d
    }

    fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> serde_json::Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let c = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let req = match method {
            "GET" => c.get(url),
            _ => c.post(url).json(&body.unwrap_or(serde_json::json!({}))),
        };
        let v = json(&req.send().expect("WebDriver call").bytes().unwrap());
        if v["value"]["error"].is_string() {
            panic!("WebDriver {path}: {v}");
        }
        v["value"].clone()
    }

    fn js(&self, script: &str) -> serde_json::Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(serde_json::json!({"script": script, "args": []})),
        )
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            Some(serde_json::json!({"using": "css selector", "value": css})),
        );
        v["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }
}

fn chromium_binary() -> &'static str {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("chromium (package chromium) is needed")
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(val(c)) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

#[test]
fn usage_dashboard_draws_real_data_in_a_browser() {
    let sim = start_sim();
    let gw = mixed_gateway(&sim, "");
    run_script(&gw);
    for i in 0..20 {
        let model = if i % 5 == 0 {
            "flop/m-flop"
        } else {
            "good/m-good"
        };
        chat(&gw, model, i % 2 == 0, &[("x-gateway-fallback", "auto")]);
    }
    wait_for_records(&gw, SCRIPT_REQUESTS + 20);

    // The page itself needs no key; the data does.
    let (s, page) = get(&gw.url("/usage"), None);
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&page).contains("<canvas"));
    assert!(
        !String::from_utf8_lossy(&page).contains("https://"),
        "no external resources"
    );

    let profile = std::env::temp_dir().join(format!("freeway-chromium-{}", free_port()));
    let d = Driver::start(&profile);
    d.call(
        "POST",
        "/url",
        Some(serde_json::json!({"url": gw.url("/usage")})),
    );
    wait_until(20, "the login form", || {
        d.js("return document.body.dataset.state") == "login"
    });
    let key = d.element("#key");
    d.call(
        "POST",
        &format!("/element/{key}/value"),
        Some(serde_json::json!({"text": KEY})),
    );
    let button = d.element("#login-btn");
    d.call("POST", &format!("/element/{button}/click"), None);
    wait_until(20, "the dashboard to draw", || {
        d.js("return document.body.dataset.state") == "ready"
    });
    // The key is remembered; the charts are drawn (pixels on every canvas).
    assert_eq!(d.js("return localStorage.getItem('freeway.key')"), KEY);
    assert_eq!(
        d.js("return document.getElementById('k-req').textContent"),
        "32"
    );
    let inked = d.js("return [...document.querySelectorAll('canvas')].map(c => {
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
           let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
           return [c.id, n]; })");
    for pair in inked.as_array().unwrap() {
        assert!(
            pair[1].as_u64().unwrap() > 500,
            "canvas {} is blank",
            pair[0]
        );
    }
    let models = d.js("return document.querySelectorAll('#models .model').length");
    assert_eq!(models, 4);
    let failures = d.js("return document.querySelectorAll('#failures tbody tr').length");
    assert!(failures.as_u64().unwrap() >= 5, "{failures}");

    let png = base64_decode(d.call("GET", "/screenshot", None).as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG"));
    let target = std::path::Path::new(BIN)
        .parent()
        .unwrap()
        .parent()
        .unwrap();
    let shot = target.join("usage-dashboard.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("dashboard screenshot: {}", shot.display());

    // No errors: neither the page's own nor the browser console's.
    assert_eq!(d.js("return window.__fwErrors"), serde_json::json!([]));
    let logs = d.call(
        "POST",
        "/se/log",
        Some(serde_json::json!({"type": "browser"})),
    );
    let severe: Vec<&serde_json::Value> = logs
        .as_array()
        .map(|a| a.iter().filter(|e| e["level"] == "SEVERE").collect())
        .unwrap_or_default();
    assert!(severe.is_empty(), "console errors: {severe:?}");
    drop(d);
    let _ = std::fs::remove_dir_all(profile);
}
