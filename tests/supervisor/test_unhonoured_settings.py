"""Cluster settings that are accepted but not implemented (a `load_metric` other than
CONNECTIONS) are logged by the supervisor, naming the field and the cluster, when a request
carrying them is applied live."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import cast

import pytest
import trio

from sozu.command import requests as rq
from sozu.command.envelope import Response
from sozu.command.state import ConfigState
from sozu.command.types import Cluster
from sozu.supervisor.events import EventHub
from sozu.supervisor.mutations import Mutations, unhonoured_settings, warn_unhonoured
from sozu.supervisor.workers import WorkerPool


def test_http2_is_honoured_and_says_nothing() -> None:
    assert unhonoured_settings(rq.AddCluster(cluster=Cluster(cluster_id="app", http2=True))) == []


@pytest.mark.parametrize("metric", ["REQUESTS", "CONNECTION_TIME"])
def test_a_load_metric_other_than_connections_is_named(metric: str) -> None:
    cluster = Cluster(cluster_id="db", load_metric=metric, http2=True)  # type: ignore[arg-type]
    warnings = unhonoured_settings(rq.AddCluster(cluster=cluster))
    assert warnings == [
        f"cluster 'db': load_metric: {metric} is not implemented and is ignored: least_loaded "
        "and power_of_two compare the connections in use (CONNECTIONS)"
    ]


def test_honoured_settings_and_other_requests_say_nothing() -> None:
    honoured = Cluster(cluster_id="app", load_metric="CONNECTIONS", http2=False)
    assert unhonoured_settings(rq.AddCluster(cluster=honoured)) == []
    assert unhonoured_settings(rq.AddCluster(cluster=Cluster(cluster_id="app"))) == []
    assert unhonoured_settings(rq.RemoveCluster(cluster_id="app")) == []


def test_each_warning_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    requests: list[rq.Request] = [
        rq.AddCluster(cluster=Cluster(cluster_id="a", load_metric="REQUESTS")),
        rq.AddCluster(cluster=Cluster(cluster_id="b")),
        rq.RemoveCluster(cluster_id="a"),
    ]
    with caplog.at_level(logging.WARNING, logger="sozu.supervisor"):
        warn_unhonoured(requests)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, unhonoured_settings(requests[0])[0])
    ]


async def test_a_live_add_cluster_with_an_unmeasured_load_metric_logs_the_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = cast(WorkerPool, SimpleNamespace(started_workers=list))
    mutations = Mutations(ConfigState(), trio.Lock(), pool, EventHub(), worker_timeout=1.0)
    answers: list[Response] = []

    async def reply(response: Response) -> bool:
        answers.append(response)
        return True

    request = rq.AddCluster(cluster=Cluster(cluster_id="app", load_metric="REQUESTS"))
    with caplog.at_level(logging.WARNING, logger="sozu.supervisor"):
        await mutations.apply("1", request, reply)
        await mutations.apply("2", request, reply)  # nothing to change: no second warning
    assert [a.status for a in answers] == ["processing", "ok", "ok"]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "cluster 'app': load_metric: REQUESTS is not implemented and is ignored: least_loaded "
        "and power_of_two compare the connections in use (CONNECTIONS)"
    ]
