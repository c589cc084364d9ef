"""Session-ticket keys shared by the workers of one supervisor: a session one listener context
issued resumes on another context given the same keys (two workers), never on one with its
own keys; real handshakes over memory BIOs, through the SNI switch to a certificate context."""

from __future__ import annotations

import functools
import os
import ssl

import pytest
from support.certs import certificate, certificate_authority
from support.memory_tls import MemoryTls

from sozu.command.requests import TLS_TICKET_KEY_SIZE
from sozu.command.types import HttpsListenerConfig
from sozu.worker.shell import tls_tickets
from sozu.worker.shell.tls_contexts import ListenerTls
from sozu.worker.shell.tls_tickets import KEY_SIZE, listener_keys, share_ticket_keys, ticket_keys


def listener_tls(secret: bytes | None, address: str = "127.0.0.1:8443") -> ListenerTls:
    default = certificate("default.test")
    config = HttpsListenerConfig(
        address=address,
        certificate=default.cert_pem,
        key=default.key_pem,
        certificate_chain=default.chain,
    )
    tls = ListenerTls(config, ticket_secret=secret)
    assert not tls.warnings, tls.warnings
    return tls


@functools.cache
def client_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    """One client (a session is offered only by the context that made it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.maximum_version = version
    certificate_authority().configure_trust(context)
    return context


def connect(
    tls: ListenerTls, session: ssl.SSLSession | None, version: ssl.TLSVersion
) -> tuple[ssl.SSLSession, bool]:
    """One connection with one byte each way (the client reads the tickets that TLS 1.3
    sends after the handshake): its session and whether it was resumed."""
    pair = MemoryTls(tls.context, client_context(version), "default.test", session=session)
    pair.handshake()
    pair.server.write(b"x")
    pair.pump()
    assert pair.client.read(1) == b"x"
    pair.client.write(b"y")
    pair.pump()
    assert pair.server.read(1) == b"y"
    assert pair.server.session_reused == pair.client.session_reused
    new_session = pair.client.session
    assert new_session is not None
    return new_session, pair.client.session_reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_a_session_resumes_on_the_other_worker_with_shared_keys(version: ssl.TLSVersion) -> None:
    secret = os.urandom(KEY_SIZE)
    workers = [listener_tls(secret), listener_tls(secret)]
    keys = listener_keys(secret, "127.0.0.1:8443")
    assert all(ticket_keys(w.context) == keys for w in workers)
    session, reused = connect(workers[0], None, version)
    assert not reused
    for index in (1, 0, 1, 1, 0):
        session, reused = connect(workers[index], session, version)
        assert reused, f"not resumed on worker {index}"


def test_without_shared_keys_the_other_worker_cannot_resume() -> None:
    workers = [listener_tls(None), listener_tls(None)]
    assert ticket_keys(workers[0].context) != ticket_keys(workers[1].context)
    session, _ = connect(workers[0], None, ssl.TLSVersion.TLSv1_3)
    _, reused = connect(workers[1], session, ssl.TLSVersion.TLSv1_3)
    assert not reused
    _, reused = connect(workers[0], session, ssl.TLSVersion.TLSv1_3)
    assert reused, "the worker that issued the ticket resumes it"


def test_keys_of_the_wrong_size_are_refused_and_change_nothing() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    before = ticket_keys(context)
    assert before is not None
    assert share_ticket_keys(context, b"short") == "ticket keys must be 80 bytes, not 5"
    assert ticket_keys(context) == before
    assert TLS_TICKET_KEY_SIZE == KEY_SIZE


def test_a_pointer_openssl_does_not_confirm_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `SSL_CTX` pointer is written through only when OpenSSL reports for it the options
    Python reports (here OpenSSL is made to report others): nothing changes, and why is said."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    before = ticket_keys(context)
    assert before is not None
    with monkeypatch.context() as patch:
        patch.setattr(tls_tickets._library(), "get_options", lambda pointer: 0)
        why = share_ticket_keys(context, os.urandom(KEY_SIZE))
    assert why == "OpenSSL does not confirm this Python's ssl.SSLContext layout"
    assert ticket_keys(context) == before


def test_a_session_does_not_resume_on_another_listener() -> None:
    """Each listener derives its own keys from the shared secret: a session of one listener
    is not resumed by another (which may serve other names), on any worker."""
    secret = os.urandom(KEY_SIZE)
    first, other = listener_tls(secret), listener_tls(secret, "127.0.0.1:9443")
    assert ticket_keys(first.context) != ticket_keys(other.context)
    session, _ = connect(first, None, ssl.TLSVersion.TLSv1_3)
    _, reused = connect(other, session, ssl.TLSVersion.TLSv1_3)
    assert not reused


def test_the_verify_mode_check_follows_openssl_flags() -> None:
    """CERT_REQUIRED is two OpenSSL flags: such a context is still confirmed and keyed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED
    keys = os.urandom(KEY_SIZE)
    assert share_ticket_keys(context, keys) is None
    assert ticket_keys(context) == keys
