#!/usr/bin/env bash
# Soak bench: sustained load at concurrency 32 against a simulated provider, to show that
# the gateway's memory stays flat and its latency does not drift.
#
#   bash benches/soak.sh [minutes] [slice-seconds]      (default 10 minutes, 30 s slices)
#
# The load is a mix: half the requests stream, 40% are plain JSON, 10% ask for a cached
# answer (ten distinct prompts, so after warm-up they are cache hits); every other prompt
# carries a counter so it is never the same body twice. The request log is on (default
# config). wrk runs back to back in slices; after each slice the gateway's RSS is read
# from /proc, so the table shows req/s, p50/p99 latency and RSS over time. The first minute
# is warm-up (pools, caches, allocator arenas filling); the verdict compares every later
# RSS sample with the first one after warm-up: flat means within ±10%.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
SLICE=${2:-30}
WARMUP=60

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
command -v wrk >/dev/null || { as_root apt-get update -qq; as_root apt-get install -y -qq wrk >/dev/null; }

# FREEWAY_BIN: measure that binary instead of building this checkout's release build.
if [ -z "${FREEWAY_BIN:-}" ]; then cargo build --release -q; fi
BIN=${FREEWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/freeway}
TMP=$(mktemp -d)
source benches/common.sh
SIM=$(port); GW=$(port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

taskset -c 0 "$BIN" sim --listen "127.0.0.1:$SIM" --threads 1 >"$TMP/sim.log" 2>&1 & pids+=($!)
bench_config "$TMP/freeway.toml" "$GW" "$SIM"
RUST_LOG=warn taskset -c 1 "$BIN" --config "$TMP/freeway.toml" >"$TMP/freeway.log" 2>&1 & pids+=($!)
FW=$!

cat >"$TMP/mix.lua" <<'LUA'
local n = 0
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer sk-bench"}
local cached = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer sk-bench",
                ["x-gateway-cache-ttl"] = "3600"}
request = function()
  n = n + 1
  local kind = n % 10
  local stream = (kind < 5) and "true" or "false"
  local prompt, h
  if kind == 9 then
    prompt = string.format("cached question %d", math.floor(n / 10) % 10)
    h = cached
  else
    prompt = string.format("question %d: tell me something about the number %d.", n, n)
    h = headers
  end
  local body = string.format(
    '{"model":"auto","stream":%s,"max_tokens":64,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"%s"}]}',
    stream, prompt)
  return wrk.format("POST", "/v1/chat/completions", h, body)
end
LUA

for _ in $(seq 50); do
  curl -fsS -o /dev/null "http://127.0.0.1:$GW/health" 2>/dev/null && break
  sleep 0.1
done

rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$FW/status"; }
slices=$(( MINUTES * 60 / SLICE ))
echo "soak: $MINUTES min at c=32 in $slices slices of ${SLICE}s; gateway pid $FW, RSS at start $(( $(rss_kib) / 1024 )) MiB" >&2
printf '%6s %9s %9s %9s %9s %8s\n' "t(s)" "req/s" "p50" "p99" "RSS MiB" "non-2xx"
for i in $(seq "$slices"); do
  out=$(taskset -c 0 wrk -t1 -c32 -d"${SLICE}s" --latency -s "$TMP/mix.lua" "http://127.0.0.1:$GW")
  rss=$(rss_kib)
  thr=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  p50=$(echo "$out" | awk '/^ +50%/{print $2}')
  p99=$(echo "$out" | awk '/^ +99%/{print $2}')
  bad=$(echo "$out" | awk '/Non-2xx/{print $NF}')
  printf '%6d %9.0f %9s %9s %9.1f %8s\n' "$(( i * SLICE ))" "$thr" "$p50" "$p99" "$(awk -v k="$rss" 'BEGIN{print k/1024}')" "${bad:-0}" | tee -a "$TMP/series"
done

python3 - "$TMP/series" "$WARMUP" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
warm = int(sys.argv[2])
after = [r for r in rows if int(r[0]) > warm] or rows
base = float(after[0][4])
rss = [float(r[4]) for r in after]
dev = max(abs(x - base) / base for x in rss)
bad = sum(int(r[5]) for r in rows)
print(f"RSS after warm-up: first {base:.1f} MiB, last {rss[-1]:.1f} MiB, "
      f"min {min(rss):.1f}, max {max(rss):.1f}; largest deviation {dev:.1%} "
      f"({'flat' if dev <= 0.10 else 'NOT flat'} within ±10%)")
print(f"p99 over time: {' '.join(r[3] for r in rows)}")
print(f"non-2xx responses: {bad}")
sys.exit(0 if dev <= 0.10 and bad == 0 else 1)
PY
