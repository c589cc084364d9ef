"""Log levels (workers, later workers), labelled supervisor metrics, `frontend list`."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import trio
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest

from sozu.cli.routing_commands import _render_frontends
from sozu.command import requests as rq
from sozu.command.config import parse_config
from sozu.command.envelope import PROTOCOL_VERSION, ok
from sozu.command.log_levels import parse_log_level
from sozu.command.metrics import MetricsAggregator
from sozu.command.responses import FrontendList
from sozu.command.state import ConfigState
from sozu.command.types import RequestHttpFrontend, RequestTcpFrontend
from sozu.supervisor.events import EventHub
from sozu.supervisor.prometheus_endpoint import SnapshotCollector, make_registry
from sozu.supervisor.worker_records import Worker
from sozu.supervisor.workers import WorkerPool
from sozu.worker.shell.channel_loop import WorkerCore


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("error", "ERROR"),
        ("WARN", "WARNING"),
        ("warning", "WARNING"),
        ("Info", "INFO"),
        ("debug", "DEBUG"),
        ("trace", "DEBUG"),
        ("nope", None),
        ("", None),
        ("info,sozu=debug", None),
    ],
)
def test_log_levels(text: str, level: str | None) -> None:
    assert parse_log_level(text) == level


@pytest.fixture
def root_level() -> Iterator[None]:
    before = logging.getLogger().level
    try:
        yield
    finally:
        logging.getLogger().setLevel(before)


@pytest.mark.usefixtures("root_level")
def test_a_worker_sets_its_root_logger_level() -> None:
    core = WorkerCore(worker_id=3)
    config = rq.ServerConfig(
        protocol_version=PROTOCOL_VERSION, worker_id=3, slot=0, log_level="trace"
    )
    assert core.handle("1", config).status == "ok"
    assert logging.getLogger().level == logging.DEBUG
    assert core.handle("2", rq.Logging(filter="Error")).status == "ok"
    assert logging.getLogger().level == logging.ERROR
    refused = core.handle("3", rq.Logging(filter="loud"))
    assert refused.status == "failure"
    assert "loud" in refused.message
    assert logging.getLogger().level == logging.ERROR


def test_supervisor_families_are_exposed() -> None:
    def families() -> list[Metric]:
        workers = Metric("sozu_workers", "workers by state", "gauge")
        workers.add_sample("sozu_workers", {"state": "running"}, 2.0)
        commands = Metric("sozu_commands", "commands", "counter")
        commands.add_sample("sozu_commands_total", {"kind": "Status", "result": "ok"}, 4.0)
        return [workers, commands]

    collector = SnapshotCollector(
        MetricsAggregator().totals, {"build_id": "x"}, supervisor_families=families
    )
    text = generate_latest(make_registry(collector)).decode()
    assert 'sozu_workers{state="running"} 2.0' in text
    assert 'sozu_commands_total{kind="Status",result="ok"} 4.0' in text
    assert "# TYPE sozu_commands_total counter" in text


def test_frontend_table() -> None:
    content = FrontendList(
        http=(
            RequestHttpFrontend(address="127.0.0.1:80", hostname="example.com", cluster_id="web"),
        ),
        tcp=(RequestTcpFrontend(cluster_id="db", address="127.0.0.1:5432"),),
    )
    lines = _render_frontends(ok("1", content=content)).splitlines()
    assert lines[0].split()[:2] == ["PROTO", "ADDRESS"]
    assert lines[1].split() == ["http", "127.0.0.1:80", "example.com", "*", "/", "web"]
    assert lines[2].split() == ["tcp", "127.0.0.1:5432", "-", "-", "-", "db"]
    assert _render_frontends(ok("2", content=FrontendList())) == "no frontends"


def test_workers_launched_later_get_the_current_log_level(tmp_path: Path) -> None:
    config = parse_config("", base_dir=tmp_path).config
    pool = WorkerPool(config, ConfigState(), trio.Lock(), EventHub(), debug=False, build_id="b")
    worker = cast(Worker, SimpleNamespace(id=4, slot=1))
    assert pool._server_config(worker).log_level == "info"
    pool.log_level = "debug"
    assert pool._server_config(worker).log_level == "debug"
