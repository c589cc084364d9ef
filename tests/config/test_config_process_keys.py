"""Process-wide keys reach the workers instead of being accepted and ignored:
`max_connections_per_ip`, `retry_after`, `disable_cluster_metrics` and `log_target` are
carried by the ServerConfig every worker receives; `log_target` is checked at load (a target
kind sozu cannot write to is an error naming the key) and its paths made absolute."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
import trio

from sozu.command import requests as rq
from sozu.command.config import UNIMPLEMENTED_KEYS, ConfigError, parse_config
from sozu.command.state import ConfigState
from sozu.supervisor.events import EventHub
from sozu.supervisor.worker_records import Worker
from sozu.supervisor.workers import WorkerPool

HONOURED = ("max_connections_per_ip", "retry_after", "disable_cluster_metrics", "log_target")


def server_config_of(text: str, base_dir: Path) -> rq.ServerConfig:
    loaded = parse_config(text, base_dir=base_dir)
    assert loaded.warnings == ()
    pool = WorkerPool(
        loaded.config, ConfigState(), trio.Lock(), EventHub(), debug=False, build_id="b"
    )
    return pool._server_config(cast(Worker, SimpleNamespace(id=1, slot=0)))


def test_the_keys_are_not_listed_as_unimplemented() -> None:
    assert not set(HONOURED) & set(UNIMPLEMENTED_KEYS)


def test_the_workers_receive_the_process_wide_values(tmp_path: Path) -> None:
    server = server_config_of(
        "max_connections_per_ip = 3\nretry_after = 9\ndisable_cluster_metrics = true\n"
        'log_target = "file://logs/sozu.log"\n',
        tmp_path,
    )
    assert server.max_connections_per_ip == 3
    assert server.retry_after == 9
    assert server.disable_cluster_metrics is True
    assert server.log_target == f"file://{tmp_path}/logs/sozu.log"


def test_the_defaults(tmp_path: Path) -> None:
    server = server_config_of("", tmp_path)
    assert server.max_connections_per_ip == 0
    assert server.retry_after == 60
    assert server.disable_cluster_metrics is False
    assert server.log_target == "stdout"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("stdout", "stdout"),
        ("stderr", "stderr"),
        ("file:///var/log/sozu.log", "file:///var/log/sozu.log"),
        ("file://sozu.log", "file:///etc/sozu/sozu.log"),
        ("udp://127.0.0.1:514", "udp://127.0.0.1:514"),
        ("tcp://[0::1]:6514", "tcp://[::1]:6514"),
        ("unix://run/log.sock", "unix:///etc/sozu/run/log.sock"),
        ("unix:///dev/log", "unix:///dev/log"),
    ],
)
def test_log_targets_sozu_can_write_to(target: str, expected: str) -> None:
    loaded = parse_config(f'log_target = "{target}"', base_dir=Path("/etc/sozu"))
    assert loaded.config.log_target == expected


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("syslog", "unsupported log target 'syslog'"),
        ("/var/log/sozu.log", "unsupported log target"),
        ("udp://localhost:514", "invalid socket address 'localhost:514'"),
        ("tcp://127.0.0.1", "invalid socket address"),
        ("file://", "empty path"),
        ("unix://", "empty path"),
    ],
)
def test_other_log_targets_are_refused_by_name(target: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f'log_target = "{target}"', base_dir=Path("/etc/sozu"))
    assert caught.value.path == "log_target"
    assert message in caught.value.message
