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
# and the requests per second wrk saw (client-bound on https-close: compare CPU there); then
#   https-full   `openssl s_time -new`: one full TLS handshake per connection (no session
#                reuse) and one request on it, one connection at a time: CPU per handshake.
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
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
BE=$(port); NX_HTTP=$(port); NX_HTTPS=$(port); SZ_HTTP=$(port); SZ_HTTPS=$(port)
bench_certificate
start_backend "$BE"
write_sozu_config sozu "$SZ_HTTP" "$SZ_HTTPS"
echo "backends = [{ address = \"127.0.0.1:$BE\" }]" >>"$DIR/sozu.toml"
start_proxy "$BE" "$NX_HTTP" "$NX_HTTPS"
SZ_PID=$(start_sozu "$SOZU" sozu "$SZ_HTTP")
NX_PID=$(pgrep -P "$(cat "$DIR/proxy.pid")" | head -1)

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

full_handshakes() { # name pid port
  local t0 t1 out count
  t0=$(awk '{print $14" "$15}' "/proc/$2/stat")
  out=$(openssl s_time -connect "127.0.0.1:$3" -new -time "$DURATION" -www / 2>&1 || true)
  t1=$(awk '{print $14" "$15}' "/proc/$2/stat")
  count=$(echo "$out" | awk '/connections in [0-9.]+s;/ {print $1; exit}')
  python3 - "$1" "$t0" "$t1" "${count:-0}" <<'PY'
import os, sys
name, count = sys.argv[1], int(sys.argv[4])
(u0, s0), (u1, s1) = (map(int, t.split()) for t in sys.argv[2:4])
tick = os.sysconf("SC_CLK_TCK")
cpu = ((u1 - u0) + (s1 - s0)) / tick
print(f"{name:22s} {count:8d} full TLS handshakes  "
      + (f"{cpu * 1e6 / count:7.1f} µs CPU each" if count else "none completed"))
PY
}
full_handshakes "nginx https-full" "$NX_PID" "$NX_HTTPS"
full_handshakes "sozu https-full" "$SZ_PID" "$SZ_HTTPS"
