"""Command library figures: frame encode/decode rate and state operations at 10,000 clusters.

Run: `uv run python -O bench/command_state.py` (prints figures; asserts nothing about time).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from sozu.command import requests as rq
from sozu.command.envelope import decode_request, encode_request
from sozu.command.framing import FrameReader, encode_frame
from sozu.command.state import ConfigState
from sozu.command.types import Backend, Cluster, PathRule, RequestHttpFrontend

CLUSTERS = 10_000


def timed(label: str, action: Callable[[], object]) -> object:
    start = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - start
    print(f"{label:<48} {elapsed * 1000:10.1f} ms")
    return result


def frame_rate() -> None:
    request = rq.AddHttpFrontend(
        frontend=RequestHttpFrontend(
            address="127.0.0.1:8080",
            hostname="www.example.com",
            cluster_id="app",
            path=PathRule(kind="PREFIX", value="/api"),
        )
    )
    reader = FrameReader()
    count = 50_000
    start = time.perf_counter()
    for index in range(count):
        reader.feed(encode_frame(encode_request(f"r{index}", request)))
        payload = reader.next_frame()
        assert isinstance(payload, bytes)
        decode_request(payload)
    elapsed = time.perf_counter() - start
    size = len(encode_frame(encode_request("r1", request)))
    print(f"AddHttpFrontend frame ({size} bytes) encode+frame+decode: {count / elapsed:,.0f} msg/s")


def cluster_requests(count: int) -> list[rq.Request]:
    out: list[rq.Request] = []
    for index in range(count):
        cluster_id = f"cluster-{index}"
        out.append(rq.AddCluster(cluster=Cluster(cluster_id=cluster_id)))
        for backend in range(2):
            out.append(
                rq.AddBackend(
                    backend=Backend(
                        cluster_id=cluster_id,
                        backend_id=f"{cluster_id}-{backend}",
                        address=f"127.0.{index // 250}.{index % 250 + 1}:{8000 + backend}",
                    )
                )
            )
        for host in ("www", "api"):
            out.append(
                rq.AddHttpFrontend(
                    frontend=RequestHttpFrontend(
                        address="127.0.0.1:8080",
                        hostname=f"{host}.{cluster_id}.example.com",
                        cluster_id=cluster_id,
                    )
                )
            )
    return out


def state_figures() -> None:
    requests = cluster_requests(CLUSTERS)
    print(f"state: {CLUSTERS} clusters, {len(requests)} requests")
    state = ConfigState()

    def apply_all() -> None:
        for request in requests:
            state.apply(request)

    timed("apply all requests", apply_all)
    timed("generate_requests()", state.generate_requests)
    timed("hash() (incremental: read the digest)", state.hash)
    timed("hash recomputed from scratch (check_invariants)", state.check_invariants)
    changed = state.copy()
    for index in range(0, CLUSTERS, 100):  # 1% of clusters changed
        cluster_id = f"cluster-{index}"
        changed.apply(rq.AddCluster(cluster=Cluster(cluster_id=cluster_id, sticky_session=True)))
        changed.apply(
            rq.RemoveBackend(
                cluster_id=cluster_id,
                backend_id=f"{cluster_id}-0",
                address=f"127.0.{index // 250}.{index % 250 + 1}:8000",
            )
        )
    diff = timed("diff against a copy with 1% of clusters changed", lambda: state.diff(changed))
    assert isinstance(diff, list)
    print(f"  diff: {len(diff)} requests")
    encoded = timed(
        "msgpack encode of generate_requests()",
        lambda: msgspec.msgpack.encode(state.generate_requests()),
    )
    assert isinstance(encoded, bytes)
    print(f"  {len(encoded) / 1e6:.1f} MB")


if __name__ == "__main__":
    print(f"assertions {'on' if __debug__ else 'off (-O)'}")
    frame_rate()
    state_figures()
