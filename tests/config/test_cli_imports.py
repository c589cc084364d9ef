"""The CLI stays light: loading `sozu` for a command such as `sozu status` imports neither
the supervisor, the worker, trio, httpx, rich nor cryptography (they are imported by the
commands that need them: `start`, `fleet`, `top`, certificate checks)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("httpx", "trio", "rich", "cryptography", "sozu.supervisor", "sozu.worker")


def test_the_cli_imports_no_heavy_module_until_a_command_needs_it() -> None:
    probe = f"import sys, sozu.cli.main\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""


def test_lazy_commands_are_listed_and_run() -> None:
    from click.testing import CliRunner

    from sozu.cli.main import sozu

    runner = CliRunner()
    listing = runner.invoke(sozu, ["--help"])
    assert listing.exit_code == 0
    assert "fleet" in listing.output
    assert "top" in listing.output
    for command in ("fleet", "top"):
        result = runner.invoke(sozu, [command, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage: sozu " + command in result.output
