//! The Debian package (README, "Install on a VM"). `scripts/deb.sh --no-build` packages the
//! binary this suite built, staged as `target/release/freeway` of a scratch target directory
//! (so the suite needs no release build of its own); `dpkg-deb -c` and `-I` check its files
//! and metadata, and lintian reports no error. Skipped, saying why, where cargo-deb, dpkg-deb
//! or lintian is missing: `bash scripts/setup.sh --test` installs them.

use crate::harness::BIN;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Printed past the test harness's capture, so a skip shows in a normal `cargo test` run.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// PATH with the cargo that built this test and ~/.cargo/bin (cargo-deb) first.
fn path_env() -> String {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = Path::new(env!("CARGO")).parent() {
        dirs.push(d.to_path_buf());
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(dirs)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn cmd(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("PATH", path_env());
    c
}

fn runs(c: &mut Command) -> bool {
    c.output().map(|o| o.status.success()).unwrap_or(false)
}

/// Runs a command that must succeed; its stdout.
fn ok(c: &mut Command) -> String {
    let out: Output = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn version_names_semver_and_git_commit() {
    let line = ok(Command::new(BIN).arg("--version"));
    let line = line.trim();
    let commit = line
        .strip_prefix(&format!("freeway {VERSION} ("))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("`freeway --version` printed {line:?}"));
    // The build's own checkout: build.rs reruns when HEAD moves, so the two agree.
    match Command::new("git")
        .args(["-C", ROOT, "rev-parse", "HEAD"])
        .output()
    {
        Ok(o) if o.status.success() => {
            let head = String::from_utf8_lossy(&o.stdout).trim().to_string();
            assert!(
                commit.len() >= 7 && head.starts_with(commit),
                "commit {commit:?} is not HEAD {head}"
            );
        }
        _ => assert_eq!(commit, "unknown"),
    }
}

/// `dpkg-deb -c`: path (without the leading `.`) → mode string, for files and directories.
fn contents(deb: &Path) -> BTreeMap<String, String> {
    let listing = ok(cmd("dpkg-deb").arg("-c").arg(deb));
    listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f[1], "0/0", "not owned by root: {l}");
            let path = f[5].trim_start_matches('.').trim_end_matches('/');
            (path.to_string(), f[0].to_string())
        })
        .filter(|(p, _)| !p.is_empty())
        .collect()
}

#[test]
fn debian_package_contents_metadata_and_lintian() {
    let missing: Vec<&str> = [
        (
            "cargo-deb",
            runs(cmd(env!("CARGO")).args(["deb", "--version"])),
        ),
        ("dpkg-deb", runs(cmd("dpkg-deb").arg("--version"))),
        ("lintian", runs(cmd("lintian").arg("--version"))),
    ]
    .into_iter()
    .filter(|(_, there)| !there)
    .map(|(name, _)| name)
    .collect();
    if !missing.is_empty() {
        say(&format!(
            "SKIPPED package::debian_package_contents_metadata_and_lintian: {} not installed \
             (bash scripts/setup.sh --test installs them)",
            missing.join(", ")
        ));
        return;
    }

    // The changelog's newest entry is this version (lintian does not compare them).
    let changelog = std::fs::read_to_string(format!("{ROOT}/packaging/deb/changelog")).unwrap();
    assert!(
        changelog.starts_with(&format!("freeway ({VERSION}-1) ")),
        "packaging/deb/changelog: add an entry for {VERSION}-1"
    );

    // Stage the suite's binary where cargo deb looks for the release one.
    let target = Path::new(BIN).parent().unwrap().parent().unwrap();
    let stage = target.join(format!("package-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    let release = stage.join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    if std::fs::hard_link(BIN, release.join("freeway")).is_err() {
        std::fs::copy(BIN, release.join("freeway")).unwrap();
    }
    let out = stage.join("out");
    let t = Instant::now();
    ok(cmd("bash")
        .arg(format!("{ROOT}/scripts/deb.sh"))
        .args(["--no-build", "--fast", "--output"])
        .arg(&out)
        .env("CARGO_TARGET_DIR", stage.join("target")));
    let build_secs = t.elapsed().as_secs_f32();
    let arch = ok(cmd("dpkg").arg("--print-architecture"));
    let deb = out.join(format!("freeway_{VERSION}-1_{}.deb", arch.trim()));
    assert!(deb.exists(), "no {}", deb.display());

    // Files, modes and owners.
    let files = contents(&deb);
    for (path, mode) in [
        ("/usr/bin/freeway", "-rwxr-xr-x"),
        ("/etc/freeway/freeway.toml", "-rw-r--r--"),
        ("/etc/freeway/freeway.env", "-rw-------"),
        ("/usr/lib/systemd/system/freeway.service", "-rw-r--r--"),
        ("/usr/share/doc/freeway/README.md", "-rw-r--r--"),
        ("/usr/share/doc/freeway/SECURITY.md", "-rw-r--r--"),
        ("/usr/share/doc/freeway/copyright", "-rw-r--r--"),
        ("/usr/share/doc/freeway/changelog.Debian.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/freeway.1.gz", "-rw-r--r--"),
        (
            "/usr/share/bash-completion/completions/freeway",
            "-rw-r--r--",
        ),
        ("/usr/share/zsh/vendor-completions/_freeway", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/freeway.fish",
            "-rw-r--r--",
        ),
        ("/usr/share/lintian/overrides/freeway", "-rw-r--r--"),
    ] {
        assert_eq!(
            files.get(path).map(String::as_str),
            Some(mode),
            "{path} in {files:#?}"
        );
    }
    for (path, mode) in &files {
        let known = mode.starts_with('d')
            || path.starts_with("/usr/share/man/man1/freeway")
            || [
                "/usr/bin/",
                "/etc/freeway/",
                "/usr/lib/systemd/system/",
                "/usr/share/doc/freeway/",
                "/usr/share/bash-completion/",
                "/usr/share/zsh/",
                "/usr/share/fish/",
                "/usr/share/lintian/",
            ]
            .iter()
            .any(|p| path.starts_with(p));
        assert!(known, "unexpected {path} in the package");
    }

    // Metadata and maintainer scripts.
    let info = ok(cmd("dpkg-deb").arg("-I").arg(&deb));
    let field = |name: &str| -> String {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in\n{info}"))
            .to_string()
    };
    assert_eq!(field("Package"), "freeway");
    assert_eq!(field("Version"), format!("{VERSION}-1"));
    assert_eq!(field("Architecture"), arch.trim());
    assert_eq!(field("Section"), "net");
    let depends = field("Depends");
    assert!(
        depends.contains("adduser") && depends.contains("libc6"),
        "{depends}"
    );
    let conffiles = ok(cmd("dpkg-deb").arg("-I").arg(&deb).arg("conffiles"));
    let mut conffiles: Vec<&str> = conffiles.lines().collect();
    conffiles.sort();
    assert_eq!(
        conffiles,
        ["/etc/freeway/freeway.env", "/etc/freeway/freeway.toml"]
    );
    let postinst = ok(cmd("dpkg-deb").arg("-I").arg(&deb).arg("postinst"));
    assert!(postinst.contains("adduser --system --group --home /var/lib/freeway"));
    assert!(postinst.contains("install -d -m 0750 /var/lib/freeway"));
    assert!(postinst.contains("chown freeway:freeway /var/lib/freeway"));
    assert!(postinst.contains("deb-systemd-helper enable freeway.service"));
    // Enabled, never started by the install (no keys yet); restarted on upgrade if running.
    assert!(
        !postinst.contains("invoke start") && !postinst.contains("invoke restart"),
        "{postinst}"
    );
    let postrm = ok(cmd("dpkg-deb").arg("-I").arg(&deb).arg("postrm"));
    let purge = postrm
        .rsplit_once("if [ \"$1\" = \"purge\" ]; then")
        .map(|(_, p)| p)
        .unwrap_or_else(|| panic!("postrm has no purge branch:\n{postrm}"));
    for needed in [
        "rm -rf /var/lib/freeway",
        "deluser --system",
        "delgroup --system",
    ] {
        assert!(purge.contains(needed), "purge lacks {needed}:\n{postrm}");
    }

    // What is inside: the unit's paths are the package's, the config is the catalogue, the
    // binary is stripped and is the one that was built.
    let root = stage.join("root");
    ok(cmd("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/system/freeway.service")).unwrap();
    assert_eq!(
        unit,
        std::fs::read_to_string(format!("{ROOT}/systemd/freeway.service")).unwrap()
    );
    for line in unit.lines().filter(|l| l.starts_with("Exec")) {
        let exe = line
            .split_once('=')
            .unwrap()
            .1
            .split_whitespace()
            .next()
            .unwrap();
        let exe = exe.trim_start_matches(['-', '@', '+', '!', ':']);
        assert!(
            exe == "/bin/kill" || root.join(&exe[1..]).exists(),
            "{line}: {exe} is not in the package"
        );
        if exe.ends_with("/freeway") {
            assert!(
                line.contains("--config /etc/freeway/freeway.toml"),
                "{line}"
            );
        }
    }
    assert!(unit.contains("EnvironmentFile=-/etc/freeway/freeway.env"));
    assert!(unit.contains("WorkingDirectory=/var/lib/freeway"));
    assert_eq!(
        std::fs::read(root.join("etc/freeway/freeway.toml")).unwrap(),
        std::fs::read(format!("{ROOT}/conf/freeway.toml")).unwrap()
    );
    let bin = root.join("usr/bin/freeway");
    assert_eq!(
        ok(Command::new(&bin).arg("--version")),
        ok(Command::new(BIN).arg("--version"))
    );
    if runs(cmd("readelf").arg("--version")) {
        let sections = ok(cmd("readelf").args(["-S", "-W"]).arg(&bin));
        for s in [".symtab", ".debug_info"] {
            assert!(
                !sections.contains(s),
                "/usr/bin/freeway is not stripped ({s})"
            );
        }
    }

    // Policy.
    let t = Instant::now();
    let lint = cmd("lintian").arg(&deb).output().unwrap();
    let lint_secs = t.elapsed().as_secs_f32();
    let report = String::from_utf8_lossy(&lint.stdout).into_owned();
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{report}");
    say(&format!(
        "package: {} ({} bytes) built in {build_secs:.1} s; lintian {lint_secs:.1} s, {}",
        deb.file_name().unwrap().to_string_lossy(),
        std::fs::metadata(&deb).unwrap().len(),
        if report.trim().is_empty() {
            "no tags".to_string()
        } else {
            format!("no errors:\n{report}")
        }
    ));
    let _ = std::fs::remove_dir_all(&stage);
}
