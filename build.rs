//! Embeds the git commit the binary is built from: `freeway --version` prints
//! `freeway <semver> (<commit>)`. Outside a git checkout (a source tarball) the commit is
//! `unknown`. Reruns when HEAD moves (commit, checkout, reset), not on every build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn watch(path: &Path) {
    // Only files that exist: a missing one would make Cargo rerun this on every build.
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FREEWAY_GIT_COMMIT={commit}");

    let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) else {
        return;
    };
    // HEAD names the branch; its reflog is appended on every commit, checkout and reset,
    // whether the branch ref itself is a loose file or lives in packed-refs.
    watch(&git_dir.join("HEAD"));
    watch(&git_dir.join("logs/HEAD"));
    if let Some(common) = git(&["rev-parse", "--git-common-dir"]) {
        let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        let common = Path::new(&manifest).join(common);
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch(&common.join(branch));
        }
        watch(&common.join("packed-refs"));
    }
}
