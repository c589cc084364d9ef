"""The state file: save then load reproduces a state; loading merges and counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from support.state_strategies import states

from sozu.command import requests as rq
from sozu.command.state import ConfigState
from sozu.command.statefile import (
    StateFileError,
    dump_state,
    load_requests,
    parse_state,
    read_state_file,
    save_state,
)
from sozu.command.types import Cluster, HttpListenerConfig, TcpListenerConfig


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states)
def test_save_then_load_into_empty_state_reproduces_it(state: ConfigState) -> None:
    requests = parse_state(dump_state(state))
    loaded = ConfigState()
    report, applied = load_requests(loaded, requests)
    assert loaded == state
    assert loaded.hash() == state.hash()
    assert report.errors == 0
    assert report.ok == len(applied) == len(requests)


def test_save_is_atomic_and_counts_records(tmp_path: Path) -> None:
    state = ConfigState()
    state.apply(rq.AddCluster(cluster=Cluster(cluster_id="a")))
    state.apply(rq.AddTcpListener(listener=TcpListenerConfig(address="127.0.0.1:1234")))
    state.apply(rq.ActivateListener(address="127.0.0.1:1234", proxy="TCP"))
    path = tmp_path / "sub" / "state.jsonl"
    assert save_state(state, path) == 3
    assert [p.name for p in path.parent.iterdir()] == ["state.jsonl"]  # no temporary left
    lines = path.read_bytes().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(b'{"sozu_state":1')
    assert b'"type":"AddTcpListener"' in lines[1]
    assert read_state_file(path) == state.generate_requests()


def test_load_merges_skips_identical_and_keeps_live_patches() -> None:
    saved = ConfigState()
    saved.apply(rq.AddHttpListener(listener=HttpListenerConfig(address="127.0.0.1:8080")))
    saved.apply(rq.ActivateListener(address="127.0.0.1:8080", proxy="HTTP"))
    saved.apply(rq.AddCluster(cluster=Cluster(cluster_id="a")))
    requests = parse_state(dump_state(saved))

    live = ConfigState()
    live.apply(rq.AddHttpListener(listener=HttpListenerConfig(address="127.0.0.1:8080")))
    live.apply(rq.UpdateHttpListener(address="127.0.0.1:8080", front_timeout=5))
    live.apply(rq.AddCluster(cluster=Cluster(cluster_id="a")))
    report, applied = load_requests(live, requests)
    # the patched listener differs from the file's: refused, counted as an error, patch kept
    assert (report.ok, report.skipped, report.errors) == (1, 1, 1)
    assert [type(r) for r in applied] == [rq.ActivateListener]
    assert live.http_listeners["127.0.0.1:8080"].front_timeout == 5
    assert live.http_listeners["127.0.0.1:8080"].active


def test_load_twice_skips_everything_the_second_time() -> None:
    saved = ConfigState()
    saved.apply(rq.AddCluster(cluster=Cluster(cluster_id="a")))
    saved.apply(rq.AddTcpListener(listener=TcpListenerConfig(address="127.0.0.1:1234")))
    requests = parse_state(dump_state(saved))
    target = ConfigState()
    load_requests(target, requests)
    report, applied = load_requests(target, requests)
    assert (report.ok, report.skipped, report.errors) == (0, 2, 0)
    assert applied == []


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty file"),
        (b"garbage\n", ":1: not a sozu state file header"),
        (b'{"sozu_state":9,"protocol_version":1,"records":0}\n', "newer than this sozu"),
        (b'{"sozu_state":1,"protocol_version":9,"records":0}\n', "protocol version 9"),
        (
            b'{"sozu_state":1,"protocol_version":1,"records":1}\n{"v":1,"id":"x","request":{"type":"Nope"}}\n',
            ":2:",
        ),
        (
            b'{"sozu_state":1,"protocol_version":1,"records":2}\n'
            b'{"v":1,"id":"x","request":{"type":"RemoveCluster","cluster_id":"a"}}\n',
            "announces 2 records",
        ),
    ],
)
def test_bad_state_files_name_the_line_and_change_nothing(data: bytes, needle: str) -> None:
    with pytest.raises(StateFileError, match=needle):
        parse_state(data)


def test_missing_state_file(tmp_path: Path) -> None:
    with pytest.raises(StateFileError, match="No such file"):
        read_state_file(tmp_path / "absent")
