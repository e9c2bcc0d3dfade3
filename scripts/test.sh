#!/usr/bin/env bash
# The whole test suite: unit tests, the integration crate (real freeway processes on
# loopback), the OpenAI SDK conformance test, and a bounded fuzz run of every target
# (FUZZ_SECONDS per target, default 30; 0 skips it). Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export PATH="$PWD/.venv/bin:$HOME/.cargo/bin:$PATH"
cargo test --all-targets 2>&1
if [ "${FUZZ_SECONDS:-30}" -gt 0 ]; then
  bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
fi
