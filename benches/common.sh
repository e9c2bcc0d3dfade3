# Shared by the shell benches (source it): a free port, and the config of a one-thread
# gateway in front of the simulated provider's `echo` model, accepting the key `sk-bench`.

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# bench_config FILE PORT SIM_PORT [TOML_LINE...]: the extra lines go before the provider
# (e.g. "[observability]" "request_log = false"). Store, pid file and upgrade socket sit
# beside FILE.
bench_config() {
  local file=$1 gw=$2 sim=$3
  shift 3
  cat >"$file" <<TOML
[server]
listen = ["127.0.0.1:$gw"]
threads = 1
pid_file = "$file.pid"
upgrade_sock = "$file.sock"
[auth]
keys = ["sk-bench"]
[metrics]
listen = ""
[storage]
path = "$file.db"
# The benches are one client (wrk): no per-client limit.
[limits]
per_ip = { per_minute = 0 }
$(printf '%s\n' "$@")
[[providers]]
name = "mock"
kind = "openai"
base_url = "http://127.0.0.1:$sim/v1"
api_key = "sk-upstream"
simulated = true
  [[providers.models]]
  id = "echo"
  context_window = 131072
  capabilities = ["tools", "json", "stream"]
TOML
}

# otlp_sink_script DIR: writes DIR/otlp_sink.py, an OTLP/HTTP sink (`python3 it PORT`) that
# reads each export and answers 200.
otlp_sink_script() {
  cat >"$1/otlp_sink.py" <<'PY'
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
PY
}
