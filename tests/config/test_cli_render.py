"""Human output of `sozu cluster list` (hashes: supervisor, then each worker) and
`sozu frontend list` (one CLUSTER column for every kind of frontend)."""

from __future__ import annotations

from sozu.cli.cluster_commands import _render_clusters
from sozu.cli.routing_commands import _render_frontends
from sozu.command.envelope import Response
from sozu.command.responses import ClusterHashes, FrontendList, WorkerAnswer, WorkerResponses
from sozu.command.types import RequestHttpFrontend, RequestTcpFrontend


def _hashes(**by_cluster: str) -> WorkerAnswer:
    return WorkerAnswer(status="ok", content=ClusterHashes(map=by_cluster))


def test_cluster_list_shows_the_supervisor_and_every_worker() -> None:
    response = Response(
        id="1",
        status="ok",
        content=WorkerResponses(
            map={
                "main": _hashes(web="aaaa", db="bbbb"),
                "1": _hashes(web="aaaa"),
                "0": _hashes(web="aaaa", db="cccc"),
            }
        ),
    )
    lines = _render_clusters(response).split("\n")
    assert lines[0].split() == ["CLUSTER", "SUPERVISOR", "WORKER", "0", "WORKER", "1"]
    assert lines[1].split() == ["db", "bbbb", "cccc", "-"]  # diverging, missing
    assert lines[2].split() == ["web", "aaaa", "=", "="]
    assert "worker 0 answers differently from the supervisor" in lines
    assert "worker 1 answers differently from the supervisor" in lines


def test_frontend_list_puts_every_cluster_in_its_column() -> None:
    response = Response(
        id="1",
        status="ok",
        content=FrontendList(
            http=(RequestHttpFrontend(address="127.0.0.1:80", hostname="a.test", cluster_id="a"),),
            tcp=(RequestTcpFrontend(cluster_id="db", address="127.0.0.1:5432"),),
        ),
    )
    header, http, tcp = _render_frontends(response).split("\n")
    assert header.split() == ["PROTO", "ADDRESS", "HOSTNAME", "METHOD", "PATH", "CLUSTER"]
    assert http.split() == ["http", "127.0.0.1:80", "a.test", "*", "/", "a"]
    assert tcp.split() == ["tcp", "127.0.0.1:5432", "-", "-", "-", "db"]
    assert header.index("CLUSTER") == http.rindex(" a") + 1 == tcp.index("db")
