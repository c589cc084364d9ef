"""Hostile or malformed input: each gets a clear refusal and leaves the state as it was."""

from __future__ import annotations

import base64
import datetime

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support.certs import certificate

from sozu.command import requests as rq
from sozu.command.envelope import (
    ProtocolError,
    RejectedRequest,
    decode_request,
    decode_response,
    encode_request,
)
from sozu.command.state import ConfigState
from sozu.command.state_errors import AlreadyExists, InvalidValue
from sozu.command.statefile import StateFileError, parse_state
from sozu.command.types import (
    Backend,
    CertificateAndKey,
    HttpsListenerConfig,
    PathRule,
    RequestHttpFrontend,
)

ADDRESS = "127.0.0.1:443"


def _self_signed(subject: x509.Name, san: list[str] | None = None) -> tuple[bytes, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if san is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False
        )
    der = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return der, key_pem


def _pem(der: bytes) -> str:
    body = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


def _refused(state: ConfigState, request: rq.Request) -> InvalidValue:
    before = state.hash()
    with pytest.raises(InvalidValue) as caught:
        state.apply(request)
    assert state.hash() == before
    return caught.value


@pytest.mark.parametrize("field", ["id", "type", "cluster_id"])
def test_strings_that_are_not_utf8_are_refused_not_raised(field: str) -> None:
    payload = bytearray(encode_request("r1", rq.RemoveCluster(cluster_id="c1")))
    target = {"id": b"r1", "type": b"RemoveCluster", "cluster_id": b"c1"}[field]
    position = payload.index(target, payload.index(b"\xa2id") if field == "id" else 0)
    payload[position] = 0xFF
    with pytest.raises((ProtocolError, RejectedRequest)):
        decode_request(bytes(payload))


def test_response_with_bad_utf8_is_a_protocol_error() -> None:
    payload = msgspec.msgpack.encode({"v": 1, "id": "x", "status": "ok", "message": "m"})
    broken = payload.replace(b"\xa1m", b"\xa1\xff")
    with pytest.raises(ProtocolError):
        decode_response(broken)


def test_trailing_bytes_still_yield_the_id() -> None:
    payload = encode_request("r7", rq.RemoveCluster(cluster_id="c")) + b"\x00"
    with pytest.raises(RejectedRequest) as caught:
        decode_request(payload)
    assert caught.value.request_id == "r7"


def test_state_file_with_bad_utf8_names_the_line() -> None:
    data = b'{"sozu_state":1,"protocol_version":1,"records":1}\n{"v":1,"id":"\xff"}\n'
    with pytest.raises(StateFileError, match=":2:"):
        parse_state(data)


def test_corrupt_certificate_extension_is_invalid_value() -> None:
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.ORGANIZATION_NAME, "o")])
    der, key_pem = _self_signed(name, ["x.example"])
    broken = bytearray(der)
    broken[broken.find(b"x.example") - 2] = 0x30  # the dNSName [2] tag becomes a SEQUENCE
    request = rq.AddCertificate(
        address=ADDRESS, certificate=CertificateAndKey(certificate=_pem(bytes(broken)), key=key_pem)
    )
    assert "invalid certificate" in _refused(ConfigState(), request).message


def test_certificate_without_any_name_is_refused() -> None:
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.ORGANIZATION_NAME, "x")])
    der, key_pem = _self_signed(name)
    request = rq.AddCertificate(
        address=ADDRESS, certificate=CertificateAndKey(certificate=_pem(der), key=key_pem)
    )
    assert "no DNS name" in _refused(ConfigState(), request).message


def test_key_of_another_certificate_is_refused() -> None:
    mine, other = certificate("example.com"), certificate("api.example.net")
    payload = CertificateAndKey(certificate=mine.cert_pem, key=other.key_pem)
    request = rq.AddCertificate(address=ADDRESS, certificate=payload)
    assert "does not belong" in _refused(ConfigState(), request).message


@pytest.mark.parametrize(
    "entry",
    ["not a pem", "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n", "PRIVATE"],
)
def test_a_chain_entry_that_is_not_a_certificate_is_refused_and_changes_nothing(
    entry: str,
) -> None:
    mine, other = certificate("example.com"), certificate("api.example.net")
    payload = CertificateAndKey(
        certificate=mine.cert_pem, key=mine.key_pem, certificate_chain=(other.cert_pem, "", entry)
    )
    state = ConfigState()
    refused = _refused(state, rq.AddCertificate(address=ADDRESS, certificate=payload))
    assert refused.message.startswith("certificate_chain[2]: ")
    assert not state.certificates


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("certificate", "garbage"),
        ("key", "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"),
        ("certificate_chain", ("", "not a pem")),
    ],
)
def test_an_https_listener_whose_certificate_workers_could_not_load_is_refused(
    field: str, value: object
) -> None:
    mine = certificate("example.com")
    fields: dict[str, object] = {"certificate": mine.cert_pem, "key": mine.key_pem}
    fields[field] = value
    listener = HttpsListenerConfig(address=ADDRESS, **fields)  # type: ignore[arg-type]
    refused = _refused(ConfigState(), rq.AddHttpsListener(listener=listener))
    assert f"{field}" in refused.message
    other = certificate("api.example.net")
    mismatched = HttpsListenerConfig(address=ADDRESS, certificate=mine.cert_pem, key=other.key_pem)
    assert (
        "does not belong"
        in _refused(ConfigState(), rq.AddHttpsListener(listener=mismatched)).message
    )


def test_semicolons_in_paths_do_not_collide_with_methods() -> None:
    state = ConfigState()
    tricky = RequestHttpFrontend(
        address="127.0.0.1:80", hostname="h.example", path=PathRule(value="/a;GET")
    )
    plain = RequestHttpFrontend(
        address="127.0.0.1:80", hostname="h.example", path=PathRule(value="/a"), method="GET"
    )
    state.apply(rq.AddHttpFrontend(frontend=tricky))
    state.apply(rq.AddHttpFrontend(frontend=plain))
    assert len(state.http_fronts) == 2
    state.apply(rq.RemoveHttpFrontend(frontend=plain))
    assert list(state.http_fronts.values()) == [tricky]
    with pytest.raises(AlreadyExists):
        state.apply(rq.AddHttpFrontend(frontend=tricky))


@pytest.mark.parametrize(
    ("fields", "needle"),
    [({"hostname": "a;b"}, "hostname"), ({"hostname": "h", "method": "GE T"}, "method")],
)
def test_frontend_fields_that_would_break_the_route_key(
    fields: dict[str, str], needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        RequestHttpFrontend(address="127.0.0.1:80", **fields)  # type: ignore[arg-type]


def test_backup_false_and_unset_are_the_same_backend() -> None:
    unset = Backend(cluster_id="c", backend_id="b", address="127.0.0.1:1")
    explicit = Backend(cluster_id="c", backend_id="b", address="127.0.0.1:1", backup=False)
    assert unset == explicit
    a, b = ConfigState(), ConfigState()
    a.apply(rq.AddBackend(backend=unset))
    b.apply(rq.AddBackend(backend=explicit))
    assert a.diff(b) == []
