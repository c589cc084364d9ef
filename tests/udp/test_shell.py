"""The UDP trio shell over real loopback sockets (the end-to-end behaviours of docs/udp.md, in
process)."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from sozu.worker.core.balancing import Backend, BackendSelector, LoadBalancingPolicy
from sozu.worker.core.proxy_protocol import parse_v2
from sozu.worker.core.udp.config import ClusterConfig
from sozu.worker.core.udp.manager import FlowManager
from sozu.worker.shell.reactor import Reactor
from sozu.worker.shell.udp_proxy import UdpListenerProxy

Address = tuple[str, int]

# Each test runs with batched system calls and with one call per datagram.
pytestmark = pytest.mark.usefixtures("udp_syscalls")


class EchoBackend:
    """Answers `<name>:<payload>` and remembers what it received."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.received: list[bytes] = []
        self.address: Address = ("127.0.0.1", 0)

    async def bind(self) -> None:
        await self.sock.bind(("127.0.0.1", 0))
        host, port = self.sock.getsockname()
        self.address = (host, port)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            data, peer = await self.sock.recvfrom(65535)
            self.received.append(data)
            header = parse_v2(data) if data.startswith(b"\r\n\r\n") else None
            payload = data[header.length :] if header is not None else data
            await self.sock.sendto(self.name.encode() + b":" + payload, peer)


@asynccontextmanager
async def running(
    backends: list[EchoBackend],
    *,
    policy: LoadBalancingPolicy = LoadBalancingPolicy.HRW,
    max_rx: int = 1500,
    max_flows: int = 1000,
    **knobs: object,
) -> AsyncIterator[tuple[Address, UdpListenerProxy]]:
    """Backends and a proxy in their own nursery, cancelled before any socket is closed."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    try:
        async with trio.open_nursery() as nursery:
            for backend in backends:
                await backend.bind()
                await nursery.start(backend.serve)
            selector = BackendSelector(
                policy, [Backend(b.name, b.address) for b in backends], rng=random.Random(1)
            )
            core = FlowManager(
                ClusterConfig(cluster="dns", **knobs),  # type: ignore[arg-type]
                max_flows=max_flows,
                max_rx_datagram_size=max_rx,
            )
            reactor = Reactor()
            await nursery.start(reactor.run)
            proxy = UdpListenerProxy(
                listener, core, lambda _: selector if backends else None, reactor=reactor
            )
            await nursery.start(proxy.serve)
            try:
                yield listener.getsockname(), proxy
            finally:
                nursery.cancel_scope.cancel()
    finally:
        listener.close()
        for backend in backends:
            backend.sock.close()


async def ask(
    address: Address, payload: bytes, client: trio.socket.SocketType | None = None
) -> bytes | None:
    own = client is None
    sock = client or trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        await sock.sendto(payload, address)
        with trio.move_on_after(1.0):
            data, _ = await sock.recvfrom(65535)
            return bytes(data)
        return None
    finally:
        if own:
            sock.close()


async def test_query_reaches_a_backend_and_the_answer_comes_back() -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")]) as (address, proxy):
            assert await ask(address, b"ping") == b"BK0:ping"
            assert proxy.core.counters.datagrams_in == 1
            assert proxy.core.counters.datagrams_out == 1


async def test_responses_one_closes_each_flow_after_its_answer() -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")], responses=1) as (address, proxy):
            for index in range(3):
                assert await ask(address, b"q%d" % index) == b"BK0:q%d" % index
            assert proxy.flow_count == 0
            assert proxy.core.counters.flows_created == 3


async def test_port_affinity_sticks_per_client_and_spreads_over_clients() -> None:
    backends = [EchoBackend("BK0"), EchoBackend("BK1")]
    with trio.fail_after(20):
        async with running(backends, affinity_with_port=True) as (address, _):
            seen: set[bytes] = set()
            # Client ports are the kernel's choice, so all of a few clients may land on one
            # backend (1 in 2048 for twelve); asking until both are seen, up to 64 clients,
            # makes a false failure a 2**-63 event.
            clients = 0
            while seen != {b"BK0", b"BK1"} and clients < 64:
                clients += 1
                client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                answers = {await ask(address, b"x", client) for _ in range(3)}
                client.close()
                assert len(answers) == 1, "one client must stick to one backend"
                (answer,) = answers
                assert answer is not None
                seen.add(answer.split(b":")[0])
            assert seen == {b"BK0", b"BK1"}


async def test_oversized_datagram_is_dropped_and_small_ones_pass() -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")], max_rx=64) as (address, proxy):
            assert await ask(address, b"x" * 200) is None
            assert await ask(address, b"small") == b"BK0:small"
            assert proxy.core.counters.dropped == 1


async def test_proxy_protocol_header_carries_the_client_address() -> None:
    backend = EchoBackend("BK0")
    with trio.fail_after(10):
        async with running([backend], send_proxy_protocol=True) as (address, _):
            client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await client.bind(("127.0.0.1", 0))
            assert await ask(address, b"one", client) == b"BK0:one"
            assert await ask(address, b"two", client) == b"BK0:two"
            client_address = client.getsockname()
            client.close()
    header = parse_v2(backend.received[0])
    assert header is not None
    assert header.source == (client_address[0], client_address[1])
    assert backend.received[0][header.length :] == b"one"
    assert backend.received[1] == b"two"  # first datagram only, by default


async def test_idle_flow_closes_after_its_timeout() -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")], front_timeout=0.3, back_timeout=0.3) as (
            address,
            proxy,
        ):
            assert await ask(address, b"x") == b"BK0:x"
            assert proxy.flow_count == 1
            with trio.fail_after(3):
                while proxy.flow_count:  # noqa: ASYNC110 - polling the core's count
                    await trio.sleep(0.05)


async def test_a_lone_flow_kept_busy_outlives_its_first_deadline_then_idles_out() -> None:
    """The only flow holds the earliest deadline: its datagrams take the fast path, which moves
    the armed deadline later without a record. The listener's timer, armed for the first
    deadline, must neither close the flow then nor lose it: the flow lives while datagrams come,
    and closes once idle for its timeout."""
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")], front_timeout=0.4, back_timeout=0.4) as (
            address,
            proxy,
        ):
            client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with client:
                assert await ask(address, b"first", client) == b"BK0:first"
                flows = proxy.core.counters.flows_created
                busy_until = trio.current_time() + 1.2  # three times the timeout
                while trio.current_time() < busy_until:
                    await trio.sleep(0.1)
                    assert await ask(address, b"again", client) == b"BK0:again"
                    assert proxy.flow_count == 1
                # One flow all along: never closed and admitted again.
                assert proxy.core.counters.flows_created == flows
                idle_since = trio.current_time()
                with trio.fail_after(3):
                    while proxy.flow_count:  # noqa: ASYNC110 - polling the core's count
                        await trio.sleep(0.02)
                assert trio.current_time() - idle_since >= 0.3


async def test_drain_refuses_new_sources_and_lets_live_flows_answer() -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")]) as (address, proxy):
            client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            assert await ask(address, b"before", client) == b"BK0:before"
            proxy.drain()
            # the listener is no longer read: a new client gets nothing
            assert await ask(address, b"new") is None
            assert proxy.flow_count == 1
            client.close()


@pytest.mark.parametrize("policy", [LoadBalancingPolicy.MAGLEV, LoadBalancingPolicy.ROUND_ROBIN])
async def test_other_policies_answer(policy: LoadBalancingPolicy) -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("BK0"), EchoBackend("BK1")], policy=policy) as (
            address,
            _,
        ):
            answer = await ask(address, b"q")
            assert answer in (b"BK0:q", b"BK1:q")


async def test_no_backend_aborts_the_flow() -> None:
    with trio.fail_after(10):
        async with running([]) as (address, proxy):
            assert await ask(address, b"q") is None
            assert proxy.counters.no_backend == 1
            assert proxy.flow_count == 0


async def test_least_loaded_weighs_live_flows_per_backend() -> None:
    """Loads are the live flows of each backend: four long-lived clients spread two and two
    (without loads LEAST_LOADED would send every flow to the first candidate); once two flows
    of one backend close, the next client goes there."""
    backends = [EchoBackend("BK0"), EchoBackend("BK1")]
    with trio.fail_after(20):
        async with running(
            backends, policy=LoadBalancingPolicy.LEAST_LOADED, affinity_with_port=True
        ) as (address, proxy):
            clients = [trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
            answers = []
            for client in clients:
                await client.bind(("127.0.0.1", 0))
                answer = await ask(address, b"hi", client)
                assert answer is not None
                answers.append(answer.split(b":")[0])
            assert sorted(answers) == [b"BK0", b"BK0", b"BK1", b"BK1"]
            assert proxy._loads["dns"] == {"BK0": 2, "BK1": 2}
            for client, name in zip(clients, answers, strict=True):
                flow = proxy.core.client_flow(("127.0.0.1", client.getsockname()[1]))
                assert flow is not None
                if name == b"BK0":
                    proxy.core.abort_flow(proxy.now(), flow)
            proxy.apply()
            assert proxy._loads["dns"] == {"BK1": 2}
            assert await ask(address, b"again") == b"BK0:again"
            for client in clients:
                client.close()


async def test_kernel_receive_drops_are_sampled_per_socket() -> None:
    """Datagrams the kernel drops on a full listener queue are counted (SO_MEMINFO), once."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with listener, sender:
        core = FlowManager(ClusterConfig(cluster="dns"), max_flows=4)
        proxy = UdpListenerProxy(listener, core, lambda _: None, reactor=Reactor())
        proxy.sample_kernel_drops()
        assert proxy.counters.kernel_drops == 0
        for _ in range(200):  # nobody reads: the queue fills, then the kernel drops
            sender.sendto(b"x" * 512, listener.getsockname())
        proxy.sample_kernel_drops()
        dropped = proxy.counters.kernel_drops
        assert 100 < dropped < 200
        proxy.sample_kernel_drops()
        assert proxy.counters.kernel_drops == dropped  # sampled twice, counted once


async def test_a_new_client_sending_several_datagrams_at_once_gets_every_answer() -> None:
    # The first datagram creates the flow (the full path, which reads the clock again for the
    # backend's selection); the ones read in the same wake-up must not go back in time.
    with trio.fail_after(10):
        async with running([EchoBackend("BK0")]) as (address, proxy):
            raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client = trio.socket.from_stdlib_socket(raw)
            try:
                for index in range(10):
                    raw.sendto(b"q%d" % index, address)  # no checkpoint: one wake-up reads all
                answers: list[bytes] = []
                with trio.move_on_after(2.0):
                    while len(answers) < 10:
                        data, _ = await client.recvfrom(1024)
                        answers.append(bytes(data))
            finally:
                client.close()
            assert sorted(answers) == sorted(b"BK0:q%d" % index for index in range(10))
            assert proxy.counters.flow_errors == {}
            assert proxy.core.counters.flows_created == 1
