#!/usr/bin/env bash
# Worker CPU per request, sozu against nginx, one worker each, measured from /proc in one run.
#
#   bench/worker_cpu.sh [SECONDS]      (default 5; needs nginx, wrk, openssl; loopback only)
#
# Both proxies front the same nginx backend (a 13-byte answer), over keep-alive backend
# connections. For each proxy it prints the worker's user+system CPU (µs) per request:
#   http-ka      wrk -t1 -c16 (CONNECTIONS=16), keep-alive client connections
#   http-close   wrk -t1 -c16 -H "Connection: close": one TCP connection per request
#   https-close  wrk -t1 -c16 -H "Connection: close": one TLS handshake per request (wrk
#                keeps its TLS session across reconnections: most are resumptions)
# and the requests per second wrk saw (client-bound on https-close: compare CPU there).
# Prints figures only; asserts nothing.
set -euo pipefail
DURATION=${1:-5}
CONNECTIONS=${CONNECTIONS:-16}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SOZU=${SOZU_BIN:-$ROOT/.venv/bin/sozu}
DIR=$(mktemp -d)
trap 'cleanup' EXIT
cleanup() {
  "$SOZU" -c "$DIR/sozu.toml" shutdown >/dev/null 2>&1 || true
  for conf in backend proxy; do
    [ -f "$DIR/$conf.pid" ] && kill "$(cat "$DIR/$conf.pid")" 2>/dev/null || true
  done
  sleep 0.5
  rm -rf "$DIR"
}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BE=$(port); NX_HTTP=$(port); NX_HTTPS=$(port); SZ_HTTP=$(port); SZ_HTTPS=$(port)
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench.test" \
  -addext "subjectAltName=DNS:bench.test" -keyout "$DIR/key.pem" -out "$DIR/cert.pem" 2>/dev/null
cat >"$DIR/backend.conf" <<EOF
worker_processes 1; daemon on; pid $DIR/backend.pid; error_log $DIR/backend.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000;
  server { listen 127.0.0.1:$BE backlog=4096; location / { return 200 "Hello, world!"; } } }
EOF
cat >"$DIR/proxy.conf" <<EOF
worker_processes 1; daemon on; pid $DIR/proxy.pid; error_log $DIR/proxy.err warn;
worker_rlimit_nofile 20000;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 60s;
  upstream be { server 127.0.0.1:$BE; keepalive 128; keepalive_requests 100000000; }
  server { listen 127.0.0.1:$NX_HTTP backlog=4096; listen 127.0.0.1:$NX_HTTPS ssl backlog=4096;
    ssl_certificate $DIR/cert.pem; ssl_certificate_key $DIR/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
cat >"$DIR/sozu.toml" <<EOF
command_socket = "$DIR/sozu.sock"
worker_count = 1
log_level = "error"
[[listeners]]
protocol = "http"
address = "127.0.0.1:$SZ_HTTP"
[[listeners]]
protocol = "https"
address = "127.0.0.1:$SZ_HTTPS"
certificate = "$DIR/cert.pem"
key = "$DIR/key.pem"
[clusters.bench]
protocol = "http"
frontends = [
  { address = "127.0.0.1:$SZ_HTTP", hostname = "bench.test" },
  { address = "127.0.0.1:$SZ_HTTPS", hostname = "bench.test", certificate = "$DIR/cert.pem", key = "$DIR/key.pem" },
]
backends = [{ address = "127.0.0.1:$BE" }]
EOF
nginx -p "$DIR" -c "$DIR/backend.conf" -e "$DIR/backend.err"
nginx -p "$DIR" -c "$DIR/proxy.conf" -e "$DIR/proxy.err"
"$SOZU" -c "$DIR/sozu.toml" start >"$DIR/sozu.log" 2>&1 &
for _ in $(seq 50); do
  curl -sf -o /dev/null -H "Host: bench.test" "http://127.0.0.1:$SZ_HTTP/" && break
  sleep 0.2
done
NX_PID=$(pgrep -P "$(cat "$DIR/proxy.pid")" | head -1)
SZ_PID=$("$SOZU" -c "$DIR/sozu.toml" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["workers"][0]["pid"])')

measure() { # name pid url [wrk args...]
  local name=$1 pid=$2 url=$3; shift 3
  wrk -t1 -c"$CONNECTIONS" -d1s -H "Host: bench.test" "$@" "$url" >/dev/null 2>&1 # warm up
  local t0 t1 out
  t0=$(awk '{print $14" "$15}' "/proc/$pid/stat")
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H "Host: bench.test" "$@" "$url")
  t1=$(awk '{print $14" "$15}' "/proc/$pid/stat")
  python3 - "$name" "$t0" "$t1" "$out" <<'PY'
import re, sys, os
name, out = sys.argv[1], sys.argv[4]
(u0, s0), (u1, s1) = (map(int, t.split()) for t in sys.argv[2:4])
tick = os.sysconf("SC_CLK_TCK")
requests = int(re.search(r"(\d+) requests in", out).group(1))
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
errors = re.search(r"Socket errors: (.*)", out)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
user, system = (u1 - u0) / tick, (s1 - s0) / tick
cpu = user + system
print(f"{name:22s} {requests:8d} req  {rate:9.0f} req/s  {cpu * 1e6 / requests:7.1f} µs CPU/req"
      f" ({user * 1e6 / requests:.1f} user, {system * 1e6 / requests:.1f} system)"
      + (f"  socket errors: {errors.group(1)}" if errors else "")
      + (f"  non-2xx: {non2xx.group(1)}" if non2xx else ""))
PY
}
echo "worker CPU per request, ${DURATION}s each, wrk -t1 -c$CONNECTIONS (nginx $(nginx -v 2>&1 | sed 's/.*\///'))"
measure "nginx http-ka" "$NX_PID" "http://127.0.0.1:$NX_HTTP/"
measure "sozu http-ka" "$SZ_PID" "http://127.0.0.1:$SZ_HTTP/"
measure "nginx http-close" "$NX_PID" "http://127.0.0.1:$NX_HTTP/" -H "Connection: close"
measure "sozu http-close" "$SZ_PID" "http://127.0.0.1:$SZ_HTTP/" -H "Connection: close"
measure "nginx https-close" "$NX_PID" "https://127.0.0.1:$NX_HTTPS/" -H "Connection: close"
measure "sozu https-close" "$SZ_PID" "https://127.0.0.1:$SZ_HTTPS/" -H "Connection: close"
