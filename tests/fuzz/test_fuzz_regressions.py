"""Inputs fuzzing found that broke a property, each kept as a plain test.

Those whose fix belongs to a module other work is changing are marked xfail (strict), with
the exact input, so that they flip once it is fixed there.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from support import fuzz_checks as checks
from support.certs import pool
from support.config_strategies import write_config_files

from sozu.command import requests as rq
from sozu.command.config import ConfigError, parse_config
from sozu.command.envelope import ProtocolError, RejectedRequest, decode_request, decode_response
from sozu.command.framing import encode_frame
from sozu.command.state import ConfigState
from sozu.command.state_errors import StateError
from sozu.command.statefile import StateFileError, parse_state
from sozu.command.types import RequestHttpFrontend
from sozu.worker.core.http.codec import HeadError, find_head_end
from sozu.worker.core.http.router import Router

HEAD = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
# {"v": 1, "id": "x", "request": [[[...]]]}: msgspec skips a value by recursing into it.
NESTED = b"\x83\xa1v\x01\xa2id\xa1x\xa7request" + b"\x91" * 5000 + b"\xc0"
LISTENER = '[[listeners]]\nprotocol = "http"\naddress = "127.0.0.1:80"\n'
HTTP_CLUSTER = LISTENER + '[clusters.app]\nprotocol = "http"\n'


def _frontend(fields: str) -> str:
    return HTTP_CLUSTER + f'frontends = [{{ address = "127.0.0.1:80", {fields} }}]\n'


def test_a_head_ending_past_the_limit_is_refused_however_it_arrives() -> None:
    # The blank line ended within limit + 4 bytes: accepted whole, 431 in two reads.
    limit = len(HEAD) - 2
    with pytest.raises(HeadError) as whole:
        find_head_end(HEAD, limit)
    assert whole.value.status == 431
    with pytest.raises(HeadError):
        find_head_end(HEAD[:limit], limit)
    assert find_head_end(HEAD, len(HEAD)) == len(HEAD)
    checks.check_request_head(HEAD, limit, [limit])


@pytest.mark.parametrize(
    "head", [b"GET / RTSP/1.0\r\nHost: a\r\n\r\n", b"SOURCE / ICE/1.0\r\nHost: a\r\n\r\n"]
)
def test_request_lines_of_other_protocols_llhttp_parses_are_refused(head: bytes) -> None:
    # ValueError escaped parse_request_head (the target was cut at " HTTP/").
    checks.check_request_head(head, 16384, [])


def test_a_length_of_more_digits_than_int_converts_is_read_not_raised() -> None:
    # ValueError escaped parse_request_head and parse_response_head: llhttp takes leading zeros.
    length = b"0" * 4400 + b"5"
    checks.check_request_head(
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: " + length + b"\r\n\r\n", 16384, []
    )
    checks.check_response_head(
        b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\n", b"GET", 16384, []
    )


def test_deeply_nested_payloads_are_refused_not_raised() -> None:
    # RecursionError escaped decode_request and decode_response (from 1 KB of 0x91)
    with pytest.raises(RejectedRequest) as rejected:
        decode_request(NESTED)
    assert rejected.value.request_id == "x"
    with pytest.raises(ProtocolError):
        decode_response(NESTED)
    checks.check_channel(encode_frame(NESTED) * 2, 2_000_000, [7])


def test_deeply_nested_state_file_record_names_its_line() -> None:
    record = b'{"id":"x","zz":' + b"[" * 5000 + b"]" * 5000 + b',"request":{"type":"Status"}}'
    with pytest.raises(StateFileError, match=r"^state file:2: "):
        parse_state(checks.STATE_FILE_HEADER + record)


def test_deeply_nested_toml_is_a_config_error(tmp_path: Path) -> None:
    # tomllib (and tomli) recursed into RecursionError from 500 levels of arrays or inline tables
    for text in ("a = " + "[" * 500 + "]" * 500, "a = " + "{b=" * 500 + "1" + "}" * 500):
        with pytest.raises(ConfigError, match="nested too deeply"):
            parse_config(text, base_dir=tmp_path)


def test_a_hostname_of_two_thousand_labels_routes() -> None:
    # Router.check_invariants recursed once per label past the default limit (the check only)
    frontend = RequestHttpFrontend(address="127.0.0.1:80", hostname="a." * 2000 + "com")
    state = ConfigState()
    state.apply(rq.AddHttpFrontend(frontend=frontend))
    checks.check_routers(state)
    assert Router.build([frontend]).lookup(frontend.hostname, "/", "GET") is not None


def test_a_listener_address_with_a_nul_zone_is_refused_at_decoding() -> None:
    payload = (
        b"\x83\xa1v\x01\xa2id\xa2r1\xa7request\x82\xa4type\xaeAddTcpListener"
        b"\xa8listener\x81\xa7address\xae[fe80::1%\x00]:80"
    )
    with pytest.raises(RejectedRequest):
        decode_request(payload)


def _certificate_record(expired_at: int) -> bytes:
    certificate = pool()[0].as_request_payload()
    request = rq.AddCertificate(address="127.0.0.1:443", certificate=certificate)
    record = msgspec.to_builtins(request) | {"type": "AddCertificate", "expired_at": expired_at}
    return checks.STATE_FILE_HEADER + msgspec.json.encode({"id": "x", "request": record})


def test_a_state_file_integer_msgpack_cannot_carry_is_refused_with_its_line() -> None:
    # JSON integers are unbounded: 2**64 decoded, then the state hash (msgpack) overflowed.
    # expired_at is a signed 64-bit timestamp (upstream's int64).
    with pytest.raises(StateFileError, match=r"^state file:2: .*expired_at"):
        parse_state(_certificate_record(2**63))
    assert len(parse_state(_certificate_record(2**63 - 1))) == 1
    checks.check_state_file(_certificate_record(2**64))


def test_replace_certificate_with_an_expiry_past_64_bits_is_refused_atomically() -> None:
    first, second = pool()[0], pool()[1]
    state = ConfigState()
    state.apply(rq.AddCertificate(address="127.0.0.1:443", certificate=first.as_request_payload()))
    before = state.hash()
    request = rq.ReplaceCertificate(
        address="127.0.0.1:443",
        new_certificate=second.as_request_payload(),
        old_fingerprint=first.fingerprint,
        new_expired_at=2**64,
    )
    with pytest.raises(StateError):
        state.apply(request)
    assert state.hash() == before


@pytest.mark.parametrize(
    ("text", "key"),
    [
        # int() refused a port that str.isdigit() took: ValueError, not ConfigError
        (LISTENER.replace("127.0.0.1:80", "127.0.0.1:²"), "listeners[0].address"),
        ('[metrics]\nprometheus_address = "1.2.3.4:¹"\n', "metrics.prometheus_address"),
        # a NUL in a path: ValueError from open()
        (LISTENER + 'answer_404 = "a\\u0000b"\n', "listeners[0].answer_404"),
        (HTTP_CLUSTER + 'answers = { "503" = "file://a\\u0000b" }\n', "clusters.app.answers.503"),
        ('command_socket = "a\\u0000b"\n', "command_socket"),
        # a zone no bind() takes (with a NUL: TypeError at boot)
        (LISTENER.replace("127.0.0.1:80", "[fe80::1%\\u0000]:80"), "listeners[0].address"),
        (LISTENER.replace("127.0.0.1:80", "[fe80::1%a b]:80"), "listeners[0].address"),
        # the frontend record's own validation: ValueError
        (_frontend('hostname = "a b"'), "clusters.app.frontends[0].hostname"),
        (_frontend('hostname = "a;b"'), "clusters.app.frontends[0].hostname"),
        (_frontend('hostname = "x", method = "G T"'), "clusters.app.frontends[0].method"),
        # loaded, then refused by the state (so refused at boot, with no key named)
        (HTTP_CLUSTER + 'www_authenticate = "\\u0004"\n', "clusters.app.www_authenticate"),
        (_frontend('hostname = "/(/.x"'), "clusters.app.frontends[0].hostname"),
        (_frontend('hostname = "x", tags = { a = "\\u0000" }'), "clusters.app.frontends[0].tags.a"),
        (
            _frontend('hostname = "x", headers = [{position = "request", key = "a b"}]'),
            "clusters.app.frontends[0].headers[0].key",
        ),
        (
            _frontend('hostname = "x", headers = [{position = "both", key = "a", value = "\\r"}]'),
            "clusters.app.frontends[0].headers[0].value",
        ),
        (
            _frontend('hostname = "x", path = "(?=a)", path_type = "REGEX"'),
            "clusters.app.frontends[0].path",
        ),
        (
            HTTP_CLUSTER + 'backends = [{ address = "127.0.0.1:9000", sticky_id = "a;b" }]\n',
            "clusters.app.backends[0].sticky_id",
        ),
        ('[clusters."a\\u0001"]\nprotocol = "tcp"\n', 'clusters."a\\u0001"'),
    ],
)
def test_config_errors_name_the_key(text: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, base_dir=tmp_path)
    assert caught.value.path == key
    checks.check_config_text(text, tmp_path, toml_valid=True)


@pytest.mark.parametrize("pattern", [r"\\p{L}+", r"/a\\z", r"\\Qa.b\\E"])
def test_a_regex_path_the_state_takes_loads(pattern: str, tmp_path: Path) -> None:
    # Checked with Python's `re`, the file refused RE2 patterns the state and workers run.
    text = _frontend(f'hostname = "x", path = "{pattern}", path_type = "REGEX"')
    loaded = parse_config(text, base_dir=tmp_path)
    checks.check_config_text(text, tmp_path, toml_valid=True)
    assert any(isinstance(r, rq.AddHttpFrontend) for r in loaded.requests)


HTTPS = '[[listeners]]\nprotocol = "https"\naddress = "127.0.0.1:443"\n'


@pytest.mark.parametrize(
    ("text", "key"),
    [
        # the key of another certificate: loaded, then AddCertificate refused by the state
        (
            HTTPS
            + 'certificate = "tls/cert.pem"\nkey = "tls/key.pem"\n'
            + '[clusters.app]\nprotocol = "http"\nfrontends = [{address = "127.0.0.1:443", '
            + 'hostname = "a", certificate = "tls/cert.pem", key = "tls/other-key.pem"}]\n',
            "clusters.app.frontends[0].key",
        ),
        (
            HTTPS + 'certificate = "tls/cert.pem"\nkey = "tls/other-key.pem"\n',
            "listeners[0].key",
        ),
    ],
)
def test_a_key_that_is_not_the_certificates_is_refused_by_key(
    text: str, key: str, tmp_path: Path
) -> None:
    write_config_files(tmp_path)
    with pytest.raises(ConfigError, match="does not belong to the certificate") as caught:
        parse_config(text, base_dir=tmp_path)
    assert caught.value.path == key
    checks.check_config_text(text, tmp_path, toml_valid=True)
