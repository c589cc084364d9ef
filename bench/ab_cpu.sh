#!/usr/bin/env bash
# Worker CPU per request of two sozu builds, side by side under the same load (a paired A/B).
#
#   bench/ab_cpu.sh SOZU_A SOZU_B [ka|close|tls|tlska] [SECONDS] [ROUNDS]
#
# SOZU_A and SOZU_B are `sozu` commands, e.g. this checkout's .venv/bin/sozu and a wrapper
# that runs another checkout (`git worktree add ../base <commit>`; a script running
#   PYTHONPATH=../base/worker/src:../base/command/src:../base/supervisor/src:../base/sozu/src \
#     .venv/bin/python -m sozu.cli "$@"
# ). Each build runs one worker in front of the same nginx backend; each round drives both at
# once with `wrk -t1 -c8` (ka: keep-alive; close: a connection per request; tls: a TLS
# connection per request; tlska: TLS keep-alive) and prints each build's worker CPU (µs per
# request, from /proc) and B/A. Running both at once makes the two share the machine's noise:
# compare B/A, and run it again with the builds swapped. Prints figures only; asserts nothing.
set -euo pipefail
A=$1
B=$2
MODE=${3:-ka}
DURATION=${4:-8}
ROUNDS=${5:-3}
DIR=$(mktemp -d)
trap 'cleanup' EXIT
cleanup() {
  "$A" -c "$DIR/A.toml" shutdown >/dev/null 2>&1 || true
  "$B" -c "$DIR/B.toml" shutdown >/dev/null 2>&1 || true
  [ -f "$DIR/backend.pid" ] && kill "$(cat "$DIR/backend.pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$DIR"
}
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
BE=$(port)
bench_certificate
start_backend "$BE"
declare -A PID URL
for build in A B; do
  SOZU=$A
  [ "$build" = B ] && SOZU=$B
  HTTP=$(port)
  HTTPS=$(port)
  write_sozu_config "$build" "$HTTP" "$HTTPS"
  echo "backends = [{ address = \"127.0.0.1:$BE\" }]" >>"$DIR/$build.toml"
  PID[$build]=$(start_sozu "$SOZU" "$build" "$HTTP")
  case $MODE in
    tls | tlska) URL[$build]=https://127.0.0.1:$HTTPS/ ;;
    *) URL[$build]=http://127.0.0.1:$HTTP/ ;;
  esac
done
EXTRA=()
case $MODE in ka | tlska) ;; *) EXTRA=(-H "Connection: close") ;; esac
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for build in A B; do
  wrk -t1 -c8 -d1s -H "Host: bench.test" "${EXTRA[@]}" "${URL[$build]}" >/dev/null
done
for round in $(seq "$ROUNDS"); do
  a0=$(cpu "${PID[A]}")
  b0=$(cpu "${PID[B]}")
  wrk -t1 -c8 -d"${DURATION}"s -H "Host: bench.test" "${EXTRA[@]}" "${URL[A]}" >"$DIR/a.txt" &
  WA=$!
  wrk -t1 -c8 -d"${DURATION}"s -H "Host: bench.test" "${EXTRA[@]}" "${URL[B]}" >"$DIR/b.txt" &
  WB=$!
  wait $WA $WB
  a1=$(cpu "${PID[A]}")
  b1=$(cpu "${PID[B]}")
  na=$(grep -oP '\d+(?= requests in)' "$DIR/a.txt")
  nb=$(grep -oP '\d+(?= requests in)' "$DIR/b.txt")
  python3 -c "
a = ($a1 - $a0) * 1e4 / $na
b = ($b1 - $b0) * 1e4 / $nb
print(f'round $round: A {a:7.1f} µs/req ({$na} req)  B {b:7.1f} µs/req ({$nb} req)  B/A {b / a:.3f}')"
done
