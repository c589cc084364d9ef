"""`sozu config check`, `sozu start` (stub) and the global options of the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sozu.cli.context import SozuGroup, cli_state
from sozu.cli.main import sozu

VALID = """
log_colored = true
[[listeners]]
protocol = "http"
address = "127.0.0.1:8080"
[clusters.app]
protocol = "http"
frontends = [{ address = "127.0.0.1:8080", hostname = "example.com" }]
backends = [{ address = "127.0.0.1:9000" }, { address = "127.0.0.1:9001" }]
"""
INVALID = VALID.replace('"127.0.0.1:9001"', '"x"')
SUMMARY = "config OK: 1 listeners, 1 clusters, 1 frontends, 2 backends, 0 certificates\n"


@pytest.fixture(autouse=True)
def _no_config_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SOZU_CONFIG", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))


def run(*args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    return CliRunner(env=env).invoke(sozu, list(args), catch_exceptions=False)


def test_check_valid(write_config: Callable[[str], Path]) -> None:
    path = write_config(VALID)
    result = run("config", "check", "-c", str(path))
    assert result.exit_code == 0
    assert result.stdout == SUMMARY
    assert result.stderr == f"{path}: warning: log_colored is not implemented and is ignored\n"


def test_check_invalid(write_config: Callable[[str], Path]) -> None:
    path = write_config(INVALID)
    result = run("config", "check", "-c", str(path))
    assert result.exit_code == 1
    assert result.stdout == ""
    assert (
        result.stderr == f"{path}: clusters.app.backends[1].address: invalid socket address 'x'\n"
    )


def test_check_toml_syntax_error(write_config: Callable[[str], Path]) -> None:
    path = write_config("worker_count = \n")
    result = run("config", "check", "-c", str(path))
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{path}: invalid TOML: ")
    assert "line 1" in result.stderr


def test_check_embedded_default() -> None:
    result = run("config", "check")
    assert result.exit_code == 0
    assert result.stdout.startswith("config OK: 3 listeners, 3 clusters")
    assert result.stderr == ""


@pytest.mark.parametrize(
    "layout",
    [
        ["-c", "{}", "config", "check"],
        ["config", "check", "-c", "{}"],
        ["config", "-c", "{}", "check"],
        ["--config={}", "config", "check"],
        ["config", "check", "--config", "{}"],
    ],
)
def test_config_option_before_or_after_the_subcommand(
    write_config: Callable[[str], Path], layout: list[str]
) -> None:
    path = str(write_config(VALID))
    result = run(*(arg.format(path) for arg in layout))
    assert result.exit_code == 0, result.output
    assert result.stdout == SUMMARY


def test_config_from_the_environment(write_config: Callable[[str], Path], tmp_path: Path) -> None:
    path = str(write_config(VALID))
    assert run("config", "check", env={"SOZU_CONFIG": path}).stdout == SUMMARY
    # A -c on the command line wins over the environment, wherever it is.
    bad = tmp_path / "bad.toml"
    bad.write_text(INVALID)
    assert run("config", "check", "-c", path, env={"SOZU_CONFIG": str(bad)}).exit_code == 0
    assert run("config", "check", "-c", str(bad), env={"SOZU_CONFIG": path}).exit_code == 1


@pytest.mark.parametrize("position", ["before", "after"])
def test_json_output(write_config: Callable[[str], Path], position: str) -> None:
    path = str(write_config(VALID))
    args = ["-j", "config", "check", "-c", path]
    if position == "after":
        args = ["config", "check", "-c", path, "--json"]
    result = run(*args)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "ok": True,
        "file": path,
        "listeners": 1,
        "clusters": 1,
        "frontends": 1,
        "backends": 2,
        "certificates": 0,
        "warnings": ["warning: log_colored is not implemented and is ignored"],
    }


def test_json_output_of_an_invalid_file(write_config: Callable[[str], Path]) -> None:
    path = str(write_config(INVALID))
    result = run("config", "check", "-j", "-c", path)
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "ok": False,
        "file": path,
        "path": "clusters.app.backends[1].address",
        "error": "invalid socket address 'x'",
    }
    assert "clusters.app.backends[1].address" in result.stderr


@pytest.mark.parametrize(
    "args",
    [["config", "check", "--bogus"], ["config", "check", "-t", "-1"], ["nope"], ["-t"]],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert run(*args).exit_code == 2


def test_start_refuses_an_invalid_config(write_config: Callable[[str], Path]) -> None:
    broken = run("start", "-c", str(write_config(INVALID)))
    assert broken.exit_code == 1
    assert "clusters.app.backends[1].address: invalid socket address 'x'" in broken.stderr


def _probe_cli() -> click.Group:
    """A root group with a nested group, printing the merged global options."""

    @click.group(cls=SozuGroup, root=True)
    def root() -> None:
        pass

    @root.group()
    def sub() -> None:
        pass

    @sub.command()
    @click.pass_context
    def show(ctx: click.Context) -> None:
        state = asdict(cli_state(ctx))
        state["config"] = str(state["config"]) if state["config"] else None
        state["socket"] = str(state["socket"]) if state["socket"] else None
        click.echo(json.dumps(state))

    return root


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["sub", "show"], {"config": None, "json": False, "timeout_ms": None, "socket": None}),
        (
            ["-t", "5", "-j", "sub", "show"],
            {"config": None, "json": True, "timeout_ms": 5, "socket": None},
        ),
        (
            ["sub", "-t", "5", "show", "-j"],
            {"config": None, "json": True, "timeout_ms": 5, "socket": None},
        ),
        (
            ["sub", "show", "-c", "a.toml", "-t", "7"],
            {"config": "a.toml", "json": False, "timeout_ms": 7, "socket": None},
        ),
        (
            ["-c", "a.toml", "sub", "-c", "b.toml", "show"],
            {"config": "b.toml", "json": False, "timeout_ms": None, "socket": None},
        ),
        (
            ["-t", "1", "sub", "show", "--timeout", "2"],
            {"config": None, "json": False, "timeout_ms": 2, "socket": None},
        ),
        (
            ["--socket", "/a.sock", "sub", "show"],
            {"config": None, "json": False, "timeout_ms": None, "socket": "/a.sock"},
        ),
        (
            ["sub", "show", "--socket", "/b.sock"],
            {"config": None, "json": False, "timeout_ms": None, "socket": "/b.sock"},
        ),
        (
            ["--socket", "/a.sock", "sub", "show", "--socket", "/b.sock"],
            {"config": None, "json": False, "timeout_ms": None, "socket": "/b.sock"},
        ),
    ],
)
def test_global_options_at_every_level(args: list[str], expected: dict[str, object]) -> None:
    result = CliRunner().invoke(_probe_cli(), args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == expected


def test_python_dash_m(write_config: Callable[[str], Path], tmp_path: Path) -> None:
    path = str(write_config(VALID))
    env = {k: v for k, v in os.environ.items() if k != "SOZU_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "sozu.cli", "config", "check", "-c", path],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == SUMMARY


def test_a_command_keeps_its_own_short_option() -> None:
    """`cluster add -s` is --sticky-session; the global socket option is --socket there."""
    command = sozu.commands["cluster"]
    assert isinstance(command, click.Group)
    add = command.commands["add"]
    names = {name: param.name for param in add.params for name in param.opts}
    assert names["-s"] == "sticky_session"
    assert names["--socket"] == "socket"
    status = sozu.commands["status"]
    opts = {name for param in status.params for name in param.opts}
    assert "--socket" in opts
    assert "-s" not in opts  # never a short socket option: `-s` means sticky in subcommands
