"""Core scenarios 1-20 (docs/udp.md, Scenarios), plus the core's own contracts (ids, timers,
drops)."""

from __future__ import annotations

import pytest

from sozu.worker.core.udp.config import ClusterConfig
from sozu.worker.core.udp.flow import FlowPhase, teardown_reason
from sozu.worker.core.udp.inputs import (
    AbortFlow,
    BackendDatagram,
    BackendResolved,
    ClientDatagram,
    CloseAll,
    Drain,
    InputT,
    SetCluster,
    SetMaxFlows,
    SetMaxRxDatagramSize,
    Timeout,
)
from sozu.worker.core.udp.manager import FlowManager, InvariantViolation
from sozu.worker.core.udp.outputs import (
    ArmTimer,
    CloseFlow,
    CloseReason,
    Drop,
    DropReason,
    Metric,
    MetricEvent,
    OpenUpstream,
    OutputT,
    SelectBackend,
    SendToBackend,
    SendToClient,
)

C1 = ("10.0.0.1", 5353)
C2 = ("10.0.0.2", 5353)
BK = ("127.0.0.1", 53)
CREATED = Metric(MetricEvent.FLOW_CREATED)
EVICTED = Metric(MetricEvent.FLOW_EVICTED)
SHED = Metric(MetricEvent.FLOW_SHED)


def make(max_flows: int = 16, max_rx: int = 1500, **knobs: object) -> FlowManager:
    return FlowManager(
        ClusterConfig(cluster="dns", **knobs),  # type: ignore[arg-type]
        max_flows=max_flows,
        max_rx_datagram_size=max_rx,
    )


def admit(m: FlowManager, now: float, src: tuple[str, int], payload: bytes = b"q") -> int:
    m.handle_client_datagram(now, src, payload)
    selects = [o for o in m.take_outputs() if isinstance(o, SelectBackend)]
    assert len(selects) == 1
    return selects[0].flow


def establish(m: FlowManager, now: float, src: tuple[str, int], payload: bytes = b"q") -> int:
    fid = admit(m, now, src, payload)
    m.handle_backend_resolved(now, fid, "b0", BK)
    m.take_outputs()
    return fid


def of_type(outs: list[OutputT], kind: type) -> list[OutputT]:
    return [o for o in outs if isinstance(o, kind)]


# -- scenarios 1-3: drops before admission


def test_1_unrouted_listener_drops_no_backend() -> None:
    m = FlowManager(max_flows=4)
    m.handle_client_datagram(0.0, C1, b"hi")
    assert m.take_outputs() == [Drop(DropReason.NO_BACKEND)]
    assert m.flow_count() == 0
    assert m.poll_timeout() is None


def test_2_empty_payload_is_invalid() -> None:
    m = make()
    m.handle_client_datagram(0.0, C1, b"")
    assert m.take_outputs() == [Drop(DropReason.INVALID)]
    assert m.flow_count() == 0


def test_2b_empty_payload_on_unrouted_listener_is_no_backend() -> None:
    m = FlowManager(max_flows=4)
    m.handle_client_datagram(0.0, C1, b"")
    assert m.take_outputs() == [Drop(DropReason.NO_BACKEND)]


def test_3_oversize_is_truncated_even_when_unrouted() -> None:
    m = make(max_rx=4)
    m.handle_client_datagram(0.0, C1, b"toolong")
    assert m.take_outputs() == [Drop(DropReason.TRUNCATED)]
    assert m.flow_count() == 0
    unrouted = FlowManager(max_flows=4, max_rx_datagram_size=4)
    unrouted.handle_client_datagram(0.0, C1, b"toolong")
    assert unrouted.take_outputs() == [Drop(DropReason.TRUNCATED)]
    m.handle_client_datagram(0.0, C1, b"four")  # exactly max_rx is accepted
    assert CREATED in m.take_outputs()


# -- scenarios 4-8: admission, reuse, caps


def test_4_new_source_selects_then_resolve_opens_and_sends() -> None:
    m = make()
    m.handle_client_datagram(0.0, C1, b"query")
    outs = m.take_outputs()
    assert outs[:2] == [CREATED, SelectBackend(0, "dns", outs[1].key)]  # type: ignore[union-attr]
    assert outs[2:] == [ArmTimer(30.0)]
    assert not of_type(outs, SendToBackend)
    m.handle_backend_resolved(0.5, 0, "b0", BK)
    assert m.take_outputs() == [
        OpenUpstream(0, "b0", BK),
        SendToBackend(0, BK, b"query"),
        ArmTimer(30.5),
    ]
    view = m.flow(0)
    assert view is not None
    assert view.phase is FlowPhase.ESTABLISHED
    assert view.requests_seen == 1


def test_5_same_source_reuses_the_flow() -> None:
    m = make()
    fid = establish(m, 0.0, C1, b"query")
    m.handle_client_datagram(1.0, C1, b"q2")
    outs = m.take_outputs()
    assert not of_type(outs, SelectBackend)
    assert outs[0] == SendToBackend(fid, BK, b"q2")
    assert m.flow_count() == 1


def test_6_responses_cap_closes_after_delivering_the_reply() -> None:
    m = make(responses=1)
    fid = establish(m, 0.0, C1)
    m.handle_backend_datagram(0.1, fid, b"answer")
    assert m.take_outputs() == [
        SendToClient(fid, C1, b"answer"),
        EVICTED,
        CloseFlow(fid, CloseReason.RESPONSES_REACHED),
    ]
    assert m.flow_count() == 0
    assert m.poll_timeout() is None


def test_7_requests_cap_closes_after_forwarding_the_last_request() -> None:
    m = make(requests=2)
    fid = establish(m, 0.0, C1, b"r1")
    m.handle_client_datagram(0.1, C1, b"r2")
    assert m.take_outputs() == [
        SendToBackend(fid, BK, b"r2"),
        EVICTED,
        CloseFlow(fid, CloseReason.REQUESTS_REACHED),
    ]
    assert m.flow_count() == 0
    m.handle_client_datagram(0.2, C1, b"r3")  # a third datagram opens a new flow
    outs = m.take_outputs()
    assert outs[0] == CREATED
    assert [o.flow for o in of_type(outs, SelectBackend)] == [fid + 1]  # type: ignore[union-attr]
    assert m.flow_count() == 1


def test_both_caps_tripping_together_report_responses() -> None:
    m = make(requests=1, responses=1, max_flows=2)
    fid = admit(m, 0.0, C1)
    # Through the API a forward trips requests before any reply could trip responses.
    m.handle_backend_resolved(0.0, fid, "b0", BK)
    assert m.take_outputs()[-1] == CloseFlow(fid, CloseReason.REQUESTS_REACHED)
    cfg = ClusterConfig(cluster="c", requests=1, responses=1)
    assert teardown_reason(cfg, 1, 1) is CloseReason.RESPONSES_REACHED
    assert teardown_reason(cfg, 0, 0) is None
    assert teardown_reason(ClusterConfig(cluster="c"), 10**9, 10**9) is None


def test_8_cap_sheds_new_flows_and_keeps_the_existing_one() -> None:
    m = make(max_flows=1)
    establish(m, 0.0, C1)
    m.handle_client_datagram(0.1, C2, b"x")
    assert m.take_outputs() == [SHED, Drop(DropReason.SHED)]
    assert m.flow_count() == 1
    assert m.counters.flows_shed == 1
    m.handle_client_datagram(0.2, C1, b"still served")
    assert of_type(m.take_outputs(), SendToBackend)


def test_cap_of_zero_sheds_everything() -> None:
    m = make(max_flows=0)
    m.handle_client_datagram(0.0, C1, b"x")
    assert m.take_outputs() == [SHED, Drop(DropReason.SHED)]


# -- scenarios 9-13: idle timers, drain, snapshots


def test_9_idle_expiry_closes_and_disarms() -> None:
    m = make(front_timeout=10.0)
    fid = establish(m, 0.0, C1)
    m.handle_timeout(11.0)
    assert m.take_outputs() == [EVICTED, CloseFlow(fid, CloseReason.IDLE)]
    assert m.flow_count() == 0
    assert m.poll_timeout() is None


def test_10_traffic_pushes_the_deadline_out() -> None:
    m = make(front_timeout=10.0)
    fid = establish(m, 0.0, C1)
    gen = m.flow(fid).timer_gen  # type: ignore[union-attr]
    m.handle_client_datagram(5.0, C1, b"again")
    assert m.flow(fid).timer_gen != gen  # type: ignore[union-attr]
    assert m.take_outputs()[-1] == ArmTimer(15.0)
    m.handle_timeout(10.0)  # a stale firing keeps the refreshed flow and re-arms
    assert m.take_outputs() == [ArmTimer(15.0)]
    assert m.flow_count() == 1
    m.handle_timeout(16.0)
    assert m.take_outputs() == [EVICTED, CloseFlow(fid, CloseReason.IDLE)]


def test_11_drain_sheds_new_sources_and_keeps_live_flows() -> None:
    m = make()
    fid = establish(m, 0.0, C1)
    m.drain(1.0)
    assert m.is_draining()
    m.handle_client_datagram(1.0, C2, b"new")
    assert m.take_outputs() == [Drop(DropReason.SHED)]  # no FlowShed for a drain shed
    m.handle_client_datagram(1.0, C1, b"old")
    assert m.take_outputs()[0] == SendToBackend(fid, BK, b"old")
    m.close_all(2.0)
    m.take_outputs()
    m.set_max_flows(3.0, 100)
    m.handle_client_datagram(3.0, C2, b"new")
    assert m.take_outputs() == [Drop(DropReason.SHED)]  # the latch survives close-all
    assert m.counters.flows_shed == 0


def test_12_reconfiguration_applies_to_new_flows_only() -> None:
    m = make(responses=0)
    fid = establish(m, 0.0, C1)
    m.set_cluster(0.5, ClusterConfig(cluster="dns", responses=1))
    m.handle_backend_datagram(1.0, fid, b"reply")
    assert not of_type(m.take_outputs(), CloseFlow)
    assert m.flow_count() == 1
    new = establish(m, 1.0, C2)
    m.handle_backend_datagram(1.1, new, b"reply")
    assert m.take_outputs()[-1] == CloseFlow(new, CloseReason.RESPONSES_REACHED)


def test_13_one_tick_closes_every_expired_flow_in_deadline_order() -> None:
    m = make(front_timeout=5.0)
    fids = [establish(m, i / 100, (f"10.0.1.{i}", 1000)) for i in range(10)]
    m.handle_timeout(6.0)
    outs = m.take_outputs()
    assert of_type(outs, CloseFlow) == [CloseFlow(f, CloseReason.IDLE) for f in fids]
    assert outs.count(EVICTED) == 10
    assert m.flow_count() == 0
    assert m.poll_timeout() is None


# -- scenario 14: PROXY protocol v2


def test_14_proxy_header_on_the_first_forward_only() -> None:
    m = make(send_proxy_protocol=True)
    fid = admit(m, 0.0, C1, b"q1")
    m.handle_backend_resolved(0.0, fid, "b0", BK)
    first = of_type(m.take_outputs(), SendToBackend)[0].payload  # type: ignore[union-attr]
    assert len(first) == 28 + 2
    assert first[12] == 0x21
    assert first[13] == 0x12
    assert first[28:] == b"q1"
    m.handle_client_datagram(0.1, C1, b"q2")
    assert of_type(m.take_outputs(), SendToBackend)[0].payload == b"q2"  # type: ignore[union-attr]
    assert m.counters.bytes_in == 4  # the header is not counted


def test_14b_proxy_header_on_every_forward() -> None:
    m = make(send_proxy_protocol=True, proxy_protocol_every_datagram=True)
    fid = establish(m, 0.0, C1, b"q1")
    for i in range(3):
        m.handle_client_datagram(0.1 + i, C1, b"qq")
        payload = of_type(m.take_outputs(), SendToBackend)[0].payload  # type: ignore[union-attr]
        assert payload[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
        assert payload[28:] == b"qq"
    assert m.flow(fid).proxy_header_pending  # type: ignore[union-attr]


def test_14c_no_proxy_header_by_default() -> None:
    m = make()
    fid = admit(m, 0.0, C1, b"q1")
    m.handle_backend_resolved(0.0, fid, "b0", BK)
    assert of_type(m.take_outputs(), SendToBackend)[0].payload == b"q1"  # type: ignore[union-attr]


# -- scenarios 15-20: close-all, abort, buffering


def test_15_close_all_closes_established_and_awaiting_flows() -> None:
    m = make()
    for i in range(4):
        establish(m, 0.0, (f"10.0.2.{i}", 1))
    for i in range(2):
        admit(m, 0.0, (f"10.0.3.{i}", 1))
    m.close_all(1.0)
    outs = m.take_outputs()
    assert outs.count(EVICTED) == 6
    assert of_type(outs, CloseFlow) == [CloseFlow(i, CloseReason.DRAIN) for i in range(6)]
    assert not of_type(outs, ArmTimer)
    assert m.poll_timeout() is None
    assert not m.is_draining()  # close-all does not latch draining


def test_16_close_all_is_idempotent() -> None:
    m = make()
    m.close_all(0.0)
    assert m.take_outputs() == []
    fid = establish(m, 0.0, C1)
    m.close_all(1.0)
    assert m.take_outputs() == [EVICTED, CloseFlow(fid, CloseReason.DRAIN)]
    m.close_all(2.0)
    assert m.take_outputs() == []


def test_17_abort_established_flow_once() -> None:
    m = make()
    fid = establish(m, 0.0, C1)
    m.abort_flow(1.0, fid)
    assert m.take_outputs() == [EVICTED, CloseFlow(fid, CloseReason.ABORTED)]
    m.abort_flow(1.0, fid)
    assert m.take_outputs() == []


def test_18_abort_awaiting_flow_frees_its_slot() -> None:
    m = make(max_flows=1)
    fid = admit(m, 0.0, C1)
    m.abort_flow(0.1, fid)
    assert m.take_outputs() == [EVICTED, CloseFlow(fid, CloseReason.ABORTED)]
    assert admit(m, 0.2, C1) == fid + 1


def test_19_abort_unknown_id_is_a_no_op() -> None:
    m = make()
    establish(m, 0.0, C1)
    before = m.counters.snapshot()
    m.abort_flow(1.0, 999)
    assert m.take_outputs() == []
    assert m.counters.snapshot() == before


def test_20_burst_while_awaiting_keeps_only_the_newest_datagram() -> None:
    m = make(requests=2)
    fid = admit(m, 0.0, C1, b"1")
    for i, payload in enumerate((b"2", b"3", b"4")):
        m.handle_client_datagram(0.1 * (i + 1), C1, payload)
        assert m.take_outputs() in ([], [ArmTimer(30.0 + 0.1 * (i + 1))])
    view = m.flow(fid)
    assert view is not None
    assert view.requests_seen == 0
    assert view.pending_payload == b"4"
    assert m.counters.buffered_overwritten == 3
    m.handle_backend_resolved(0.5, fid, "b0", BK)
    outs = m.take_outputs()
    assert of_type(outs, OpenUpstream) == [OpenUpstream(fid, "b0", BK)]
    assert of_type(outs, SendToBackend) == [SendToBackend(fid, BK, b"4")]
    assert m.flow(fid).requests_seen == 1  # type: ignore[union-attr]
    m.handle_client_datagram(0.6, C1, b"5")
    assert m.take_outputs() == [
        SendToBackend(fid, BK, b"5"),
        EVICTED,
        CloseFlow(fid, CloseReason.REQUESTS_REACHED),
    ]


# -- resolution answers, ids, affinity


def test_resolve_unknown_id_drops_and_late_resolve_is_ignored() -> None:
    m = make()
    m.handle_backend_resolved(0.0, 7, "b0", BK)
    assert m.take_outputs() == [Drop(DropReason.UNKNOWN_FLOW)]
    fid = establish(m, 0.0, C1)
    m.handle_backend_resolved(0.1, fid, "b1", ("127.0.0.1", 54))
    assert m.take_outputs() == []
    assert m.flow(fid).backend_addr == BK  # type: ignore[union-attr]


def test_backend_datagram_on_awaiting_unknown_or_oversize_flow_drops() -> None:
    m = make(max_rx=8)
    fid = admit(m, 0.0, C1)
    m.handle_backend_datagram(0.0, fid, b"early")
    assert m.take_outputs() == [Drop(DropReason.UNKNOWN_FLOW)]
    m.handle_backend_datagram(0.0, 42, b"x")
    assert m.take_outputs() == [Drop(DropReason.UNKNOWN_FLOW)]
    m.handle_backend_resolved(0.0, fid, "b0", BK)
    m.take_outputs()
    m.handle_backend_datagram(0.0, fid, b"123456789")
    assert m.take_outputs() == [Drop(DropReason.TRUNCATED)]


def test_ids_are_monotonic_so_a_stale_id_never_aliases_a_new_flow() -> None:
    m = make(max_flows=1)
    first = establish(m, 0.0, C1)
    m.abort_flow(0.1, first)
    second = establish(m, 0.2, C2)
    assert second != first
    m.take_outputs()
    m.handle_backend_datagram(0.3, first, b"late reply for the old flow")
    assert m.take_outputs() == [Drop(DropReason.UNKNOWN_FLOW)]


def test_affinity_modes_key_on_ip_or_ip_and_port() -> None:
    m = make()
    fid = establish(m, 0.0, ("10.0.0.1", 1))
    m.handle_client_datagram(0.1, ("10.0.0.1", 2), b"other port")
    assert m.take_outputs()[0] == SendToBackend(fid, BK, b"other port")
    assert m.lookup(("10.0.0.1", 0)) == fid
    p = make(affinity_with_port=True)
    a = establish(p, 0.0, ("10.0.0.1", 1))
    b = establish(p, 0.0, ("10.0.0.1", 2))
    assert a != b
    assert p.lookup(("10.0.0.1", 2)) == b


def test_affinity_key_depends_on_seed_and_mode() -> None:
    def key(seed: int, with_port: bool, src: tuple[str, int]) -> int:
        m = FlowManager(
            ClusterConfig(cluster="c", affinity_with_port=with_port), max_flows=1, hash_seed=seed
        )
        m.handle_client_datagram(0.0, src, b"x")
        return m.take_outputs()[1].key  # type: ignore[union-attr]

    assert key(1, False, ("10.0.0.1", 1)) == key(1, False, ("10.0.0.1", 2))
    assert key(1, True, ("10.0.0.1", 1)) != key(1, True, ("10.0.0.1", 2))
    assert key(1, False, ("10.0.0.1", 1)) != key(2, False, ("10.0.0.1", 1))
    assert key(1, False, ("10.0.0.1", 1)) == key(1, False, ("10.0.0.1", 1))


def test_affinity_flip_never_unmaps_a_newer_flow() -> None:
    m = make(front_timeout=5.0)
    old = establish(m, 0.0, C1)
    m.set_cluster(1.0, ClusterConfig(cluster="dns", affinity_with_port=True, front_timeout=50.0))
    new = establish(m, 1.0, C1)
    assert new != old
    m.handle_timeout(5.0)
    assert of_type(m.take_outputs(), CloseFlow) == [CloseFlow(old, CloseReason.IDLE)]
    assert m.lookup(C1) == new
    m.handle_client_datagram(6.0, C1, b"x")
    assert m.take_outputs()[0] == SendToBackend(new, BK, b"x")


# -- drops, counters, timers


def test_each_drop_is_counted_once() -> None:
    m = make(max_flows=1, max_rx=4)
    establish(m, 0.0, C1)
    m.handle_client_datagram(0.0, C1, b"")
    m.handle_client_datagram(0.0, C1, b"12345")
    m.handle_client_datagram(0.0, C2, b"x")
    m.handle_backend_datagram(0.0, 99, b"x")
    drops = of_type(m.take_outputs(), Drop)
    assert len(drops) == 4
    assert m.counters.dropped == 4
    assert m.counters.dropped_by_reason == {
        DropReason.INVALID: 1,
        DropReason.TRUNCATED: 1,
        DropReason.NO_BACKEND: 0,
        DropReason.SHED: 1,
        DropReason.UNKNOWN_FLOW: 1,
    }


def test_shrinking_the_cap_evicts_nothing() -> None:
    m = make(max_flows=3)
    for i in range(3):
        establish(m, 0.0, (f"10.0.4.{i}", 1))
    m.set_max_flows(1.0, 1)
    assert m.take_outputs() == []
    assert m.flow_count() == 3
    assert m.highest_max_flows() == 3
    m.handle_client_datagram(1.0, C1, b"x")
    assert m.take_outputs() == [SHED, Drop(DropReason.SHED)]


def test_max_rx_update_applies_to_both_directions() -> None:
    m = make()
    fid = establish(m, 0.0, C1)
    m.set_max_rx_datagram_size(0.0, 2)
    m.handle_client_datagram(0.0, C1, b"abc")
    m.handle_backend_datagram(0.0, fid, b"abc")
    assert m.take_outputs() == [Drop(DropReason.TRUNCATED)] * 2


def test_back_timeout_governs_after_a_reply_and_can_move_the_deadline_earlier() -> None:
    m = make(front_timeout=30.0, back_timeout=2.0)
    fid = establish(m, 0.0, C1)
    assert m.poll_timeout() == 30.0
    m.handle_backend_datagram(1.0, fid, b"r")
    assert m.take_outputs()[-1] == ArmTimer(3.0)
    m.handle_timeout(3.0)
    assert m.take_outputs() == [EVICTED, CloseFlow(fid, CloseReason.IDLE)]


def test_armed_deadline_is_the_minimum_and_changes_are_announced_once() -> None:
    m = make(front_timeout=10.0)
    a = establish(m, 0.0, C1)
    b = establish(m, 1.0, C2)
    assert m.poll_timeout() == 10.0
    m.handle_client_datagram(2.0, C2, b"b")  # not the minimum: no ArmTimer
    assert not of_type(m.take_outputs(), ArmTimer)
    m.handle_client_datagram(3.0, C1, b"a")  # the minimum moves to b's 12.0
    assert m.take_outputs()[-1] == ArmTimer(12.0)
    m.abort_flow(4.0, b)
    assert m.take_outputs()[-1] == ArmTimer(13.0)
    m.abort_flow(4.0, a)
    assert not of_type(m.take_outputs(), ArmTimer)  # disarm is silent
    assert m.poll_timeout() is None


def test_early_or_spurious_firing_rearms_the_same_deadline() -> None:
    m = make(front_timeout=10.0)
    establish(m, 0.0, C1)
    m.take_outputs()
    m.handle_timeout(9.95)
    assert m.take_outputs() == [ArmTimer(10.0)]
    empty = make()
    empty.handle_timeout(1.0)
    assert empty.take_outputs() == []


def test_zero_timeout_flow_expires_on_the_next_tick() -> None:
    m = make(front_timeout=0.0)
    fid = admit(m, 5.0, C1)
    assert m.poll_timeout() == 5.0
    m.handle_timeout(5.0)
    assert m.take_outputs() == [EVICTED, CloseFlow(fid, CloseReason.IDLE)]


def test_payload_views_are_copied() -> None:
    m = make()
    buf = bytearray(b"first")
    fid = admit(m, 0.0, C1, b"x")
    m.handle_client_datagram(0.0, C1, memoryview(buf))
    buf[:] = b"XXXXX"
    m.handle_backend_resolved(0.0, fid, "b0", BK)
    assert of_type(m.take_outputs(), SendToBackend) == [SendToBackend(fid, BK, b"first")]
    m.handle_client_datagram(0.0, C1, memoryview(buf))
    out = of_type(m.take_outputs(), SendToBackend)[0]
    buf[:] = b"YYYYY"
    assert out.payload == b"XXXXX"  # type: ignore[union-attr]


def test_handle_input_matches_the_direct_methods() -> None:
    direct, records = make(max_flows=2), make(max_flows=2)
    script: list[InputT] = [
        ClientDatagram(C1, b"a"),
        BackendResolved(0, "b0", BK),
        BackendDatagram(0, b"r"),
        SetCluster(ClusterConfig(cluster="dns", requests=1)),
        SetMaxFlows(5),
        SetMaxRxDatagramSize(100),
        ClientDatagram(C2, b"b"),
        AbortFlow(1),
        Timeout(),
        Drain(),
        CloseAll(),
    ]
    now = 0.0
    for inp in script:
        now += 1.0
        records.handle_input(now, inp)
    now = 0.0
    ops = [
        lambda t: direct.handle_client_datagram(t, C1, b"a"),
        lambda t: direct.handle_backend_resolved(t, 0, "b0", BK),
        lambda t: direct.handle_backend_datagram(t, 0, b"r"),
        lambda t: direct.set_cluster(t, ClusterConfig(cluster="dns", requests=1)),
        lambda t: direct.set_max_flows(t, 5),
        lambda t: direct.set_max_rx_datagram_size(t, 100),
        lambda t: direct.handle_client_datagram(t, C2, b"b"),
        lambda t: direct.abort_flow(t, 1),
        direct.handle_timeout,
        direct.drain,
        direct.close_all,
    ]
    for op in ops:
        now += 1.0
        op(now)
    assert direct.take_outputs() == records.take_outputs()
    assert direct.counters == records.counters
    with pytest.raises(TypeError):
        direct.handle_input(0.0, object())  # type: ignore[arg-type]


def test_caller_misuse_raises() -> None:
    with pytest.raises(ValueError):
        FlowManager(max_flows=-1)
    m = make()
    with pytest.raises(ValueError):
        m.set_max_flows(0.0, -1)
    with pytest.raises(ValueError):
        m.set_max_rx_datagram_size(0.0, -1)
    with pytest.raises(ValueError):
        ClusterConfig(cluster="c", requests=-1)


@pytest.mark.skipif(not __debug__, reason="invariants run only in debug mode")
def test_time_going_backwards_is_reported() -> None:
    m = make()
    m.handle_client_datagram(5.0, C1, b"x")
    with pytest.raises(InvariantViolation):
        m.handle_client_datagram(4.0, C1, b"x")


def test_check_invariants_detects_corruption() -> None:
    m = make()
    fid = establish(m, 0.0, C1)
    m.check_invariants()
    m._table[("10.9.9.9", 0)] = fid  # a second key behind one id
    with pytest.raises(InvariantViolation, match="injective"):
        m.check_invariants()
    del m._table[("10.9.9.9", 0)]
    m._flows[fid].idle_deadline = 1.0  # armed deadline no longer the minimum
    with pytest.raises(InvariantViolation, match="minimum"):
        m.check_invariants()


def test_deadline_index_stays_bounded_when_flows_close_on_a_cap() -> None:
    """DNS-like flows (responses=1) close on their reply, long before their idle deadline."""
    m = make(max_flows=100_000, responses=1, front_timeout=30.0)
    establish(m, 0.0, ("10.1.0.1", 53))  # one idle flow that stays
    for index in range(3000):
        fid = establish(m, 0.0, (f"10.2.{index // 250}.{index % 250 + 1}", 53))
        m.handle_backend_datagram(0.0, fid, b"answer")
        m.take_outputs()
    assert m.flow_count() == 1
    assert len(m._deadlines) <= 2 * m.flow_count() + 64
