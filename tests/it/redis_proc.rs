//! A real `redis-server` for the shared-mode tests: its own loopback port, no persistence,
//! killed on drop. (`scripts/setup.sh --test` installs it.)

use crate::harness::free_port;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisProc {
    child: Option<Child>,
    pub port: u16,
}

impl RedisProc {
    pub fn start() -> RedisProc {
        let mut r = RedisProc {
            child: None,
            port: free_port(),
        };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/setup.sh --test)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start in 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9`: Redis vanishes mid-test.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The gateway's `/health` `storage.redis.up`.
pub fn redis_up(gw: &crate::harness::Proc) -> bool {
    let body = crate::harness::client()
        .get(gw.url("/health"))
        .send()
        .and_then(|r| r.bytes());
    body.ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["storage"]["redis"]["up"].as_bool())
        .unwrap_or(false)
}
