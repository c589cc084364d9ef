"""The UDP shell's per-flow exception boundary: handling one flow that raises ends that flow
only (aborted, its upstream socket closed, counted by reason); the listener keeps reading and
every other flow keeps being answered.

Each test makes one piece of one flow's work raise (its client datagram, its backend reply,
its reply to the client, its backend selection, the timer's closes) by wrapping a method of the
core or the shell for that flow only.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
import trio
from udp.test_shell import EchoBackend, ask, running
from udp.test_worker_udp import counter, worker

from sozu.command.responses import Event
from sozu.worker.shell.udp_proxy import UdpListenerProxy

Address = tuple[str, int]

# Each test runs with batched system calls and with one call per datagram.
pytestmark = pytest.mark.usefixtures("udp_syscalls")


class Planted(Exception):
    """The bug planted in one flow's handling."""


async def _unanswered(
    address: Address,
    payload: bytes,
    client: trio.socket.SocketType,
    proxy: UdpListenerProxy,
    errors: int,
) -> bytes | None:
    """Send `payload`; once the proxy has counted `errors` flow errors in all, whatever answer
    comes within 0.2 s (None: none, as it must be)."""
    await client.sendto(payload, address)
    while sum(proxy.counters.flow_errors.values()) < errors:  # noqa: ASYNC110 - counted there
        await trio.sleep(0.01)
    with trio.move_on_after(0.2):
        data, _ = await client.recvfrom(65535)
        return bytes(data)
    return None


async def _client() -> trio.socket.SocketType:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock


def _port(sock: trio.socket.SocketType) -> int:
    port: int = sock.getsockname()[1]
    return port


def _failing_for(
    method: Callable[..., Any], bad: Callable[..., bool], raised: list[int] | None = None
) -> tuple[Callable[..., Any], list[int]]:
    """`method`, raising `Planted` (before doing anything) when `bad(*args)` is true; each
    raise is recorded in `raised` (a new list by default)."""
    raised = [] if raised is None else raised

    def wrapper(*args: Any) -> Any:
        if bad(*args):
            raised.append(1)
            raise Planted("planted")
        return method(*args)

    return wrapper, raised


def _plant(
    monkeypatch: pytest.MonkeyPatch,
    target: object,
    names: tuple[str, ...],
    bad: Callable[..., bool],
) -> list[int]:
    """Plant the bug in each of `names` (the fast and the full path of one event); the list
    returned records every raise."""
    raised: list[int] = []
    for name in names:
        wrapper, each = _failing_for(getattr(target, name), bad, raised)
        assert each is raised
        monkeypatch.setattr(target, name, wrapper)
    return raised


async def _others_still_served(address: Address, good: trio.socket.SocketType) -> None:
    """The established good flow still answers, and a brand new client gets a new flow."""
    assert await ask(address, b"again", good) == b"BK0:again"
    assert await ask(address, b"newcomer") == b"BK0:newcomer"


async def test_a_client_datagram_that_raises_ends_its_flow_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")], affinity_with_port=True) as (address, proxy):
            good, bad = await _client(), await _client()
            with good, bad:
                assert await ask(address, b"one", good) == b"BK0:one"
                assert await ask(address, b"one", bad) == b"BK0:one"
                assert proxy.flow_count == 2
                core = proxy.core
                raised = _plant(
                    monkeypatch,
                    core,
                    ("forward_established", "handle_client_datagram"),
                    lambda _now, src, _payload: src[1] == _port(bad),
                )

                assert await _unanswered(address, b"two", bad, proxy, 1) is None
                assert raised == [1]
                assert proxy.counters.flow_errors == {"Planted": 1}
                assert proxy.flow_count == 1  # the bad client's flow was aborted
                assert core.client_flow(("127.0.0.1", _port(bad))) is None
                assert len(proxy.upstreams) == 1  # and its upstream socket closed
                await _others_still_served(address, good)

                # Fixed: the same client gets a new flow.
                monkeypatch.undo()
                assert await ask(address, b"three", bad) == b"BK0:three"
                assert proxy.counters.flow_errors == {"Planted": 1}
                core.check_invariants()


async def test_a_first_datagram_that_raises_before_admission_is_counted_and_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")], affinity_with_port=True) as (address, proxy):
            good, bad = await _client(), await _client()
            with good, bad:
                assert await ask(address, b"one", good) == b"BK0:one"
                _plant(
                    monkeypatch,
                    proxy.core,
                    ("forward_established", "handle_client_datagram"),
                    lambda _now, src, _payload: src[1] == _port(bad),
                )
                for count in (1, 2, 3):
                    assert await _unanswered(address, b"x", bad, proxy, count) is None
                assert proxy.counters.flow_errors == {"Planted": 3}
                assert proxy.flow_count == 1
                await _others_still_served(address, good)


async def test_a_backend_reply_that_raises_ends_its_flow_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")], affinity_with_port=True) as (address, proxy):
            good, bad = await _client(), await _client()
            with good, bad:
                assert await ask(address, b"one", good) == b"BK0:one"
                assert await ask(address, b"one", bad) == b"BK0:one"
                core = proxy.core
                bad_flow = core.client_flow(("127.0.0.1", _port(bad)))
                assert bad_flow is not None
                raised = _plant(
                    monkeypatch,
                    core,
                    ("return_established", "handle_backend_datagram"),
                    lambda _now, flow, _payload: flow == bad_flow,
                )

                assert await _unanswered(address, b"two", bad, proxy, 1) is None
                assert raised == [1]
                assert proxy.counters.flow_errors == {"Planted": 1}
                assert core.flow(bad_flow) is None
                assert bad_flow not in proxy.upstreams
                await _others_still_served(address, good)
                core.check_invariants()


async def test_an_output_that_raises_ends_its_flow_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Carrying out one flow's output (its reply to the client) raises. The reply takes the
    full path (the fast path sends by itself, with no output to carry out)."""
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")], affinity_with_port=True) as (address, proxy):
            good, bad = await _client(), await _client()
            with good, bad:
                assert await ask(address, b"one", good) == b"BK0:one"
                assert await ask(address, b"one", bad) == b"BK0:one"
                wrapper, raised = _failing_for(
                    proxy.send_to_client, lambda dst, _payload: dst[1] == _port(bad)
                )
                monkeypatch.setattr(proxy, "send_to_client", wrapper)
                monkeypatch.setattr(proxy.core, "return_established", lambda *_: None)

                assert await _unanswered(address, b"two", bad, proxy, 1) is None
                assert raised == [1]
                assert proxy.counters.flow_errors == {"Planted": 1}
                assert proxy.flow_count == 1
                await _others_still_served(address, good)


async def test_a_backend_selection_that_raises_ends_that_new_flow_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")], affinity_with_port=True) as (address, proxy):
            good, bad = await _client(), await _client()
            with good, bad:
                assert await ask(address, b"one", good) == b"BK0:one"
                bad_src = ("127.0.0.1", _port(bad))
                select = proxy._select

                def failing_select(flow: int, cluster: str, key: int) -> None:
                    view = proxy.core.flow(flow)
                    if view is not None and view.client == bad_src:
                        raise Planted("planted")
                    select(flow, cluster, key)

                monkeypatch.setattr(proxy, "_select", failing_select)
                assert await _unanswered(address, b"one", bad, proxy, 1) is None
                assert proxy.counters.flow_errors == {"Planted": 1}
                assert proxy.core.client_flow(bad_src) is None
                assert proxy.flow_count == 1
                await _others_still_served(address, good)
                proxy.core.check_invariants()


async def test_timer_work_that_raises_still_closes_the_due_flows_and_rearms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(10):
        async with running(
            [EchoBackend("BK0")], affinity_with_port=True, front_timeout=0.3, back_timeout=0.3
        ) as (
            address,
            proxy,
        ):
            core = proxy.core
            fired: list[float] = []
            handle_timeout = core.handle_timeout

            def failing_once(now: float) -> None:
                fired.append(now)
                if len(fired) == 1:
                    raise Planted("planted")
                handle_timeout(now)

            monkeypatch.setattr(core, "handle_timeout", failing_once)
            first = await _client()
            with first:
                assert await ask(address, b"one", first) == b"BK0:one"
                assert proxy.flow_count == 1
                # The first firing raises: the due flow is closed all the same.
                with trio.fail_after(3):
                    while proxy.flow_count:  # noqa: ASYNC110 - polling the core's count
                        await trio.sleep(0.05)
            assert fired
            assert proxy.counters.flow_errors == {"Planted": 1}
            assert not proxy.upstreams
            # The timer keeps working: a later flow idles out through the real handler.
            second = await _client()
            with second:
                assert await ask(address, b"two", second) == b"BK0:two"
                with trio.fail_after(3):
                    while proxy.flow_count:  # noqa: ASYNC110 - polling the core's count
                        await trio.sleep(0.05)
            assert len(fired) >= 2
            assert proxy.counters.flow_errors == {"Planted": 1}
            core.check_invariants()


async def test_timer_work_that_raises_with_nothing_due_retries_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A firing that raises before closing anything leaves no deadline armed in the core's
    eyes: the shell arms a retry, so flows are never stranded."""
    with trio.fail_after(10):
        async with running(
            [EchoBackend("BK0")], affinity_with_port=True, front_timeout=0.3, back_timeout=0.3
        ) as (
            address,
            proxy,
        ):
            core = proxy.core
            handle_timeout = core.handle_timeout
            calls: list[float] = []

            def broken(now: float) -> None:
                calls.append(now)
                if len(calls) == 1:
                    raise Planted("planted")
                handle_timeout(now)

            def unlistable() -> list[int]:
                raise Planted("the due flows cannot be listed either")

            monkeypatch.setattr(core, "handle_timeout", broken)
            monkeypatch.setattr(core, "flow_ids", unlistable)
            client = await _client()
            with client:
                assert await ask(address, b"one", client) == b"BK0:one"
                with trio.fail_after(4):
                    while proxy.flow_count:  # noqa: ASYNC110 - polling the core's count
                        await trio.sleep(0.05)
            assert len(calls) >= 2
            assert calls[1] - calls[0] >= 0.9  # the retry, not a busy loop
            assert proxy.counters.flow_errors == {"Planted": 1}


async def test_the_worker_counts_flow_errors_by_listener_and_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[Event] = []
    with trio.fail_after(20):
        async with worker(events, affinity_key="SOURCE_IP_PORT") as (w, _):
            assert await w.query(b"first") in ("alpha", "beta")
            proxy = w.proxies.udp.served_proxy(w.address)
            assert isinstance(proxy, UdpListenerProxy)
            raised = _plant(
                monkeypatch,
                proxy.core,
                ("forward_established", "handle_client_datagram"),
                lambda _now, _src, payload: payload == b"bad",
            )
            assert await w.query(b"bad", patience=0.3) is None
            assert await w.query(b"bad", patience=0.3) is None
            while len(raised) < 2:  # noqa: ASYNC110 - counted by the listener task
                await trio.sleep(0.01)
            assert raised == [1, 1]
            assert await w.query(b"good") in ("alpha", "beta")
            labels = {"listener": w.address, "reason": "Planted"}
            snapshot = w.proxies.snapshot()
            assert counter(snapshot, "sozu_udp_flow_errors_total", **labels) == 2
            # Cleared metrics restart from zero, like every other UDP counter.
            w.proxies.clear_metrics()
            snapshot = w.proxies.snapshot()
            assert counter(snapshot, "sozu_udp_flow_errors_total", **labels) == 0
