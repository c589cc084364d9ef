# What the sozu-against-nginx scripts of bench/ share (sourced, not run): a free port, the
# test certificate, the nginx backend (a 13-byte answer), nginx as a proxy, and a one-worker sozu with an HTTP
# and an HTTPS listener in front of it. Every function works in "$DIR".

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The certificate of bench.test: $DIR/cert.pem and $DIR/key.pem.
bench_certificate() {
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench.test" \
    -addext "subjectAltName=DNS:bench.test" -keyout "$DIR/key.pem" -out "$DIR/cert.pem" 2>/dev/null
}

# start_backend PORT [SERVER...]: nginx answering 13 bytes on PORT (pid in $DIR/backend.pid);
# each SERVER is one more `server { ... }` block.
start_backend() {
  local port=$1
  shift
  cat >"$DIR/backend.conf" <<CONF
worker_processes 1; daemon on; pid $DIR/backend.pid; error_log $DIR/backend.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000;
  server { listen 127.0.0.1:$port backlog=4096; location / { return 200 "Hello, world!"; } }
  $* }
CONF
  nginx -p "$DIR" -c "$DIR/backend.conf" -e "$DIR/backend.err"
}

# start_proxy BACKEND_PORT HTTP_PORT HTTPS_PORT [SSL_FLAGS]: nginx proxying to the backend over
# keep-alive connections, one worker (pid in $DIR/proxy.pid); SSL_FLAGS go on the TLS listen
# (`http2`).
start_proxy() {
  cat >"$DIR/proxy.conf" <<CONF
worker_processes 1; daemon on; pid $DIR/proxy.pid; error_log $DIR/proxy.err warn;
worker_rlimit_nofile 20000;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 60s;
  upstream be { server 127.0.0.1:$1; keepalive 128; keepalive_requests 100000000; }
  server { listen 127.0.0.1:$2 backlog=4096; listen 127.0.0.1:$3 ssl ${4:-}backlog=4096;
    ssl_certificate $DIR/cert.pem; ssl_certificate_key $DIR/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
  nginx -p "$DIR" -c "$DIR/proxy.conf" -e "$DIR/proxy.err"
}

# write_sozu_config NAME HTTP_PORT HTTPS_PORT: $DIR/NAME.toml, one worker, both listeners and
# the `bench` cluster for bench.test, its backends left for the caller to append.
write_sozu_config() {
  cat >"$DIR/$1.toml" <<CONF
command_socket = "$DIR/$1.sock"
worker_count = 1
log_level = "error"
[[listeners]]
protocol = "http"
address = "127.0.0.1:$2"
[[listeners]]
protocol = "https"
address = "127.0.0.1:$3"
certificate = "$DIR/cert.pem"
key = "$DIR/key.pem"
[clusters.bench]
protocol = "http"
frontends = [
  { address = "127.0.0.1:$2", hostname = "bench.test" },
  { address = "127.0.0.1:$3", hostname = "bench.test", certificate = "$DIR/cert.pem", key = "$DIR/key.pem" },
]
CONF
}

# start_sozu SOZU NAME HTTP_PORT: start `SOZU -c $DIR/NAME.toml`, wait until it answers on
# HTTP_PORT, print its worker's pid.
start_sozu() {
  "$1" -c "$DIR/$2.toml" start >"$DIR/$2.log" 2>&1 &
  for _ in $(seq 50); do
    curl -sf -o /dev/null -H "Host: bench.test" "http://127.0.0.1:$3/" && break
    sleep 0.2
  done
  "$1" -c "$DIR/$2.toml" status --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["workers"][0]["pid"])'
}
