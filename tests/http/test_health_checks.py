"""HTTP health checks: the sans-io schedule and verdicts, the probe, and the trio shell against
real loopback HTTP backends that answer 200, then 500, then stop listening."""

from __future__ import annotations

import random
import socket

import msgspec
import pytest
import trio
import trio.testing

from sozu.command.state import ConfigState
from sozu.command.types import Backend, Cluster, HealthCheckConfig
from sozu.worker.core.balancing import LoadBalancingPolicy
from sozu.worker.core.cluster_view import backends_of
from sozu.worker.core.clusters import TcpCluster
from sozu.worker.core.http.health_checks import (
    MAX_STATUS_LINE,
    CheckTarget,
    HealthCheckEvent,
    HealthChecks,
    HttpProbe,
    parse_status_line,
    probe_request,
    status_ok,
)
from sozu.worker.shell.http_health_prober import HttpHealthChecks, http_probe


def check(**overrides: int | str) -> HealthCheckConfig:
    fields: dict[str, int | str] = {
        "uri": "/health",
        "interval": 10,
        "timeout": 5,
        "healthy_threshold": 3,
        "unhealthy_threshold": 3,
    }
    fields.update(overrides)
    return msgspec.convert(fields, HealthCheckConfig)


def target(backend_id: str, port: int = 8080) -> CheckTarget:
    return CheckTarget(backend_id, f"127.0.0.1:{port}", ("127.0.0.1", port))


def ev(kind: str, backend_id: str | None = None, cluster_id: str = "c") -> HealthCheckEvent:
    return HealthCheckEvent(kind, cluster_id, backend_id)  # type: ignore[arg-type]


class Book:
    """A `HealthChecks` with its invariants checked after every mutation."""

    def __init__(self) -> None:
        self.checks = HealthChecks()

    def configure(
        self, wanted: dict[str, tuple[HealthCheckConfig, list[CheckTarget]]]
    ) -> list[HealthCheckEvent]:
        events = self.checks.configure(wanted)
        self.checks.check_invariants()
        return events

    def due(self, now: float) -> list[HttpProbe]:
        probes = self.checks.due(now)
        self.checks.check_invariants()
        return probes

    def record(self, probe: HttpProbe, status: int | None) -> list[HealthCheckEvent]:
        events = self.checks.record(probe, status)
        self.checks.check_invariants()
        return events

    def round(self, now: float, statuses: dict[str, int | None]) -> list[HealthCheckEvent]:
        """Launch what is due at `now` and answer each probe with its backend's status."""
        events = []
        for probe in self.due(now):
            events.extend(self.record(probe, statuses[probe.backend_id]))
        return events


# -- wire format


def test_probe_request_is_the_documented_request() -> None:
    assert probe_request("/status?full=1", "[::1]:8080") == (
        b"GET /status?full=1 HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n"
        b"User-Agent: sozu-health-check\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"HTTP/1.1 200 OK\r\n", 200),
        (b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\n\r\n", 503),
        (b"HTTP/1.1 204\r\n", 204),
        (b"HTTP/1.1 404 \n", 404),
        (b"", None),
        (b"HTT", None),
        (b"HTTP/1.1 200 O", None),
    ],
)
def test_parse_status_line(data: bytes, status: int | None) -> None:
    assert parse_status_line(data) == status


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH\r\n",
        b"HTTP/2 200\r\n",
        b"HTTP/1.1 20 OK\r\n",
        b"HTTP/1.1 2000 OK\r\n",
        b"HTTP/1.1 abc OK\r\n",
        b"HTTP/1.1 099 X\r\n",
        b"<html>",
        b"HTTP/1.1 200 " + b"x" * MAX_STATUS_LINE,
    ],
)
def test_parse_status_line_rejects_what_is_not_a_status_line(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_status_line(data)


def test_status_ok_is_any_2xx_or_exactly_the_expected_status() -> None:
    assert [s for s in (None, 199, 200, 204, 299, 300, 500) if status_ok(s, 0)] == [200, 204, 299]
    assert [s for s in (None, 200, 204, 503) if status_ok(s, 503)] == [503]


# -- schedule


def test_every_backend_is_probed_at_once_then_every_interval() -> None:
    book = Book()
    assert book.checks.next_deadline() is None
    book.configure({"c": (check(interval=10, timeout=2), [target("a", 1), target("b", 2)])})
    assert book.checks.next_deadline() == float("-inf")
    probes = book.due(100.0)
    assert [(p.backend_id, p.address, p.timeout) for p in probes] == [
        ("a", ("127.0.0.1", 1), 2.0),
        ("b", ("127.0.0.1", 2), 2.0),
    ]
    assert probes[0].request == probe_request("/health", "127.0.0.1:1")
    assert len({p.token for p in probes}) == 2
    # In flight: nothing else is due, however late, and there is nothing to wait for.
    assert book.due(1000.0) == []
    assert book.checks.next_deadline() is None
    book.record(probes[0], 200)
    assert book.checks.next_deadline() == 110.0
    assert book.due(109.9) == []
    again = book.due(110.0)
    assert [p.backend_id for p in again] == ["a"]
    # b answers late (timeout above interval): due again as soon as its result is in.
    book.record(probes[1], 200)
    assert book.checks.next_deadline() == 110.0
    assert [p.backend_id for p in book.due(111.0)] == ["b"]


def test_interval_change_reschedules_without_dropping_results() -> None:
    book = Book()
    book.configure({"c": (check(interval=10), [target("a")])})
    (probe,) = book.due(0.0)
    book.configure({"c": (check(interval=2), [target("a")])})
    assert book.due(1.0) == []
    assert book.record(probe, None) == []
    assert book.checks.cluster("c").counters.failure == 1  # type: ignore[union-attr]
    assert book.checks.next_deadline() == 2.0


# -- verdicts


def test_one_backend_falls_after_threshold_failures_and_rises_after_threshold_successes() -> None:
    book = Book()
    book.configure({"c": (check(healthy_threshold=2, unhealthy_threshold=3), [target("a")])})
    t = 0.0
    outcomes: list[tuple[int | None, list[HealthCheckEvent]]] = []
    for status in (500, None, 200, 500, None, 404, 500, 200, 204):
        outcomes.append((status, book.round(t, {"a": status})))
        t += 10
    assert [events for _, events in outcomes] == [
        [],
        [],
        [],  # the 200 broke the failure streak
        [],
        [],
        [ev("HEALTH_CHECK_UNHEALTHY", "a"), ev("NO_AVAILABLE_BACKENDS")],
        [],  # already down: no repeat
        [],
        [ev("HEALTH_CHECK_HEALTHY", "a"), ev("CLUSTER_RECOVERED")],
    ]
    assert book.checks.healthy("c", "a")
    counters = book.checks.cluster("c").counters  # type: ignore[union-attr]
    assert (counters.success, counters.failure, counters.up, counters.down) == (3, 6, 1, 1)


def test_cluster_goes_down_only_when_every_backend_is_unhealthy() -> None:
    book = Book()
    book.configure(
        {"c": (check(healthy_threshold=1, unhealthy_threshold=1), [target("a"), target("b")])}
    )
    assert book.round(0, {"a": 500, "b": 200}) == [ev("HEALTH_CHECK_UNHEALTHY", "a")]
    assert book.checks.statuses() == {"c": {"a": False, "b": True}}
    assert book.round(10, {"a": 500, "b": None}) == [
        ev("HEALTH_CHECK_UNHEALTHY", "b"),
        ev("NO_AVAILABLE_BACKENDS"),
    ]
    assert book.round(20, {"a": 500, "b": None}) == []
    assert book.round(30, {"a": 200, "b": 200}) == [
        ev("HEALTH_CHECK_HEALTHY", "a"),
        ev("CLUSTER_RECOVERED"),
        ev("HEALTH_CHECK_HEALTHY", "b"),
    ]


def test_expected_status_replaces_the_2xx_rule() -> None:
    book = Book()
    book.configure(
        {
            "c": (
                check(expected_status=401, healthy_threshold=1, unhealthy_threshold=1),
                [target("a")],
            )
        }
    )
    assert book.round(0, {"a": 200}) == [
        ev("HEALTH_CHECK_UNHEALTHY", "a"),
        ev("NO_AVAILABLE_BACKENDS"),
    ]
    assert book.round(10, {"a": 401}) == [ev("HEALTH_CHECK_HEALTHY", "a"), ev("CLUSTER_RECOVERED")]


# -- reconfiguration


def down_cluster(book: Book, *backend_ids: str) -> None:
    book.configure(
        {"c": (check(healthy_threshold=2, unhealthy_threshold=1), [target(b) for b in backend_ids])}
    )
    book.round(0, dict.fromkeys(backend_ids, None))
    assert book.checks.cluster("c").all_down  # type: ignore[union-attr]


def test_removing_the_check_resets_to_healthy_and_recovers_the_cluster() -> None:
    book = Book()
    down_cluster(book, "a", "b")
    assert book.configure({}) == [ev("CLUSTER_RECOVERED")]
    assert book.checks.healthy("c", "a")
    assert book.checks.statuses() == {}
    assert book.due(100) == []
    assert book.checks.next_deadline() is None


def test_result_of_a_removed_check_or_backend_is_dropped() -> None:
    book = Book()
    book.configure({"c": (check(unhealthy_threshold=1), [target("a"), target("b")])})
    probe_a, probe_b = book.due(0)
    book.configure({"c": (check(unhealthy_threshold=1), [target("a")])})
    assert book.record(probe_b, None) == []
    book.configure({})
    assert book.record(probe_a, None) == []
    # The same check back: a fresh start, the old probe still means nothing.
    book.configure({"c": (check(unhealthy_threshold=1), [target("a")])})
    assert book.record(probe_a, None) == []
    assert book.checks.statuses() == {"c": {"a": True}}
    assert [p.backend_id for p in book.due(1)] == ["a"]


def test_a_backend_that_moves_starts_over_healthy() -> None:
    book = Book()
    down_cluster(book, "a")
    (stale,) = book.due(10)
    assert book.configure(
        {"c": (check(healthy_threshold=2, unhealthy_threshold=1), [target("a", 9090)])}
    ) == [ev("CLUSTER_RECOVERED")]
    assert book.record(stale, None) == []
    (probe,) = book.due(10)
    assert probe.address == ("127.0.0.1", 9090)
    assert probe.request == probe_request("/health", "127.0.0.1:9090")


def test_new_uri_drops_results_in_flight_and_probes_again_at_once() -> None:
    book = Book()
    book.configure({"c": (check(unhealthy_threshold=1), [target("a")])})
    (old,) = book.due(0)
    book.configure({"c": (check(uri="/ready", unhealthy_threshold=1), [target("a")])})
    (new,) = book.due(1)
    assert new.request.startswith(b"GET /ready ")
    assert book.record(old, None) == []
    assert book.checks.healthy("c", "a")
    assert book.record(new, None) == [
        ev("HEALTH_CHECK_UNHEALTHY", "a"),
        ev("NO_AVAILABLE_BACKENDS"),
    ]


def test_threshold_change_keeps_the_verdict_and_restarts_streaks() -> None:
    book = Book()
    down_cluster(book, "a")
    book.round(10, {"a": 200})  # one success of the two needed
    book.configure({"c": (check(healthy_threshold=3, unhealthy_threshold=1), [target("a")])})
    assert not book.checks.healthy("c", "a")
    assert book.round(20, {"a": 200}) == []
    assert book.round(30, {"a": 200}) == []
    assert book.round(40, {"a": 200}) == [ev("HEALTH_CHECK_HEALTHY", "a"), ev("CLUSTER_RECOVERED")]


def test_membership_changes_move_the_cluster_latch() -> None:
    book = Book()
    down_cluster(book, "a")
    config = check(healthy_threshold=2, unhealthy_threshold=1)
    assert book.configure({"c": (config, [target("a"), target("b")])}) == [ev("CLUSTER_RECOVERED")]
    assert book.round(10, {"a": None, "b": None}) == [
        ev("HEALTH_CHECK_UNHEALTHY", "b"),
        ev("NO_AVAILABLE_BACKENDS"),
    ]
    book.configure({"c": (config, [target("a")])})
    assert book.checks.cluster("c").all_down  # type: ignore[union-attr]
    # Its last backend removed: an empty cluster is not "down".
    assert book.configure({"c": (config, [])}) == [ev("CLUSTER_RECOVERED")]


def test_random_operations_keep_invariants_and_latch_alternation() -> None:
    rng = random.Random(7)
    book = Book()
    ids = ["a", "b", "c", "d"]
    in_flight: list[HttpProbe] = []
    cluster_events: dict[str, list[str]] = {"x": [], "y": []}
    now = 0.0
    for _ in range(3000):
        now += rng.choice((0.0, 0.5, 1.0, 3.0))
        op = rng.random()
        if op < 0.08:
            wanted = {}
            for cid in ("x", "y"):
                if rng.random() < 0.8:
                    config = check(
                        uri=rng.choice(("/a", "/b")),
                        interval=rng.randint(1, 3),
                        healthy_threshold=rng.randint(1, 3),
                        unhealthy_threshold=rng.randint(1, 3),
                    )
                    members = [target(b, rng.choice((1, 2))) for b in ids if rng.random() < 0.6]
                    wanted[cid] = (config, members)
            events = book.configure(wanted)
        elif op < 0.5:
            in_flight.extend(book.due(now))
            events = []
        elif in_flight:
            probe = in_flight.pop(rng.randrange(len(in_flight)))
            events = book.record(probe, rng.choice((200, 204, 500, None)))
        else:
            events = []
        for event in events:
            if event.backend_id is None:
                cluster_events[event.cluster_id].append(event.kind)
    for kinds in cluster_events.values():
        assert kinds, "the random walk never took a cluster down"
        expected = ["NO_AVAILABLE_BACKENDS", "CLUSTER_RECOVERED"] * len(kinds)
        assert kinds == expected[: len(kinds)]


# -- the probe against real sockets


class FakeBackend:
    """A loopback HTTP/1.1 server whose answer can be switched, or turned off entirely."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay
        self.port = 0
        self.requests: list[bytes] = []
        self.active = 0
        self._scope: trio.CancelScope | None = None
        self.concurrency: list[int] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        with trio.CancelScope() as scope:
            self._scope = scope
            await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    def stop(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.active += 1
        if self.concurrency is not None:
            self.concurrency.append(1)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            self.requests.append(data)
            await trio.sleep(self.delay)
            await stream.send_all(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n\r\n".encode())
        except trio.BrokenResourceError:
            pass
        finally:
            self.active -= 1
            if self.concurrency is not None:
                self.concurrency.append(-1)
            await trio.aclose_forcefully(stream)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_http_probe_reports_status_refusal_silence_and_garbage() -> None:
    backend = FakeBackend(200)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        request = probe_request("/health", backend.address)
        with trio.fail_after(10):
            assert await http_probe(("127.0.0.1", backend.port), request, 2.0) == 200
            assert backend.requests == [request]
            backend.status = 500
            assert await http_probe(("127.0.0.1", backend.port), request, 2.0) == 500
            backend.stop()
            assert await http_probe(("127.0.0.1", free_port()), request, 2.0) is None

        silent = trio.socket.socket()
        await silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        start = trio.current_time()
        assert await http_probe(silent.getsockname(), request, 0.3) is None
        assert 0.25 <= trio.current_time() - start < 2.0

        async def garbage(stream: trio.SocketStream) -> None:
            await stream.receive_some(4096)
            await stream.send_all(b"SSH-2.0-OpenSSH_9.0\r\n")
            await trio.sleep(5)

        (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listener.socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, garbage, [listener])
        with trio.fail_after(2):
            assert await http_probe(("127.0.0.1", port), request, 1.5) is None
        silent.close()
        nursery.cancel_scope.cancel()


# -- the shell, end to end


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []
        self._changed = trio.Event()

    def __call__(self, kind: str, cluster_id: str, backend_id: str | None) -> None:
        self.events.append((kind, cluster_id, backend_id))
        self._changed.set()

    async def wait_for(self, *event: str | None) -> None:
        while event not in self.events:
            self._changed = trio.Event()
            await self._changed.wait()


def add_cluster(
    state: ConfigState, cid: str, config: HealthCheckConfig | None, *ends: FakeBackend
) -> None:
    state.clusters[cid] = Cluster(cluster_id=cid, health_check=config)
    state.backends[cid] = [
        Backend(cluster_id=cid, backend_id=f"b{i}", address=end.address)
        for i, end in enumerate(ends, 1)
    ]


def tcp_cluster(state: ConfigState, cid: str) -> TcpCluster:
    return TcpCluster(
        cid, LoadBalancingPolicy.ROUND_ROBIN, backends_of(state, cid), rng=random.Random(0)
    )


def test_duplicate_backend_ids_in_the_state_are_checked_once() -> None:
    state = ConfigState()
    state.clusters["c"] = Cluster(cluster_id="c", health_check=check())
    state.backends["c"] = [
        Backend(cluster_id="c", backend_id="b", address="127.0.0.1:1"),
        Backend(cluster_id="c", backend_id="b", address="127.0.0.1:2"),
    ]
    checks = HttpHealthChecks(state, {}, Recorder())
    assert checks.statuses() == {"c": {"b": True}}
    (probe,) = checks.checks.due(0.0)
    assert probe.address == ("127.0.0.1", 1)
    checks.close()


@pytest.fixture
def clock() -> trio.testing.MockClock:
    # Virtual time, jumping whenever every task is blocked: loopback I/O between tasks of this
    # one run completes without waiting, so only sleeps and timeouts are skipped.
    return trio.testing.MockClock(autojump_threshold=0.005)


async def test_backends_fall_and_recover_against_real_servers(
    clock: trio.testing.MockClock,
) -> None:
    one, two = FakeBackend(200), FakeBackend(200)
    state = ConfigState()
    recorder = Recorder()
    config = check(interval=2, timeout=1, healthy_threshold=2, unhealthy_threshold=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(one.serve)
        await nursery.start(two.serve)
        add_cluster(state, "c", config, one, two)
        clusters = {"c": tcp_cluster(state, "c")}
        selector = clusters["c"].selector
        checks = HttpHealthChecks(state, clusters, recorder)
        checks.start(nursery)
        with trio.fail_after(120):
            await trio.sleep(9)
            assert len(one.requests) == len(two.requests) == 5  # t = 0, 2, 4, 6, 8
            assert one.requests[0] == probe_request("/health", one.address)
            assert checks.statuses() == {"c": {"b1": True, "b2": True}}
            assert recorder.events == []

            one.status = 500
            await recorder.wait_for("HEALTH_CHECK_UNHEALTHY", "c", "b1")
            assert not selector.is_healthy("b1")
            assert selector.available_count() == 1
            assert checks.statuses() == {"c": {"b1": False, "b2": True}}

            two.stop()  # not listening any more: connections refused
            await recorder.wait_for("NO_AVAILABLE_BACKENDS", "c", None)
            assert recorder.events == [
                ("HEALTH_CHECK_UNHEALTHY", "c", "b1"),
                ("HEALTH_CHECK_UNHEALTHY", "c", "b2"),
                ("NO_AVAILABLE_BACKENDS", "c", None),
            ]
            assert selector.available_count() == 0

            one.status = 200
            await recorder.wait_for("CLUSTER_RECOVERED", "c", None)
            assert recorder.events[3:] == [
                ("HEALTH_CHECK_HEALTHY", "c", "b1"),
                ("CLUSTER_RECOVERED", "c", None),
            ]
            assert selector.is_healthy("b1")
            assert not selector.is_healthy("b2")
            counters = checks.counters()["c"]
            assert counters["up"] == 1
            assert counters["down"] == 2

            # The check removed: b2 counts as healthy again and nobody is probed any more.
            state.clusters["c"] = Cluster(cluster_id="c")
            checks.refresh()
            assert selector.is_healthy("b2")
            assert checks.statuses() == {}
            seen = len(one.requests)
            await trio.sleep(20)
            assert len(one.requests) == seen
        checks.close()
        nursery.cancel_scope.cancel()


async def test_live_backends_late_clusters_and_close(clock: trio.testing.MockClock) -> None:
    up, down = FakeBackend(200), FakeBackend(503)
    state = ConfigState()
    recorder = Recorder()
    config = check(interval=1, timeout=1, healthy_threshold=1, unhealthy_threshold=1)
    clusters: dict[str, TcpCluster] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(up.serve)
        await nursery.start(down.serve)
        add_cluster(state, "c", config, up)
        checks = HttpHealthChecks(state, clusters, recorder)
        checks.start(nursery)
        with trio.fail_after(60):
            # A backend added live is picked up and judged, though the worker has no
            # TcpCluster for the cluster yet.
            state.backends["c"].append(
                Backend(cluster_id="c", backend_id="b2", address=down.address)
            )
            checks.refresh()
            await recorder.wait_for("HEALTH_CHECK_UNHEALTHY", "c", "b2")
            assert checks.statuses() == {"c": {"b1": True, "b2": False}}
            assert down.requests[0] == probe_request("/health", down.address)

            # The TcpCluster shows up: it gets the verdicts on the next refresh.
            clusters["c"] = tcp_cluster(state, "c")
            checks.refresh()
            assert not clusters["c"].selector.is_healthy("b2")
            assert clusters["c"].selector.is_healthy("b1")

            # A backend removed live is no longer probed.
            state.backends["c"] = state.backends["c"][:1]
            checks.refresh()
            await trio.sleep(0.5)
            seen = len(down.requests)
            await trio.sleep(5)
            assert len(down.requests) == seen
            assert checks.statuses() == {"c": {"b1": True}}

            state.backends["c"].append(
                Backend(cluster_id="c", backend_id="b2", address=down.address)
            )
            clusters["c"].update(
                LoadBalancingPolicy.ROUND_ROBIN, backends_of(state, "c"), send_proxy=False
            )
            checks.refresh()
            await trio.sleep(3)
            assert not clusters["c"].selector.is_healthy("b2")

        checks.close()
        assert clusters["c"].selector.is_healthy("b2")
        seen = len(up.requests)
        await trio.sleep(5)
        assert len(up.requests) == seen
        checks.refresh()  # after close: no effect
        assert clusters["c"].selector.is_healthy("b2")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("limit", "peak"), [(1, 1), (32, 3)])
async def test_probes_run_concurrently_within_the_bound(
    clock: trio.testing.MockClock, limit: int, peak: int
) -> None:
    trace: list[int] = []
    ends = [FakeBackend(200, delay=0.5) for _ in range(3)]
    for end in ends:
        end.concurrency = trace
    state = ConfigState()
    async with trio.open_nursery() as nursery:
        for end in ends:
            await nursery.start(end.serve)
        add_cluster(state, "c", check(interval=5, timeout=2), *ends)
        checks = HttpHealthChecks(state, {}, Recorder(), max_concurrent=limit)
        checks.start(nursery)
        await trio.sleep(4)
        assert [len(end.requests) for end in ends] == [1, 1, 1]
        running = [sum(trace[: i + 1]) for i in range(len(trace))]
        assert max(running) == peak
        checks.close()
        nursery.cancel_scope.cancel()
