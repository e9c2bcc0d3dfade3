//! The official OpenAI Python SDK against `freeway demo`, with every JSON body and stream
//! chunk validated against OpenAI's published OpenAPI schema.

use crate::harness::*;
use std::process::Command;

#[test]
fn openai_python_sdk_chats_and_streams_through_demo() {
    let listen = format!("127.0.0.1:{}", free_port());
    let sim_listen = format!("127.0.0.1:{}", free_port());
    let dir = std::env::temp_dir().join(format!("freeway-sdk-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("demo.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(BIN)
        .args(["demo", "--listen", &listen, "--sim-listen", &sim_listen])
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
    let _guard = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(&listen).is_err() {
            assert!(std::time::Instant::now() < deadline, "demo did not start");
            assert!(
                child.try_wait().unwrap().is_none(),
                "demo exited: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Kill(child)
    };
    let openapi = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openapi/openapi.json");
    run_python(
        &[
            &sdk_script("openai_sdk_check.py"),
            "--base-url",
            &format!("http://{listen}/v1"),
            "--openapi",
            openapi,
        ],
        "SDK CHECK OK",
        &|| std::fs::read_to_string(&log).unwrap_or_default(),
    );
}
