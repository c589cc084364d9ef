"""PROXY protocol v2: exact bytes, parsing whole and byte by byte, and refusals."""

from __future__ import annotations

import pytest

from sozu.worker.core.proxy_protocol import (
    MAX_HEADER_LENGTH,
    SIGNATURE,
    TRANSPORT_DGRAM,
    TRANSPORT_STREAM,
    ProxyHeader,
    ProxyProtocolError,
    build_v2,
    parse_v2,
    read_v2,
)


def test_ipv4_stream_header_bytes() -> None:
    header = build_v2(("125.25.10.1", 8080), ("10.4.5.8", 4200))
    assert header == SIGNATURE + bytes.fromhex("21 11 00 0C 7D 19 0A 01 0A 04 05 08 1F 90 10 68")
    assert len(header) == 28


def test_ipv4_datagram_header_bytes() -> None:
    header = build_v2(("125.25.10.1", 8080), ("10.4.5.8", 4200), stream=False)
    assert header[12:16] == bytes.fromhex("21 12 00 0C")


def test_ipv6_and_mixed_families() -> None:
    header = build_v2(("::1", 8080), ("::1", 4200))
    assert len(header) == 52
    assert header[13] == 0x21
    assert header[14:16] == b"\x00\x24"
    mixed = build_v2(("127.0.0.1", 1), ("::1", 2))
    assert mixed == SIGNATURE + b"\x21\x00\x00\x00"


@pytest.mark.parametrize(
    ("source", "destination"),
    [(("127.0.0.1", 40000), ("127.0.0.2", 80)), (("::1", 1), ("fe80::2", 65535))],
)
def test_parse_round_trip_whole_and_byte_by_byte(
    source: tuple[str, int], destination: tuple[str, int]
) -> None:
    header = build_v2(source, destination)
    data = header + b"GET / HTTP/1.1\r\n"
    expected = ProxyHeader("PROXY", source, destination, len(header))
    assert parse_v2(data) == expected
    for cut in range(len(header)):
        assert parse_v2(data[:cut]) is None
    assert parse_v2(header) == expected


def test_local_and_unspec_have_no_addresses() -> None:
    local = SIGNATURE + b"\x20\x00\x00\x00"
    assert parse_v2(local) == ProxyHeader("LOCAL", None, None, 16)
    assert parse_v2(SIGNATURE + b"\x21\x00\x00\x00") == ProxyHeader("PROXY", None, None, 16)


def test_tlvs_are_skipped_within_the_length() -> None:
    header = bytearray(build_v2(("127.0.0.1", 1), ("127.0.0.1", 2)))
    tlv = b"\x04\x00\x01\x00"  # a NOOP TLV
    header[14:16] = (12 + len(tlv)).to_bytes(2, "big")
    parsed = parse_v2(bytes(header) + tlv + b"rest")
    assert parsed is not None
    assert parsed.length == 28 + len(tlv)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2\r\n", "signature"),
        (b"\r\n\r\n\x00\r\nQUIX\n", "signature"),
        (SIGNATURE + b"\x11\x11\x00\x0c", "version 1"),
        (SIGNATURE + b"\x22\x11\x00\x0c", "command"),
        (SIGNATURE + b"\x21\x11" + (MAX_HEADER_LENGTH).to_bytes(2, "big"), "too long"),
        (SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4, "too short"),
        (SIGNATURE + b"\x21\x41\x00\x00", "family"),
        (SIGNATURE + b"\x21\x13\x00\x0c", "transport 3"),
        (SIGNATURE + b"\x20\x0f\x00\x00", "transport 15"),
    ],
)
def test_refusals(data: bytes, needle: str) -> None:
    with pytest.raises(ProxyProtocolError, match=needle):
        parse_v2(data)


def test_read_v2_asks_for_exactly_the_header() -> None:
    header = build_v2(("127.0.0.5", 1234), ("127.0.0.1", 80))
    following = b"\x16\x03\x01"  # a TLS record that must stay unread
    assert read_v2(b"")[1] == 16
    for cut in range(len(header)):
        missing = read_v2(header[:cut])[1]
        assert missing > 0
        # Never more than the header: what follows it is left in the socket.
        assert cut + missing <= len(header)
    assert read_v2(header)[1] == 0
    assert read_v2(header + following)[1] == 0
    v6 = build_v2(("::1", 1), ("::1", 2))
    assert read_v2(v6[:16])[1] == len(v6) - 16
    with pytest.raises(ProxyProtocolError):
        read_v2(b"GET / HTTP/1.1\r\n")


def test_read_v2_gives_the_header_once_whole_and_what_is_missing_before() -> None:
    """The listener's one parse per read: the header with 0 once complete (what follows it is
    not taken), else None with the bytes still missing; refusals raise as `parse_v2`'s."""
    source, destination = ("127.0.0.5", 1234), ("127.0.0.1", 80)
    header = build_v2(source, destination)
    assert len(header) == 28
    for cut in range(len(header)):
        # The 16-byte prefix first, then exactly the length it announces.
        missing = 16 - cut if cut < 16 else 28 - cut
        assert read_v2(header[:cut], transport=TRANSPORT_STREAM) == (None, missing)
    whole = ProxyHeader("PROXY", source, destination, len(header))
    assert read_v2(header, transport=TRANSPORT_STREAM) == (whole, 0)
    assert read_v2(header + b"\x16\x03\x01", transport=TRANSPORT_STREAM) == (whole, 0)
    with pytest.raises(ProxyProtocolError, match="DGRAM on a STREAM connection"):
        read_v2(build_v2(source, destination, stream=False)[:16], transport=TRANSPORT_STREAM)
    with pytest.raises(ProxyProtocolError):
        read_v2(b"GET / HTTP/1.1\r\n")


def test_a_connection_takes_only_a_header_of_its_own_transport() -> None:
    """A stream listener refuses a PROXY header announcing a datagram flow (its addresses are
    not this connection's), whole or as soon as its first 16 bytes are in; a datagram reader
    refuses a stream one; LOCAL and UNSPEC headers carry no addresses and pass either way."""
    source, destination = ("127.0.0.9", 4000), ("127.0.0.1", 53)
    dgram = build_v2(source, destination, stream=False)
    stream = build_v2(source, destination)
    with pytest.raises(ProxyProtocolError, match="DGRAM on a STREAM connection"):
        parse_v2(dgram, transport=TRANSPORT_STREAM)
    with pytest.raises(ProxyProtocolError, match="DGRAM on a STREAM connection"):
        read_v2(dgram[:16], transport=TRANSPORT_STREAM)
    with pytest.raises(ProxyProtocolError, match="STREAM on a DGRAM connection"):
        parse_v2(stream, transport=TRANSPORT_DGRAM)
    # Each on its own transport, and either one when no transport is asked for.
    assert parse_v2(stream, transport=TRANSPORT_STREAM) == ProxyHeader(
        "PROXY", source, destination, len(stream)
    )
    assert parse_v2(dgram, transport=TRANSPORT_DGRAM) == ProxyHeader(
        "PROXY", source, destination, len(dgram)
    )
    assert parse_v2(dgram) == ProxyHeader("PROXY", source, destination, len(dgram))
    assert read_v2(stream[:16], transport=TRANSPORT_STREAM)[1] == len(stream) - 16
    # A LOCAL command may name any defined transport (its addresses are ignored anyway).
    local_dgram = SIGNATURE + b"\x20\x12\x00\x0c" + bytes(12)
    assert parse_v2(local_dgram, transport=TRANSPORT_STREAM) == ProxyHeader("LOCAL", None, None, 28)
    unspec = SIGNATURE + b"\x21\x10\x00\x0c" + bytes(12)  # AF_INET, transport UNSPEC
    header = parse_v2(unspec, transport=TRANSPORT_STREAM)
    assert header is not None
    assert header.length == 28
