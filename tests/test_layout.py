"""Packaging rules: one PEP 420 namespace `sozu`, and sans-io modules free of trio and socket."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import sozu

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = ("sozu", "command", "worker", "supervisor")

# Modules that must stay importable without trio or socket (sans-io cores and what they use).
SANS_IO_MODULES = (
    "sozu.command.addresses",
    "sozu.command.types",
    "sozu.command.requests",
    "sozu.command.responses",
    "sozu.command.envelope",
    "sozu.command.framing",
    "sozu.command.state",
    "sozu.command.state_replay",
    "sozu.command.statefile",
    "sozu.command.config",
    "sozu.worker",
    "sozu.worker.core.balancing",
    "sozu.worker.core.clusters",
    "sozu.worker.core.tcp_session",
    "sozu.worker.core.http1.session",
    "sozu.worker.core.h2.session",
    "sozu.worker.core.udp.manager",
    "simulation.udp",
    "simulation.http1",
)


def test_namespace_has_no_init() -> None:
    assert sozu.__file__ is None
    for member in MEMBERS:
        assert not (ROOT / member / "src" / "sozu" / "__init__.py").exists()
        assert not (ROOT / member / "__init__.py").exists()
    assert not (ROOT / "sozu" / "__init__.py").exists()


def test_every_member_is_importable_with_py_typed() -> None:
    for member, package in zip(MEMBERS, ("cli", "command", "worker", "supervisor"), strict=True):
        assert (ROOT / member / "src" / "sozu" / package / "py.typed").is_file()


@pytest.mark.parametrize("module", SANS_IO_MODULES)
def test_sans_io_module_loads_neither_trio_nor_socket(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "banned = ('trio', 'socket', 'ssl', 'prometheus_client')\n"
        "bad = sorted(m for m in banned if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "", f"{module} loads {result.stdout.strip()}"
