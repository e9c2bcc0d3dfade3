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
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then as_root apt-get update -qq; as_root apt-get install -y -qq "${missing[@]}" >/dev/null; fi
cargo build --release -q
TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$PWD/$TARGET ;; esac # an absolute CARGO_TARGET_DIR too
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
wrk.body = '{"model":"auto","max_tokens":256,"messages":[{"role":"user","content":"hello there, how are you doing today?"}]}'
LUA

measure() { # request_log [binary] [extra toml lines…]
  local log=$1 bin=${2:-$BIN} gw dir fp n ir
  shift; shift || true
  gw=$(port); dir="$TMP/$log-$(basename "$(dirname "$bin")")-$RANDOM"; mkdir -p "$dir"
  bench_config "$dir/freeway.toml" "$gw" "$SIM" "[observability]" "request_log = $log" "log_linger_ms = 1000" "$@"
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" --dump-instr=no \
    "$bin" --config "$dir/freeway.toml" >"$dir/freeway.log" 2>&1 &
  fp=$!; pids+=("$fp")
  for _ in $(seq 240); do curl -fsS -o /dev/null "http://127.0.0.1:$gw/health" 2>/dev/null && break; sleep 0.5; done
  wrk -t1 -c8 -d10s -s "$TMP/post.lua" "http://127.0.0.1:$gw/v1/chat/completions" >/dev/null
  callgrind_control -z "$fp" >/dev/null
  n=$(wrk -t1 -c8 -d"${SECS}s" -s "$TMP/post.lua" "http://127.0.0.1:$gw/v1/chat/completions" | awk '/requests in/{print $1}')
  sleep 2 # the writer's last batch lands inside the window
  callgrind_control -d "$fp" >/dev/null
  sleep 1
  ir=$(awk '/^summary:/{print $2}' "$dir/cg.out.1")
  kill "$fp" 2>/dev/null || true
  echo "$log $n $ir"
}
report() { # label off on
  python3 - "$@" <<'PY'
import sys
label = sys.argv[1]
(_, n0, i0), (_, n1, i1) = (a.split() for a in sys.argv[2:4])
a, b = int(i0) / int(n0), int(i1) / int(n1)
print(f"{label}request log off: {a:,.0f} instructions per request ({n0} requests)")
print(f"{label}request log on:  {b:,.0f} instructions per request ({n1} requests)")
print(f"{label}the request log costs {b - a:,.0f} instructions per request: {b / a - 1:.1%}")
PY
}
if [ -n "${TELEMETRY:-}" ]; then
  OTLP=$(port)
  cat >"$TMP/otlp_sink.py" <<'PY'
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
  python3 "$TMP/otlp_sink.py" "$OTLP" >"$TMP/otlp.log" 2>&1 & pids+=($!)
  results=("off $(measure true "$BIN")")
  results+=("on $(measure true "$BIN" "[telemetry]" "otlp_endpoint = \"http://127.0.0.1:$OTLP\"" "sample_ratio = 1.0")")
  [ -n "${BASE_BIN:-}" ] && results+=("base $(measure true "$BASE_BIN")")
  python3 - "${results[@]}" <<'PY'
import sys
rows = {a.split()[0]: a.split()[2:] for a in sys.argv[1:]}
per = {k: int(ir) / int(n) for k, (n, ir) in rows.items()}
names = {"base": "base build", "off": "telemetry off", "on": "telemetry on (sampling 1.0)"}
for k in ("base", "off", "on"):
    if k in per:
        print(f"{names[k]:28} {per[k]:>12,.0f} instructions per request ({rows[k][0]} requests)")
if "base" in per:
    print(f"telemetry off vs base: {per['off'] - per['base']:+,.0f} instructions per request ({per['off'] / per['base'] - 1:+.2%})")
print(f"telemetry on vs off:   {per['on'] - per['off']:+,.0f} instructions per request ({per['on'] / per['off'] - 1:+.1%})")
PY
  exit 0
fi
off=$(measure false); on=$(measure true)
if [ -n "${BASE_BIN:-}" ]; then
  base_off=$(measure false "$BASE_BIN"); base_on=$(measure true "$BASE_BIN")
  report "base: " "$base_off" "$base_on"
fi
report "" "$off" "$on"
