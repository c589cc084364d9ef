"""Hypothesis properties: scenarios 21-22 and the fuzz scenarios 45-47, HRW and Maglev laws."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from sozu.worker.core.balancing import (
    Backend,
    MaglevTable,
    encode_address,
    fnv1a64,
    hrw_select,
    splitmix64_finalize,
)
from sozu.worker.core.udp.config import ClusterConfig
from sozu.worker.core.udp.flow_key import affinity_hash, flow_key
from sozu.worker.core.udp.manager import FlowManager
from sozu.worker.core.udp.outputs import (
    CloseFlow,
    Drop,
    DropReason,
    Metric,
    MetricEvent,
    OutputT,
    SelectBackend,
)
from sozu.worker.core.udp.proxy_protocol import build_header, prepend_header

BK = ("127.0.0.1", 53)
POOL = [(f"10.0.0.{i}", 9000 + i % 2) for i in range(8)]


class Tally:
    def __init__(self) -> None:
        self.created = 0
        self.closed = 0
        self.selects: list[int] = []

    def feed(self, outs: list[OutputT]) -> None:
        for out in outs:
            if isinstance(out, Metric) and out.event is MetricEvent.FLOW_CREATED:
                self.created += 1
            elif isinstance(out, CloseFlow):
                self.closed += 1
            elif isinstance(out, SelectBackend):
                self.selects.append(out.flow)


# -- 21, 22


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 39)), max_size=60))
def test_21_cap_holds_and_everything_expires(ops: list[tuple[int, int]]) -> None:
    m = FlowManager(ClusterConfig(cluster="c", front_timeout=10.0), max_flows=4)
    tally = Tally()
    now = 0.0
    for source, at in ops:
        now = max(now, float(at))
        m.handle_client_datagram(now, POOL[source], b"x")
        tally.feed(m.take_outputs())
        for fid in tally.selects:
            m.handle_backend_resolved(now, fid, "b0", BK)
        tally.selects.clear()
        m.handle_timeout(now)
        tally.feed(m.take_outputs())
        assert m.flow_count() <= 4
    m.handle_timeout(now + 60.0)
    tally.feed(m.take_outputs())
    assert m.flow_count() == 0
    assert m.poll_timeout() is None
    assert tally.created == tally.closed


@settings(max_examples=100, deadline=None)
@given(st.floats(min_value=1.0, max_value=19.0))
def test_22_refresh_moves_the_idle_deadline(refresh: float) -> None:
    m = FlowManager(ClusterConfig(cluster="c", front_timeout=20.0), max_flows=1)
    m.handle_client_datagram(0.0, POOL[0], b"a")
    m.handle_backend_resolved(0.0, 0, "b0", BK)
    m.handle_client_datagram(refresh, POOL[0], b"b")
    m.take_outputs()
    m.handle_timeout(20.0)
    assert m.flow_count() == 1
    assert CloseFlow not in {type(o) for o in m.take_outputs()}
    m.handle_timeout(refresh + 21.0)
    assert m.flow_count() == 0


# -- 45, 46: byte-driven fuzz


class Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def more(self) -> bool:
        return self.pos < len(self.data)


def fuzz_cluster(b: Bytes) -> ClusterConfig:
    return ClusterConfig(
        cluster="" if b.take() % 8 == 0 else "c",
        affinity_with_port=bool(b.take() & 1),
        responses=b.take() % 3,
        requests=b.take() % 4,
        front_timeout=float(b.take() % 40),
        back_timeout=float(b.take() % 40),
        send_proxy_protocol=bool(b.take() & 1),
        proxy_protocol_every_datagram=bool(b.take() & 1),
    )


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_45_46_fuzzed_operation_streams(data: bytes) -> None:
    b = Bytes(data)
    m = FlowManager(fuzz_cluster(b), max_flows=1 + b.take() % 8)
    highest = m.max_flows()
    tally = Tally()
    pending: list[int] = []
    now = 0.0
    steps = 0
    while b.more() and steps < 4096:
        steps += 1
        op = b.take() % 7
        if op == 0:
            m.handle_client_datagram(now, POOL[b.take() % 8], bytes(b.take() % 20))
        elif op == 1:
            if pending and b.take() & 1:
                m.handle_backend_resolved(now, pending.pop(0), "b0", BK)
            else:
                m.handle_backend_resolved(now, b.take(), "b1", ("::1", 53))
        elif op == 2:
            m.handle_backend_datagram(now, b.take() % 16, bytes(b.take() % 20))
        elif op == 3:
            m.set_cluster(now, fuzz_cluster(b))
        elif op == 4:
            sub = b.take() % 3
            if sub == 0:
                m.set_max_flows(now, b.take() % 8)
                highest = max(highest, m.max_flows())
            elif sub == 1:
                m.set_max_rx_datagram_size(now, b.take())
            else:
                m.drain(now)
        elif op == 5:
            now += float(b.take() % 50)
            m.handle_timeout(now)
        else:
            now += ((b.take() << 8) | b.take()) / 1000.0
        tally.feed(m.take_outputs())
        pending.extend(tally.selects)
        tally.selects.clear()
        assert m.flow_count() <= highest
        assert tally.closed <= tally.created
        assert tally.created - tally.closed == m.flow_count()
    m.handle_timeout(now + 10_000.0)
    tally.feed(m.take_outputs())
    assert m.flow_count() == 0
    assert m.poll_timeout() is None
    assert tally.created == tally.closed


# -- 47: helpers

addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)).flatmap(
    lambda ip: st.tuples(st.just(ip), st.integers(0, 65535))
)


@settings(max_examples=200)
@given(addresses, addresses, st.binary(max_size=64))
def test_47_helper_laws(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> None:
    assert flow_key(src, False) == (src[0], 0)
    assert flow_key(src, True) == src
    header = build_header(src, dst)
    assert len(header) >= 16
    assert len(prepend_header(src, dst, payload)) == len(header) + len(payload)
    same = ipaddress.ip_address(src[0]).version == ipaddress.ip_address(dst[0]).version
    assert header[13] == (0x00 if not same else 0x12 if ":" not in src[0] else 0x22)
    m = FlowManager(ClusterConfig(cluster="c"), max_flows=1)
    m.handle_client_datagram(0.0, src, b"")
    assert m.take_outputs() == [Drop(DropReason.INVALID)]


# -- balancing laws

backend_sets = st.lists(
    st.tuples(st.integers(1, 254), st.integers(1, 65535), st.integers(1, 500)),
    min_size=2,
    max_size=8,
    unique_by=lambda t: (t[0], t[1]),
).map(
    lambda rows: [
        Backend(f"b{i}", (f"10.1.0.{h}", p), weight=w) for i, (h, p, w) in enumerate(rows)
    ]
)


def winner(backends: list[Backend], key: int) -> str:
    pairs = [(encode_address(b.address), b.effective_weight) for b in backends]
    return backends[hrw_select(key, pairs)].id


@settings(max_examples=200)
@given(backend_sets, st.integers(0, 2**64 - 1), st.data())
def test_hrw_minimal_disruption(backends: list[Backend], key: int, data: st.DataObject) -> None:
    won = winner(backends, key)
    victim = data.draw(st.sampled_from([b for b in backends if b.id != won]))
    assert winner([b for b in backends if b is not victim], key) == won
    newcomer = Backend("new", ("10.2.0.1", 1), weight=data.draw(st.integers(1, 500)))
    assert winner([*backends, newcomer], key) in (won, "new")


@settings(max_examples=60, deadline=None)
@given(backend_sets, st.integers(2, 400))
def test_maglev_table_is_full_and_weighted(backends: list[Backend], size: int) -> None:
    table = MaglevTable([(encode_address(b.address), b.weight) for b in backends], size)
    assert table.size >= size
    assert -1 not in table.slots
    assert sum(table.quotas) == table.size
    total = sum(b.weight for b in backends)
    for b, owned in zip(backends, table.slots_owned, strict=True):
        assert abs(owned - b.weight * table.size / total) <= 1


@settings(max_examples=200)
@given(addresses, st.booleans(), st.integers(0, 2**64 - 1))
def test_affinity_hash_fast_path_matches_ipaddress(
    src: tuple[str, int], with_port: bool, seed: int
) -> None:
    ip = ipaddress.ip_address(src[0])
    data = bytes((ip.version,)) + ip.packed + (src[1].to_bytes(2, "little") if with_port else b"")
    assert affinity_hash(seed, src, with_port) == splitmix64_finalize(fnv1a64(seed, data))
