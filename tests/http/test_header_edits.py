"""Request/response header edits, head serialisation, and the ULID request ids."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sozu.command.types import Header
from sozu.worker.core.http.header_edits import (
    HeaderEdit,
    RequestEdits,
    add_hsts,
    compile_frontend_edits,
    edit_request,
    edit_response,
    serialize_head,
)
from sozu.worker.core.http.request_id import (
    ALPHABET,
    UlidGenerator,
    decode_ulid,
    encode_ulid,
    ulid_timestamp_ms,
)

RID = b"01HRQ0000000000000000000AB"
BASE: dict[str, Any] = {
    "request_id": RID,
    "https": False,
    "public_ip": "10.0.0.1",
    "public_port": 8080,
    "peer": ("192.168.1.5", 40000),
}


def req(headers: list[tuple[bytes, bytes]], **overrides: Any) -> RequestEdits:
    return edit_request(headers, **(BASE | overrides))


def test_request_minimal_adds_everything_in_upstream_order() -> None:
    edited = req([(b"Host", b"example.com")])
    assert edited.headers == [
        (b"Host", b"example.com"),
        (b"X-Forwarded-For", b"192.168.1.5"),
        (b"Forwarded", b'proto=http;for="192.168.1.5:40000";by=10.0.0.1'),
        (b"X-Forwarded-Port", b"8080"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Request-Id", RID),
        (b"Sozu-Id", RID),
    ]
    assert edited.keep_alive
    assert edited.sticky_value is None
    assert edited.xff_chain is None
    assert not edited.x_proto_trusted
    assert not edited.x_port_trusted


def test_request_full_order_with_closing_and_real_ip() -> None:
    edited = req(
        [(b"Host", b"h")],
        request_id=RID,
        https=True,
        public_ip="10.0.0.1",
        public_port=443,
        peer=("1.2.3.4", 5),
        closing=True,
        send_x_real_ip=True,
        sozu_id_header=b"X-Sozu",
    )
    assert [name for name, _ in edited.headers] == [
        b"Host",
        b"X-Forwarded-For",
        b"Forwarded",
        b"X-Real-IP",
        b"X-Forwarded-Port",
        b"X-Forwarded-Proto",
        b"Connection",
        b"X-Request-Id",
        b"X-Sozu",
    ]
    assert (b"Connection", b"close") in edited.headers
    assert (b"X-Real-IP", b"1.2.3.4") in edited.headers
    assert (b"X-Forwarded-Proto", b"https") in edited.headers
    assert not edited.keep_alive


def test_request_appends_to_existing_chains_in_place() -> None:
    edited = req(
        [
            (b"x-forwarded-for", b"1.1.1.1"),
            (b"Host", b"h"),
            (b"FORWARDED", b"for=1.1.1.1"),
            (b"X-Request-Id", b"client-id"),
        ],
    )
    assert edited.headers == [
        (b"x-forwarded-for", b"1.1.1.1, 192.168.1.5"),
        (b"Host", b"h"),
        (b"FORWARDED", b'for=1.1.1.1, proto=http;for="192.168.1.5:40000";by=10.0.0.1'),
        (b"X-Request-Id", b"client-id"),
        (b"X-Forwarded-Port", b"8080"),
        (b"X-Forwarded-Proto", b"http"),
        (b"Sozu-Id", RID),
    ]
    assert edited.xff_chain == b"1.1.1.1"


def test_ipv6_peer_and_public_address_in_forwarded() -> None:
    edited = req(
        [],
        request_id=RID,
        https=True,
        public_ip="2001:db8::1",
        public_port=443,
        peer=("::1", 1234),
    )
    headers = dict(edited.headers)
    assert headers[b"X-Forwarded-For"] == b"::1"
    assert headers[b"Forwarded"] == b'proto=https;for="[::1]:1234";by="[2001:db8::1]"'


def test_unknown_peer_skips_forwarding_headers() -> None:
    edited = req(
        [(b"X-Real-IP", b"6.6.6.6")],
        request_id=RID,
        https=False,
        public_ip="10.0.0.1",
        public_port=80,
        peer=None,
        send_x_real_ip=True,
    )
    assert [name for name, _ in edited.headers] == [
        b"X-Real-IP",
        b"X-Forwarded-Port",
        b"X-Forwarded-Proto",
        b"X-Request-Id",
        b"Sozu-Id",
    ]


def test_x_real_ip_elided_then_sent() -> None:
    edited = req(
        [(b"x-real-ip", b"6.6.6.6"), (b"Host", b"h")],
        elide_x_real_ip=True,
        send_x_real_ip=True,
    )
    real = [v for n, v in edited.headers if n.lower() == b"x-real-ip"]
    assert real == [b"192.168.1.5"]


def test_trusted_forwarded_proto_and_port_kept() -> None:
    edited = req(
        [(b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Port", b"8080")],
    )
    assert edited.headers[:2] == [(b"X-Forwarded-Proto", b"https"), (b"X-Forwarded-Port", b"8080")]
    names = [n for n, _ in edited.headers]
    assert names.count(b"X-Forwarded-Proto") == 1
    assert names.count(b"X-Forwarded-Port") == 1
    assert (edited.x_proto_trusted, edited.x_proto_differs) == (True, True)
    assert (edited.x_port_trusted, edited.x_port_differs) == (True, False)


def test_sticky_cookie_removed_and_value_returned() -> None:
    edited = req(
        [(b"Cookie", b"foo=bar; SOZUBALANCEID=b2; x=y")],
    )
    assert edited.headers[0] == (b"Cookie", b"foo=bar; x=y")
    assert edited.sticky_value == b"b2"


def test_cookie_header_dropped_when_only_sticky() -> None:
    edited = req(
        [(b"cookie", b"SOZUBALANCEID=b2"), (b"Host", b"h")],
        sticky_name=b"SOZUBALANCEID",
    )
    assert edited.headers[0] == (b"Host", b"h")
    assert edited.sticky_value == b"b2"


def test_cookie_untouched_without_sticky_cookie() -> None:
    edited = req([(b"Cookie", b"a=1;b=2")])
    assert edited.headers[0] == (b"Cookie", b"a=1;b=2")
    assert edited.sticky_value is None


def test_client_connection_close_and_forced_close() -> None:
    client_close = req([(b"Connection", b"Keep-Alive, Close")])
    assert not client_close.keep_alive
    assert client_close.headers[0] == (b"Connection", b"Keep-Alive, Close")
    forced = req(
        [(b"Connection", b"keep-alive")],
        closing=True,
    )
    assert forced.headers[0] == (b"Connection", b"close")
    assert [n for n, _ in forced.headers].count(b"Connection") == 1
    kept = req([(b"Connection", b"keep-alive")])
    assert kept.keep_alive


def test_host_rewrite_replaces_host_and_adds_x_forwarded_host() -> None:
    edited = req(
        [(b"Host", b"old.example.com:8080"), (b"Accept", b"*/*")],
        rewrite_host=b"new.example.com",
    )
    assert edited.headers[0] == (b"Host", b"new.example.com")
    assert edited.headers[-1] == (b"X-Forwarded-Host", b"old.example.com:8080")
    assert [n for n, _ in edited.headers].count(b"Host") == 1


def test_frontend_request_edits_append_and_delete() -> None:
    edits = compile_frontend_edits(
        (
            Header(position="REQUEST", key="X-Added", val="1"),
            Header(position="BOTH", key="user-agent"),
            Header(position="RESPONSE", key="X-Resp", val="r"),
        )
    )
    assert edits.request == (HeaderEdit(b"X-Added", b"1"), HeaderEdit(b"user-agent", b""))
    assert edits.response == (HeaderEdit(b"user-agent", b""), HeaderEdit(b"X-Resp", b"r"))
    edited = req(
        [(b"User-Agent", b"curl"), (b"Host", b"h")],
        edits=edits.request,
    )
    names = [n for n, _ in edited.headers]
    assert b"User-Agent" not in names
    assert names[-1] == b"X-Added"
    assert compile_frontend_edits(()) is compile_frontend_edits(())


def test_request_input_is_not_mutated() -> None:
    original = [(b"Host", b"h"), (b"X-Forwarded-For", b"1.1.1.1")]
    snapshot = list(original)
    req(original)
    assert original == snapshot


# ---------------------------------------------------------------------------------------------
# Responses


def test_response_minimal() -> None:
    edited = edit_response([(b"Content-Length", b"2")], request_id=RID)
    assert edited.headers == [(b"Content-Length", b"2"), (b"Sozu-Id", RID)]
    assert edited.keep_alive


def test_response_backend_close_and_forced_close() -> None:
    backend_close = edit_response([(b"Connection", b"close")], request_id=RID)
    assert not backend_close.keep_alive
    forced = edit_response([(b"connection", b"keep-alive")], request_id=RID, closing=True)
    assert forced.headers[0] == (b"connection", b"close")
    added = edit_response([], request_id=RID, closing=True, sozu_id_header=b"X-Id")
    assert added.headers == [(b"Connection", b"close"), (b"X-Id", RID)]


def test_sticky_set_cookie_only_when_value_changes() -> None:
    fresh = edit_response([], request_id=RID, sticky_value=b"b1", sticky_found=None)
    assert fresh.headers == [(b"Set-Cookie", b"SOZUBALANCEID=b1; Path=/"), (b"Sozu-Id", RID)]
    changed = edit_response(
        [], request_id=RID, sticky_name=b"S", sticky_value=b"b1", sticky_found=b"old"
    )
    assert (b"Set-Cookie", b"S=b1; Path=/") in changed.headers
    same = edit_response([], request_id=RID, sticky_value=b"b1", sticky_found=b"b1")
    assert same.headers == [(b"Sozu-Id", RID)]


def test_response_edits_then_hsts() -> None:
    edits = compile_frontend_edits(
        (
            Header(position="RESPONSE", key="Server"),
            Header(position="RESPONSE", key="X-Frame-Options", val="DENY"),
        )
    ).response
    edited = edit_response(
        [(b"Server", b"nginx"), (b"Content-Length", b"0")],
        request_id=RID,
        edits=edits,
        hsts=b"max-age=31536000",
    )
    assert edited.headers == [
        (b"Content-Length", b"0"),
        (b"Sozu-Id", RID),
        (b"X-Frame-Options", b"DENY"),
        (b"Strict-Transport-Security", b"max-age=31536000"),
    ]


def test_hsts_backend_value_wins_unless_forced() -> None:
    backend = [(b"strict-transport-security", b"max-age=5")]
    kept = edit_response(backend, request_id=RID, hsts=b"max-age=10")
    assert [v for n, v in kept.headers if n.lower() == b"strict-transport-security"] == [
        b"max-age=5"
    ]
    forced = edit_response(backend, request_id=RID, hsts=b"max-age=10", hsts_force=True)
    assert [v for n, v in forced.headers if n.lower() == b"strict-transport-security"] == [
        b"max-age=10"
    ]
    assert add_hsts([], b"max-age=1") == [(b"Strict-Transport-Security", b"max-age=1")]


def test_serialize_head() -> None:
    assert serialize_head(b"HTTP/1.1 200 OK", [(b"A", b"1"), (b"b", b"")]) == (
        b"HTTP/1.1 200 OK\r\nA: 1\r\nb: \r\n\r\n"
    )
    assert serialize_head(b"GET / HTTP/1.1", []) == b"GET / HTTP/1.1\r\n\r\n"


# ---------------------------------------------------------------------------------------------
# ULIDs


def test_ulid_layout_and_round_trip() -> None:
    gen = UlidGenerator(lambda: 1_700_000_000_123, lambda n: bytes(range(n)))
    ulid = gen.generate()
    assert len(ulid) == 26
    assert set(ulid) <= set(ALPHABET)
    assert ulid_timestamp_ms(ulid) == 1_700_000_000_123
    assert decode_ulid(ulid) & ((1 << 80) - 1) == int.from_bytes(bytes(range(10)), "big")
    assert encode_ulid(decode_ulid(ulid)) == ulid
    assert decode_ulid(ulid.lower()) == decode_ulid(ulid)


def test_ulid_known_encoding() -> None:
    assert encode_ulid(0) == "0" * 26
    assert encode_ulid((1 << 128) - 1) == "7" + "Z" * 25
    gen = UlidGenerator(lambda: 0, lambda n: b"\x00" * n)
    assert gen.generate() == "0" * 26
    assert gen.generate() == "0" * 25 + "1"


def test_ulid_monotonic_within_a_millisecond_and_when_clock_steps_back() -> None:
    times = iter([5, 5, 5, 4, 6])
    rng = random.Random(3)
    gen = UlidGenerator(lambda: next(times), rng.randbytes)
    ids = [gen.generate() for _ in range(5)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    values = [decode_ulid(i) for i in ids]
    assert values[1] == values[0] + 1
    assert values[3] == values[2] + 1
    assert ulid_timestamp_ms(ids[4]) == 6


def test_ulid_increments_across_carries_match_the_full_encoding() -> None:
    # Within one millisecond the generator appends one pair to a cached stem; every id must
    # still be the full encoding of time and random part, across carries out of the pair.
    start = (1 << 20) - 3  # three increments before a carry out of the low 10 bits ...
    gen = UlidGenerator(lambda: 7, lambda n: start.to_bytes(n, "big"))
    ids = [gen.generate() for _ in range(3000)]  # ... and two more carries later
    for offset, text in enumerate(ids):
        assert text == encode_ulid((7 << 80) | (start + offset))
        assert decode_ulid(text) == (7 << 80) | (start + offset)


def test_ulid_random_overflow_moves_to_next_millisecond() -> None:
    gen = UlidGenerator(lambda: 100, lambda n: b"\xff" * n)
    first = gen.generate()
    second = gen.generate()
    assert second > first
    assert ulid_timestamp_ms(second) == 101
    assert decode_ulid(second) & ((1 << 80) - 1) == 0


@pytest.mark.parametrize("bad", ["", "0" * 25, "8" + "0" * 25, "0" * 25 + "U"])
def test_decode_rejects_non_ulids(bad: str) -> None:
    with pytest.raises(ValueError, match="ULID"):
        decode_ulid(bad)


def test_clock_out_of_range() -> None:
    with pytest.raises(ValueError, match="48 bits"):
        UlidGenerator(lambda: 1 << 48, lambda n: b"\x00" * n).generate()
