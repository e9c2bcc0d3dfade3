//! Operations: the shipped systemd unit and config.

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
    std::fs::write(&path, unit.replace("/usr/local/bin/freeway", BIN)).unwrap();
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
