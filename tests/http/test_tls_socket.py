"""TlsSocket: the server side of a TLS connection over a real loopback socket pair, as the
HTTPS listener drives it (non-blocking, handshake steps on readiness)."""

from __future__ import annotations

import select
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from support.certs import certificate, certificate_authority

from sozu.command.types import CertificateAndKey, HttpsListenerConfig
from sozu.worker.shell.tls_contexts import ListenerTls, served_certificate
from sozu.worker.shell.tls_socket import TlsSocket

Pair = tuple[TlsSocket, ssl.SSLSocket]


def listener_tls() -> ListenerTls:
    default = certificate("default.test")
    config = HttpsListenerConfig(
        address="127.0.0.1:8443",
        certificate=default.cert_pem,
        key=default.key_pem,
        certificate_chain=default.chain,
        alpn_protocols=("h2", "http/1.1"),
    )
    tls = ListenerTls(config)
    other = certificate("other.test")
    tls.add_certificate(
        CertificateAndKey(
            certificate=other.cert_pem,
            key=other.key_pem,
            certificate_chain=tuple(other.chain),
            names=("other.test",),
        )
    )
    return tls


def client_context(alpn: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    certificate_authority().configure_trust(context)
    context.set_alpn_protocols(alpn)
    return context


@contextmanager
def connected(
    tls: ListenerTls,
    server_name: str,
    *,
    alpn: list[str] | None = None,
    client_side: ssl.SSLContext | None = None,
    session: ssl.SSLSession | None = None,
) -> Iterator[Pair]:
    """A handshaken pair: the server side a TlsSocket from an accepted non-blocking socket."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        raw_client = socket.create_connection(listening.getsockname(), timeout=5)
        accepted, _ = listening.accept()
        accepted.setblocking(False)
        server = TlsSocket.accepted(accepted, tls.context)
        client_side = client_side or client_context(alpn or ["http/1.1"])
        client = client_side.wrap_socket(
            raw_client, server_hostname=server_name, do_handshake_on_connect=False, session=session
        )
        client.setblocking(False)
        try:
            drive(server, client)
            yield server, client
        finally:
            client.close()
            server.close()


def drive(server: TlsSocket, client: ssl.SSLSocket) -> None:
    """Both handshakes, each step taken when its socket is ready (at most 5 s)."""
    done = {"server": False, "client": False}
    for _ in range(200):
        for name, step in (("client", client.do_handshake), ("server", server.do_handshake)):
            if done[name]:
                continue
            try:
                step()
                done[name] = True
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
        if all(done.values()):
            return
        select.select([server, client], [], [], 0.025)
    raise AssertionError(f"handshake did not finish: {done}")


def read_all(sock: TlsSocket | ssl.SSLSocket, size: int) -> bytes:
    data = b""
    for _ in range(200):
        try:
            data += sock.recv(size - len(data))
        except (ssl.SSLWantReadError, BlockingIOError):
            select.select([sock], [], [], 0.025)
        if len(data) >= size:
            return data
    raise AssertionError(f"read {len(data)} of {size} bytes")


def read_until_closed(sock: ssl.SSLSocket) -> bool:
    """True once the peer's close_notify is read (within 5 s; session tickets may come first):
    the read then gives no bytes."""
    for _ in range(200):
        try:
            if sock.recv(100) == b"":
                return True
        except ssl.SSLWantReadError:
            select.select([sock], [], [], 0.025)
    return False


def test_handshake_sni_alpn_and_bytes_both_ways_through_tls() -> None:
    tls = listener_tls()
    with connected(tls, "other.test", alpn=["h2"]) as (server, client):
        served = served_certificate(server)
        assert served is not None
        assert served.server_name == "other.test"
        assert not served.default_used
        assert server.context is not tls.context  # the SNI callback set other.test's context
        assert server.selected_alpn_protocol() == "h2"
        assert client.getpeercert() is not None
        assert not server.session_reused
        client.sendall(b"hello, server")
        assert read_all(server, 13) == b"hello, server"
        assert server.send(b"hello, client") == 13
        assert read_all(client, 13) == b"hello, client"


def test_unknown_name_gets_the_default_certificate() -> None:
    with connected(listener_tls(), "nobody.test") as (server, _):
        served = served_certificate(server)
        assert served is not None
        assert served.default_used
        assert server.selected_alpn_protocol() == "http/1.1"


def test_pending_counts_decrypted_bytes_a_short_read_left() -> None:
    with connected(listener_tls(), "default.test") as (server, client):
        client.sendall(b"x" * 1000)
        assert read_all(server, 10) == b"x" * 10
        assert server.pending() == 990
        assert server.recv(4096) == b"x" * 990
        assert server.pending() == 0


def test_a_second_connection_resumes_the_session() -> None:
    tls = listener_tls()
    client_side = client_context(["http/1.1"])
    with connected(tls, "default.test", client_side=client_side) as (server, client):
        # TLS 1.3 tickets come after the handshake: read so the client takes them.
        server.send(b"ok")
        assert read_all(client, 2) == b"ok"
        session = client.session
    assert session is not None
    with connected(tls, "default.test", client_side=client_side, session=session) as (
        server,
        client,
    ):
        assert server.session_reused
        assert client.session_reused


def test_unwrap_writes_close_notify_and_raw_reads_stay_raw() -> None:
    with connected(listener_tls(), "default.test") as (server, client):
        server.unwrap()
        assert read_until_closed(client)
        # Bytes read with the socket's own recv are the raw ones, past the SSL object.
        assert socket.socket.send(client, b"\x17\x03\x03") == 3
        select.select([server], [], [], 5)
        assert socket.socket.recv(server, 100) == b"\x17\x03\x03"


def test_a_blocking_socket_is_refused() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listening,
        socket.create_connection(listening.getsockname(), timeout=5),
    ):
        accepted, _ = listening.accept()
        with accepted:
            assert accepted.gettimeout() is None
            with pytest.raises(AssertionError, match="blocking"):
                TlsSocket.accepted(accepted, listener_tls().context)


def test_io_methods_that_would_bypass_tls_are_refused() -> None:
    with connected(listener_tls(), "default.test") as (server, _):
        for name, args in (
            ("sendall", (b"x",)),
            ("sendto", (b"x", ("127.0.0.1", 9))),
            ("sendmsg", ([b"x"],)),
            ("recv_into", (bytearray(8),)),
            ("recvfrom", (8,)),
            ("recvfrom_into", (bytearray(8),)),
            ("recvmsg", (8,)),
        ):
            with pytest.raises(NotImplementedError, match="through TLS"):
                getattr(server, name)(*args)
