"""A worker applies each routing change to the one cluster or frontend it names: its
runtime clusters, routers and indexes stay what a scan of the state says, and one change
touches one cluster however many there are."""

from __future__ import annotations

import random

import pytest
import trio
from support.worker_harness import Client, Worker, read_head, worker

from sozu.command import requests as rq
from sozu.command.types import (
    Backend,
    Cluster,
    RequestHttpFrontend,
    RequestTcpFrontend,
    TcpListenerConfig,
)
from sozu.worker.core.clusters import TcpCluster
from sozu.worker.shell.channel_loop import handle

CLUSTERS = ["c0", "c1", "c2", "c3"]


async def answer_ok(stream: trio.SocketStream) -> None:
    buf = bytearray()
    while await read_head(stream, buf) is not None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


def _check(w: Worker) -> None:
    """Everything kept from each change equals what the state says."""
    proxies, state = w.proxies, w.core.state
    proxies.http.check_invariants()
    for cluster_id, runtime in proxies._clusters.items():
        if cluster_id not in state.clusters:
            continue
        if cluster_id in state.tcp_fronts or proxies.http.fronted(cluster_id):
            configured = {b.id for b in runtime.selector.backends()}
            assert configured == {b.backend_id for b in state.backends.get(cluster_id, ())}
    for cluster_id in state.clusters:
        fronted = cluster_id in state.tcp_fronts or proxies.http.fronted(cluster_id)
        assert not fronted or cluster_id in proxies._clusters, cluster_id
    expected = {
        front.address: cluster_id
        for cluster_id, fronts in state.tcp_fronts.items()
        for front in fronts
    }
    assert proxies._cluster_of_listener == expected


@pytest.mark.parametrize("seed", range(6))
async def test_each_change_keeps_the_runtime_equal_to_the_state(seed: int) -> None:
    rng = random.Random(seed)
    with trio.fail_after(30):
        async with worker() as w:
            port = await w.http_listener()
            backend = await w.backend(answer_ok)
            tcp_address = f"127.0.0.1:{port + 1}"
            await w.ok(rq.AddTcpListener(listener=TcpListenerConfig(address=tcp_address)))
            for count in range(250):
                cluster_id = rng.choice(CLUSTERS)
                backend_id = f"b{rng.randrange(3)}"
                front = RequestHttpFrontend(
                    address=f"127.0.0.1:{port}",
                    hostname=f"h{rng.randrange(4)}.test",
                    cluster_id=cluster_id,
                )
                tcp_front = RequestTcpFrontend(cluster_id=cluster_id, address=tcp_address)
                request: rq.Request = rng.choice(
                    [
                        rq.AddCluster(cluster=Cluster(cluster_id=cluster_id)),
                        rq.RemoveCluster(cluster_id=cluster_id),
                        rq.AddBackend(
                            backend=Backend(
                                cluster_id=cluster_id, backend_id=backend_id, address=backend
                            )
                        ),
                        rq.RemoveBackend(
                            cluster_id=cluster_id, backend_id=backend_id, address=backend
                        ),
                        rq.AddHttpFrontend(frontend=front),
                        rq.RemoveHttpFrontend(frontend=front),
                        rq.AddTcpFrontend(frontend=tcp_front),
                        rq.RemoveTcpFrontend(frontend=tcp_front),
                    ]
                )
                # Refused changes (a duplicate, a missing object) change nothing either.
                await handle(w.core, w.proxies, str(count), request)
                _check(w)
            # The router built change by change serves what the state routes.
            state = w.core.state
            for key, front in state.http_fronts.items():
                if front.cluster_id in state.clusters and front.cluster_id in state.backends:
                    client = await Client.open(port)
                    response = await client.get(front.hostname)
                    assert response is not None, key
                    assert response[0] == 200, (key, response)
                    await client.stream.aclose()
            # And a frontend added, then removed, at the end of it.
            await w.cluster("last", [backend])
            await w.http_frontend(port, "last.test", "last")
            client = await Client.open(port)
            response = await client.get("last.test")
            assert response is not None
            assert response[0] == 200
            front = RequestHttpFrontend(
                address=f"127.0.0.1:{port}", hostname="last.test", cluster_id="last"
            )
            await w.ok(rq.RemoveHttpFrontend(frontend=front))
            _check(w)
            response = await client.get("last.test")
            assert response is not None
            assert response[0] == 404
            await client.stream.aclose()


async def test_one_change_touches_one_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    with trio.fail_after(60):
        async with worker() as w:
            port = await w.http_listener()
            backend = await w.backend(answer_ok)
            for index in range(300):
                await w.cluster(f"c{index}", [backend])
                await w.http_frontend(port, f"h{index}.test", f"c{index}")
            updated: list[str] = []
            original = TcpCluster.update

            def counting(self: TcpCluster, *args: object, **keys: object) -> None:
                updated.append(self.cluster_id)
                original(self, *args, **keys)  # type: ignore[arg-type]

            monkeypatch.setattr(TcpCluster, "update", counting)
            await w.ok(
                rq.AddBackend(backend=Backend(cluster_id="c7", backend_id="extra", address=backend))
            )
            assert updated == ["c7"]
            _check(w)
