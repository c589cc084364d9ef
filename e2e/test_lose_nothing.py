"""Draining loses no keep-alive request: HTTP/1.1 clients pushing at the edge of keep-alive
through five worker upgrades and a supervisor upgrade, then wrk through the same.

A draining worker answers the response under way, or the next one, with `Connection: close`;
a connection whose last response promised keep-alive stays open for the request the client
may already be sending. What the clients of `keepalive_clients` do makes the races likely:
each writes its next request the moment a response ends, some pipeline, some fetch
multi-MB bodies from nginx (relayed for a while, so a drain often starts in the middle of
one), some call a backend that waits and then drips its body (`slow_http`).

Asserted: not one request lost (no EOF, reset or cut response after a response that
promised keep-alive), none answered wrongly, every request written accounted for, every
client told to close at least once (every worker it talked to was drained), the upgrades
themselves as in `test_upgrade`, the old workers gone, and the daemon's
`sozu_http_pipelined_unanswered_total` readable. wrk (`-t2 -c64`, keep-alive): not one
socket error of any kind (wrk counts an EOF or reset while it waits for a response as a
read error) and no non-2xx response. The counts are printed (run with `-s`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from e2e.support.daemon import Daemon, DaemonFactory, wait_for
from e2e.support.http_backends import cluster, listener
from e2e.support.keepalive_clients import ClientGroup, Target
from e2e.support.net import free_port, prometheus_series
from e2e.support.nginx import Nginx, nginx_backends
from e2e.support.slow_http import SlowChunked, slow_body, slow_path
from e2e.support.upgrades import (
    Wrk,
    daemon_status,
    pid_gone,
    upgrade_supervisor,
    upgrade_worker,
    wrk_non_2xx,
    wrk_requests,
    wrk_socket_errors,
)

pytestmark = pytest.mark.e2e

WORKER_UPGRADES = 5
# Short, to bound the test: the clients never leave a connection idle that long, so no
# drain ends by cutting one of theirs.
DRAIN_TIMEOUT = 10
# Answered requests awaited before the first upgrade and after each one, so that every
# upgrade finds traffic on the new workers.
PROGRESS = 150
PROGRESS_TIMEOUT = 60.0
# Multi-MB bodies served by nginx, written next to its 10 MiB `big.bin`.
FILE_SIZES = {"2m.bin": 2 * 1024 * 1024, "5m.bin": 5 * 1024 * 1024}
# (wait, drip) in ms of the slow backend's answers.
SLOW = ((200, 300), (500, 400), (800, 300), (1000, 500))
CLIENTS_PER_KIND = 8
PIPELINED_DEPTHS = (2, 3)
# Small enough that a multi-MB body is still being relayed while its client reads it.
BIG_RECEIVE_BUFFER = 128 * 1024
# wrk's requests, each connection taking them in turn: mostly small, one multi-MB file, one
# slow dripping answer (the responses a drain most often starts in the middle of).
WRK_MIX = (
    *[("web.test", "/")] * 6,
    ("web.test", "/files/2m.bin"),
    ("slow.test", slow_path(*SLOW[0])),
)
METRIC = "sozu_http_pipelined_unanswered_total"


@dataclass(frozen=True)
class Setup:
    daemon: Daemon
    http: int
    metrics: int


def _config(http: int, metrics: int, web: str, slow: str) -> str:
    address = f"127.0.0.1:{http}"
    config = f"drain_timeout = {DRAIN_TIMEOUT}\n\n"
    config += f'[metrics]\nprometheus_address = "127.0.0.1:{metrics}"\n\n'
    config += listener(http)
    config += cluster(
        "web",
        [{"address": address, "hostname": "web.test"}],
        [{"address": web, "backend_id": "nginx"}],
    )
    config += cluster(
        "slow",
        [{"address": address, "hostname": "slow.test"}],
        [{"address": slow, "backend_id": "slow"}],
    )
    return config


@contextmanager
def _proxy(start_daemon: DaemonFactory, tmp_path: Path) -> Iterator[tuple[Setup, Nginx]]:
    """nginx, the slow backend and a daemon with 2 workers routing `web.test` and
    `slow.test` to them from one HTTP listener."""
    http, metrics = free_port(), free_port()
    with nginx_backends(tmp_path / "nginx", "web") as nginx, SlowChunked("slow") as slow:
        files = nginx.prefix / "html" / "files"
        rng = random.Random(7)
        for name, size in FILE_SIZES.items():
            (files / name).write_bytes(rng.randbytes(size))
        daemon = start_daemon(extra=_config(http, metrics, nginx.address("web"), slow.address))
        yield Setup(daemon, http, metrics), nginx


def _targets(nginx: Nginx) -> dict[str, list[Target]]:
    """What each kind of client picks its requests from."""
    small = Target.of("web.test", "/", b"web\n")
    files = nginx.prefix / "html" / "files"
    big = [
        Target.of("web.test", f"/files/{name}", (files / name).read_bytes())
        for name in (*FILE_SIZES, "big.bin")
    ]
    slow = [
        Target.of("slow.test", slow_path(wait, drip), slow_body(wait, drip)) for wait, drip in SLOW
    ]
    return {
        "small": [small],
        "pipelined": [small, small, slow[0]],
        "big": [*big, small],
        "slow": [*slow, small],
    }


def _wrk_script(directory: Path) -> Path:
    formats = "".join(f'    wrk.format("GET", "{p}", {{Host = "{h}"}}),\n' for h, p in WRK_MIX)
    script = directory / "mix.lua"
    script.write_text(
        "local requests = {}\n"
        "local last = 0\n"
        "function init(args)\n"
        f"  requests = {{\n{formats}  }}\n"
        "end\n"
        "function request()\n"
        "  last = last % #requests + 1\n"
        "  return requests[last]\n"
        "end\n"
    )
    return script


def _wait_progress(clients: ClientGroup, what: str) -> None:
    goal = clients.answered() + PROGRESS
    wait_for(
        lambda: clients.answered() >= goal or None,
        timeout=PROGRESS_TIMEOUT,
        what=f"{PROGRESS} more answers {what}",
    )


def _wait_gone(pids: list[int]) -> None:
    wait_for(
        lambda: all(pid_gone(pid) for pid in pids) or None,
        timeout=2 * DRAIN_TIMEOUT + 10,
        what="the drained workers gone",
    )


def _upgrade_all(daemon: Daemon, between: Callable[[], None]) -> tuple[list[int], list[float]]:
    """WORKER_UPGRADES worker upgrades (alternating slots) then a supervisor upgrade, calling
    `between()` after each; the pids of the workers replaced and the durations."""
    old_pids: list[int] = []
    durations: list[float] = []
    for round_ in range(WORKER_UPGRADES):
        done = upgrade_worker(daemon, round_ % 2)
        old_pids.append(done.old_pid)
        durations.append(done.duration)
        between()
    before = daemon_status(daemon)
    old_pids += [w["pid"] for w in before["workers"] if w["state"] == "running"]
    durations.append(upgrade_supervisor(daemon).duration)
    between()
    return old_pids, durations


def _pipelined_metric(metrics: int) -> float:
    series = prometheus_series(metrics)
    values = [value for (name, _), value in series.items() if name == METRIC]
    assert values, f"{METRIC} not exposed"
    return sum(values)


def test_keepalive_clients_lose_nothing_across_upgrades(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    started = time.monotonic()
    with _proxy(start_daemon, tmp_path) as (setup, nginx):
        targets = _targets(nginx)
        clients = ClientGroup()
        for number, (kind, choices) in enumerate(targets.items()):
            for index in range(CLIENTS_PER_KIND):
                depth = PIPELINED_DEPTHS[index % 2] if kind == "pipelined" else 1
                seed = 100 * number + index
                buffer = BIG_RECEIVE_BUFFER if kind == "big" else None
                clients.add(
                    f"{kind}-{index}",
                    setup.http,
                    choices,
                    depth=depth,
                    seed=seed,
                    receive_buffer=buffer,
                )
        with clients:
            _wait_progress(clients, "before the first upgrade")
            old_pids, durations = _upgrade_all(
                setup.daemon, lambda: _wait_progress(clients, "after an upgrade")
            )
            still_running = clients.finish()
        _wait_gone(old_pids)
        pipelined_metric = _pipelined_metric(setup.metrics)

    total = clients.tally()
    print(f"\nlose-nothing clients ({time.monotonic() - started:.0f} s): {total.summary()}")
    for kind in targets:
        print(f"  {kind}: {clients.tally(kind).summary()}")
    print(
        f"  upgrades {', '.join(f'{d:.1f}' for d in durations)} s; "
        f"daemon {METRIC} = {pipelined_metric:.0f}"
    )
    assert not still_running, f"clients still running: {still_running}"
    problems = "\n".join(total.problems)
    assert not [c.name for c in clients.clients if c.crashed], problems
    assert total.lost == 0, f"{total.summary()}\n{problems}"
    assert total.bad == 0, f"{total.summary()}\n{problems}"
    assert total.connect_errors == 0, problems
    for client in clients.clients:
        tally = client.tally
        assert tally.written == tally.accounted, (client.name, tally)
        assert tally.answered > 0, (client.name, tally)
        # Every worker it talked to was drained, and said so.
        assert tally.closes > 0, (client.name, tally)


def test_wrk_keepalive_sees_no_error_across_upgrades(
    start_daemon: DaemonFactory, tmp_path: Path
) -> None:
    started = time.monotonic()
    with _proxy(start_daemon, tmp_path) as (setup, _):
        script = _wrk_script(tmp_path)
        wrk = Wrk.start(setup.http, threads=2, connections=64, script=script)
        try:
            # wrk shows no progress while it runs: a pause lets traffic reach the new workers.
            old_pids, durations = _upgrade_all(setup.daemon, lambda: time.sleep(1.0))
        except BaseException:
            wrk.kill()
            raise
        output = wrk.finish()
        _wait_gone(old_pids)
        pipelined_metric = _pipelined_metric(setup.metrics)
    errors = wrk_socket_errors(output)
    print(
        f"\nlose-nothing wrk ({time.monotonic() - started:.0f} s): {wrk_requests(output)} "
        f"requests, socket errors {errors}, non-2xx {wrk_non_2xx(output)}; upgrades "
        f"{', '.join(f'{d:.1f}' for d in durations)} s; daemon {METRIC} = {pipelined_metric:.0f}"
    )
    assert wrk_requests(output) > 0, output
    assert errors == dict.fromkeys(errors, 0), output
    assert wrk_non_2xx(output) == 0, output
