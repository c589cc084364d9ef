"""Upstream Sōzu's two shipped configuration files, as an operator moving over would bring
them: every key and table shape of `bin/config.toml` and `os-build/config.toml`, written here
with our own values (addresses moved to loopback ports, certificates generated, paths in the
test's directory). The daemon starts from each and serves traffic through every listener.

Keys covered, `bin/config.toml` shape: log_level, log_target, command_socket,
command_buffer_size, max_command_buffer_size, worker_count, worker_automatic_restart,
worker_timeout, handle_process_affinity, max_connections, buffer_size, activate_listeners;
`[[listeners]]` protocol, address, tls_versions, cipher_list (a multi-line array); an empty
`[clusters]` table; `[clusters.X]` protocol, load_balancing, frontends (a multi-line array of
inline tables: address, hostname, tags as an inline table, path, certificate, key,
certificate_chain, relative to the file), backends (address, backend_id; address, weight).

`os-build/config.toml` shape: saved_state, log_level, log_target, command_socket,
command_buffer_size, max_command_buffer_size (integers with `_` separators), worker_count,
worker_automatic_restart, handle_process_affinity, max_connections, max_buffers,
buffer_size, pid_file_path, front_timeout, back_timeout, connect_timeout, request_timeout,
zombie_check_interval, activate_listeners; `[[listeners]]` as above. It has no clusters:
routes are added live with the CLI, as its operators do.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import tempfile
import tomllib
from pathlib import Path

import pytest
import trustme

from e2e.support.backends import NamedEcho
from e2e.support.daemon import Daemon
from e2e.support.http_backends import Backend, EchoHeaders
from e2e.support.net import free_port

pytestmark = pytest.mark.e2e

IO_TIMEOUT = 10.0
HOST = "app.upstream.test"

# The keys each file is documented above to cover (checked against the TOML written below).
BIN_KEYS = {
    "log_level", "log_target", "command_socket", "command_buffer_size",
    "max_command_buffer_size", "worker_count", "worker_automatic_restart", "worker_timeout",
    "handle_process_affinity", "max_connections", "buffer_size", "activate_listeners",
    "listeners", "clusters",
}  # fmt: skip
OS_BUILD_KEYS = {
    "saved_state", "log_level", "log_target", "command_socket", "command_buffer_size",
    "max_command_buffer_size", "worker_count", "worker_automatic_restart",
    "handle_process_affinity", "max_connections", "max_buffers", "buffer_size",
    "pid_file_path", "front_timeout", "back_timeout", "connect_timeout", "request_timeout",
    "zombie_check_interval", "activate_listeners", "listeners",
}  # fmt: skip
LISTENER_KEYS = {"protocol", "address", "tls_versions", "cipher_list"}
FRONTEND_KEYS = {"address", "hostname", "tags", "path", "certificate", "key", "certificate_chain"}
BACKEND_KEYS = {"address", "backend_id", "weight"}

CIPHERS = """[
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
]"""


class Setup:
    """Ports, certificates and backends of one test."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.http, self.https, self.tcp = free_port(), free_port(), free_port()
        self.ca = trustme.CA()
        issued = self.ca.issue_cert(HOST)
        certs = directory / "certs"
        certs.mkdir()
        (certs / "app.pem").write_bytes(issued.cert_chain_pems[0].bytes())
        (certs / "app.key").write_bytes(issued.private_key_pem.bytes())
        (certs / "chain.pem").write_bytes(self.ca.cert_pem.bytes())
        self.socket_dir = Path(tempfile.mkdtemp(prefix="sozu-up-", dir="/tmp"))
        self.socket = self.socket_dir / "sozu.sock"

    def listeners(self) -> str:
        return (
            f'[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:{self.http}"\n\n'
            f'[[listeners]]\nprotocol = "https"\naddress = "127.0.0.1:{self.https}"\n'
            f'tls_versions = ["TLS_V12", "TLS_V13"]\ncipher_list = {CIPHERS}\n\n'
        )

    def start(self, text: str) -> Daemon:
        path = self.directory / "config.toml"
        path.write_text(text)
        daemon = Daemon.launch(path, self.socket, 2)
        daemon._cleanup.append(self.socket_dir)
        return daemon

    def https_get(self, path: str = "/") -> tuple[int, bytes]:
        """GET over TLS with the frontend's hostname as SNI and Host, verified by our CA."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        sock = socket.create_connection(("127.0.0.1", self.https), timeout=IO_TIMEOUT)
        with context.wrap_socket(sock, server_hostname=HOST) as tls:
            request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
            tls.sendall(request.encode())
            response = http.client.HTTPResponse(tls)
            response.begin()
            return response.status, response.read()


def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    connection.request("GET", path, headers={"Host": HOST})
    response = connection.getresponse()
    body = response.read()
    headers = {k.lower(): v for k, v in response.getheaders()}
    connection.close()
    return response.status, headers, body


def greeting(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(64)
            assert chunk, "closed before the backend's greeting"
            data += chunk
    return data.decode().strip()


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def _keys(text: str) -> tuple[set[str], set[str], set[str], set[str]]:
    document = tomllib.loads(text)
    listeners = {key for listener in document.get("listeners", []) for key in listener}
    clusters = document.get("clusters", {}).values()
    frontends = {key for c in clusters for front in c.get("frontends", []) for key in front}
    backends = {key for c in clusters for back in c.get("backends", []) for key in back}
    return set(document), listeners, frontends, backends


def bin_config(setup: Setup, web: Backend, tcp: tuple[NamedEcho, NamedEcho]) -> str:
    return (
        'log_level = "info"\nlog_target = "stdout"\n'
        f'command_socket = "{setup.socket}"\n'
        "command_buffer_size = 16384\nmax_command_buffer_size = 163840\n"
        "worker_count = 2\nworker_automatic_restart = true\nworker_timeout = 10\n"
        "handle_process_affinity = false\nmax_connections = 500\nbuffer_size = 16393\n"
        "activate_listeners = true\n\n"
        + setup.listeners()
        + f'[[listeners]]\nprotocol = "tcp"\naddress = "127.0.0.1:{setup.tcp}"\n\n'
        "[clusters]\n\n"
        '[clusters.WebApp]\nprotocol = "http"\nload_balancing = "ROUND_ROBIN"\n'
        "frontends = [\n"
        f'    {{ address = "127.0.0.1:{setup.http}", hostname = "{HOST}", '
        'tags = { team = "web" }, path = "/api" },\n'
        f'    {{ address = "127.0.0.1:{setup.https}", hostname = "{HOST}", '
        'tags = { team = "web" }, certificate = "certs/app.pem", key = "certs/app.key", '
        'certificate_chain = "certs/chain.pem" },\n'
        "]\n"
        f'backends = [\n    {{ address = "{web.address}", backend_id = "web-1" }}\n]\n\n'
        '[clusters.Stream]\nprotocol = "tcp"\n'
        f'frontends = [\n    {{ address = "127.0.0.1:{setup.tcp}", '
        'tags = { owner = "ops", id = "stream-1" } }\n]\n'
        "backends = [\n"
        f'    {{ address = "{tcp[0].address}", weight = 100 }},\n'
        f'    {{ address = "{tcp[1].address}", weight = 50 }}\n'
        "]\n"
    )


def test_bin_config_shape_starts_and_serves(setup: Setup) -> None:
    with EchoHeaders("web-1") as web:
        streams = (NamedEcho("stream-a"), NamedEcho("stream-b"))
        try:
            text = bin_config(setup, web, streams)
            top, listeners, frontends, backends = _keys(text)
            assert (top, listeners, frontends, backends) == (
                BIN_KEYS,
                LISTENER_KEYS,
                FRONTEND_KEYS,
                BACKEND_KEYS,
            )
            daemon = setup.start(text)
            try:
                daemon.wait_running()
                status, headers, _ = http_get(setup.http, "/api/items")
                assert (status, headers.get("x-backend")) == (200, "web-1")
                assert http_get(setup.http, "/other")[0] == 404  # the frontend's path is /api
                status, body = setup.https_get("/anything")
                assert status == 200
                assert body.startswith(b"GET /anything HTTP/1.1")
                # Both weighted TCP backends serve (weights only skew the share).
                names = {greeting(setup.tcp) for _ in range(30)}
                assert names == {"stream-a", "stream-b"}
                # Keys sozu does not implement load with a warning naming them.
                log = daemon.log()
                for key in ("command_buffer_size", "handle_process_affinity"):
                    assert f"warning: {key} is not implemented and is ignored" in log
                assert daemon.sozu("config", "check").returncode == 0
            finally:
                daemon.stop()
        finally:
            for stream in streams:
                stream.close()


def os_build_config(setup: Setup) -> str:
    return (
        f'saved_state = "{setup.directory / "state" / "state.json"}"\n'
        'log_level = "info"\nlog_target = "stdout"\n'
        f'command_socket = "{setup.socket}"\n'
        "command_buffer_size = 163_840\nmax_command_buffer_size = 1_638_400\n"
        "worker_count = 2\nworker_automatic_restart = true\nhandle_process_affinity = false\n"
        "max_connections = 10_000\nmax_buffers = 2_000\nbuffer_size = 16_393\n"
        f'pid_file_path = "{setup.directory / "sozu.pid"}"\n'
        "front_timeout = 900\nback_timeout = 900\nconnect_timeout = 3\nrequest_timeout = 180\n"
        "zombie_check_interval = 1800\nactivate_listeners = true\n\n" + setup.listeners()
    )


def test_os_build_config_shape_starts_and_serves_routes_added_live(setup: Setup) -> None:
    text = os_build_config(setup)
    top, listeners, _, _ = _keys(text)
    assert (top, listeners) == (OS_BUILD_KEYS, LISTENER_KEYS)
    (setup.directory / "state").mkdir()
    with EchoHeaders("live-1") as web:
        daemon = setup.start(text)
        try:
            daemon.wait_running()
            assert (setup.directory / "sozu.pid").read_text().strip() == str(daemon.process.pid)
            # No route yet: the listeners answer, with 404.
            assert http_get(setup.http, "/")[0] == 404
            certs = setup.directory / "certs"
            for step in (
                ("cluster", "add", "-i", "live"),
                ("backend", "add", "-i", "live", "--backend-id", "live-1", "-a", web.address),
                ("frontend", "http", "add", "-a", f"127.0.0.1:{setup.http}",
                 "--hostname", HOST, "id", "live"),
                ("frontend", "https", "add", "-a", f"127.0.0.1:{setup.https}",
                 "--hostname", HOST, "id", "live"),
                ("certificate", "add", "-a", f"127.0.0.1:{setup.https}",
                 "--certificate", str(certs / "app.pem"), "--key", str(certs / "app.key"),
                 "--certificate-chain", str(certs / "chain.pem")),
            ):  # fmt: skip
                result = daemon.sozu(*step)
                assert result.returncode == 0, (step, result.stderr)
            status, headers, _ = http_get(setup.http, "/")
            assert (status, headers.get("x-backend")) == (200, "live-1")
            assert setup.https_get("/")[0] == 200
            saved = daemon.sozu("state", "save", "-f", str(setup.directory / "state" / "s.json"))
            assert saved.returncode == 0, saved.stderr
        finally:
            daemon.stop()
