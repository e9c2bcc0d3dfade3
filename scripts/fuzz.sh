#!/usr/bin/env bash
# Bounded fuzzing of every parser and translator that sees client or provider bytes.
#   bash scripts/fuzz.sh [seconds-per-target]     (default 60)
# Seeds each corpus from the golden fixtures; prints executions/s, corpus size and crashes
# per target; exits non-zero if any target crashed (the crash input is kept under
# fuzz/artifacts/<target>/ for a regression test).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# libFuzzer instrumentation needs unstable rustc flags: the machine's one (stable) toolchain
# with RUSTC_BOOTSTRAP, which unlocks them, so CI and a laptop fuzz with the same compiler.
# FUZZ_TOOLCHAIN=nightly uses a nightly toolchain instead, if one is installed.
if [ -n "${FUZZ_TOOLCHAIN:-}" ]; then
  FUZZ=(cargo "+$FUZZ_TOOLCHAIN" fuzz)
else
  export RUSTC_BOOTSTRAP=1
  FUZZ=(cargo fuzz)
fi
targets=(parse_chat sse_reader stream_translators native_requests responses_api messages_api request_head passthrough_path multipart guardrails_stream)
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  for f in tests/fixtures/*/*; do
    [ -f "$f" ] && cp "$f" "fuzz/corpus/$t/seed-$(basename "$(dirname "$f")")-$(basename "$f")"
  done
done
"${FUZZ[@]}" build -s none -O 2>&1 | tail -2
status=0
for t in "${targets[@]}"; do
  log=$(mktemp)
  if "${FUZZ[@]}" run -s none -O "$t" -- -max_total_time="$SECS" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    status=1
    tail -30 "$log"
  fi
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo 0)
  corpus=$(ls "fuzz/corpus/$t" | wc -l)
  echo "fuzz $t: $result, $execs executions in ${SECS}s ($((execs / SECS))/s), corpus $corpus"
  rm -f "$log"
done
exit $status
