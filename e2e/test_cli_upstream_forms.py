"""Upstream's CLI spellings against a live daemon: positional `id CLUSTER` and `deny` on HTTP
frontends, `-p` for the path prefix, `-i` on stream frontends, policy names in upper case,
`backend add -b true`, `-t 0`; each exits 0 and has the effect upstream's has."""

from __future__ import annotations

import pytest

from e2e.support.daemon import DaemonFactory
from e2e.support.http_backends import listener
from e2e.support.net import free_port

pytestmark = pytest.mark.e2e


def test_upstream_spellings_change_the_state_as_upstream_would(
    start_daemon: DaemonFactory,
) -> None:
    port = free_port()
    address, tcp = f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"
    daemon = start_daemon(extra=listener(port))
    daemon.wait_running()
    steps = [
        ("cluster", "add", "-i", "web", "--load-balancing-policy", "ROUND_ROBIN"),
        ("frontend", "http", "add", "-a", address, "--hostname", "a.test", "-p", "/api",
         "id", "web"),
        ("frontend", "http", "add", "-a", address, "--hostname", "b.test", "deny"),
        ("backend", "add", "-i", "web", "--backend-id", "w1", "-a", "127.0.0.1:9", "-b", "true"),
        ("-t", "0", "status"),
        ("listener", "tcp", "add", "-a", tcp),
        ("cluster", "add", "-i", "db"),
        ("frontend", "tcp", "add", "-i", "db", "-a", tcp),
    ]  # fmt: skip
    for step in steps:
        result = daemon.sozu(*step)
        assert result.returncode == 0, (step, result.stderr)
    stream = daemon.sozu_json("frontend", "list", "--tcp")["content"]["tcp"]
    assert [(f["cluster_id"], f["address"]) for f in stream] == [("db", tcp)]
    fronts = daemon.sozu_json("frontend", "list", "--http")["content"]["http"]
    routes = {
        # (the JSON leaves out defaults: a path's kind is PREFIX unless said)
        f["hostname"]: (f.get("cluster_id"), f.get("path", {}).get("kind", "PREFIX"),
                        f.get("path", {}).get("value"))
        for f in fronts
    }  # fmt: skip
    assert routes["a.test"] == ("web", "PREFIX", "/api")
    assert routes["b.test"][0] is None  # deny
    (cluster,) = daemon.sozu_json("cluster", "list", "-i", "web")["content"]["map"]["main"][
        "content"
    ]["clusters"]
    assert cluster["configuration"]["load_balancing"] == "ROUND_ROBIN"
    assert [b.get("backup") for b in cluster["backends"]] == [True]

    removed = daemon.sozu(
        "frontend", "http", "remove", "-a", address, "--hostname", "a.test", "-p", "/api",
        "id", "web",
    )  # fmt: skip
    assert removed.returncode == 0, removed.stderr
    fronts = daemon.sozu_json("frontend", "list", "--http")["content"]["http"]
    assert [f["hostname"] for f in fronts] == ["b.test"]
    refused = daemon.sozu("frontend", "http", "add", "-a", address, "--hostname", "c.test", "x")
    assert refused.returncode == 2
    assert "expected `id CLUSTER` or `deny`" in refused.stderr
