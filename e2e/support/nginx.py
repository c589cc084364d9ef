"""A real nginx backend for end-to-end tests, run with a private configuration and prefix.

`nginx_backends(directory, "one", "two")` starts one nginx process (`daemon off;`, everything
under `directory`) serving one server per name, each on its own free loopback port:

* any path: `200` with the body `<name>\\n`;
* `/headers`: `200`, a body listing the request line and the forwarding-related request
  headers as nginx received them (`name: value` lines, lowercase names);
* `/files/big.bin`: a 10 MiB file of pseudo-random bytes (`Nginx.big_file` is the original);
* `PUT /upload/<file>` (WebDAV): stores the body, Content-Length or chunked, under
  `uploads/`; `Nginx.uploaded(file)` gives its size and SHA-256.

Every response carries `X-Backend: <name>` and `X-Connection: <nginx's connection serial>`,
so a test can tell which backend served it and how many backend connections were used.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from e2e.support.net import free_port
from e2e.support.programs import require_program

STARTUP_TIMEOUT = 10.0
BIG_FILE_SIZE = 10 * 1024 * 1024

# Request headers listed by `/headers`, as nginx variable suffixes.
ECHOED_HEADERS = (
    "host",
    "connection",
    "cookie",
    "x_forwarded_for",
    "x_forwarded_proto",
    "x_forwarded_port",
    "x_forwarded_host",
    "forwarded",
    "x_request_id",
    "sozu_id",
    "transfer_encoding",
    "content_length",
)


@dataclass
class Nginx:
    """A running nginx: its process, its ports by backend name and its document root."""

    process: subprocess.Popen[bytes]
    prefix: Path
    ports: dict[str, int]

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    @property
    def big_file(self) -> Path:
        return self.prefix / "html" / "files" / "big.bin"

    def uploaded(self, file: str) -> tuple[int, str]:
        """Size and SHA-256 (hex) of a body received by `PUT /upload/<file>`."""
        data = (self.prefix / "html" / "upload" / file).read_bytes()
        return len(data), hashlib.sha256(data).hexdigest()

    def error_log(self) -> str:
        try:
            return (self.prefix / "error.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Fast shutdown (SIGTERM), then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _server_block(name: str, port: int, html: Path) -> str:
    echoed = "".join(f"{h.replace('_', '-')}: $http_{h}\\n" for h in ECHOED_HEADERS)
    return f"""
    server {{
        listen 127.0.0.1:{port};
        server_name _;
        root {html};
        add_header X-Backend {name} always;
        add_header X-Connection $connection always;
        location / {{
            default_type text/plain;
            return 200 "{name}\\n";
        }}
        location /headers {{
            default_type text/plain;
            return 200 "request: $request\\n{echoed}";
        }}
        location /files/ {{
        }}
        location /upload/ {{
            dav_methods PUT;
            create_full_put_path on;
        }}
    }}
"""


def _config(prefix: Path, ports: dict[str, int]) -> str:
    html = prefix / "html"
    temp = prefix / "temp"
    servers = "".join(_server_block(name, port, html) for name, port in ports.items())
    return f"""
daemon off;
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{
    worker_connections 1024;
}}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    default_type application/octet-stream;
    client_max_body_size 64m;
    keepalive_timeout 60s;
    keepalive_requests 10000;
    sendfile on;
{servers}
}}
"""


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def nginx_backends(directory: Path, *names: str) -> Iterator[Nginx]:
    """Start nginx serving `names` under `directory`; always stopped on exit."""
    binary = require_program("nginx")
    prefix = directory
    for sub in ("html/files", "html/upload", "temp", "logs"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    (prefix / "html" / "files" / "big.bin").write_bytes(random.Random(11).randbytes(BIG_FILE_SIZE))
    ports = {name: free_port() for name in names}
    config = prefix / "nginx.conf"
    config.write_text(_config(prefix, ports))
    with (prefix / "stderr.log").open("ab") as stderr:
        process = subprocess.Popen(
            [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
        )
    nginx = Nginx(process, prefix, ports)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not all(_accepts(port) for port in ports.values()):
            if process.poll() is not None:
                raise RuntimeError(f"nginx exited with {process.returncode}:\n{nginx.error_log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"nginx not listening within {STARTUP_TIMEOUT} s")
            time.sleep(0.05)
        yield nginx
    finally:
        nginx.stop()
