//! Operations: the systemd unit, config reload, graceful stop and binary upgrade.

use crate::harness::BIN;
use std::process::Command;

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/freeway.service"
    ))
    .unwrap();
    // verify checks that ExecStart binaries exist: point them at the freshly built one.
    let dir = std::env::temp_dir().join(format!("freeway-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("freeway.service");
    std::fs::write(&path, unit.replace("/usr/bin/freeway", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze (package systemd) is needed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
    for needed in [
        "User=freeway",
        "ProtectSystem=strict",
        "StateDirectory=",
        "Restart=on-failure",
        "TimeoutStopSec=",
        "-u",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed}");
    }
}

use crate::harness::*;

const KEY: &str = "sk-gw-test";

fn slow_provider(name: &str, model: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"http://{{sim}}/{name}/v1\"\napi_key = \"k\"\n\
         headers = {{ \"x-sim-behavior\" = \"slow\", \"x-sim-delay-ms\" = \"150\" }}\n  [[providers.models]]\n  id = \"{model}\"\n  \
         capabilities = [\"stream\"]\n"
    )
}

fn plain_provider(name: &str, model: &str) -> String {
    format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"http://{{sim}}/{name}/v1\"\napi_key = \"k\"\n  \
         [[providers.models]]\n  id = \"{model}\"\n  capabilities = [\"stream\"]\n"
    )
}

/// Starts a slow stream (about 2 s) in a thread; returns once the provider has it.
fn start_slow_stream(
    gw: &Proc,
    sim: &Proc,
    model: &str,
) -> std::thread::JoinHandle<(u16, Vec<u8>)> {
    let url = gw.url("/v1/chat/completions");
    let body = chat_body(
        model,
        "one two three four five six seven eight nine ten",
        true,
    );
    let before = sim_requests(sim).len();
    let h = std::thread::spawn(move || {
        let (status, _, body) = post(&url, Some(KEY), body);
        (status, body)
    });
    wait_until(10, "the stream to reach the provider", || {
        sim_requests(sim).len() > before
    });
    h
}

fn assert_complete_stream(status: u16, body: &[u8]) {
    assert_eq!(status, 200);
    let events = sse_data(body);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| {
            json(e.as_bytes())["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(text.contains("ten"), "{text}");
}

fn model_ids(gw: &Proc) -> Vec<String> {
    let body = client()
        .get(gw.url("/v1/models"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    json(&body)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn reload_swaps_models_without_failing_in_flight_requests_and_rejects_bad_configs() {
    let sim = start_sim();
    let auth = format!("[auth]\nkeys = [\"{KEY}\"]\n");
    let gw = start_gateway(
        &(auth.clone() + &slow_provider("alpha", "m1") + &plain_provider("beta", "m2")),
        &sim.addr,
    );
    let stream = start_slow_stream(&gw, &sim, "alpha/m1");

    // v2: alpha/m1 removed, gamma/m3 added; SIGHUP.
    let config = gw.dir().join("freeway.toml");
    let v2 = gateway_config(
        &gw.addr,
        &gw.dir(),
        &[],
        &(auth + &plain_provider("beta", "m2") + &plain_provider("gamma", "m3")),
        &sim.addr,
    );
    std::fs::write(&config, v2).unwrap();
    gw.signal("HUP");
    wait_until(10, "the reload", || {
        let ids = model_ids(&gw);
        ids.contains(&"gamma/m3".to_string()) && !ids.contains(&"alpha/m1".to_string())
    });
    let (status, body) = stream.join().unwrap();
    assert_complete_stream(status, &body);
    assert_eq!(
        post(
            &gw.url("/v1/chat/completions"),
            Some(KEY),
            chat_body("gamma/m3", "x", false)
        )
        .0,
        200
    );
    assert_eq!(
        post(
            &gw.url("/v1/chat/completions"),
            Some(KEY),
            chat_body("alpha/m1", "x", false)
        )
        .0,
        400
    );

    // A bad config is rejected, named, and the running one stays.
    std::fs::write(&config, "[server]\nmax_attempts = \"many\"\n").unwrap();
    gw.signal("HUP");
    wait_until(10, "the rejection to be logged", || {
        gw.log_text().contains("config reload rejected")
    });
    assert!(gw.log_text().contains("server.max_attempts"));
    assert_eq!(
        post(
            &gw.url("/v1/chat/completions"),
            Some(KEY),
            chat_body("gamma/m3", "x", false)
        )
        .0,
        200
    );
}

#[test]
fn sigterm_lets_a_stream_in_flight_finish_then_exits_0() {
    let sim = start_sim();
    let mut gw = start_gateway_with(
        &[
            ("grace_period_seconds", "10"),
            ("graceful_shutdown_timeout_seconds", "5"),
        ],
        &format!(
            "[auth]\nkeys = [\"{KEY}\"]\n{}",
            slow_provider("alpha", "m1")
        ),
        &sim.addr,
    );
    let stream = start_slow_stream(&gw, &sim, "alpha/m1");
    gw.signal("TERM");
    let (status, body) = stream.join().unwrap();
    assert_complete_stream(status, &body);
    assert_eq!(gw.wait_exit(30), Some(0));
}

#[test]
fn binary_upgrade_keeps_a_running_stream_and_hands_over_the_listener() {
    let sim = start_sim();
    let body = format!(
        "[auth]\nkeys = [\"{KEY}\"]\n{}",
        slow_provider("alpha", "m1") + &plain_provider("beta", "m2")
    );
    let mut old = start_gateway_with(
        &[
            ("grace_period_seconds", "10"),
            ("graceful_shutdown_timeout_seconds", "5"),
        ],
        &body,
        &sim.addr,
    );
    let first_id = post(
        &old.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("beta/m2", "x", false),
    )
    .1["x-gateway-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let stream = start_slow_stream(&old, &sim, "alpha/m1");

    // The new process waits on the upgrade socket; SIGQUIT makes the old one hand over.
    let config = old.dir().join("freeway.toml");
    let log = old.dir().join("upgraded.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut new = std::process::Command::new(BIN)
        .args(["--config", config.to_str().unwrap(), "-u"])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // Hand over once the new process is waiting for the sockets (it retries for a while).
    wait_until(10, "the new process to start", || {
        std::fs::read_to_string(&log).is_ok_and(|l| !l.is_empty())
    });
    assert!(new.try_wait().unwrap().is_none());
    let new = Kill(new);
    old.signal("QUIT");

    let (status, body) = stream.join().unwrap();
    assert_complete_stream(status, &body);
    assert_eq!(old.wait_exit(30), Some(0));
    // The listener now belongs to the new process: requests are served, by a new boot id.
    let (status, headers, _) = post(
        &old.url("/v1/chat/completions"),
        Some(KEY),
        chat_body("beta/m2", "x", false),
    );
    assert_eq!(status, 200);
    let new_id = headers["x-gateway-request-id"].to_str().unwrap();
    assert_ne!(&new_id[..11], &first_id[..11], "served by the old process");
    drop(new);
}
