"""A flow whose upstream socket cannot be opened is aborted and counted as a shed flow.

An upstream socket creation failure counts in `sozu_udp_flows_shed_total` and aborts the flow.
A backend on the broadcast address makes `connect()` fail (EACCES without SO_BROADCAST), so
every new flow to it is aborted; the listener keeps serving the flows that can open.
"""

from __future__ import annotations

import trio
from udp.test_worker_udp import counter, worker

from sozu.command import requests as rq
from sozu.command.responses import Event
from sozu.command.types import Backend


async def test_unopenable_upstream_counts_a_shed_flow_and_aborts_it() -> None:
    events: list[Event] = []
    with trio.fail_after(20):
        async with worker(events, affinity_key="SOURCE_IP_PORT", responses=1) as (w, echoes):
            for name, (host, port) in zip(("alpha", "beta"), echoes, strict=True):
                await w.ok(
                    rq.RemoveBackend(cluster_id="dns", backend_id=name, address=f"{host}:{port}")
                )
            await w.ok(
                rq.AddBackend(
                    backend=Backend(
                        cluster_id="dns", backend_id="bcast", address="255.255.255.255:53"
                    )
                )
            )
            for index in range(3):
                assert await w.query(b"q%d" % index, patience=0.3) is None
            labels = {"listener": w.address}
            snapshot = w.proxies.snapshot()
            assert counter(snapshot, "sozu_udp_flows_shed_total", **labels) == 3
            assert counter(snapshot, "sozu_udp_flows_created_total", **labels) == 3
            assert counter(snapshot, "sozu_udp_flows_evicted_total", **labels) == 3
            assert counter(snapshot, "sozu_udp_active_flows", **labels) == 0
            assert counter(snapshot, "sozu_udp_datagrams_out_total", **labels) == 0

            # A backend that can be reached serves again; the shed count stays.
            host, port = echoes[0]
            await w.ok(
                rq.RemoveBackend(cluster_id="dns", backend_id="bcast", address="255.255.255.255:53")
            )
            await w.ok(
                rq.AddBackend(
                    backend=Backend(cluster_id="dns", backend_id="alpha", address=f"{host}:{port}")
                )
            )
            assert await w.query(b"back") == "alpha"
            snapshot = w.proxies.snapshot()
            assert counter(snapshot, "sozu_udp_flows_shed_total", **labels) == 3
