"""One option, one meaning: a command's own option is never also read as a global option
(`cluster health-check set --timeout` is the check's timeout, not the command timeout), and
`sozu start -s/--socket PATH` is the daemon's command socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from sozu.cli import routing_commands
from sozu.cli.context import cli_state
from sozu.cli.main import sozu
from sozu.command import requests as rq
from sozu.command.config import LoadedConfig
from sozu.command.requests import Request
from sozu.supervisor import main as supervisor_main

SET = ["cluster", "health-check", "set", "-i", "web", "-u", "/health"]


def _commands(command: click.Command, path: str = "sozu") -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")


def test_no_command_has_two_parameters_of_one_name() -> None:
    """Two parameters of one name would read one parsed value (the --timeout defect)."""
    for path, command in _commands(sozu):
        names = [param.name for param in command.params]
        assert len(names) == len(set(names)), f"{path}: {names}"
        opts = [name for param in command.params for name in param.opts]
        assert len(opts) == len(set(opts)), f"{path}: {opts}"


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Request, int | None]]:
    """Requests the CLI would have sent, with the command timeout it would have used."""
    captured: list[tuple[Request, int | None]] = []

    def capture(ctx: click.Context, request: Request, render: Any = None, **options: Any) -> None:
        captured.append((request, cli_state(ctx).timeout_ms))

    monkeypatch.setattr(routing_commands, "send", capture)
    return captured


@pytest.mark.parametrize(
    ("args", "command_timeout"),
    [
        ([*SET, "--timeout", "7"], None),
        (["-t", "500", *SET, "--timeout", "7"], 500),
        (["cluster", "health-check", "-t", "500", "set", "-i", "web", "-u", "/health",
          "--timeout", "7"], 500),
        (["--timeout", "500", *SET, "--timeout", "7"], 500),
    ],
)  # fmt: skip
def test_health_check_timeout_is_the_checks_own(
    sent: list[tuple[Request, int | None]], args: list[str], command_timeout: int | None
) -> None:
    result = CliRunner().invoke(sozu, args)
    assert result.exit_code == 0, result.output
    ((request, timeout_ms),) = sent
    assert isinstance(request, rq.SetHealthCheck)
    assert request.health_check.timeout == 7
    assert timeout_ms == command_timeout


def test_health_check_set_takes_no_command_timeout_itself(
    sent: list[tuple[Request, int | None]],
) -> None:
    result = CliRunner().invoke(sozu, [*SET, "-t", "500"])
    assert result.exit_code == 2
    assert sent == []


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[LoadedConfig]:
    """The configurations `sozu start` would have run."""
    monkeypatch.delenv("SOZU_CONFIG", raising=False)
    runs: list[LoadedConfig] = []

    def run(loaded: LoadedConfig, **options: Any) -> int:
        runs.append(loaded)
        return 0

    monkeypatch.setattr(supervisor_main, "run", run)
    return runs


@pytest.mark.parametrize("position", ["before", "after"])
def test_start_uses_the_socket_option(
    started: list[LoadedConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    position: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    options = ["--socket", "run/other.sock"]
    args = [*options, "start"] if position == "before" else ["start", *options]
    result = CliRunner().invoke(sozu, args)
    assert result.exit_code == 0, result.output
    (loaded,) = started
    assert loaded.config.command_socket == str(tmp_path / "run" / "other.sock")


def test_start_without_the_socket_option_keeps_the_configured_one(
    started: list[LoadedConfig], tmp_path: Path
) -> None:
    config = tmp_path / "sozu.toml"
    config.write_text(f'command_socket = "{tmp_path}/configured.sock"\n')
    result = CliRunner().invoke(sozu, ["start", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert started[0].config.command_socket == str(tmp_path / "configured.sock")


def test_start_refuses_a_socket_path_too_long_for_a_unix_socket(
    started: list[LoadedConfig],
) -> None:
    result = CliRunner().invoke(sozu, ["start", "--socket", "/tmp/" + "x" * 120])
    assert result.exit_code == 2
    assert "'--socket'" in result.output
    assert "too long for a unix socket" in result.output
    assert started == []
