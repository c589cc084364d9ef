"""Validation at the edge: the state refuses what no worker could apply, naming the value.

Every frontend, cluster and backend the state accepts builds a router and edits headers in a
worker without an error; what would break a worker (a regex RE2 refuses, an empty label, CR
or LF bound for a header, a control character bound for a log line) is an InvalidValue that
leaves the state and its hash unchanged.
"""

from __future__ import annotations

import pytest

from sozu.command import requests as rq
from sozu.command.envelope import encode_request
from sozu.command.route_patterns import compile_regex
from sozu.command.state import ConfigState, forwarded_size
from sozu.command.state_errors import InvalidValue
from sozu.command.types import Backend, Cluster, Header, PathRule, RequestHttpFrontend
from sozu.worker.core.http.router import Router

ADDRESS = "127.0.0.1:8080"


def frontend(**fields: object) -> RequestHttpFrontend:
    values: dict[str, object] = {"address": ADDRESS, "hostname": "example.com", "cluster_id": "c"}
    values.update(fields)
    return RequestHttpFrontend(**values)  # type: ignore[arg-type]


def refused(state: ConfigState, request: rq.Request, fragment: str) -> None:
    before = state.hash()
    with pytest.raises(InvalidValue, match=fragment):
        state.apply(request)
    assert state.hash() == before
    state.check_invariants()


@pytest.mark.parametrize(
    ("hostname", "fragment"),
    [
        ("/(/.example.com", "invalid regex"),
        ("a..b", "invalid label"),
        ("example.com..", "invalid label"),
        ("*.a.*", "invalid label"),
        ("*./[a-z]+/.com", "wildcard cannot be combined"),
        ("/(?=x)/.example.com", "invalid regex"),
        ("/unterminated.com", "unterminated"),
        ("x" * 5000, "too long"),
    ],
)
def test_malformed_hostnames_are_refused(hostname: str, fragment: str) -> None:
    state = ConfigState()
    refused(state, rq.AddHttpFrontend(frontend=frontend(hostname=hostname)), fragment)
    refused(state, rq.AddHttpsFrontend(frontend=frontend(hostname=hostname)), fragment)


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        (PathRule(kind="REGEX", value="/("), "invalid regex"),
        (PathRule(kind="REGEX", value="/(a)\\1"), "invalid regex"),  # backreference
        (PathRule(kind="REGEX", value="/(?<=a)b"), "invalid regex"),  # lookbehind
        (PathRule(kind="PREFIX", value="/" * 10_000), "longer than"),
    ],
)
def test_path_rules_a_worker_cannot_compile_are_refused(path: PathRule, fragment: str) -> None:
    refused(ConfigState(), rq.AddHttpFrontend(frontend=frontend(path=path)), fragment)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"headers": (Header(position="REQUEST", key="X-A\r\nX-B", val="1"),)}, "header name"),
        ({"headers": (Header(position="RESPONSE", key="X-A", val="1\r\nX: 2"),)}, "CR, LF"),
        ({"rewrite_host": "$x.example.com"}, "rewrite template"),
        ({"rewrite_host": "a.com\r\nX: 1"}, "cannot carry"),
        ({"rewrite_path": "/a b"}, "cannot carry"),
        ({"rewrite_path": "/caf\u00e9\u20ac"}, "cannot carry"),
        ({"rewrite_host": "caf\u00e9.example.com"}, "cannot carry"),
        ({"tags": {"k": "line\nbreak"}}, "control character"),
        ({"cluster_id": "c\n"}, "control character"),
    ],
)
def test_values_bound_for_the_wire_or_the_logs_are_checked(
    fields: dict[str, object], fragment: str
) -> None:
    refused(ConfigState(), rq.AddHttpFrontend(frontend=frontend(**fields)), fragment)


def test_cluster_and_backend_ids_and_sticky_ids_are_checked() -> None:
    state = ConfigState()
    refused(state, rq.AddCluster(cluster=Cluster(cluster_id="a\x00b")), "control character")
    refused(
        state,
        rq.AddCluster(cluster=Cluster(cluster_id="a", www_authenticate="x\r\ny")),
        "control character",
    )
    bad_sticky = Backend(
        cluster_id="a", backend_id="b", address="127.0.0.1:1", sticky_id="v\r\nSet-Cookie: x"
    )
    refused(state, rq.AddBackend(backend=bad_sticky), "cookie value")
    refused(
        state,
        rq.AddBackend(backend=Backend(cluster_id="a", backend_id="b\t", address="127.0.0.1:1")),
        "control character",
    )


def test_what_the_state_accepts_every_router_builds() -> None:
    state = ConfigState()
    accepted = [
        frontend(
            hostname="/[a-z]+/.example.com", path=PathRule(kind="REGEX", value="/api/(v[0-9]+)")
        ),
        frontend(hostname="*.other.com", path=PathRule(kind="PREFIX", value="/a")),
        frontend(hostname="/(?P<x>ab)+/.b.c", position="PRE"),
        frontend(hostname="bücher.example", rewrite_host="$HOST[1].internal"),
    ]
    for front in accepted:
        state.apply(rq.AddHttpFrontend(frontend=front))
    router = Router.build(state.http_fronts.values())
    router.check_invariants()
    assert len(router) == len(accepted)
    match = router.lookup("api.example.com", "/api/v2", "GET")
    assert match is not None
    assert match.path_captures == ("v2",)


def test_path_regexes_run_in_linear_time() -> None:
    """RE2: a pattern that makes a backtracking engine take exponential time is plain here."""
    pattern = compile_regex("/(a+)+b")
    assert pattern.fullmatch("/" + "a" * 50_000) is None
    assert pattern.fullmatch("/aaab") is not None


def test_a_request_too_big_for_the_worker_channel_is_refused_before_the_state_changes() -> None:
    """A frame of exactly max_command_buffer_size was applied, then its copy to the workers
    (8 bytes larger) was refused by every worker, for good."""
    state = ConfigState()
    state.max_request_size = 4096
    small = rq.AddCluster(cluster=Cluster(cluster_id="small"))
    assert forwarded_size(small) < 4096
    state.apply(small)
    big = rq.AddCluster(cluster=Cluster(cluster_id="big", answers={"503": "x" * 3900}))
    assert len(encode_request("1", big)) < 4096 < forwarded_size(big)
    refused(state, big, "over the 4096-byte limit")
    assert "big" not in state.clusters
    replica = ConfigState()  # a worker's state has no limit of its own
    replica.apply(big)
