"""Draining loses no HTTP/2 stream: reconnecting h2 clients (`e2e/support/h2_clients.py`)
keep streams in flight through an HTTPS listener to nginx across worker upgrades and a
supervisor upgrade.

A draining worker sends GOAWAY NO_ERROR with the last stream id it took, finishes those
streams, and refuses later ones (REFUSED_STREAM); the clients send those again on a new
connection, which reaches a new worker. Asserted: not one stream lost or answered wrongly,
every stream opened accounted for, every client told GOAWAY at least once (each connection
it used was drained), the upgrades as in `test_upgrade`. The counts are printed (`-s`).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import trustme

from e2e.support.daemon import DaemonFactory, wait_for
from e2e.support.h2_clients import H2Client, H2ClientGroup
from e2e.support.http_backends import cluster, listener
from e2e.support.keepalive_clients import Target
from e2e.support.net import free_port
from e2e.support.nginx import nginx_backends
from e2e.support.upgrades import daemon_status, pid_gone, upgrade_supervisor, upgrade_worker

pytestmark = pytest.mark.e2e

WORKER_UPGRADES = 3
DRAIN_TIMEOUT = 10
CLIENTS = 4
STREAMS = 8
PROGRESS = 200
PROGRESS_TIMEOUT = 60.0
FILE_SIZE = 256 * 1024


def test_h2_clients_lose_no_stream_across_upgrades(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    started = time.monotonic()
    ca = trustme.CA()
    issued = ca.issue_cert("web.test")
    cert, key, ca_file = tmp_path / "site.crt", tmp_path / "site.key", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    with nginx_backends(tmp_path / "nginx", "web") as nginx:
        body = random.Random(3).randbytes(FILE_SIZE)
        (nginx.prefix / "html" / "files" / "256k.bin").write_bytes(body)
        config = f"drain_timeout = {DRAIN_TIMEOUT}\n\n" + listener(port, "https")
        config += cluster(
            "web",
            [
                {
                    "address": f"127.0.0.1:{port}",
                    "hostname": "web.test",
                    "certificate": str(cert),
                    "key": str(key),
                }
            ],
            [{"address": nginx.address("web"), "backend_id": "nginx"}],
        )
        daemon = start_daemon(extra=config)
        targets = [
            Target.of("web.test", "/", b"web\n"),
            Target.of("web.test", "/files/256k.bin", body),
        ]
        clients = H2ClientGroup()
        for index in range(CLIENTS):
            clients.add(
                H2Client(
                    f"h2-{index}", port, "web.test", ca_file, targets, streams=STREAMS, seed=index
                )
            )

        def progress(what: str) -> None:
            goal = clients.answered() + PROGRESS
            try:
                wait_for(
                    lambda: clients.answered() >= goal or None,
                    timeout=PROGRESS_TIMEOUT,
                    what=f"{PROGRESS} more answers {what}",
                )
            except TimeoutError as error:
                tallies = "\n".join(
                    f"{c.name}: {c.tally.summary()} {c.tally.problems}" for c in clients.clients
                )
                raise TimeoutError(f"{error}\n{tallies}") from None

        old_pids: list[int] = []
        durations: list[float] = []
        with clients:
            progress("before the first upgrade")
            for round_ in range(WORKER_UPGRADES):
                done = upgrade_worker(daemon, round_ % 2)
                old_pids.append(done.old_pid)
                durations.append(done.duration)
                progress("after a worker upgrade")
            before = daemon_status(daemon)
            old_pids += [w["pid"] for w in before["workers"] if w["state"] == "running"]
            durations.append(upgrade_supervisor(daemon).duration)
            progress("after the supervisor upgrade")
            still_running = clients.finish()
        wait_for(
            lambda: all(pid_gone(pid) for pid in old_pids) or None,
            timeout=2 * DRAIN_TIMEOUT + 10,
            what="the drained workers gone",
        )
    print(f"\nh2 lose-nothing ({time.monotonic() - started:.0f} s):")
    for client in clients.clients:
        print(f"  {client.name}: {client.tally.summary()}")
    print(f"  upgrades {', '.join(f'{d:.1f}' for d in durations)} s")
    assert not still_running, still_running
    for client in clients.clients:
        tally = client.tally
        problems = "\n".join(tally.problems)
        assert not client.crashed, problems
        assert tally.lost == 0, f"{tally.summary()}\n{problems}"
        assert tally.bad == 0, f"{tally.summary()}\n{problems}"
        assert tally.opened == tally.accounted, tally.summary()
        assert tally.answered > 0, tally.summary()
        # Every connection it used was drained, and said so with a GOAWAY.
        assert tally.goaways > 0, tally.summary()
        assert not problems, problems
