"""Load balancing: the reference values of docs/udp.md bit for bit, disruption and balance
figures, scenarios 27-32, policies."""

from __future__ import annotations

import functools
import random

import pytest

from sozu.worker.core.balancing import (
    DEFAULT_HASH_SEED,
    Backend,
    BackendSelector,
    HealthBook,
    HealthState,
    LoadBalancingPolicy,
    MaglevTable,
    encode_address,
    hash_backend,
    hrw_score,
    hrw_select,
    smallest_prime_at_least,
)

P = LoadBalancingPolicy
FIVE = [Backend(f"b{i}", (f"127.0.0.{i + 1}", 8000 + i)) for i in range(5)]
SIX = [*FIVE, Backend("b5", ("127.0.0.6", 8005))]
KEYS = range(20_000)


def pairs(backends: list[Backend]) -> list[tuple[bytes, int]]:
    return [(encode_address(b.address), b.effective_weight) for b in backends]


def hrw_winners(backends: list[Backend], keys: range = KEYS) -> list[str]:
    return list(_hrw_winners(tuple(backends), keys))


@functools.cache
def _hrw_winners(backends: tuple[Backend, ...], keys: range) -> tuple[str, ...]:
    p = pairs(list(backends))
    return tuple(backends[hrw_select(k, p)].id for k in keys)


def maglev_winners(backends: list[Backend], size: int, keys: range = KEYS) -> list[str]:
    return list(_maglev_winners(tuple(backends), size, keys))


@functools.cache
def _maglev_winners(backends: tuple[Backend, ...], size: int, keys: range) -> tuple[str, ...]:
    table = MaglevTable(pairs(list(backends)), size)
    return tuple(backends[table.slots[k % table.size]].id for k in keys)


def moved(a: list[str], b: list[str]) -> float:
    return round(100 * sum(x != y for x, y in zip(a, b, strict=True)) / len(a), 1)


# -- reference values


def test_hash_backend_vectors() -> None:
    assert DEFAULT_HASH_SEED == 0x9E3779B97F4A7C15
    assert hash_backend(DEFAULT_HASH_SEED, 42, ("127.0.0.3", 8002)) == 0xF0155D1D445F315A
    assert hash_backend(DEFAULT_HASH_SEED, 0, ("127.0.0.1", 8000)) == 0x29AA65CB6B4A82A9


def test_hrw_vectors() -> None:
    p = pairs(FIVE)
    expected = {0: "127.0.0.5", 1: "127.0.0.1", 42: "127.0.0.3", 12345: "127.0.0.2"}
    for key, host in expected.items():
        assert FIVE[hrw_select(key, p)].address[0] == host
    selector = BackendSelector(P.HRW, FIVE)
    for key, host in expected.items():
        chosen = selector.select(key)
        assert chosen is not None
        assert chosen.address[0] == host


def test_maglev_m13_vector() -> None:
    table = MaglevTable(pairs(FIVE[:3]), 13)
    assert table.size == 13
    assert table.offsets == [12, 11, 0]
    assert table.skips == [12, 10, 4]
    assert table.slots == [2, 0, 1, 2, 2, 1, 2, 0, 1, 0, 0, 1, 0]


def test_maglev_default_size_vector() -> None:
    table = MaglevTable(pairs(FIVE))
    assert table.size == 65_537
    assert table.quotas == [13108, 13108, 13107, 13107, 13107]
    assert table.slots_owned == table.quotas
    for key, host in {0: "127.0.0.3", 42: "127.0.0.5", 12345: "127.0.0.4"}.items():
        assert FIVE[table.slots[key % table.size]].address[0] == host
    selector = BackendSelector(P.MAGLEV, FIVE)
    assert selector.select(12345) == FIVE[3]


def test_hrw_score_edge_cases() -> None:
    assert hrw_score(2**64 - 1, 100) == float("-inf")  # u rounds to 1.0, ln(u) == 0
    assert hrw_score(0, 100) > 0
    assert hrw_score(2**63, 200) == 2 * hrw_score(2**63, 100)


def test_smallest_prime() -> None:
    assert [smallest_prime_at_least(n) for n in (0, 1, 2, 3, 4, 14, 1000, 65_536)] == [
        2,
        2,
        2,
        3,
        5,
        17,
        1009,
        65_537,
    ]


# -- disruption and balance


def test_disruption_figures_of_the_reference() -> None:
    without_b3 = [b for b in FIVE if b.id != "b3"]
    base = hrw_winners(FIVE)
    assert moved(base, hrw_winners(SIX)) == 16.5
    assert moved(base, hrw_winners(without_b3)) == 20.0
    base_1009 = maglev_winners(FIVE, 1009)
    assert moved(base_1009, maglev_winners(SIX, 1009)) == 18.0
    assert moved(base_1009, maglev_winners(without_b3, 1009)) == 20.7
    base_big = maglev_winners(FIVE, 65_537)
    assert moved(base_big, maglev_winners(SIX, 65_537)) == 16.7
    assert moved(base_big, maglev_winners(without_b3, 65_537)) == 20.0
    table = MaglevTable(pairs(FIVE))
    allowed = [b.id != "b3" for b in FIVE]
    unhealthy = [FIVE[table.lookup(k, allowed)].id for k in KEYS]
    assert moved(base_big, unhealthy) == 20.0


def test_hrw_only_moves_keys_onto_an_added_backend() -> None:
    for before, after in zip(hrw_winners(FIVE), hrw_winners(SIX), strict=True):
        assert after in (before, "b5")


def test_balance_within_reference_bounds() -> None:
    for winners, tolerance in ((hrw_winners(FIVE), 0.35), (maglev_winners(FIVE, 1009), 0.15)):
        for b in FIVE:
            share = winners.count(b.id) / len(winners)
            assert abs(share - 0.2) <= 0.2 * tolerance, (b.id, share)
    assert moved(maglev_winners(FIVE, 1009), maglev_winners(SIX, 1009)) < 50.0


def test_weight_400_against_100_takes_most_keys() -> None:
    heavy = [Backend("h", ("127.0.0.1", 8000), weight=400), Backend("l", ("127.0.0.2", 8001))]
    for winners in (hrw_winners(heavy), maglev_winners(heavy, 1009)):
        assert winners.count("h") / len(winners) > 0.7


# -- scenarios 29-32


def test_29_hrw_is_stable_per_key_and_round_robins_without_key() -> None:
    three = FIVE[:3]
    selector = BackendSelector(P.HRW, three)
    first = selector.select(42)
    assert all(selector.select(42) == first for _ in range(50))
    assert [selector.select() for _ in range(4)] == [three[0], three[1], three[2], three[0]]


def test_30_hrw_removal_only_moves_the_removed_backends_keys() -> None:
    six = SIX
    keys = range(2000)
    before = hrw_winners(six, keys)
    removed = "b2"
    after = hrw_winners([b for b in six if b.id != removed], keys)
    for b, a in zip(before, after, strict=True):
        if b != removed:
            assert a == b
    selector = BackendSelector(P.HRW, six)
    pinned = [selector.select(k) for k in keys]
    selector.remove_backend(removed)
    for k, chosen in zip(keys, pinned, strict=True):
        assert chosen is not None
        if chosen.id != removed:
            assert selector.select(k) == chosen


def test_31_maglev_partial_outage_needs_no_rebuild() -> None:
    selector = BackendSelector(P.MAGLEV, FIVE, maglev_size=1009)
    keys = range(3000)
    before = [selector.select(k) for k in keys]
    assert selector.maglev_rebuilds == 1
    selector.set_healthy("b1", False)
    after = [selector.select(k) for k in keys]
    assert selector.maglev_rebuilds == 1
    for b, a in zip(before, after, strict=True):
        assert a is not None
        assert a.id != "b1"
        if b is not None and b.id != "b1":
            assert a == b


def test_31_maglev_disjoint_candidates_round_robin_and_tiny_table() -> None:
    # Size 1 rounds up to the prime 2: three backends share two slots, b2 owns none.
    selector = BackendSelector(P.MAGLEV, FIVE[:3], maglev_size=1)
    assert selector.select(0) is not None
    table = selector._maglev
    assert table is not None
    assert table.size == 2
    assert table.slots_owned == [1, 1, 0]
    selector.set_healthy("b0", False)
    selector.set_healthy("b1", False)
    assert [selector.select(k) for k in range(3)] == [FIVE[2]] * 3
    assert not table.owns_any([False, False, True])
    assert table.lookup(7, [False, False, True]) == -1
    assert selector.maglev_rebuilds == 1


def test_maglev_rebuilds_only_when_the_backend_set_changes() -> None:
    selector = BackendSelector(P.MAGLEV, FIVE, maglev_size=101)
    selector.select(1)
    assert selector.maglev_rebuilds == 1
    selector.set_healthy("b0", False)
    selector.set_retry_ok("b1", False)
    selector.add_backend(FIVE[2])  # identical re-add
    selector.set_backends(FIVE)
    for k in range(100):
        selector.select(k)
    assert selector.maglev_rebuilds == 1
    selector.add_backend(Backend("b2", FIVE[2].address, weight=300))  # in-place weight update
    selector.select(1)
    assert selector.maglev_rebuilds == 2
    selector.remove_backend("b4")
    selector.add_backend(Backend("b9", ("127.0.0.9", 9)))
    selector.select(1)
    selector.select(2)
    assert selector.maglev_rebuilds == 3  # lazily, once for both changes
    rr = BackendSelector(P.ROUND_ROBIN, FIVE)
    rr.select()
    assert rr.maglev_rebuilds == 0
    rr.set_policy(P.MAGLEV)
    rr.select(3)
    assert rr.maglev_rebuilds == 1


def test_32_fail_open_latch() -> None:
    selector = BackendSelector(P.HRW, FIVE[:3])
    for b in FIVE[:3]:
        selector.set_healthy(b.id, False)
    assert selector.select(5) is not None
    assert selector.fail_open_active
    assert selector.fail_open_decisions == 1
    selector.select(6)
    assert selector.fail_open_decisions == 2
    assert selector.fail_open_regimes == 1
    for b in FIVE[:3]:
        selector.set_retry_ok(b.id, False)
    assert selector.select(5) is None
    for b in FIVE[:3]:
        selector.set_retry_ok(b.id, True)
    selector.set_healthy("b1", True)
    assert selector.select(5) == FIVE[1]
    assert not selector.fail_open_active
    assert selector.fail_open_decisions == 2


def test_fail_open_can_be_disabled() -> None:
    selector = BackendSelector(P.HRW, FIVE[:2], fail_open=False)
    selector.set_healthy("b0", False)
    selector.set_healthy("b1", False)
    assert selector.select(1) is None
    assert selector.fail_open_decisions == 0
    selector.set_healthy("b0", True)
    assert selector.select(1) == FIVE[0]


def test_backups_serve_only_when_no_primary_can() -> None:
    primary = Backend("p", ("10.0.0.1", 1))
    backup = Backend("s", ("10.0.0.2", 1), backup=True)
    selector = BackendSelector(P.ROUND_ROBIN, [primary, backup])
    assert {selector.select() for _ in range(4)} == {primary}
    selector.set_healthy("p", False)
    assert {selector.select() for _ in range(4)} == {backup}
    selector.set_healthy("s", False)
    # Fail-open: every backend not in back-off, backups included.
    assert {selector.select() for _ in range(4)} == {primary, backup}
    assert selector.candidates() == ([primary, backup], True)


def test_empty_cluster_selects_nothing() -> None:
    for policy in (P.HRW, P.MAGLEV, P.ROUND_ROBIN, P.LEAST_LOADED):
        assert BackendSelector(policy).select(3) is None


# -- other policies


def test_round_robin_cycles_over_candidates() -> None:
    selector = BackendSelector(P.ROUND_ROBIN, FIVE[:3])
    assert [selector.select(k).id for k in range(6)] == ["b0", "b1", "b2"] * 2  # type: ignore[union-attr]
    selector.set_healthy("b1", False)
    assert {selector.select().id for _ in range(4)} == {"b0", "b2"}  # type: ignore[union-attr]


def test_random_is_weighted_and_reproducible() -> None:
    backends = [Backend("a", ("10.0.0.1", 1), weight=300), Backend("b", ("10.0.0.2", 1))]
    selector = BackendSelector(P.RANDOM, backends, rng=random.Random(7))
    ids = [selector.select().id for _ in range(4000)]  # type: ignore[union-attr]
    assert 0.70 < ids.count("a") / 4000 < 0.80
    again = BackendSelector(P.RANDOM, backends, rng=random.Random(7))
    assert [again.select().id for _ in range(4000)] == ids  # type: ignore[union-attr]


def test_randomised_policies_need_an_rng() -> None:
    with pytest.raises(ValueError, match="rng"):
        BackendSelector(P.RANDOM, FIVE)
    selector = BackendSelector(P.HRW, FIVE)
    with pytest.raises(ValueError, match="rng"):
        selector.set_policy(P.POWER_OF_TWO)


def test_least_loaded_uses_load_relative_to_weight() -> None:
    backends = [
        Backend("a", ("10.0.0.1", 1)),
        Backend("b", ("10.0.0.2", 1), weight=200),
        Backend("c", ("10.0.0.3", 1)),
    ]
    selector = BackendSelector(P.LEAST_LOADED, backends)
    assert selector.select(loads={"a": 5, "b": 8, "c": 5}).id == "b"  # type: ignore[union-attr]
    assert selector.select(loads={"a": 3, "b": 8, "c": 3}).id == "a"  # type: ignore[union-attr]
    assert selector.select().id == "a"  # type: ignore[union-attr]


def test_power_of_two_picks_the_lighter_of_two_distinct_draws() -> None:
    backends = [Backend(f"x{i}", (f"10.0.0.{i}", 1)) for i in range(4)]
    loads = {"x0": 9, "x1": 0, "x2": 9, "x3": 9}
    selector = BackendSelector(P.POWER_OF_TWO, backends, rng=random.Random(3))
    ids = [selector.select(loads=loads).id for _ in range(600)]  # type: ignore[union-attr]
    # x1 wins whenever drawn: in 1 - (3/4 * 2/3) = 1/2 of the draws.
    assert 0.42 < ids.count("x1") / 600 < 0.58
    assert (
        BackendSelector(P.POWER_OF_TWO, backends[:1], rng=random.Random(1)).select()
        == (backends[0])
    )


def test_selector_membership_api() -> None:
    selector = BackendSelector(P.HRW, FIVE[:2])
    selector.set_healthy("b0", False)
    selector.set_backends([FIVE[1], FIVE[0], FIVE[2]])  # health survives a reorder
    assert not selector.is_healthy("b0")
    assert selector.backends() == [FIVE[1], FIVE[0], FIVE[2]]
    assert selector.backend("b2") == FIVE[2]
    assert selector.backend("zz") is None
    assert selector.available_count() == 2
    assert not selector.remove_backend("zz")
    with pytest.raises(ValueError, match="duplicate"):
        selector.set_backends([FIVE[0], FIVE[0]])
    assert Backend("w", ("10.0.0.1", 1), weight=0).effective_weight == 1


# -- scenario 27: health hysteresis


def test_27_rise_and_fall() -> None:
    state = HealthState(rise=2, fall=3)
    assert state.healthy
    assert not state.record_failure()
    assert not state.record_failure()
    assert state.healthy
    assert state.record_failure()
    assert not state.healthy
    assert not state.record_success()
    assert not state.healthy
    assert state.record_success()
    assert state.healthy


def test_27_same_via_the_udp_probe_recorder_and_shared_state() -> None:
    book = HealthBook(rise=2, fall=3)
    assert book.is_healthy("b0")
    assert [book.record_udp_probe("b0", False) for _ in range(3)] == [False, False, True]
    assert not book.is_healthy("b0")
    assert [book.record_udp_probe("b0", True) for _ in range(2)] == [False, True]
    assert book.is_healthy("b0")
    # TCP success and UDP timeout alternating reset each other's streaks: never unhealthy.
    for _ in range(20):
        book.record_tcp_probe("b1", True)
        book.record_udp_probe("b1", False)
    assert book.is_healthy("b1")
    book.forget("b0")
    assert "b0" not in book.states


def test_health_rejects_nonsense_thresholds() -> None:
    with pytest.raises(ValueError):
        HealthState(rise=0)
    with pytest.raises(ValueError):
        HealthBook(fall=0)
