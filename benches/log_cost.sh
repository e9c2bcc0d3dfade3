#!/usr/bin/env bash
# What the request log costs, in instructions per request (callgrind): a count that does not
# drift with this VM's speed the way throughput does (see README, Performance).
#
#   bash benches/log_cost.sh [seconds]     (default 30 s of load per gateway)
#
# Runs freeway under `valgrind --tool=callgrind` twice, without and with the request log,
# warms each up, zeroes the counters, drives it with wrk at concurrency 8 for the given time,
# and divides the instructions of the whole process (every thread, the log writer included)
# by the requests served. valgrind runs the gateway ~50x slower, so the writer would see tiny
# batches at the default 25 ms linger; `log_linger_ms = 1000` gives it batches of a few
# hundred records, as under real load.
#
#   BASE_BIN=/path/to/old/freeway bash benches/log_cost.sh [seconds]
#     also measures that build (log off and on) in the same run: a before/after.
#
#   TELEMETRY=1 [BASE_BIN=…] bash benches/log_cost.sh [seconds]
#     instead: what OpenTelemetry costs (request log on throughout): this build with
#     telemetry off, with telemetry on (sampling 1.0, exporting to a local OTLP sink), and
#     BASE_BIN's build if given (telemetry off must cost what the old build costs).
#
#   GUARDRAILS=1 [BASE_BIN=…] bash benches/log_cost.sh [seconds]
#     instead: what guardrails cost (request log off throughout, a prompt with an email
#     address in it): this build with no guardrail configured, BASE_BIN's build if given
#     (before/after: a request with no guardrail configured must pay nothing measurable),
#     each twice, interleaved, and this build with the default PII set on both sides (redact).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then as_root apt-get update -qq; as_root apt-get install -y -qq "${missing[@]}" >/dev/null; fi
# FREEWAY_BIN: measure that binary instead of building this checkout's release build.
if [ -z "${FREEWAY_BIN:-}" ]; then cargo build --release -q; fi
TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$PWD/$TARGET ;; esac # an absolute CARGO_TARGET_DIR too
BIN=${FREEWAY_BIN:-$TARGET/release/freeway}
TMP=$(mktemp -d)
source benches/common.sh
SIM=$(port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
"$BIN" sim --listen "127.0.0.1:$SIM" --threads 1 >"$TMP/sim.log" 2>&1 & pids+=($!)
cat >"$TMP/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
wrk.body = '{"model":"auto","max_tokens":256,"messages":[{"role":"user","content":"hello there, how are you doing today?${GUARDRAILS:+ write to me at jo@example.com}"}]}'
LUA

measure() { # request_log [binary] [extra toml lines…]
  local log=$1 bin=${2:-$BIN} gw dir fp n ir
  shift; shift || true
  gw=$(port); dir="$TMP/$log-$(basename "$(dirname "$bin")")-$RANDOM"; mkdir -p "$dir"
  bench_config "$dir/freeway.toml" "$gw" "$SIM" "[observability]" "request_log = $log" "log_linger_ms = 1000" "$@"
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" --dump-instr=no \
    "$bin" --config "$dir/freeway.toml" >"$dir/freeway.log" 2>&1 &
  fp=$!; pids+=("$fp")
  for _ in $(seq 600); do curl -fsS -o /dev/null "http://127.0.0.1:$gw/health" 2>/dev/null && break; sleep 0.5; done
  wrk -t1 -c8 -d10s -s "$TMP/post.lua" "http://127.0.0.1:$gw/v1/chat/completions" >/dev/null
  callgrind_control -z "$fp" >/dev/null
  wrk -t1 -c8 -d"${SECS}s" -s "$TMP/post.lua" "http://127.0.0.1:$gw/v1/chat/completions" >"$dir/wrk.txt"
  if grep -q "Non-2xx" "$dir/wrk.txt"; then echo "some answers were not 2xx:" >&2; cat "$dir/wrk.txt" >&2; exit 1; fi
  n=$(awk '/requests in/{print $1}' "$dir/wrk.txt")
  sleep 2 # the writer's last batch lands inside the window
  callgrind_control -d "$fp" >/dev/null
  sleep 1
  ir=$(awk '/^summary:/{print $2}' "$dir/cg.out.1")
  kill "$fp" 2>/dev/null || true
  echo "$log $n $ir"
}
per_request() { # KEY=LABEL=MEASURED… -- A:B…: each row per request, then B against A
  python3 - "$@" <<'PY'
import sys
args = sys.argv[1:]
rows, pairs = args[:args.index("--")], args[args.index("--") + 1:]
per, labels = {}, {}
for row in rows:
    key, label, measured = row.split("=", 2)
    _, n, ir = measured.split()
    per[key], labels[key] = int(ir) / int(n), label
    print(f"{label:38} {per[key]:>12,.0f} instructions per request ({n} requests)")
for pair in pairs:
    a, b = pair.split(":")
    if a in per and b in per:
        print(f"{labels[b]} vs {labels[a]}: {per[b] - per[a]:+,.0f} instructions per request ({per[b] / per[a] - 1:+.2%})")
PY
}
if [ -n "${GUARDRAILS:-}" ]; then
  guard=('[[guardrails]]' 'name = "no-pii"' 'on = "both"'
    'pii = ["email", "phone", "credit_card", "iban", "api_key", "ipv4", "ipv6"]' 'action = "redact"')
  rows=()
  if [ -n "${BASE_BIN:-}" ]; then rows+=("base=base build=$(measure false "$BASE_BIN")"); fi
  rows+=("off=no guardrail configured=$(measure false "$BIN")")
  if [ -n "${BASE_BIN:-}" ]; then rows+=("base2=base build (again)=$(measure false "$BASE_BIN")"); fi
  rows+=("off2=no guardrail configured (again)=$(measure false "$BIN")")
  rows+=("pii=default PII set, both sides=$(measure false "$BIN" "${guard[@]}")")
  per_request "${rows[@]}" -- base:off base2:off2 off:pii
  exit 0
fi
if [ -n "${TELEMETRY:-}" ]; then
  OTLP=$(port)
  otlp_sink_script "$TMP"
  python3 "$TMP/otlp_sink.py" "$OTLP" >"$TMP/otlp.log" 2>&1 & pids+=($!)
  rows=("off=telemetry off=$(measure true "$BIN")")
  rows+=("on=telemetry on (sampling 1.0)=$(measure true "$BIN" "[telemetry]" "otlp_endpoint = \"http://127.0.0.1:$OTLP\"" "sample_ratio = 1.0")")
  if [ -n "${BASE_BIN:-}" ]; then rows+=("base=base build=$(measure true "$BASE_BIN")"); fi
  per_request "${rows[@]}" -- base:off off:on
  exit 0
fi
rows=("off=request log off=$(measure false)" "on=request log on=$(measure true)")
if [ -n "${BASE_BIN:-}" ]; then
  rows+=("base_off=base build, request log off=$(measure false "$BASE_BIN")")
  rows+=("base_on=base build, request log on=$(measure true "$BASE_BIN")")
fi
per_request "${rows[@]}" -- base_off:base_on off:on base_off:off
