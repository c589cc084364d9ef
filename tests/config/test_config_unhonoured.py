"""Cluster keys that are accepted but not implemented warn by key path at load: a
`load_metric` other than CONNECTIONS (the metric the balancers compare), and `http2 = true`
on a tcp cluster (HTTP/2 to backends is for http clusters)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sozu.command.config import load_config
from sozu.command.requests import AddCluster

WriteConfig = Callable[[str], Path]

LISTENERS = """
[[listeners]]
protocol = "http"
address = "127.0.0.1:8080"

[[listeners]]
protocol = "tcp"
address = "127.0.0.1:9000"
"""


def _clusters(web: str, db: str) -> str:
    return (
        LISTENERS
        + '[clusters.web]\nprotocol = "http"\n'
        + 'frontends = [{ address = "127.0.0.1:8080", hostname = "example.com" }]\n'
        + web
        + '[clusters.db]\nprotocol = "tcp"\nload_balancing = "LEAST_LOADED"\n'
        + 'frontends = [{ address = "127.0.0.1:9000" }]\n'
        + db
    )


@pytest.mark.parametrize("metric", ["REQUESTS", "CONNECTION_TIME"])
def test_load_metric_and_http2_warn_by_key_path(write_config: WriteConfig, metric: str) -> None:
    loaded = load_config(
        write_config(_clusters(f'http2 = true\nload_metric = "{metric}"\n', "http2 = true\n"))
    )
    assert loaded.warnings == (
        "warning: clusters.db.http2: applies to http clusters only and is ignored",
        f"warning: clusters.web.load_metric: {metric} is not implemented and is ignored: "
        "least_loaded and power_of_two compare the connections in use (CONNECTIONS)",
    )
    # Still accepted and carried into the state, as upstream's file says.
    clusters = {r.cluster.cluster_id: r for r in loaded.requests if isinstance(r, AddCluster)}
    assert clusters["web"].cluster.load_metric == metric
    assert clusters["web"].cluster.http2
    assert clusters["db"].cluster.http2


def test_honoured_values_load_without_a_warning(write_config: WriteConfig) -> None:
    loaded = load_config(
        write_config(_clusters('load_metric = "CONNECTIONS"\nhttp2 = false\n', ""))
    )
    assert loaded.warnings == ()
