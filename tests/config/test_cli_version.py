"""`sozu --version` and `sozu config default`."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from sozu.cli.main import sozu
from sozu.command.build import build_id
from sozu.command.config import load_config
from sozu.command.config_default import DEFAULT_CONFIG


def test_version_names_the_release_and_the_build() -> None:
    for flag in ("--version", "-V"):
        result = CliRunner().invoke(sozu, [flag])
        assert result.exit_code == 0, result.output
        assert re.fullmatch(r"sozu \d+\.\d+\.\d+ \(build [0-9a-f]{12}\)\n", result.output)
        assert build_id() in result.output


def test_config_default_prints_the_embedded_configuration(tmp_path: Path) -> None:
    result = CliRunner().invoke(sozu, ["config", "default"])
    assert result.exit_code == 0, result.output
    assert result.output == DEFAULT_CONFIG
    written = tmp_path / "sozu.toml"
    written.write_text(result.output)
    loaded = load_config(written)  # a starting point that loads as it is
    assert [listener.address for listener in loaded.config.listeners] == [
        "127.0.0.1:8080",
        "127.0.0.1:8081",
        "127.0.0.1:8053",
    ]
