"""Listener TLS contexts: real in-memory handshakes choosing certificates by SNI."""

from __future__ import annotations

import datetime
import functools
import ssl
from typing import Any

import pytest
from support import certs
from support.certs import certificate, certificate_authority
from support.memory_tls import MemoryTls

from sozu.command.state import ConfigState
from sozu.command.stored_certificates import StoredCertificate
from sozu.command.types import CertificateAndKey, HttpsListenerConfig
from sozu.worker.core.http.certificate_resolver import authority_matches
from sozu.worker.shell.tls_contexts import (
    ListenerTls,
    ServedCertificate,
    classify_handshake_error,
    served_certificate,
)

ADDRESS = "127.0.0.1:8443"


@functools.cache
def expiring_certificate(days: int, *names: str) -> certs.TestCertificate:
    not_after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
    issued = certificate_authority().issue_cert(*names, not_after=not_after)
    pems = [blob.bytes().decode() for blob in issued.cert_chain_pems]
    return certs.TestCertificate(
        cert_pem=pems[0],
        key_pem=issued.private_key_pem.bytes().decode(),
        chain=tuple(pems[1:]),
        names=names,
    )


def listener(**fields: Any) -> HttpsListenerConfig:
    default = certificate("default.test")
    fields.setdefault("certificate", default.cert_pem)
    fields.setdefault("key", default.key_pem)
    fields.setdefault("certificate_chain", default.chain)
    return HttpsListenerConfig(address=ADDRESS, **fields)


def client_context(
    alpn: list[str] | None = None, maximum: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    certificate_authority().configure_trust(context)
    if alpn:
        context.set_alpn_protocols(alpn)
    if maximum is not None:
        context.maximum_version = maximum
    return context


class Handshake:
    def __init__(self, server: ssl.SSLObject, client: ssl.SSLObject) -> None:
        self.server = server
        self.client = client

    def peer_names(self) -> set[str]:
        peer: dict[str, Any] | None = self.client.getpeercert()
        assert peer is not None
        return {value for kind, value in peer["subjectAltName"] if kind == "DNS"}


def handshake(
    tls: ListenerTls, server_name: str | None, client: ssl.SSLContext | None = None
) -> Handshake:
    """Run a full handshake between the listener and a client over memory BIOs."""
    pair = MemoryTls(tls.context, client or client_context(), server_name).handshake()
    return Handshake(pair.server, pair.client)


def server_failure(tls: ListenerTls, server_name: str | None) -> ssl.SSLError:
    pair = MemoryTls(tls.context, client_context(), server_name)
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.do_handshake()
    pair.pump()
    with pytest.raises(ssl.SSLError) as caught:
        pair.server.do_handshake()
    assert not isinstance(caught.value, ssl.SSLWantReadError)
    return caught.value


def add(tls: ListenerTls, cert: certs.TestCertificate, expired_at: int | None = None) -> str:
    return tls.add_certificate(cert.as_request_payload(), expired_at)


def test_sni_picks_the_certificate_and_records_it() -> None:
    tls = ListenerTls(listener())
    one = certificate("one.test")
    two = certificate("two.test", "alt.two.test")
    add(tls, one)
    fp_two = add(tls, two)
    assert handshake(tls, "one.test").peer_names() == {"one.test"}
    result = handshake(tls, "alt.two.test")
    assert result.peer_names() == {"two.test", "alt.two.test"}
    served = served_certificate(result.server)
    assert served == ServedCertificate(fp_two, ("two.test", "alt.two.test"), "alt.two.test", False)
    assert tls.served(result.server) == served
    assert authority_matches(served.names, served.server_name, "two.test:443", False)
    assert tls.default_cert_used == 0


def test_exact_name_beats_wildcard() -> None:
    tls = ListenerTls(listener())
    add(tls, certificate("*.wild.test"))
    add(tls, certificate("www.wild.test"))
    assert handshake(tls, "www.wild.test").peer_names() == {"www.wild.test"}
    assert handshake(tls, "api.wild.test").peer_names() == {"*.wild.test"}


def test_latest_expiry_wins_and_replace_is_live() -> None:
    tls = ListenerTls(listener())
    short = expiring_certificate(10, "exp.test")
    long = expiring_certificate(100, "exp.test")
    fp_short = add(tls, short)
    fp_long = add(tls, long)
    served = served_certificate(handshake(tls, "exp.test").server)
    assert served is not None
    assert served.fingerprint == fp_long
    # override: the short one declared to expire last
    add(tls, short, expired_at=2**40)
    first = handshake(tls, "exp.test")
    served = served_certificate(first.server)
    assert served is not None
    assert served.fingerprint == fp_short
    # replace live: the next handshake serves the new one, the open one keeps its snapshot
    newer = expiring_certificate(50, "exp.test", "new.exp.test")
    fp_new = tls.replace_certificate(fp_short, newer.as_request_payload(), expired_at=2**41)
    second = handshake(tls, "exp.test")
    assert second.peer_names() == {"exp.test", "new.exp.test"}
    assert served_certificate(first.server) == served
    served = served_certificate(second.server)
    assert served is not None
    assert served.fingerprint == fp_new
    # removing falls back to the next-longest-lived certificate
    assert tls.remove_certificate(fp_new)
    served = served_certificate(handshake(tls, "exp.test").server)
    assert served is not None
    assert served.fingerprint == fp_long
    assert tls.min_expiry() is not None


def test_unknown_sni_uses_the_default_certificate() -> None:
    tls = ListenerTls(listener())
    add(tls, certificate("one.test"))
    result = handshake(tls, "nobody.test")
    assert result.peer_names() == {"default.test"}
    served = served_certificate(result.server)
    assert served is not None
    assert served.default_used
    assert served.fingerprint == tls.default_fingerprint
    assert tls.default_cert_used == 1
    assert authority_matches(served.names, served.server_name, "nobody.test", True)
    assert authority_matches(served.names, served.server_name, "default.test", True)
    assert not authority_matches(served.names, served.server_name, "other.test", True)
    # the default certificate also serves its own names as an ordinary certificate
    served = served_certificate(handshake(tls, "default.test").server)
    assert served is not None
    assert not served.default_used


def test_a_remembered_choice_follows_certificate_changes() -> None:
    tls = ListenerTls(listener())
    for count in (1, 2):  # the second handshake is answered from the listener's memo
        assert handshake(tls, "late.test").peer_names() == {"default.test"}
        assert tls.default_cert_used == count
    fingerprint = add(tls, certificate("late.test"))
    served = served_certificate(handshake(tls, "late.test").server)
    assert served == ServedCertificate(fingerprint, ("late.test",), "late.test", False)
    assert tls.default_cert_used == 2
    assert tls.remove_certificate(fingerprint)
    assert handshake(tls, "late.test").peer_names() == {"default.test"}
    assert tls.default_cert_used == 3


def test_default_certificate_stays_fallback_after_removal() -> None:
    tls = ListenerTls(listener())
    assert tls.default_fingerprint is not None
    assert tls.remove_certificate(tls.default_fingerprint)
    result = handshake(tls, "default.test")
    assert result.peer_names() == {"default.test"}
    served = served_certificate(result.server)
    assert served is not None
    assert served.default_used


def test_no_sni_gets_the_default_certificate() -> None:
    tls = ListenerTls(listener())
    add(tls, certificate("one.test"))
    result = handshake(tls, None)
    assert result.peer_names() == {"default.test"}
    served = served_certificate(result.server)
    assert served is not None
    assert served.default_used
    assert served.server_name is None
    assert tls.default_cert_used == 1


def test_no_sni_without_default_fails_the_handshake() -> None:
    tls = ListenerTls(HttpsListenerConfig(address=ADDRESS))
    add(tls, certificate("one.test"))
    error = server_failure(tls, None)
    assert tls.record_handshake_failure(error) == "other"
    assert tls.handshake_failures["other"] == 1


def test_unknown_sni_without_default_fails() -> None:
    tls = ListenerTls(HttpsListenerConfig(address=ADDRESS))
    add(tls, certificate("one.test"))
    server_failure(tls, "nobody.test")
    assert handshake(tls, "one.test").peer_names() == {"one.test"}


def test_tls12_only_is_honoured() -> None:
    tls = ListenerTls(listener(versions=("TLS_V1_2",), alpn_protocols=("http/1.1",)))
    assert tls.warnings == []
    add(tls, certificate("one.test"))
    result = handshake(tls, "one.test")
    assert result.server.version() == "TLSv1.2"
    cipher = result.server.cipher()
    assert cipher is not None
    assert cipher[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"


def test_default_versions_negotiate_tls13() -> None:
    tls = ListenerTls(listener())
    assert handshake(tls, "default.test").server.version() == "TLSv1.3"
    capped = handshake(tls, "default.test", client_context(maximum=ssl.TLSVersion.TLSv1_2))
    assert capped.server.version() == "TLSv1.2"


def test_tls13_only_refuses_a_tls12_client() -> None:
    tls = ListenerTls(listener(versions=("TLS_V1_3",)))
    client = client_context(maximum=ssl.TLSVersion.TLSv1_2)
    pair = MemoryTls(tls.context, client, "default.test")
    with pytest.raises(ssl.SSLWantReadError):
        pair.client.do_handshake()
    pair.pump()
    with pytest.raises(ssl.SSLError) as caught:
        pair.server.do_handshake()
    assert tls.record_handshake_failure(caught.value) == "peer_incompatible"


def test_cipher_list_restricts_tls12_ciphers() -> None:
    tls = ListenerTls(
        listener(
            versions=("TLS_V1_2",),
            cipher_list=("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "BOGUS"),
        )
    )
    assert any(w.startswith("cipher_list:") and "BOGUS" in w for w in tls.warnings)
    cipher = handshake(tls, "default.test").server.cipher()
    assert cipher is not None
    assert cipher[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"


def test_alpn_offers_h2_in_the_listener_order() -> None:
    tls = ListenerTls(listener())
    assert not any(w.startswith("alpn_protocols:") for w in tls.warnings)
    result = handshake(tls, "default.test", client_context(alpn=["http/1.1", "h2"]))
    assert result.server.selected_alpn_protocol() == "h2"
    assert result.client.selected_alpn_protocol() == "h2"
    only_h1 = handshake(tls, "default.test", client_context(alpn=["http/1.1"]))
    assert only_h1.server.selected_alpn_protocol() == "http/1.1"
    plain = handshake(tls, "default.test")
    assert plain.server.selected_alpn_protocol() is None


def test_alpn_order_prefers_http11_when_listed_first() -> None:
    tls = ListenerTls(listener(alpn_protocols=("http/1.1", "h2")))
    result = handshake(tls, "default.test", client_context(alpn=["h2", "http/1.1"]))
    assert result.server.selected_alpn_protocol() == "http/1.1"
    h2_only = handshake(tls, "default.test", client_context(alpn=["h2"]))
    assert h2_only.server.selected_alpn_protocol() == "h2"


def test_warnings_name_the_fields() -> None:
    tls = ListenerTls(
        listener(
            versions=("TLS_V1_1", "TLS_V1_2", "TLS_V1_3"),
            cipher_list=("TLS13_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            cipher_suites=("TLS_AES_128_GCM_SHA256",),
            signature_algorithms=("ECDSA+SHA256",),
            groups_list=("X25519MLKEM768", "x25519", "P-256"),
            alpn_protocols=("http/1.1",),
        )
    )
    fields = sorted({w.split(":", 1)[0] for w in tls.warnings})
    assert fields == [
        "cipher_list",
        "cipher_suites",
        "groups_list",
        "signature_algorithms",
        "versions",
    ]
    assert handshake(tls, "default.test").server.version() == "TLSv1.3"


def test_single_group_and_tickets_are_applied() -> None:
    tls = ListenerTls(
        listener(groups_list=("P-256",), send_tls13_tickets=0, alpn_protocols=("http/1.1",))
    )
    assert tls.warnings == []
    assert tls.context.num_tickets == 0
    assert handshake(tls, "default.test").server.version() == "TLSv1.3"


def test_chain_copies_of_the_leaf_are_dropped() -> None:
    one = certificate("one.test")
    tls = ListenerTls(HttpsListenerConfig(address=ADDRESS))
    payload = CertificateAndKey(
        certificate=one.cert_pem, key=one.key_pem, certificate_chain=(one.cert_pem, *one.chain)
    )
    tls.add_certificate(payload)
    assert handshake(tls, "one.test").peer_names() == {"one.test"}


def test_names_override_routes_by_given_names() -> None:
    one = certificate("one.test")
    tls = ListenerTls(HttpsListenerConfig(address=ADDRESS))
    payload = CertificateAndKey(certificate=one.cert_pem, key=one.key_pem, names=("Alias.Test",))
    fp = tls.add_certificate(payload)
    served = served_certificate(handshake(tls, "alias.test").server)
    assert served == ServedCertificate(fp, ("alias.test",), "alias.test", False)
    server_failure(tls, "one.test")


def test_load_state_serves_exactly_the_state_certificates() -> None:
    one, two = certificate("one.test"), certificate("two.test")
    state = ConfigState()
    state.certificates[ADDRESS] = {
        one.fingerprint: StoredCertificate(certificate=one.as_request_payload())
    }
    tls = ListenerTls.from_state(listener(), state)
    assert handshake(tls, "one.test").peer_names() == {"one.test"}
    state.certificates[ADDRESS] = {
        two.fingerprint: StoredCertificate(certificate=two.as_request_payload(), expired_at=5)
    }
    tls.load_state(state)
    assert handshake(tls, "one.test").peer_names() == {"default.test"}
    assert handshake(tls, "two.test").peer_names() == {"two.test"}
    assert tls.min_expiry() == 5
    assert tls.default_fingerprint is not None
    assert tls.resolver.fingerprints() == sorted([two.fingerprint, tls.default_fingerprint])
    tls.resolver.check_invariants()


def test_bad_key_is_rejected() -> None:
    one, two = certificate("one.test"), certificate("two.test")
    tls = ListenerTls(HttpsListenerConfig(address=ADDRESS))
    with pytest.raises(ssl.SSLError):
        tls.add_certificate(CertificateAndKey(certificate=one.cert_pem, key=two.key_pem))
    assert len(tls.resolver) == 0


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("TLSV1_ALERT_UNKNOWN_CA", "alert_received"),
        ("NO_SHARED_CIPHER", "peer_incompatible"),
        ("WRONG_VERSION_NUMBER", "invalid_message"),
        ("SOMETHING_ELSE", "other"),
    ],
)
def test_classify_handshake_error(reason: str, expected: str) -> None:
    error = ssl.SSLError(1, reason)
    error.reason = reason
    assert classify_handshake_error(error) == expected
