"""Upstream's state file format: what sozu writes upstream reads back the same, through both
formats; upstream's own records load; what upstream cannot carry is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
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
from sozu.command.statefile_upstream import (
    UpstreamFormatError,
    dump_upstream_state,
    looks_upstream,
    parse_upstream_state,
)
from sozu.command.types import Backend, Cluster, HttpListenerConfig

LIMIT = 2_000_000


def _explicit_default_algorithm(state: ConfigState) -> bool:
    """A cluster naming the algorithm it would get anyway (written and read back unset)."""
    return any(
        cluster.load_balancing == ("HRW" if cluster.udp is not None else "ROUND_ROBIN")
        for cluster in state.clusters.values()
    )


def _load(requests: list[rq.Request]) -> ConfigState:
    loaded = ConfigState()
    report, _ = load_requests(loaded, requests)
    assert report.errors == 0
    return loaded


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states)
def test_a_state_goes_through_both_formats_with_its_hash(state: ConfigState) -> None:
    assume(not _explicit_default_algorithm(state))
    data = dump_upstream_state(state)
    assert looks_upstream(data)
    assert not looks_upstream(dump_state(state))
    through_upstream = _load(parse_upstream_state(data, "test", LIMIT))
    assert through_upstream == state
    assert through_upstream.hash() == state.hash()
    back = _load(parse_state(dump_state(through_upstream)))
    assert back.hash() == state.hash()
    assert dump_upstream_state(back) == data


def test_records_are_upstreams_json_separated_by_newline_nul() -> None:
    state = ConfigState()
    state.apply(rq.AddCluster(cluster=Cluster(cluster_id="app", load_balancing="RANDOM")))
    state.apply(rq.AddHttpListener(listener=HttpListenerConfig(address="127.0.0.1:80")))
    state.apply(rq.ActivateListener(address="127.0.0.1:80", proxy="HTTP"))
    data = dump_upstream_state(state)
    records = data.split(b"\n\0")
    assert records[-1] == b""
    documents = [json.loads(record) for record in records[:-1]]
    tags = [next(iter(d["content"]["request_type"])) for d in documents]
    assert tags == ["ADD_HTTP_LISTENER", "ACTIVATE_LISTENER", "ADD_CLUSTER"]
    listener = documents[0]["content"]["request_type"]["ADD_HTTP_LISTENER"]
    assert listener["address"] == {"ip": {"inner": {"V4": 0x7F000001}}, "port": 80}
    assert listener["http_answers"] is None
    activate = documents[1]["content"]["request_type"]["ACTIVATE_LISTENER"]
    assert activate == {"address": listener["address"], "proxy": 0, "from_scm": False}
    cluster = documents[2]["content"]["request_type"]["ADD_CLUSTER"]
    assert cluster["load_balancing"] == 1  # RANDOM, as an integer
    assert cluster["proxy_protocol"] is None
    assert [d["id"] for d in documents] == ["SAVE-0", "SAVE-1", "SAVE-2"]


def test_ipv6_addresses_put_the_first_eight_bytes_in_high() -> None:
    state = ConfigState()
    state.apply(
        rq.AddBackend(backend=Backend(cluster_id="a", backend_id="b", address="[2001:db8::1]:53"))
    )
    (record,) = dump_upstream_state(state).split(b"\n\0")[:-1]
    address = json.loads(record)["content"]["request_type"]["ADD_BACKEND"]["address"]
    assert address["ip"]["inner"]["V6"] == {"high": 0x20010DB800000000, "low": 1}
    (loaded,) = parse_upstream_state(record + b"\n\0", "test", LIMIT)
    assert isinstance(loaded, rq.AddBackend)
    assert loaded.backend.address == "[2001:db8::1]:53"


# Three records as an older upstream writes them (fields added since are absent).
OLD_UPSTREAM = (
    b'{"id":"PM-1","content":{"request_type":{"ADD_CLUSTER":{"cluster_id":"app-1",'
    b'"sticky_session":false,"https_redirect":false,"proxy_protocol":null,'
    b'"load_balancing":2,"answer_503":null,"load_metric":1}}}}\n\0'
    b'{"id":"PM-2","content":{"request_type":{"ADD_HTTP_FRONTEND":{"cluster_id":"app-1",'
    b'"address":{"ip":{"inner":{"V4":2130706433}},"port":80},"hostname":"example.com",'
    b'"path":{"kind":0,"value":"/"},"method":null,"position":2,"tags":{}}}}}\n\0'
    b'{"id":"PM-3","content":{"request_type":{"ADD_BACKEND":{"cluster_id":"app-1",'
    b'"backend_id":"app-1-backend-0","address":{"ip":{"inner":{"V4":2130706433}},'
    b'"port":8080},"sticky_id":null,"load_balancing_parameters":null,"backup":null}}}}\n\0'
)


def test_an_older_upstream_state_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(OLD_UPSTREAM)
    requests = read_state_file(path)
    state = _load(requests)
    cluster = state.clusters["app-1"]
    assert cluster.load_balancing == "LEAST_LOADED"
    assert cluster.load_metric == "REQUESTS"
    (front,) = state.http_fronts.values()
    assert (front.address, front.hostname, front.cluster_id) == (
        "127.0.0.1:80",
        "example.com",
        "app-1",
    )
    assert front.path.kind == "PREFIX"
    assert [b.address for b in state.backends["app-1"]] == ["127.0.0.1:8080"]


def test_legacy_http_answers_become_the_answers_map() -> None:
    record = (
        b'{"id":"x","content":{"request_type":{"ADD_HTTP_LISTENER":{'
        b'"address":{"ip":{"inner":{"V4":2130706433}},"port":8080},"expect_proxy":false,'
        b'"sticky_name":"SOZUBALANCEID","front_timeout":60,"back_timeout":30,'
        b'"connect_timeout":3,"request_timeout":10,"active":false,'
        b'"http_answers":{"answer_404":"HTTP/1.1 404 Gone\\r\\n\\r\\n","answer_503":null}}}}}'
        b"\n\0"
    )
    (request,) = parse_upstream_state(record, "test", LIMIT)
    assert isinstance(request, rq.AddHttpListener)
    assert request.listener.answers == {"404": "HTTP/1.1 404 Gone\r\n\r\n"}


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        (b'{"id":"x","content":{"request_type":{"ADD_CLUSTER":{"cluster_id":"a",'
         b'"load_balancing":0,"colour":"blue"}}}}', "unknown field 'colour'"),
        (b'{"id":"x","content":{"request_type":{"ADD_CLUSTER":{"cluster_id":"a",'
         b'"load_balancing":9}}}}', "load_balancing: 9 is not a LoadBalancingAlgorithms"),
        (b'{"id":"x","content":{"request_type":{"ADD_CLUSTER":{"sticky_session":false,'
         b'"load_balancing":0}}}}', "cluster_id"),
        (b'{"id":"x","content":{"request_type":{"SOFT_STOP":{}}}}', "SOFT_STOP is not a state"),
        (b'{"id":"x","content":{"request_type":{"ADD_BACKEND":{"cluster_id":"a",'
         b'"backend_id":"b","address":{"ip":{"inner":{"V4":1}},"port":70000}}}}}',
         "not a socket address"),
        (b'{"id":"x","content":{}}', "one request_type"),
        (b'{"id":"x",', "record 1"),
    ],
)  # fmt: skip
def test_a_bad_upstream_record_is_refused_naming_it(record: bytes, needle: str) -> None:
    with pytest.raises(UpstreamFormatError) as error:
        parse_upstream_state(record + b"\n\0", "test", LIMIT)
    assert needle in str(error.value)


def test_a_bad_upstream_file_is_a_state_file_error(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(OLD_UPSTREAM + b'{"id":"x","content":{"request_type":{"NOPE":{}}}}\n\0')
    with pytest.raises(StateFileError, match="record 4: NOPE is not a state request"):
        read_state_file(path)


def test_what_upstream_cannot_carry_is_refused_by_name_on_save(tmp_path: Path) -> None:
    state = ConfigState()
    state.apply(
        rq.AddBackend(backend=Backend(cluster_id="a", backend_id="b", address="127.0.0.1:1"))
    )
    state.apply(rq.AddHttpListener(listener=HttpListenerConfig(address="[fe80::1%lo]:80")))
    with pytest.raises(UpstreamFormatError, match="upstream's format has no IPv6 zone"):
        dump_upstream_state(state)
    with pytest.raises(ValueError, match="IPv6 zone"):
        save_state(state, tmp_path / "out.json", upstream=True)
    assert not (tmp_path / "out.json").exists()
