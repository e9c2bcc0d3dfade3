#!/usr/bin/env bash
# What guardrails cost, in instructions per request (callgrind; see benches/log_cost.sh for
# the method): this build with no guardrail configured, the same with the default PII set
# on both sides (redact), and, with BASE_BIN, a build from before guardrails with the same
# config as the first: a request with no guardrail configured must pay nothing measurable.
#
#   BASE_BIN=/path/to/old/freeway bash benches/guardrail_cost.sh [seconds]   (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then as_root apt-get update -qq; as_root apt-get install -y -qq "${missing[@]}" >/dev/null; fi
cargo build --release -q
TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$PWD/$TARGET ;; esac
BIN=$TARGET/release/freeway
TMP=$(mktemp -d)
source benches/common.sh
SIM=$(port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
"$BIN" sim --listen "127.0.0.1:$SIM" --threads 1 >"$TMP/sim.log" 2>&1 & pids+=($!)
cat >"$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.body = '{"model":"auto","max_tokens":256,"messages":[{"role":"user","content":"hello there, how are you doing today? write to me at jo@example.com"}]}'
LUA

measure() { # label binary [TOML_LINE...]
  local label=$1 bin=$2 gw dir fp n ir
  shift 2
  gw=$(port); dir="$TMP/$label"; mkdir -p "$dir"
  bench_config "$dir/freeway.toml" "$gw" "$SIM" "[observability]" "request_log = false" "$@"
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" --dump-instr=no \
    "$bin" --config "$dir/freeway.toml" >"$dir/freeway.log" 2>&1 &
  fp=$!; pids+=("$fp")
  for _ in $(seq 600); do curl -fsS -o /dev/null "http://127.0.0.1:$gw/health" 2>/dev/null && break; sleep 0.5; done
  wrk -t1 -c8 -d5s -s "$TMP/post.lua" "http://127.0.0.1:$gw/v1/chat/completions" >/dev/null
  callgrind_control -z "$fp" >/dev/null
  wrk -t1 -c8 -d"${SECS}s" -s "$TMP/post.lua" "http://127.0.0.1:$gw/v1/chat/completions" >"$dir/wrk.txt"
  if grep -q "Non-2xx" "$dir/wrk.txt"; then echo "$label: some answers were not 2xx:" >&2; cat "$dir/wrk.txt" >&2; exit 1; fi
  n=$(awk '/requests in/{print $1}' "$dir/wrk.txt")
  callgrind_control -d "$fp" >/dev/null
  sleep 1
  ir=$(awk '/^summary:/{print $2}' "$dir/cg.out.1")
  kill "$fp" 2>/dev/null || true
  python3 -c "import sys; n, ir = int(sys.argv[2]), int(sys.argv[3]); print(f'{sys.argv[1]:<34} {ir / n:>10,.0f} instructions per request ({n} requests)')" "$label" "$n" "$ir"
}
guard=('[[guardrails]]' 'name = "no-pii"' 'on = "both"'
  'pii = ["email", "phone", "credit_card", "iban", "api_key", "ipv4", "ipv6"]' 'action = "redact"')
if [ -n "${BASE_BIN:-}" ]; then
  measure "before guardrails (base build)" "$BASE_BIN"
fi
measure "no guardrail configured" "$BIN"
if [ -n "${BASE_BIN:-}" ]; then
  measure "before guardrails (base, again)" "$BASE_BIN"
fi
measure "no guardrail configured (again)" "$BIN"
measure "default PII set, both sides" "$BIN" "${guard[@]}"
