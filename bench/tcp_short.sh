#!/usr/bin/env bash
# Short TCP connections and keep-alive request rates through an L4 listener: direct, sozu,
# nginx stream, HAProxy (mode tcp), each with one worker/thread, in front of an nginx backend
# answering a tiny 200. Loopback only; each wrk run is bounded (-d6s). Prints figures only.
# Needs: nginx (+ libnginx-mod-stream), haproxy, wrk; SOZU_BIN (default: .venv/bin/sozu).
set -euo pipefail
SOZU_BIN=${SOZU_BIN:-$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/sozu}
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$dir"; }
trap cleanup EXIT
BE=18181 SOZU=18282 STREAM=18585 HAP=18484
cat > "$dir/backend.conf" <<CONF
worker_processes 1; daemon off; pid $dir/backend.pid; error_log $dir/backend.log warn;
events { worker_connections 8192; }
http { access_log off; server { listen 127.0.0.1:$BE backlog=4096;
  location / { default_type text/plain; return 200 "hello from backend\n"; } } }
CONF
cat > "$dir/stream.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1; daemon off; pid $dir/stream.pid; error_log $dir/stream.log warn;
events { worker_connections 8192; }
stream { server { listen 127.0.0.1:$STREAM backlog=4096; proxy_pass 127.0.0.1:$BE; } }
CONF
cat > "$dir/haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:$HAP
    default_backend be
backend be
    server s1 127.0.0.1:$BE
CONF
cat > "$dir/sozu.toml" <<CONF
command_socket = "$dir/sozu.sock"
worker_count = 1
log_level = "error"
[[listeners]]
protocol = "tcp"
address = "127.0.0.1:$SOZU"
[clusters.web]
protocol = "tcp"
frontends = [{ address = "127.0.0.1:$SOZU" }]
backends = [{ address = "127.0.0.1:$BE" }]
CONF
nginx -p "$dir/" -c "$dir/backend.conf" & pids+=($!)
nginx -p "$dir/" -c "$dir/stream.conf" & pids+=($!)
haproxy -f "$dir/haproxy.cfg" & pids+=($!)
"$SOZU_BIN" start -c "$dir/sozu.toml" > "$dir/sozu.log" 2>&1 & pids+=($!)
sleep 3
for target in "$BE:direct" "$SOZU:sozu" "$STREAM:nginx-stream" "$HAP:haproxy"; do
  port=${target%%:*} name=${target##*:}
  close=$(wrk -t2 -c64 -d6s -H 'Connection: close' "http://127.0.0.1:$port/" | awk '/Requests\/sec/{print $2}')
  ka=$(wrk -t2 -c64 -d6s "http://127.0.0.1:$port/" | awk '/Requests\/sec/{print $2}')
  printf '%-13s new connections/s %10s   keep-alive requests/s %10s\n' "$name" "$close" "$ka"
done
