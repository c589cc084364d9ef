"""UDP load-balancing policies through the real daemon, with named echo backends.

A Maglev cluster keyed on the client address (`SOURCE_IP`) sends each of the clients
127.0.0.11-40 to the backend the Maglev table gives for its affinity key, the same one for
every query, and spreads them over the backends. Switching a cluster from HRW to Maglev live
(re-adding it through the CLI) leaves existing flows on their backend while new clients follow
Maglev.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from e2e.support.daemon import Daemon, DaemonFactory, wait_for
from e2e.support.net import free_port
from e2e.support.udp_backends import NamedUdpEcho, client, listener_value, query
from sozu.worker.core.balancing import Backend, BackendSelector, LoadBalancingPolicy
from sozu.worker.core.balancing.hashing import DEFAULT_HASH_SEED
from sozu.worker.core.udp.flow_key import affinity_hash

pytestmark = pytest.mark.e2e

CLIENTS = [f"127.0.0.{last}" for last in range(11, 41)]


def _config(listen: int, metrics_port: int, policy: str, echoes: list[NamedUdpEcho]) -> str:
    entries = ", ".join(f'{{ address = "{e.address}", backend_id = "{e.name}" }}' for e in echoes)
    return f"""
[metrics]
prometheus_address = "127.0.0.1:{metrics_port}"

[[listeners]]
protocol = "udp"
address = "127.0.0.1:{listen}"
front_timeout = 60
back_timeout = 60

[clusters.pol]
protocol = "tcp"
load_balancing = "{policy}"
frontends = [{{ address = "127.0.0.1:{listen}" }}]
backends = [{entries}]

[clusters.pol.udp]
affinity_key = "SOURCE_IP"
"""


def _expected(
    policy: LoadBalancingPolicy, echoes: list[NamedUdpEcho], hosts: list[str]
) -> dict[str, str]:
    """The backend the worker's balancer must pick for a new flow from each of `hosts`."""
    backends = [Backend(e.name, ("127.0.0.1", e.port)) for e in echoes]
    selector = BackendSelector(policy, backends)
    expected = {}
    for host in hosts:
        chosen = selector.select(key=affinity_hash(DEFAULT_HASH_SEED, (host, 0), False))
        assert chosen is not None
        expected[host] = chosen.id
    return expected


def _deactivate(daemon: Daemon, listen: int, metrics_port: int) -> None:
    """Deactivating the listener closes every flow (and lets the daemon stop at once)."""
    address = f"127.0.0.1:{listen}"
    result = daemon.sozu("listener", "udp", "deactivate", "-a", address)
    assert result.returncode == 0, result.stderr + result.stdout
    wait_for(
        lambda: (
            True if listener_value(metrics_port, "sozu_udp_active_flows", address) == 0 else None
        ),
        timeout=5,
        what="no active flow after deactivation",
    )


def _wait_created(metrics_port: int, listen: int, count: int) -> None:
    """The flows-created counter reaches exactly `count` within 5 s (metrics are sampled)."""
    listener = f"127.0.0.1:{listen}"
    last: list[float] = []

    def probe() -> bool | None:
        last[:] = [listener_value(metrics_port, "sozu_udp_flows_created_total", listener)]
        return True if last[0] == count else None

    try:
        wait_for(probe, timeout=5, what=f"{count} flows created")
    except TimeoutError:
        raise AssertionError(f"flows created: {last} instead of {count}") from None


def _first_answer(listen: int) -> str:
    """The first query through sozu, retried while the listener comes up."""

    def probe() -> str | None:
        with client() as sock:
            sock.settimeout(0.5)
            try:
                return query(sock, listen, b"hello")
            except TimeoutError:
                return None

    return wait_for(probe, timeout=10, what="first answer through sozu")


@pytest.fixture
def echoes() -> Iterator[list[NamedUdpEcho]]:
    servers = [NamedUdpEcho(f"b{index}") for index in range(4)]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def test_maglev_sticks_each_client_ip_and_spreads(
    start_daemon: DaemonFactory, echoes: list[NamedUdpEcho]
) -> None:
    listen, metrics_port = free_port(), free_port()
    daemon = start_daemon(extra=_config(listen, metrics_port, "MAGLEV", echoes))
    _first_answer(listen)

    expected = _expected(LoadBalancingPolicy.MAGLEV, echoes, CLIENTS)
    hrw = _expected(LoadBalancingPolicy.HRW, echoes, CLIENTS)
    # The backend ports are random: make sure this run can tell Maglev from HRW at all.
    assert expected != hrw

    chosen: dict[str, str] = {}
    for host in CLIENTS:
        with client(host) as sock:
            answers = {query(sock, listen, f"{host}-{i}".encode()) for i in range(3)}
        assert len(answers) == 1, (host, answers)
        chosen[host] = answers.pop()
    assert chosen == expected
    assert len(set(chosen.values())) >= 3, chosen

    # One flow per client address (SOURCE_IP), plus the start-up probe's.
    _wait_created(metrics_port, listen, 1 + len(CLIENTS))
    _deactivate(daemon, listen, metrics_port)


def _readd(daemon: Daemon, policy: str) -> None:
    result = daemon.sozu(
        "cluster", "add", "-i", "pol", "--load-balancing-policy", policy, "--udp-affinity",
        "source_ip",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout


def test_live_policy_switch_only_moves_new_flows(
    start_daemon: DaemonFactory, echoes: list[NamedUdpEcho]
) -> None:
    listen, metrics_port = free_port(), free_port()
    daemon = start_daemon(extra=_config(listen, metrics_port, "HRW", echoes))
    _first_answer(listen)
    old_clients, new_clients = CLIENTS[:15], CLIENTS[15:]
    hrw = _expected(LoadBalancingPolicy.HRW, echoes, CLIENTS)
    maglev = _expected(LoadBalancingPolicy.MAGLEV, echoes, CLIENTS)
    # This run must have old clients that Maglev would move and new ones it places elsewhere.
    assert any(hrw[h] != maglev[h] for h in old_clients), (hrw, maglev)
    assert any(hrw[h] != maglev[h] for h in new_clients), (hrw, maglev)

    sockets = {host: client(host) for host in old_clients}
    try:
        before = {host: query(sock, listen, b"one") for host, sock in sockets.items()}
        assert before == {h: hrw[h] for h in old_clients}

        _readd(daemon, "maglev")
        cluster = daemon.sozu_json("cluster", "list", "-i", "pol")
        assert "MAGLEV" in str(cluster), cluster
        daemon.wait_running()  # every worker has the new state (hashes agree)

        # Existing flows keep their backend, whatever Maglev says about their key.
        after = {host: query(sock, listen, b"two") for host, sock in sockets.items()}
        assert after == before
        # New clients follow Maglev.
        placed = {}
        for host in new_clients:
            with client(host) as sock:
                placed[host] = query(sock, listen, b"new")
        assert placed == {h: maglev[h] for h in new_clients}
    finally:
        for sock in sockets.values():
            sock.close()

    _wait_created(metrics_port, listen, 1 + len(old_clients) + len(new_clients))
    _deactivate(daemon, listen, metrics_port)
