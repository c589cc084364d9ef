"""Helper scenarios 23-26 and 28 (docs/udp.md, Scenarios): PROXY v2 bytes, limits, egress
queue, health config."""

from __future__ import annotations

import pytest

from sozu.worker.core.udp.config import HealthMode, UdpHealthSettings
from sozu.worker.core.udp.egress import CLIENT_QUEUE_CAP, UPSTREAM_QUEUE_CAP, SendResult, WriteQueue
from sozu.worker.core.udp.limits import (
    auto_max_flows,
    clamp_max_rx,
    effective_max_flows,
    exceeds_fd_share,
    recv_buffer_size,
)
from sozu.worker.core.udp.proxy_protocol import build_header, header_length, prepend_header

SIGNATURE = bytes.fromhex("0D0A0D0A000D0A515549540A")

# -- 23-24: PROXY protocol v2


def test_23_ipv4_header_is_byte_exact() -> None:
    header = build_header(("125.25.10.1", 8080), ("10.4.5.8", 4200))
    assert header == SIGNATURE + bytes.fromhex("21 12 00 0C 7D 19 0A 01 0A 04 05 08 1F 90 10 68")
    assert len(header) == 28


def test_23_ipv6_header_is_byte_exact() -> None:
    header = build_header(("::1", 8080), ("::1", 4200))
    loopback = bytes(15) + b"\x01"
    assert header == (
        SIGNATURE + bytes.fromhex("21 22 00 24") + loopback + loopback + bytes.fromhex("1F90 1068")
    )
    assert len(header) == 52


def test_24_prepend_and_mixed_families() -> None:
    src, dst = ("125.25.10.1", 8080), ("10.4.5.8", 4200)
    framed = prepend_header(src, dst, b"DNSQUERY")
    assert header_length(src, dst) == 28
    assert len(framed) == 28 + 8
    assert framed[28:] == b"DNSQUERY"
    mixed = build_header(("10.0.0.1", 1000), ("2001:db8::1", 53))
    assert mixed == SIGNATURE + bytes.fromhex("21 00 00 00")
    assert len(mixed) == header_length(("10.0.0.1", 1000), ("2001:db8::1", 53)) == 16
    mapped = build_header(("::ffff:10.0.0.1", 1000), ("10.0.0.2", 53))  # not unmapped
    assert mapped[13] == 0x00
    assert len(mapped) == 16
    assert header_length(("::1", 1), ("::2", 2)) == 52


# -- 25: flow cap and receive size


def test_25_effective_max_flows() -> None:
    assert effective_max_flows(42, 1024) == 42
    assert effective_max_flows(42, None, max_connections=4) == 42  # explicit: verbatim
    assert effective_max_flows(0, 1024) == 716
    assert effective_max_flows(0, 0) >= 1
    assert effective_max_flows(0, 1) == 1
    assert effective_max_flows(0, None) == 1024
    assert 1 <= effective_max_flows(0, 100_000, max_connections=4) <= 4
    assert effective_max_flows(0, 100_000, max_connections=0) == 70_000
    assert effective_max_flows(0, -1, max_connections=10_000) == 10_000  # RLIM_INFINITY
    assert auto_max_flows(-1) > 10_000
    with pytest.raises(ValueError):
        effective_max_flows(-1, 1024)


def test_25_clamp_max_rx_and_buffers() -> None:
    assert clamp_max_rx(2**32 - 1, 16_384) == 16_384
    assert clamp_max_rx(1500, 16_393) == 1500
    assert clamp_max_rx(2**32 - 1, 0) == 2**32 - 1
    assert recv_buffer_size(1500) == 1501
    assert exceeds_fd_share(800, 1024)
    assert not exceeds_fd_share(700, 1024)
    assert not exceeds_fd_share(0, 1024)
    assert not exceeds_fd_share(10**9, None)


# -- 26: egress write queue


class FakeSocket:
    def __init__(self, results: list[SendResult]) -> None:
        self.results = results
        self.sent: list[bytes] = []

    def send(self, item: bytes) -> SendResult:
        result = self.results.pop(0) if self.results else SendResult.SENT
        if result is SendResult.SENT:
            self.sent.append(item)
        return result


def test_26_cap_refuses_a_third_push() -> None:
    q: WriteQueue[bytes] = WriteQueue(2)
    assert q.push(b"1")
    assert q.push(b"2")
    assert not q.push(b"3")
    assert len(q) == 2
    assert q.dropped_full == 1


def test_26_flush_is_fifo_pauses_on_would_block_and_skips_errors() -> None:
    q: WriteQueue[bytes] = WriteQueue(8)
    for item in (b"a", b"b", b"c", b"d"):
        q.push(item)
    sock = FakeSocket([SendResult.SENT, SendResult.WOULD_BLOCK])
    assert not q.flush(sock.send)
    assert sock.sent == [b"a"]
    assert len(q) == 3
    sock.results = [SendResult.ERROR]
    assert q.flush(sock.send)
    assert sock.sent == [b"a", b"c", b"d"]
    assert q.send_errors == 1
    assert not q


def test_26_offer_sends_direct_then_queues_behind_a_backlog() -> None:
    q: WriteQueue[bytes] = WriteQueue(2)
    sock = FakeSocket([SendResult.WOULD_BLOCK])
    assert q.offer(b"1", sock.send)  # would block: queued, WRITABLE needed
    assert q.offer(b"2", sock.send)  # queued behind, even though the socket may be ready
    assert q.offer(b"3", sock.send)  # full: the new one is dropped
    assert q.dropped_full == 1
    assert sock.sent == []
    assert q.flush(sock.send)
    assert sock.sent == [b"1", b"2"]
    assert not q.offer(b"4", sock.send)
    err = FakeSocket([SendResult.ERROR])
    assert not q.offer(b"5", err.send)
    assert q.send_errors == 1
    assert (UPSTREAM_QUEUE_CAP, CLIENT_QUEUE_CAP) == (64, 256)
    with pytest.raises(ValueError):
        WriteQueue(0)


# -- 28: health settings


def test_28_empty_health_block_gets_defaults_and_captures_the_payload() -> None:
    assert UdpHealthSettings.from_block(None) is None
    settings = UdpHealthSettings.from_block({})
    assert settings is not None
    assert (settings.rise, settings.fall, settings.probe_interval, settings.probe_timeout) == (
        2,
        3,
        5.0,
        2.0,
    )
    assert settings.enabled
    assert settings.runs_tcp_probe
    assert not settings.runs_udp_probe
    assert settings.tcp_probe_port(53) == 53
    ping = UdpHealthSettings.from_block({"udp_probe_payload": "PING", "mode": "TCP_PROBE"})
    assert ping is not None
    assert ping.udp_probe_payload == b"PING"
    assert ping.runs_udp_probe  # any mode runs the UDP probe when a payload is set
    off = UdpHealthSettings.from_block({"mode": "HEALTH_OFF", "udp_probe_payload": "PING"})
    assert off is not None
    assert off.mode is HealthMode.HEALTH_OFF
    assert not off.runs_tcp_probe
    assert not off.runs_udp_probe
    custom = UdpHealthSettings.from_block({"tcp_port": 8053, "fail_open": False, "rise": 4})
    assert custom is not None
    assert custom.tcp_probe_port(53) == 8053
    assert not custom.fail_open


@pytest.mark.parametrize(
    "block",
    [
        {"mode": "SOMETIMES"},
        {"rise": 0},
        {"rise": "2"},
        {"tcp_port": 70_000},
        {"fail_open": "yes"},
        {"udp_probe_payload": 5},
        {"probe_interval_seconds": 0},
        {"unknown": 1},
    ],
)
def test_28_bad_health_blocks_are_rejected(block: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        UdpHealthSettings.from_block(block)
