#!/usr/bin/env bash
# Installs what freeway needs to build and test on Debian/Ubuntu, then builds it.
#   bash scripts/setup.sh          # system packages + release build
#   bash scripts/setup.sh --test   # also the test tools: the OpenAI SDK in .venv, lintian,
#                                  # cargo-deb, a browser, promtool, espeak-ng, redis-server
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: cmake builds pingora's zlib-ng; the rest are compilers, TLS roots and
# the Python used by the SDK conformance test.
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
[ -f /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Rust: the distribution's cargo is too old for pingora; use rustup's stable toolchain.
if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing Rust (rustup, stable)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

if [ "${1:-}" = "--test" ]; then
  # Test tools: promtool validates /metrics; headless Chromium + chromedriver drive the
  # dashboard test; espeak-ng makes the real speech recording the audio tests upload.
  tneed=()
  command -v promtool >/dev/null || tneed+=(prometheus)
  command -v chromium >/dev/null || tneed+=(chromium)
  command -v chromedriver >/dev/null || tneed+=(chromium-driver)
  command -v espeak-ng >/dev/null || tneed+=(espeak-ng)
  # redis-server: the shared-mode tests start their own on a loopback port.
  command -v redis-server >/dev/null || tneed+=(redis-server)
  # lintian: the package test checks the .deb against Debian policy (dpkg-deb comes with dpkg).
  command -v lintian >/dev/null || tneed+=(lintian)
  if [ ${#tneed[@]} -gt 0 ]; then
    echo "setup: installing ${tneed[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tneed[@]}" >/dev/null
  fi
  # Python tools for the conformance tests, isolated in .venv (PEP 668 safe).
  if [ ! -x .venv/bin/python3 ]; then
    python3 -m venv .venv
  fi
  .venv/bin/python3 -c 'import openai, jsonschema, anthropic, openapi_spec_validator' 2>/dev/null ||
    .venv/bin/pip install -q --disable-pip-version-check openai jsonschema anthropic openapi-spec-validator
  # cargo-deb builds the Debian package in the package test (tests/it/package.rs) and in
  # scripts/deb.sh: compiled once from crates.io (about a minute on 2 cores). If it cannot be
  # installed, that test says so and is skipped.
  if ! cargo deb --version >/dev/null 2>&1; then
    echo "setup: installing cargo-deb"
    cargo install --quiet --locked --version '^3' cargo-deb ||
      echo "setup: cargo-deb could not be installed; the package test will be skipped"
  fi
else
  cargo build --release
  echo "setup: built target/release/freeway"
fi
