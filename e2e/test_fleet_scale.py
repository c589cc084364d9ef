"""Fleet figures (`pytest -m soak e2e/test_fleet_scale.py -s`; not run by default).

- Convergence: 20 changes (one backend added per `put`, to each member in turn) with a
  3-member etcd cluster and three instances of two workers, each following its own member;
  the time from the put's answer until all three supervisors applied its revision and every
  worker reports its supervisor's state hash. Prints p50 and p99 (the goal is p99 <= 1 s).
- Start-up: 10,000 clusters (and a backend each) pushed; the time a new instance takes from
  launch, and from its first read of etcd, to every worker holding that state.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from e2e.support.daemon import Daemon, wait_for
from e2e.support.etcd import EtcdMember, start_cluster
from e2e.test_fleet import PREFIX, etcd_section
from sozu.command import requests as rq
from sozu.command.client import CommandClient
from sozu.command.fleet_layout import encode_value
from sozu.command.responses import StatusReport
from sozu.command.types import Backend
from sozu.supervisor.etcd_client import b64

pytestmark = [pytest.mark.e2e, pytest.mark.soak]


def _status(client: CommandClient) -> StatusReport:
    response = client.call(rq.Status(), timeout_ms=5000)
    assert isinstance(response.content, StatusReport), response
    return response.content


def _converged(report: StatusReport, revision: int, workers: int) -> bool:
    fleet = report.fleet
    wanted = report.supervisor.state_hash
    return (
        fleet is not None
        and fleet.applied_revision >= revision
        and len(report.workers) == workers
        and all(w.state_hash == wanted for w in report.workers)
    )


def _converged_at(daemon: Daemon, revision: int, workers: int) -> float | None:
    """When `daemon` is seen converged on `revision` (None: not yet, or not answering)."""
    try:
        with CommandClient.connect(daemon.socket_path, timeout_ms=1000) as client:
            report = _status(client)
    except Exception:
        return None
    return time.monotonic() if _converged(report, revision, workers) else None


def _put(etcd: EtcdMember, key: str, value: bytes) -> int:
    body = {"key": b64(key.encode()), "value": b64(value)}
    answer = httpx.post(f"{etcd.endpoint}/v3/kv/put", json=body, timeout=5).json()
    return int(answer["header"]["revision"])


def _production(directory: Path, etcd: EtcdMember, name: str, workers: int) -> Daemon:
    """A daemon configured as in production (`debug = false`: no full invariant check after
    every change, workers under `python -O`), not yet waited for."""
    directory.mkdir()
    config_path, socket_path = Daemon.write_config(
        directory, worker_count=workers, extra=etcd_section(etcd, name)
    )
    config_path.write_text(config_path.read_text().replace("debug = true\n", ""))
    daemon = Daemon.launch(config_path, socket_path, workers)
    daemon._cleanup.append(socket_path.parent)
    return daemon


@pytest.fixture
def production(tmp_path: Path, etcd: EtcdMember) -> Iterator[Callable[[str, int], Daemon]]:
    daemons: list[Daemon] = []

    def start(name: str, workers: int) -> Daemon:
        daemon = _production(tmp_path / name, etcd, name, workers)
        daemons.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in daemons:
            daemon.stop()


def test_convergence_latency(tmp_path: Path) -> None:
    """A 3-member etcd cluster, 3 instances of 2 workers, each instance on its own member."""
    members = start_cluster(tmp_path / "cluster", 3)
    fleet: list[Daemon] = []
    clients: list[CommandClient] = []
    samples = []
    try:
        for index, member in enumerate(members):
            fleet.append(_production(tmp_path / f"i{index}", member, f"i{index}", 2))
        for daemon in fleet:
            daemon.wait_running()
        clients = [CommandClient.connect(d.socket_path) for d in fleet]
        for i in range(20):
            backend = Backend(cluster_id="web", backend_id=f"b{i}", address=f"127.0.0.1:{2000 + i}")
            value = encode_value(rq.AddBackend(backend=backend))
            started = time.monotonic()
            revision = _put(members[i % 3], f"{PREFIX}/state/backends/web/b{i}", value)
            for client in clients:
                while not _converged(_status(client), revision, 2):
                    time.sleep(0.005)
            samples.append(time.monotonic() - started)
    finally:
        for client in clients:
            client.close()
        for daemon in fleet:
            daemon.stop()
        for member in members:
            member.remove()
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(
        f"\nfleet convergence over {len(samples)} changes, 3 etcd members, 3 instances x 2 "
        f"workers: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {samples[-1] * 1000:.0f} ms"
    )
    assert p99 < 5.0


def test_ten_thousand_clusters_start_up(
    tmp_path: Path, etcd: EtcdMember, production: Callable[[str, int], Daemon]
) -> None:
    pusher = production("pusher", 1)
    pusher.wait_running()
    clusters = "".join(
        f'[clusters.c{i}]\nprotocol = "tcp"\n'
        f'backends = [{{ address = "127.0.0.1:{1024 + i % 60000}", backend_id = "b{i}" }}]\n'
        for i in range(10_000)
    )
    path = tmp_path / "many.toml"
    path.write_text(clusters)
    started = time.monotonic()
    result = pusher.sozu("-j", "fleet", "push", "-f", str(path), timeout=300)
    assert result.returncode == 0, result.stderr
    pushed = json.loads(result.stdout)
    push_seconds = time.monotonic() - started
    pushed_at = wait_for(
        lambda: _converged_at(pusher, pushed["revision"], 1), timeout=120, what="pusher"
    )
    launched = time.monotonic()
    fresh = production("fresh", 2)
    done = wait_for(
        lambda: _converged_at(fresh, pushed["revision"], 2), timeout=120, what="fresh instance"
    )
    print(
        f"\n10,000 clusters: push {push_seconds:.1f} s in {pushed['transactions']} "
        f"transactions (the pusher's own instance converged {pushed_at - started:.1f} s after "
        f"the push began); a new instance (2 workers) converged {done - launched:.1f} s after "
        "its launch"
    )
