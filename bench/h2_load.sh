#!/usr/bin/env bash
# HTTP/2 against HTTPS/1.1 keep-alive, sozu and nginx, one worker each, in one run.
#
#   bench/h2_load.sh [REQUESTS]      (default 200000; needs nginx, h2load, wrk, openssl)
#
# Both proxies terminate TLS (nginx: `listen ... ssl http2`, same certificate) and front the
# same nginx backend (a 13-byte answer) in HTTP/1.1 over keep-alive connections. For each it
# prints requests/s and the worker's CPU per request (user+system, /proc) for:
#   h1-ka        h2load --h1 -c16 -m1 (HTTPS/1.1 keep-alive, the same client program)
#   h2 c16 m32   h2load -c16 -m32
#   h2 c1 m100   h2load -c1 -m100
# With H2_BACKEND=1 sozu's cluster also gets `http2 = true` (h2c to the backend nginx,
# `listen ... http2` on a second port). Prints figures only; asserts nothing.
set -euo pipefail
REQUESTS=${1:-200000}
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
BE=$(port); BE2=$(port); NX_HTTP=$(port); NX_HTTPS=$(port); SZ_HTTP=$(port); SZ_HTTPS=$(port)
bench_certificate
start_backend "$BE" "server { listen 127.0.0.1:$BE2 http2 backlog=4096; location / { return 200 \"Hello, world!\"; } }"
write_sozu_config sozu "$SZ_HTTP" "$SZ_HTTPS"
if [ "${H2_BACKEND:-0}" = 1 ]; then
  echo 'http2 = true' >>"$DIR/sozu.toml"
  echo "backends = [{ address = \"127.0.0.1:$BE2\" }]" >>"$DIR/sozu.toml"
else
  echo "backends = [{ address = \"127.0.0.1:$BE\" }]" >>"$DIR/sozu.toml"
fi
start_proxy "$BE" "$NX_HTTP" "$NX_HTTPS" "http2 "
SZ_PID=$(start_sozu "$SOZU" sozu "$SZ_HTTP")
NX_PID=$(pgrep -P "$(cat "$DIR/proxy.pid")" | head -1)

cpu() { awk '{print $14" "$15}' "/proc/$1/stat"; }
run() { # name pid h2load-args...
  local name=$1 pid=$2; shift 2
  local t0 t1 out
  h2load -n 5000 "$@" >/dev/null 2>&1 || true # warm up
  t0=$(cpu "$pid")
  out=$(h2load -n "$REQUESTS" "$@" 2>&1)
  t1=$(cpu "$pid")
  python3 - "$name" "$t0" "$t1" "$out" <<'PY'
import os, re, sys
name, out = sys.argv[1], sys.argv[4]
(u0, s0), (u1, s1) = (map(int, t.split()) for t in sys.argv[2:4])
done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
if not done or not rate:
    print(f"{name:18s} h2load said: {out[-300:]}")
    sys.exit()
requests, ok, failed, errored = (int(g) for g in done.groups())
tick = os.sysconf("SC_CLK_TCK")
user, system = (u1 - u0) / tick / max(requests, 1), (s1 - s0) / tick / max(requests, 1)
print(f"{name:18s} {float(rate.group(1)):9.0f} req/s  {(user + system) * 1e6:7.1f} µs CPU/req"
      f" ({user * 1e6:.1f} user, {system * 1e6:.1f} system)"
      f"  {ok} ok, {failed} failed, {errored} errored")
PY
}
echo "h2load -n $REQUESTS, one worker each (nginx $(nginx -v 2>&1 | sed 's/.*\///'))" \
  "$([ "${H2_BACKEND:-0}" = 1 ] && echo '; sozu to its backend in h2c')"
for who in ${WHO:-nginx sozu}; do
  if [ $who = nginx ]; then pid=$NX_PID; p=$NX_HTTPS; else pid=$SZ_PID; p=$SZ_HTTPS; fi
  url="https://bench.test:$p/"
  run "$who h1-ka c16" "$pid" --h1 -c16 -m1 --connect-to="127.0.0.1:$p" "$url"
  run "$who h2 c16 m32" "$pid" -c16 -m32 --connect-to="127.0.0.1:$p" "$url"
  run "$who h2 c1 m100" "$pid" -c1 -m100 --connect-to="127.0.0.1:$p" "$url"
done
