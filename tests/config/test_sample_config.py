"""The commented sample configuration at the repository's root loads cleanly, with no warning,
and says what it holds."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from sozu.cli.main import sozu
from sozu.command.config import load_config

SAMPLE = Path(__file__).resolve().parents[2] / "sozu.toml"


def test_the_sample_configuration_passes_config_check() -> None:
    result = CliRunner().invoke(sozu, ["config", "check", "-c", str(SAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("config OK: 3 listeners, 3 clusters, 4 frontends"), (
        result.output
    )


def test_the_sample_configuration_loads_without_warnings() -> None:
    loaded = load_config(SAMPLE)
    assert not loaded.warnings
    config = loaded.config
    assert config.metrics.prometheus_address == "127.0.0.1:9191"
    assert {listener.protocol for listener in config.listeners} == {"http", "tcp", "udp"}
