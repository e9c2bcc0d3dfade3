#!/usr/bin/env bash
# Load bench: latency at concurrency 1 and throughput at concurrency 32, for a chat request
# sent directly to the simulated provider, through nginx (a plain proxy hop, the yardstick
# for this VM's wake-up cost), and through freeway. The mock and wrk share CPU 0; the proxy
# under test (nginx or freeway, one worker thread) runs alone on CPU 1. Rounds are
# interleaved (direct, nginx, freeway, direct, …) and medians reported, as BENCH.md asks.
#
#   bash benches/load.sh [seconds-per-run] [rounds]
#   REQUEST_LOG=false bash benches/load.sh   # freeway without the SQLite request log
#   LOG_COST=1 bash benches/load.sh           # also a second freeway without the request
#                                             # log, interleaved: what logging costs
#   BASE_BIN=/path/to/old/freeway bash benches/load.sh
#                                             # also that build of freeway, interleaved
#                                             # (same config): a before/after in one run
#   TELEMETRY=1 bash benches/load.sh          # also a freeway exporting OpenTelemetry
#                                             # spans (sample_ratio 1.0) to a local OTLP
#                                             # sink, interleaved: what tracing costs
#   PINGORA=1 bash benches/load.sh            # also a bare Pingora ProxyHttp hop
#                                             # (benches/pingora_hop.rs), interleaved:
#                                             # the floor under freeway's own cost
#   CALLGRIND=1 bash benches/load.sh          # also instructions per request (callgrind,
#                                             # whole process, wrk c=8 for CG_SECS=10 s)
#                                             # of nginx and of each freeway, after the
#                                             # rounds: the table issue 21 asks for
#
# Every round also measures the time to the first byte of a streamed answer's body (p50
# over 200 sequential requests on one kept-alive connection, from CPU 0).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
ROUNDS=${2:-3}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then as_root apt-get update -qq; as_root apt-get install -y -qq "${missing[@]}" >/dev/null; fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# FREEWAY_BIN: measure that binary instead of building this checkout's release build.
if [ -z "${FREEWAY_BIN:-}" ]; then cargo build --release -q; fi
BIN=${FREEWAY_BIN:-${CARGO_TARGET_DIR:-target}/release/freeway}
TMP=$(mktemp -d)
source benches/common.sh
SIM=$(port); GW=$(port); NGX=$(port); GW2=$(port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

taskset -c 0 "$BIN" sim --listen "127.0.0.1:$SIM" --threads 1 >"$TMP/sim.log" 2>&1 & pids+=($!)

bench_config "$TMP/freeway.toml" "$GW" "$SIM" "[observability]" "request_log = ${REQUEST_LOG:-true}"
RUST_LOG=warn taskset -c 1 "$BIN" --config "$TMP/freeway.toml" >"$TMP/freeway.log" 2>&1 & pids+=($!)
FW_PID=$!
if [ -n "${LOG_COST:-}" ]; then
  bench_config "$TMP/nolog.toml" "$GW2" "$SIM" "[observability]" "request_log = false"
  RUST_LOG=warn taskset -c 1 "$BIN" --config "$TMP/nolog.toml" >"$TMP/nolog.log" 2>&1 & pids+=($!)
  NOLOG_PID=$!
fi

if [ -n "${TELEMETRY:-}" ]; then
  # An OTLP/HTTP sink on CPU 0 (with wrk and the mock): reads each export, answers 200.
  OTLP=$(port)
  otlp_sink_script "$TMP"
  taskset -c 0 python3 "$TMP/otlp_sink.py" "$OTLP" >"$TMP/otlp.log" 2>&1 & pids+=($!)
  GW4=$(port)
  bench_config "$TMP/otel.toml" "$GW4" "$SIM" "[observability]" "request_log = ${REQUEST_LOG:-true}" \
    "[telemetry]" "otlp_endpoint = \"http://127.0.0.1:$OTLP\"" "sample_ratio = 1.0"
  RUST_LOG=warn taskset -c 1 "$BIN" --config "$TMP/otel.toml" >"$TMP/otel.log" 2>&1 & pids+=($!)
  OTEL_PID=$!
fi

if [ -n "${PINGORA:-}" ]; then
  HOP=$(port)
  HOP_BIN=$(cargo bench --bench pingora_hop --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -1)
  taskset -c 1 "$HOP_BIN" "127.0.0.1:$HOP" "127.0.0.1:$SIM" >"$TMP/hop.log" 2>&1 & pids+=($!)
  HOP_PID=$!
fi

if [ -n "${BASE_BIN:-}" ]; then
  GW3=$(port)
  bench_config "$TMP/base.toml" "$GW3" "$SIM" "[observability]" "request_log = ${REQUEST_LOG:-true}"
  RUST_LOG=warn taskset -c 1 "$BASE_BIN" --config "$TMP/base.toml" >"$TMP/base.log" 2>&1 & pids+=($!)
  BASE_PID=$!
fi

cat >"$TMP/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $TMP; proxy_temp_path $TMP;
  upstream mock { server 127.0.0.1:$SIM; keepalive 64; }
  server {
    listen 127.0.0.1:$NGX;
    client_max_body_size 32m;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
taskset -c 1 "$NGINX" -c "$TMP/nginx.conf" -p "$TMP" >/dev/null 2>&1 & pids+=($!)
# Every server answers before the first round (a loaded machine starts them slowly).
for p in "$SIM" "$NGX" "$GW" ${PINGORA:+"$HOP"} ${LOG_COST:+"$GW2"} ${BASE_BIN:+"$GW3"} ${TELEMETRY:+"$GW4"}; do
  for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
done
NGX_PID=$(cat "$TMP/nginx.pid")
NGX_WORKER=$(pgrep -P "$NGX_PID" | head -1)

cat >"$TMP/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
local parts = {}
for i = 1, 8 do
  parts[#parts+1] = string.format('{"role":"%s","content":"Message %d: tell me something about the number %d and why it matters to us."}', (i % 2 == 1) and "user" or "assistant", i, i)
end
wrk.body = '{"model":"auto","temperature":0.7,"max_tokens":256,"messages":[' .. table.concat(parts, ",") .. ']}'
LUA

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }

# ttfb PORT: the median time from sending a streamed chat request to the first byte of the
# answer's body, over 200 requests on one connection (after 20 to warm up), in µs.
cat >"$TMP/ttfb.py" <<'PY'
import http.client, json, statistics, sys, time
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
body = json.dumps({"model": "auto", "stream": True, "max_tokens": 64,
                   "messages": [{"role": "user", "content": "Stream me a short answer, please."}]})
head = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench"}
times = []
for i in range(220):
    t0 = time.perf_counter()
    c.request("POST", "/v1/chat/completions", body, head)
    r = c.getresponse()
    first = r.read1(1)
    t1 = time.perf_counter()
    r.read()
    if r.status != 200 or not first:
        sys.exit(f"stream answer {r.status}")
    if i >= 20:
        times.append((t1 - t0) * 1e6)
print(f"{statistics.median(times):.0f}")
PY

run() { # name url pid
  local name=$1 url=$2 pid=$3
  local lat p99 thr t0 t1 reqs port ttfb
  lat=$(taskset -c 0 wrk -t1 -c1 -d"${DUR}s" --latency -s "$TMP/post.lua" "$url")
  p99=$(echo "$lat" | awk '/^ +99%/{print $2}')
  lat=$(echo "$lat" | awk '/^ +50%/{print $2}')
  port=${url#http://127.0.0.1:}; port=${port%%/*}
  ttfb=$(taskset -c 0 python3 "$TMP/ttfb.py" "$port")
  t0=$( [ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  out=$(taskset -c 0 wrk -t1 -c32 -d"${DUR}s" -s "$TMP/post.lua" "$url")
  t1=$( [ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  thr=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  non2xx=$(echo "$out" | awk '/Non-2xx/{print $NF}')
  echo "$name $lat $thr $((t1 - t0)) $reqs ${non2xx:-0} $p99 $ttfb" >>"$TMP/results"
}

for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  run direct "http://127.0.0.1:$SIM/v1/chat/completions" ""
  run nginx "http://127.0.0.1:$NGX/v1/chat/completions" "$NGX_WORKER"
  run freeway "http://127.0.0.1:$GW/v1/chat/completions" "$FW_PID"
  if [ -n "${PINGORA:-}" ]; then
    run pingora "http://127.0.0.1:$HOP/v1/chat/completions" "$HOP_PID"
  fi
  if [ -n "${LOG_COST:-}" ]; then
    run fw-nolog "http://127.0.0.1:$GW2/v1/chat/completions" "$NOLOG_PID"
  fi
  if [ -n "${BASE_BIN:-}" ]; then
    run fw-base "http://127.0.0.1:$GW3/v1/chat/completions" "$BASE_PID"
  fi
  if [ -n "${TELEMETRY:-}" ]; then
    run fw-otel "http://127.0.0.1:$GW4/v1/chat/completions" "$OTEL_PID"
  fi
done

# Instructions per request under callgrind (the whole process, every thread), for nginx and
# each freeway build/config of the rounds: valgrind's count does not drift with the VM.
if [ -n "${CALLGRIND:-}" ]; then
  command -v valgrind >/dev/null || { as_root apt-get update -qq; as_root apt-get install -y -qq valgrind >/dev/null; }
  for p in "${pids[@]:1}"; do kill "$p" 2>/dev/null || true; done # all but the mock
  sleep 1
  cg() { # name port command…: starts it under callgrind, warms it up, counts c=8 for CG_SECS
    local name=$1 port=$2 pid n ir
    shift 2
    valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.$name" --dump-instr=no "$@" \
      >"$TMP/cg.$name.log" 2>&1 &
    pid=$!; pids+=("$pid")
    for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.5; done
    wrk -t1 -c8 -d5s -s "$TMP/post.lua" "http://127.0.0.1:$port/v1/chat/completions" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    wrk -t1 -c8 -d"${CG_SECS:-10}s" -s "$TMP/post.lua" "http://127.0.0.1:$port/v1/chat/completions" >"$TMP/cg.$name.wrk"
    n=$(awk '/requests in/{print $1}' "$TMP/cg.$name.wrk")
    sleep 2 # the request log's last batch (1 s linger) lands inside the window
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    ir=$(awk '/^summary:/{s+=$2} END{print s}' "$TMP"/cg."$name".[0-9]*)
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "cg $name $n $ir" >>"$TMP/results"
  }
  sed -e 's/^daemon off;/daemon off;\nmaster_process off;/' "$TMP/nginx.conf" >"$TMP/nginx-cg.conf"
  cg nginx "$NGX" "$NGINX" -c "$TMP/nginx-cg.conf" -p "$TMP"
  if [ -n "${PINGORA:-}" ]; then
    cg pingora "$HOP" "$HOP_BIN" "127.0.0.1:$HOP" "127.0.0.1:$SIM"
  fi
  # valgrind runs freeway ~50x slower: the request log writer gets a 1 s linger to see
  # batches of the size it sees under real load (as benches/log_cost.sh does).
  sed -i 's/^request_log = .*/&\nlog_linger_ms = 1000/' "$TMP/freeway.toml"
  RUST_LOG=warn cg freeway "$GW" "$BIN" --config "$TMP/freeway.toml"
  if [ -n "${BASE_BIN:-}" ]; then
    sed -i 's/^request_log = .*/&\nlog_linger_ms = 1000/' "$TMP/base.toml"
    RUST_LOG=warn cg fw-base "$GW3" "$BASE_BIN" --config "$TMP/base.toml"
  fi
fi

python3 - "$TMP/results" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
tck = int(sys.argv[2])
def us(s):
    for unit, f in (("us", 1), ("ms", 1000), ("s", 1e6)):
        if s.endswith(unit) and (unit != "s" or not s.endswith(("us", "ms"))):
            return float(s[: -len(unit)]) * f
    return float(s)
rows, instr = {}, {}
for line in open(sys.argv[1]):
    f = line.split()
    if f[0] == "cg":
        instr[f[1]] = int(f[3]) / int(f[2])
        continue
    name, lat, thr, ticks, reqs, non2xx, p99, ttfb = f
    rows.setdefault(name, []).append((us(lat), float(thr), int(ticks), int(reqs), int(non2xx), us(p99), float(ttfb)))
med = lambda xs: statistics.median(xs)
d_lat = med([r[0] for r in rows["direct"]]); d_thr = med([r[1] for r in rows["direct"]])
d_p99 = med([r[5] for r in rows["direct"]]); d_ttfb = med([r[6] for r in rows["direct"]])
print(f"{'target':8} {'c=1 p50':>9} {'added p50':>10} {'added p99':>10} {'stream TTFB':>12} {'c=32 req/s':>11} "
      f"{'vs direct':>9} {'CPU/req':>9} {'instr/req':>10} {'non-2xx':>8}")
for name in ("direct", "nginx", "pingora", "freeway", "fw-nolog", "fw-base", "fw-otel"):
    rs = rows.get(name)
    if not rs:
        continue
    lat = med([r[0] for r in rs]); thr = med([r[1] for r in rs])
    p99 = med([r[5] for r in rs]); ttfb = med([r[6] for r in rs])
    cpu = med([r[2] / tck * 1e6 / r[3] for r in rs]) if name != "direct" else None
    bad = sum(r[4] for r in rs)
    ir = f"{instr[name]:,.0f}" if name in instr else "-"
    print(f"{name:8} {lat:7.0f}us {lat - d_lat:8.0f}us {p99 - d_p99:8.0f}us {ttfb:10.0f}us {thr:11.0f} {thr / d_thr:8.0%} "
          f"{(f'{cpu:.1f}us' if cpu is not None else '-'):>9} {ir:>10} {bad:>8}")
# Each pair of the same run: freeway beside nginx, the bare Pingora hop beside nginx (the
# floor's own distance), freeway beside that floor.
cpu = lambda name: med([r[2] / tck * 1e6 / r[3] for r in rows[name]])
thr = lambda name: med([r[1] for r in rows[name]])
p = lambda name, i: med([r[i] for r in rows[name]])
for a, b in (("freeway", "nginx"), ("pingora", "nginx"), ("freeway", "pingora")):
    if a not in rows or b not in rows:
        continue
    line = (f"{a} vs {b}: CPU/req {cpu(a) / cpu(b):.2f}x, req/s {thr(a) / thr(b):.0%}, "
            f"c=1 p50 {p(a, 0) - p(b, 0):+.0f}us, p99 {p(a, 5) - p(b, 5):+.0f}us, "
            f"stream TTFB {p(a, 6) - p(b, 6):+.0f}us")
    if a in instr and b in instr:
        line += f", instructions {instr[a] / instr[b]:.2f}x"
    print(line)
if "fw-nolog" in rows:
    on = med([r[1] for r in rows["freeway"]]); off = med([r[1] for r in rows["fw-nolog"]])
    print(f"request log costs {1 - on / off:.1%} of throughput at c=32 (per-round: " +
          ", ".join(f"{1 - a[1] / b[1]:.1%}" for a, b in zip(rows["freeway"], rows["fw-nolog"])) + ")")
if "fw-otel" in rows:
    cpu_rounds = lambda name: [r[2] / tck * 1e6 / r[3] for r in rows[name]]
    off, on = med(cpu_rounds("freeway")), med(cpu_rounds("fw-otel"))
    print(f"telemetry (sampling 1.0) costs {on - off:.1f}us CPU per request: {on / off - 1:.1%} "
          f"(per-round: " + ", ".join(f"{b - a:+.1f}us" for a, b in zip(cpu_rounds("freeway"), cpu_rounds("fw-otel"))) + ")")
PY
if [ -n "${TELEMETRY:-}" ]; then
  grep -h "dropping spans" "$TMP/otel.log" | tail -2 || true
fi
