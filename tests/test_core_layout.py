"""The worker's cores stay sans-io: no module under `sozu.worker.core` imports trio, socket,
ssl, select, time, random or os (clock and randomness are injected), and each stays small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "worker" / "src" / "sozu" / "worker" / "core"
MODULES = sorted(CORE.rglob("*.py"))
BANNED = ("trio", "socket", "ssl", "select", "time", "random", "os")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_core_modules_import_nothing_that_does_io_or_reads_a_clock(path: Path) -> None:
    assert not _imports(path) & set(BANNED)
    assert len(path.read_text().splitlines()) <= 600
    assert ast.get_docstring(ast.parse(path.read_text())), "each module says its role"


def test_loading_the_core_loads_no_io_module() -> None:
    code = (
        "import sys\n"
        "import sozu.worker.core.http1.session, sozu.worker.core.http1.actions\n"
        "import sozu.worker.core.h2.session\n"
        "print(','.join(m for m in ('trio', 'socket', 'ssl', 'select', 'random') "
        "if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""
