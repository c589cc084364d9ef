"""Enumerated names in any case, in the configuration file and on the command line, as
upstream takes them (`ROUND_ROBIN`, `round_robin`, `Round_Robin`)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from sozu.cli.main import sozu
from sozu.command.config import ConfigError, load_config
from sozu.command.requests import AddCluster

CONFIG = """
[[listeners]]
protocol = "http"
address = "127.0.0.1:8080"
[clusters.app]
protocol = "http"
load_balancing = "{policy}"
frontends = [
    {{ address = "127.0.0.1:8080", hostname = "a.test", path = "/x", path_type = "{path_type}" }},
]
backends = [{{ address = "127.0.0.1:9000" }}]
"""


@pytest.mark.parametrize(
    ("policy", "path_type"),
    [("ROUND_ROBIN", "PREFIX"), ("round_robin", "prefix"), ("Least_Loaded", "Regex")],
)
def test_the_configuration_takes_names_in_any_case(
    tmp_path: Path, policy: str, path_type: str
) -> None:
    file = tmp_path / "sozu.toml"
    file.write_text(CONFIG.format(policy=policy, path_type=path_type))
    loaded = load_config(file)
    (cluster,) = [r.cluster for r in loaded.requests if isinstance(r, AddCluster)]
    assert cluster.load_balancing == policy.upper()


def test_an_unknown_name_is_still_refused_by_key(tmp_path: Path) -> None:
    file = tmp_path / "sozu.toml"
    file.write_text(CONFIG.format(policy="round_robbin", path_type="PREFIX"))
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert caught.value.path == "clusters.app.load_balancing"
    assert "ROUND_ROBIN" in caught.value.message


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "round_robin", "Maglev"])
def test_the_cli_takes_policy_names_in_any_case(policy: str) -> None:
    cluster = sozu.commands["cluster"]
    assert isinstance(cluster, click.Group)
    add = cluster.commands["add"]
    (option,) = [p for p in add.params if p.name == "load_balancing_policy"]
    ctx = click.Context(add)
    assert option.type.convert(policy, option, ctx) == policy.lower()


def test_toml_1_1_inline_tables_may_span_lines(tmp_path: Path) -> None:
    """Upstream's own documentation writes frontends and backends as multi-line inline
    tables (TOML 1.1, with trailing commas)."""
    file = tmp_path / "sozu.toml"
    file.write_text(
        """
[[listeners]]
protocol = "http"
address = "127.0.0.1:8080"
[clusters.app]
protocol = "http"
frontends = [
    { address = "127.0.0.1:8080",
      hostname = "a.test",
    },
]
backends = [{ address = "127.0.0.1:9000", backend_id = "b1",
              weight = 10 }]
"""
    )
    loaded = load_config(file)
    (cluster,) = [r.cluster for r in loaded.requests if isinstance(r, AddCluster)]
    assert cluster.cluster_id == "app"
