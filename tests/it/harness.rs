//! Test harness: real freeway processes on ephemeral loopback ports, stopped on drop.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_freeway");

/// A free loopback port, never handed out twice in this test process: parallel tests
/// that got the same port from the OS would otherwise start two processes on it, and the
/// second test would talk to the first test's process (`wait_listening` also checks the
/// socket's owner).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn scratch_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("freeway-it-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn wait_listening(addr: &str, child: &mut Child, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() && listens_here(addr, child.id()) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let out = std::fs::read_to_string(log).unwrap_or_default();
            panic!("freeway exited early ({status}):\n{out}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{addr} did not start listening in 20 s");
}

/// Whether the socket listening on `addr` belongs to process `pid` (Linux: the socket's
/// inode from /proc/net/tcp among the process's open files). Elsewhere, assumed so.
fn listens_here(addr: &str, pid: u32) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return true;
    };
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let local = format!("0100007F:{port:04X}");
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A")).then(|| f[9].to_string())
    });
    let Some(inode) = inode else {
        return false;
    };
    let target = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()))
}

/// A running process killed when dropped.
pub struct Proc {
    child: Child,
    pub addr: String,
    pub log: PathBuf,
    args: Vec<String>,
}

impl Proc {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process now with SIGKILL (e.g. to make a provider refuse connections).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `kill -9`, then starts the same command again (same config, same store).
    pub fn restart(&mut self) {
        self.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let dir = self.log.parent().unwrap().to_path_buf();
        let fresh = spawn(&args, self.addr.clone(), &dir, "restarted");
        let old = std::mem::replace(self, fresh);
        std::mem::forget(old); // already dead and reaped
    }

    /// The directory holding this process's config, log and store.
    pub fn dir(&self) -> PathBuf {
        self.log.parent().unwrap().to_path_buf()
    }

    /// Sends a signal (`"HUP"`, `"TERM"`, `"QUIT"`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "process did not exit in {secs} s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Prometheus text of `GET /metrics`, asked with gateway key `key`.
    pub fn metrics(&self, key: &str) -> String {
        client()
            .get(self.url("/metrics"))
            .bearer_auth(key)
            .send()
            .unwrap()
            .text()
            .unwrap()
    }

    /// `GET /v1/routing/status`.
    pub fn routing_status(&self) -> serde_json::Value {
        let body = client()
            .get(self.url("/v1/routing/status"))
            .send()
            .unwrap()
            .bytes()
            .unwrap();
        json(&body)
    }

    /// The status entry of one model (`provider/model`).
    pub fn model_status(&self, id: &str) -> serde_json::Value {
        self.routing_status()["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in routing status"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn spawn(args: &[&str], addr: String, dir: &std::path::Path, name: &str) -> Proc {
    spawn_with_env(args, &[], addr, dir, name)
}

/// Like `spawn`, with environment variables set for the process.
pub fn spawn_with_env(
    args: &[&str],
    env: &[(&str, &str)],
    addr: String,
    dir: &std::path::Path,
    name: &str,
) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn freeway");
    wait_listening(&addr, &mut child, &log);
    Proc {
        child,
        addr,
        log,
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

/// Simulated providers (`freeway sim`).
pub fn start_sim() -> Proc {
    let addr = format!("127.0.0.1:{}", free_port());
    let dir = scratch_dir();
    spawn(&["sim", "--listen", &addr], addr.clone(), &dir, "sim")
}

/// `freeway demo` (the gateway and its simulated providers in one process), stdout and
/// stderr captured in `demo.log`; `env` is set for the process (`FREEWAY_LOG_FORMAT`…).
pub fn start_demo(env: &[(&str, &str)]) -> Proc {
    let addr = format!("127.0.0.1:{}", free_port());
    let sim = format!("127.0.0.1:{}", free_port());
    let dir = scratch_dir();
    spawn_with_env(
        &["demo", "--listen", &addr, "--sim-listen", &sim],
        env,
        addr.clone(),
        &dir,
        "demo",
    )
}

/// The gateway with `[server]` filled in and `body` (providers, auth…) appended.
/// `{sim}` in `body` is replaced by `sim_addr`. The metrics listener is off unless `body`
/// has its own `[metrics]` (parallel tests would collide on the default port); the per-IP
/// limit is off unless `body` has its own `[limits]`.
pub fn start_gateway(body: &str, sim_addr: &str) -> Proc {
    start_gateway_with(&[], body, sim_addr)
}

/// Like `start_gateway`, with some `[server]` keys overridden (`("grace_period_seconds", "5")`).
pub fn start_gateway_with(server: &[(&str, &str)], body: &str, sim_addr: &str) -> Proc {
    start_gateway_full(server, body, sim_addr, "")
}

/// Like `start_gateway`, with `storage` lines added to `[storage]` (e.g. a `redis_url`).
pub fn start_gateway_shared(body: &str, sim_addr: &str, storage: &str) -> Proc {
    start_gateway_full(&[], body, sim_addr, storage)
}

fn start_gateway_full(server: &[(&str, &str)], body: &str, sim_addr: &str, storage: &str) -> Proc {
    let addr = format!("127.0.0.1:{}", free_port());
    let dir = scratch_dir();
    let path = dir.join("freeway.toml");
    // Extra `[storage]` lines (a `redis_url`) go right under the store path.
    let config = gateway_config(&addr, &dir, server, body, sim_addr).replacen(
        "freeway.db\"\n",
        &format!("freeway.db\"\n{storage}\n"),
        1,
    );
    std::fs::write(&path, config).unwrap();
    spawn(
        &["--config", path.to_str().unwrap()],
        addr.clone(),
        &dir,
        "gateway",
    )
}

/// The text of a test gateway config.
pub fn gateway_config(
    addr: &str,
    dir: &std::path::Path,
    server: &[(&str, &str)],
    body: &str,
    sim_addr: &str,
) -> String {
    let mut keys: Vec<(String, String)> = [
        ("listen", format!("[\"{addr}\"]")),
        ("threads", "2".into()),
        ("grace_period_seconds", "0".into()),
        ("graceful_shutdown_timeout_seconds", "5".into()),
        ("upstream_timeout_ms", "5000".into()),
        ("stream_idle_timeout_ms", "3000".into()),
        ("connect_timeout_ms", "1000".into()),
        ("max_body_bytes", "8388608".into()),
        ("pid_file", format!("\"{}/freeway.pid\"", dir.display())),
        (
            "upgrade_sock",
            format!("\"{}/upgrade.sock\"", dir.display()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in server {
        match keys.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => keys.push((k.to_string(), v.to_string())),
        }
    }
    let server: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    // No metrics listener unless a test asks: parallel gateways would fight over 9091.
    let metrics = if body.contains("[metrics]") {
        ""
    } else {
        "[metrics]\nlisten = \"\"\n"
    };
    // No per-IP limit unless a test asks: the default (20/min) would throttle the suite.
    let limits = if body.contains("[limits]") {
        ""
    } else {
        "[limits]\nper_ip = { per_minute = 0 }\n"
    };
    format!(
        "[server]\n{server}[storage]\npath = \"{}/freeway.db\"\n{metrics}{limits}{}\n",
        dir.display(),
        body.replace("{sim}", sim_addr)
    )
}

/// A simulated OpenAI-kind provider block.
pub fn sim_provider(name: &str, behavior: &str, models: &[&str]) -> String {
    let mut s = format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"http://{{sim}}/{name}/v1\"\n\
         api_key = \"sk-upstream-{name}\"\nsimulated = true\n"
    );
    if !behavior.is_empty() {
        s.push_str(&format!(
            "headers = {{ \"x-sim-behavior\" = \"{behavior}\" }}\n"
        ));
    }
    for m in models {
        s.push_str(&format!(
            "  [[providers.models]]\n  id = \"{m}\"\n  aliases = [\"shared\"]\n  context_window = 2097152\n  \
             capabilities = [\"tools\", \"json\", \"vision\", \"stream\"]\n"
        ));
    }
    s
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `(status, headers, body)` of a JSON POST.
pub fn post(
    url: &str,
    key: Option<&str>,
    body: impl Into<reqwest::blocking::Body>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    post_with(url, key, body, &[])
}

pub fn post_with(
    url: &str,
    key: Option<&str>,
    body: impl Into<reqwest::blocking::Body>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut req = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send().expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut out = Vec::new();
    let _ = resp.read_to_end(&mut out);
    (status, headers, out)
}

pub fn json(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}

/// Asserts an OpenAI error envelope with this status and `type`.
pub fn assert_error(
    status: u16,
    body: &[u8],
    want_status: u16,
    want_type: &str,
) -> serde_json::Value {
    let v = json(body);
    assert_eq!(status, want_status, "{v}");
    assert_eq!(v["error"]["type"], want_type, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(
        v["error"].get("param").is_some() && v["error"].get("code").is_some(),
        "{v}"
    );
    v
}

/// Switches the simulated providers under `prefix` (e.g. `/busy/`) to `behavior`.
pub fn sim_override(sim: &Proc, prefix: &str, behavior: &str) {
    let url = sim.url(&format!(
        "/_sim/override?prefix={prefix}&behavior={behavior}"
    ));
    assert!(client().post(url).send().unwrap().status().is_success());
}

/// How many requests the simulated providers received under `prefix`.
pub fn sim_count(sim: &Proc, prefix: &str) -> usize {
    sim_requests(sim)
        .iter()
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
        .count()
}

/// Polls `cond` every 20 ms until it holds, failing after `secs` seconds.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the simulated providers recorded, newest last.
pub fn sim_requests(sim: &Proc) -> Vec<serde_json::Value> {
    let body = client()
        .get(sim.url("/_sim/requests"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    json(&body)["recent"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub fn sim_last_body(sim: &Proc) -> Vec<u8> {
    client()
        .get(sim.url("/_sim/last-body"))
        .send()
        .unwrap()
        .bytes()
        .unwrap()
        .to_vec()
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// A chat request body.
pub fn chat_body(model: &str, text: &str, stream: bool) -> String {
    serde_json::json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]})
        .to_string()
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|ev| {
            ev.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .collect()
}

/// Asserts the gateway still answers.
pub fn assert_alive(gw: &Proc) {
    let r = client()
        .get(gw.url("/health"))
        .send()
        .expect("gateway stopped answering");
    assert!(r.status().as_u16() == 200 || r.status().as_u16() == 503);
}

/// Python with the SDKs: the repository's `.venv` (made by `scripts/setup.sh --test`) when
/// there is one, else `python3` on the PATH.
pub fn python() -> &'static str {
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python3");
    if std::path::Path::new(venv).exists() {
        venv
    } else {
        "python3"
    }
}

/// The path of a check script under `tests/sdk/`.
pub fn sdk_script(name: &str) -> String {
    format!("{}/tests/sdk/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `python args…` (a `tests/sdk/` script and its arguments, or `-c code`) and returns
/// its stdout; fails unless it exits 0 and prints `ok`, showing both outputs and
/// `context()` (a gateway's log, say).
pub fn run_python(args: &[&str], ok: &str, context: &dyn Fn() -> String) -> String {
    let out = Command::new(python())
        .args(args)
        .output()
        .expect("python3 with the SDKs (scripts/setup.sh --test)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains(ok),
        "{args:?} failed:\n{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        context()
    );
    stdout
}

/// A native-format simulated provider (`kind` gemini, anthropic, workers-ai…) serving
/// `model` (also as alias `shared`) at `base` on the simulator.
pub fn native_provider(name: &str, kind: &str, base: &str, model: &str, behavior: &str) -> String {
    let mut s = format!(
        "[[providers]]\nname = \"{name}\"\nkind = \"{kind}\"\nbase_url = \"http://{{sim}}{base}\"\n\
         api_key = \"key-{name}\"\nsimulated = true\n"
    );
    if !behavior.is_empty() {
        s.push_str(&format!(
            "headers = {{ \"x-sim-behavior\" = \"{behavior}\" }}\n"
        ));
    }
    s.push_str(&format!(
        "  [[providers.models]]\n  id = \"{model}\"\n  aliases = [\"shared\"]\n  context_window = 1048576\n  \
         capabilities = [\"tools\", \"json\", \"vision\", \"stream\"]\n"
    ));
    s
}

/// The simulated Gemini, Anthropic and Workers AI chat models, by their `provider/model` ids.
pub const GEMINI: &str = "sim-gemini/gemini-2.5-flash";
pub const ANTHROPIC: &str = "sim-anthropic/claude-sonnet-4-5";
pub const WORKERS: &str = "sim-workers/@cf/meta/llama-3.3-70b-instruct-fp8-fast";

/// The three native providers serving `GEMINI`, `ANTHROPIC` and `WORKERS`.
pub fn natives() -> String {
    [
        ("sim-gemini", "gemini", "/gemini/v1beta", GEMINI),
        ("sim-anthropic", "anthropic", "/anthropic/v1", ANTHROPIC),
        (
            "sim-workers",
            "workers-ai",
            "/cf/client/v4/accounts/acct123/ai",
            WORKERS,
        ),
    ]
    .map(|(name, kind, base, id)| native_provider(name, kind, base, &id[name.len() + 1..], ""))
    .concat()
}
