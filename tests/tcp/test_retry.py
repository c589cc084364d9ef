"""Backend back-off (upstream retry.rs): waits, the down threshold, reset on success."""

from __future__ import annotations

import random

from sozu.worker.core.balancing import Backend, LoadBalancingPolicy
from sozu.worker.core.clusters import TcpCluster
from sozu.worker.core.retry import MAX_TRIES, RetryPolicy


def test_first_failure_waits_exactly_one_second() -> None:
    policy = RetryPolicy(random.Random(1))
    assert policy.can_open(0.0)
    policy.fail(10.0)
    assert not policy.can_open(10.5)
    assert policy.can_open(11.0)


def test_waits_grow_and_the_backend_goes_down_after_six_failures() -> None:
    policy = RetryPolicy(random.Random(7))
    now = 0.0
    went_down = []
    for attempt in range(1, 9):
        went_down.append(policy.fail(now))
        wait = policy.until - now
        assert 1.0 <= wait < 2 ** min(attempt - 1, MAX_TRIES) + 1
        now = policy.until
    assert went_down == [False] * 5 + [True, False, False]
    assert policy.is_down
    assert policy.succeed() is True
    assert (policy.tries, policy.is_down, policy.can_open(0.0)) == (0, False, True)


def test_failures_during_a_back_off_count_once() -> None:
    policy = RetryPolicy(random.Random(3))
    policy.fail(0.0)
    until = policy.until
    policy.fail(0.5)
    assert (policy.tries, policy.until) == (1, until)


def test_cluster_reports_a_backend_down_once_its_back_off_is_exhausted() -> None:
    from sozu.worker.core.balancing import Backend, LoadBalancingPolicy
    from sozu.worker.core.clusters import TcpCluster

    events: list[tuple[str, str, str]] = []
    cluster = TcpCluster(
        "c",
        LoadBalancingPolicy.ROUND_ROBIN,
        [Backend("b", ("127.0.0.1", 1))],
        rng=random.Random(3),
        on_event=lambda *event: events.append(event),
    )
    now = 0.0
    for _ in range(MAX_TRIES):
        assert not cluster.is_down("b")
        cluster.connection_failed("b", now)
        now += 2.0**MAX_TRIES
    assert cluster.is_down("b")
    assert cluster.connect_errors == {"b": MAX_TRIES}
    assert events == [("BACKEND_DOWN", "c", "b")]
    cluster.connection_succeeded("b")
    assert not cluster.is_down("b")
    cluster.clear_counters()
    assert cluster.connect_errors == {}


def test_a_success_during_back_off_leaves_the_cluster_consistent() -> None:
    """A connect that succeeds while another to the same backend timed out ends its back-off
    (the next choice used to raise KeyError and take the worker down)."""
    cluster = TcpCluster(
        "app",
        LoadBalancingPolicy.ROUND_ROBIN,
        [Backend("b", ("127.0.0.1", 1))],
        rng=random.Random(1),
    )
    cluster.connection_failed("b", 100.0)
    assert cluster.choose(100.1) is None  # backing off, no other backend
    cluster.connection_succeeded("b")
    chosen = cluster.choose(100.5)
    assert chosen is not None
    assert chosen.id == "b"
    assert cluster.usable("b", 100.6) is not None
    assert cluster.check_invariants()
