"""Upstream Sōzu's two shipped configuration files, `bin/config.toml` (the annotated example)
and `os-build/config.toml` (the one packages install), rewritten with our own values:
every key and table shape they set is here, with addresses moved to free loopback ports,
certificates generated, and the files they name (certificates, `saved_state`, the PID file)
written in a short temporary directory. The real daemon starts from each text and serves
real traffic through every listener the file declares, from the intended backends.

Keys covered, as dotted paths (`*`: a name the operator chooses, `[]`: an array element,
`listeners[P]`: a listener of protocol P); `test_the_key_lists_are_complete` checks each list
against the keys of its TOML text, so neither can change without the other.

[bin/config.toml]
    log_level
    log_target
    command_socket
    command_buffer_size
    max_command_buffer_size
    worker_count
    worker_automatic_restart
    worker_timeout
    handle_process_affinity
    max_connections
    buffer_size
    activate_listeners
    listeners[http].protocol
    listeners[http].address
    listeners[https].protocol
    listeners[https].address
    listeners[https].tls_versions
    listeners[https].cipher_list
    clusters.*.protocol
    clusters.*.load_balancing
    clusters.*.frontends[].address
    clusters.*.frontends[].hostname
    clusters.*.frontends[].tags.*
    clusters.*.frontends[].path
    clusters.*.frontends[].certificate
    clusters.*.frontends[].key
    clusters.*.frontends[].certificate_chain
    clusters.*.backends[].address
    clusters.*.backends[].backend_id
    clusters.*.backends[].weight

[os-build/config.toml]
    saved_state
    log_level
    log_target
    command_socket
    command_buffer_size
    max_command_buffer_size
    worker_count
    worker_automatic_restart
    handle_process_affinity
    max_connections
    max_buffers
    buffer_size
    pid_file_path
    front_timeout
    back_timeout
    connect_timeout
    request_timeout
    zombie_check_interval
    activate_listeners
    listeners[http].protocol
    listeners[http].address
    listeners[https].protocol
    listeners[https].address
    listeners[https].tls_versions
    listeners[https].cipher_list

Table shapes reproduced as upstream writes them: `[[listeners]]` tables, a multi-line
`cipher_list` array with comment lines between its items, an empty `[clusters]` table before
the `[clusters.<id>]` tables, `frontends` and `backends` as multi-line arrays of one-line
inline tables (a comment line among them, trailing commas or not), `tags` as an inline table
nested in a frontend's inline table, relative paths (`./sozu.sock`, certificates) in the
first file and absolute ones in the second, integers with `_` separators in the second.

The first file has no TCP listener: its TCP cluster's frontend address gets a default one.
The second file has no cluster: its routes come from `saved_state`, written beforehand in
sozu's state file format (what `sozu state save` writes) for the same listeners. The keys
upstream leaves commented out are covered by tests/config/test_config_upstream.py.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from e2e.support.backends import NamedEcho, exchange
from e2e.support.daemon import Daemon, short_directory
from e2e.support.http_backends import EchoHeaders, Reader, Response, read_response
from e2e.support.net import free_port
from sozu.command.config import parse_config
from sozu.command.state import ConfigState
from sozu.command.statefile import save_state

pytestmark = pytest.mark.e2e

IO_TIMEOUT = 10.0
# Keys of the files that sozu accepts with a warning and ignores (config_keys.py).
UNIMPLEMENTED = ("command_buffer_size", "handle_process_affinity")


# -- the two texts


@dataclass(frozen=True)
class BinPorts:
    http: int
    https: int
    tcp: int


def bin_config(ports: BinPorts, app: str, echo_a: str, echo_b: str) -> str:
    """Our `bin/config.toml`: relative paths resolve against the file's directory."""
    return f"""\
# Example proxy: plain and TLS HTTP on one host name, and one TCP service.

log_level = "debug"
log_target = "stdout"

command_socket = "./sozu.sock"
command_buffer_size = 32768
max_command_buffer_size = 262144

worker_count = 2
worker_automatic_restart = false
worker_timeout = 7
handle_process_affinity = false
max_connections = 300
buffer_size = 32768

activate_listeners = true

[[listeners]]
protocol = "http"
address = "127.0.0.1:{ports.http}"

[[listeners]]
protocol = "https"
address = "127.0.0.1:{ports.https}"
tls_versions = ["TLS_V13", "TLS_V12"]
cipher_list = [
    # for TLS 1.3
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_AES_256_GCM_SHA384",
    # for TLS 1.2: AES-128 and ChaCha20 only
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
]

[clusters]

[clusters.shop]
protocol = "http"
load_balancing = "ROUND_ROBIN"
frontends = [
    {{ address = "127.0.0.1:{ports.http}", hostname = "shop.sozu.test", tags = {{ team = "web" }}, path = "/cart" }},
    # the TLS frontend serves every path, with an intermediate certificate in its chain
    {{ address = "127.0.0.1:{ports.https}", hostname = "shop.sozu.test", tags = {{ team = "web" }}, certificate = "tls/shop.crt", key = "tls/shop.key", certificate_chain = "tls/shop-chain.crt" }},
]
backends = [
    {{ address = "{app}", backend_id = "shop-app" }}
]

[clusters.echo]
protocol = "tcp"

frontends = [
    {{ address = "127.0.0.1:{ports.tcp}", tags = {{ owner = "ops", ticket = "OPS-1234" }} }}
]

backends = [
    {{ address = "{echo_a}", weight = 90 }},
    {{ address = "{echo_b}", weight = 30 }}
]
"""  # noqa: E501 (one-line inline tables, as TOML 1.0 and upstream write them)


def os_build_config(directory: Path, http: int, https: int) -> str:
    """Our `os-build/config.toml`: absolute paths, routes in `saved_state`."""
    return f"""\
# Packaged proxy: listeners only, the routes are in the saved state.

saved_state = "{directory}/state/routes.state"

log_level = "warn"
log_target = "stdout"

command_socket = "{directory}/run/sozu.sock"

command_buffer_size = 65_536

max_command_buffer_size = 4_194_304

worker_count = 2
worker_automatic_restart = true
handle_process_affinity = false

max_connections = 2_000
max_buffers = 4_000
buffer_size = 20_480

pid_file_path = "{directory}/run/sozu.pid"

front_timeout = 120
back_timeout = 90
connect_timeout = 4
request_timeout = 45
zombie_check_interval = 900

activate_listeners = true

[[listeners]]
protocol = "http"
address = "127.0.0.1:{http}"

[[listeners]]
protocol = "https"
address = "127.0.0.1:{https}"
tls_versions = ["TLS_V12", "TLS_V13"]
cipher_list = [
  # TLS 1.3
  "TLS13_AES_128_GCM_SHA256",
  "TLS13_AES_256_GCM_SHA384",
  "TLS13_CHACHA20_POLY1305_SHA256",
  # TLS 1.2: AES-256 only
  "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
  "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
]
"""


def os_build_routes(http: int, https: int, api: str, www: str) -> str:
    """The clusters kept in the saved state of the second file (not in the file itself)."""
    return f"""
[clusters.api]
protocol = "http"
frontends = [
    {{ address = "127.0.0.1:{http}", hostname = "api.sozu.test" }},
    {{ address = "127.0.0.1:{https}", hostname = "api.sozu.test", certificate = "tls/api.crt", key = "tls/api.key" }},
]
backends = [{{ address = "{api}", backend_id = "api-1" }}]

[clusters.www]
protocol = "http"
frontends = [{{ address = "127.0.0.1:{http}", hostname = "www.sozu.test" }}]
backends = [{{ address = "{www}", backend_id = "www-1" }}]
"""  # noqa: E501 (one-line inline tables)


# -- the key lists


def documented_keys(file: str) -> set[str]:
    """The key paths listed under `[file]` in this module's docstring."""
    assert __doc__ is not None
    _, _, rest = __doc__.partition(f"[{file}]\n")
    assert rest, f"no [{file}] section in the docstring"
    keys = set()
    for line in rest.splitlines():
        if not line.startswith("    "):
            break
        keys.add(line.strip())
    return keys


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every leaf key path of a parsed TOML document, named as in the docstring."""
    if isinstance(value, dict):
        found = set()
        for key, item in value.items():
            chosen = prefix == "clusters" or prefix.endswith(".tags")
            name = "*" if chosen else key
            found |= key_paths(item, f"{prefix}.{name}" if prefix else name)
        return found
    if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        found = set()
        for item in value:
            label = f"[{item['protocol']}]" if prefix == "listeners" else "[]"
            found |= key_paths(item, prefix + label)
        return found
    return {prefix}


def test_the_key_lists_are_complete() -> None:
    ports = BinPorts(8080, 8443, 8081)
    bin_text = bin_config(ports, "127.0.0.1:1026", "127.0.0.1:4000", "127.0.0.1:4001")
    assert key_paths(tomllib.loads(bin_text)) == documented_keys("bin/config.toml")
    os_text = os_build_config(Path("/srv/sozu"), 80, 443)
    assert key_paths(tomllib.loads(os_text)) == documented_keys("os-build/config.toml")


# -- clients


def http_get(port: int, host: str, path: str = "/") -> Response:
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = read_response(Reader(sock))
    assert response is not None
    return response


@dataclass(frozen=True)
class TlsAnswer:
    version: str
    cipher: str
    response: Response


def https_get(port: int, context: ssl.SSLContext, host: str, path: str = "/") -> TlsAnswer:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = read_response(Reader(tls))
        version, cipher = tls.version(), tls.cipher()
    assert response is not None
    assert version is not None
    assert cipher is not None
    return TlsAnswer(version, cipher[0], response)


def tls_context(ca: trustme.CA, *, tls12_cipher: str | None = None) -> ssl.SSLContext:
    """A client trusting `ca` only; with `tls12_cipher`, TLS 1.2 offering that cipher alone."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if tls12_cipher is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(tls12_cipher)
    return context


def served_by(response: Response) -> str:
    assert response.status == 200, response.head
    (name,) = response.header("x-backend")
    return name


# -- running a file


@pytest.fixture
def directory() -> Iterator[Path]:
    """A short directory under /tmp for a file, its command socket and the files it names."""
    path = short_directory()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def running(config_path: Path, socket_path: Path) -> Iterator[Daemon]:
    daemon = Daemon.start_file(config_path, socket_path, worker_count=2, cleanup=None)
    try:
        yield daemon
    finally:
        daemon.stop()


def check_warnings(daemon: Daemon, *more: str) -> None:
    """The daemon warned about each unimplemented key of its file, and each of `more`."""
    log = daemon.log()
    for key in (*UNIMPLEMENTED, *more):
        assert f"warning: {key} is not implemented and is ignored" in log, log


def test_bin_config_serves_http_https_and_tcp(directory: Path) -> None:
    ports = BinPorts(free_port(), free_port(), free_port())
    root = trustme.CA()
    intermediate = root.create_child_ca()
    issued = intermediate.issue_cert("shop.sozu.test")
    (directory / "tls").mkdir()
    issued.cert_chain_pems[0].write_to_path(str(directory / "tls" / "shop.crt"))
    issued.private_key_pem.write_to_path(str(directory / "tls" / "shop.key"))
    chain = b"".join(blob.bytes() for blob in issued.cert_chain_pems[1:])
    (directory / "tls" / "shop-chain.crt").write_bytes(chain)

    with (
        EchoHeaders("shop-app") as app,
        NamedEcho("echo-a") as echo_a,
        NamedEcho("echo-b") as echo_b,
    ):
        text = bin_config(ports, app.address, echo_a.address, echo_b.address)
        config_path = directory / "config.toml"
        config_path.write_text(text)
        with running(config_path, directory / "sozu.sock") as daemon:
            check_warnings(daemon)
            default_listener = (
                f"clusters.echo.frontends[0].address: no listener at 127.0.0.1:{ports.tcp}; "
                "a default tcp listener is created"
            )
            assert default_listener in daemon.log()

            # HTTP: the host and the path prefix route; anything else is not found.
            cart = http_get(ports.http, "shop.sozu.test", "/cart/items?id=7")
            assert served_by(cart) == "shop-app"
            assert app.requests[-1].request_line == "GET /cart/items?id=7 HTTP/1.1"
            assert http_get(ports.http, "shop.sozu.test", "/account").status == 404
            assert http_get(ports.http, "other.sozu.test", "/cart").status == 404

            # HTTPS: SNI picks the certificate, verified through the configured chain (the
            # client trusts the root only); every path routes; TLS 1.3 by preference.
            answer = https_get(ports.https, tls_context(root), "shop.sozu.test", "/account")
            assert served_by(answer.response) == "shop-app"
            assert app.requests[-1].request_line == "GET /account HTTP/1.1"
            assert answer.version == "TLSv1.3"
            # TLS 1.2: a cipher of cipher_list is negotiated, one left out is refused.
            listed = tls_context(root, tls12_cipher="ECDHE-ECDSA-AES128-GCM-SHA256")
            answer = https_get(ports.https, listed, "shop.sozu.test")
            assert (answer.version, answer.cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES128-GCM-SHA256")
            assert served_by(answer.response) == "shop-app"
            left_out = tls_context(root, tls12_cipher="ECDHE-ECDSA-AES256-GCM-SHA384")
            with pytest.raises(ssl.SSLError):
                https_get(ports.https, left_out, "shop.sozu.test")

            # TCP: the frontend's address got a listener; both weighted backends serve,
            # bytes echoed end to end.
            names = {exchange(ports.tcp, f"bytes {n}".encode()) for n in range(8)}
            assert names == {"echo-a", "echo-b"}

            # The nested inline tables (tags) reached the routing state.
            frontends = daemon.sozu_json("frontend", "list")["content"]
            assert [f["tags"] for f in frontends["http"]] == [{"team": "web"}]
            assert [f["tags"] for f in frontends["https"]] == [{"team": "web"}]
            assert [f["tags"] for f in frontends["tcp"]] == [{"owner": "ops", "ticket": "OPS-1234"}]
            # So did the HTTPS listener's TLS settings, in the file's order.
            (https,) = daemon.sozu_json("listener", "list")["content"]["https"].values()
            assert https["versions"] == ["TLS_V1_3", "TLS_V1_2"]
            assert https["cipher_list"][0] == "TLS13_CHACHA20_POLY1305_SHA256"
            assert len(https["cipher_list"]) == 6


def test_os_build_config_serves_routes_from_its_saved_state(directory: Path) -> None:
    (directory / "run").mkdir()
    (directory / "state").mkdir()
    (directory / "tls").mkdir()
    http, https = free_port(), free_port()
    ca = trustme.CA()
    issued = ca.issue_cert("api.sozu.test")
    issued.cert_chain_pems[0].write_to_path(str(directory / "tls" / "api.crt"))
    issued.private_key_pem.write_to_path(str(directory / "tls" / "api.key"))

    with EchoHeaders("api-1") as api, EchoHeaders("www-1") as www:
        text = os_build_config(directory, http, https)
        # The routes an operator saved earlier (`sozu state save`) on these listeners.
        routes = os_build_routes(http, https, api.address, www.address)
        saved = parse_config(text + routes, base_dir=directory)
        state = ConfigState()
        for request in saved.requests:
            state.apply(request)
        save_state(state, directory / "state" / "routes.state")

        config_path = directory / "config.toml"
        config_path.write_text(text)
        with running(config_path, directory / "run" / "sozu.sock") as daemon:
            check_warnings(daemon, "zombie_check_interval")
            pid = (directory / "run" / "sozu.pid").read_text().strip()
            assert pid == str(daemon.process.pid)

            assert served_by(http_get(http, "api.sozu.test", "/v1/users")) == "api-1"
            assert served_by(http_get(http, "www.sozu.test", "/index.html")) == "www-1"
            assert http_get(http, "nobody.sozu.test").status == 404

            answer = https_get(https, tls_context(ca), "api.sozu.test", "/v1/orders")
            assert served_by(answer.response) == "api-1"
            assert api.requests[-1].request_line == "GET /v1/orders HTTP/1.1"
            assert answer.version == "TLSv1.3"
            listed = tls_context(ca, tls12_cipher="ECDHE-ECDSA-AES256-GCM-SHA384")
            answer = https_get(https, listed, "api.sozu.test")
            assert (answer.version, answer.cipher) == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")
            left_out = tls_context(ca, tls12_cipher="ECDHE-ECDSA-AES128-GCM-SHA256")
            with pytest.raises(ssl.SSLError):
                https_get(https, left_out, "api.sozu.test")

            # The listeners as saved with the routes, with the file's timeouts.
            listeners = daemon.sozu_json("listener", "list")["content"]
            for protocol in ("http", "https"):
                (listener,) = listeners[protocol].values()
                timeouts = [listener[f"{kind}_timeout"] for kind in ("front", "back", "connect")]
                assert [*timeouts, listener["request_timeout"]] == [120, 90, 4, 45], listener
