#!/usr/bin/env bash
# The whole test suite: unit tests, the integration crate (real freeway processes on
# loopback), and the OpenAI SDK conformance test. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export PATH="$PWD/.venv/bin:$HOME/.cargo/bin:$PATH"
cargo test --all-targets 2>&1
