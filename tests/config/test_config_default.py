"""The embedded default configuration, and what loading a configuration imports."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sozu.command.addresses import parse_address
from sozu.command.config import DEFAULT_CONFIG, ConfigSummary, load_config, parse_config
from sozu.command.requests import ActivateListener, AddBackend


def test_default_config_loads_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    loaded = load_config(None)
    assert loaded.warnings == ()
    assert loaded.source == "<default>"
    assert loaded.config.command_socket == str(Path.cwd() / "sozu.sock")
    assert loaded.config.metrics.prometheus_address == "127.0.0.1:9191"
    activations = [r for r in loaded.requests if isinstance(r, ActivateListener)]
    assert [(r.proxy, r.address) for r in activations] == [
        ("HTTP", "127.0.0.1:8080"),
        ("TCP", "127.0.0.1:8081"),
        ("UDP", "127.0.0.1:8053"),
    ]
    backends = [r.backend for r in loaded.requests if isinstance(r, AddBackend)]
    assert backends
    assert all(parse_address(b.address)[0] in ipaddress.ip_network("127.0.0.0/8") for b in backends)
    assert ConfigSummary.of(loaded).clusters == 3


def test_default_socket_is_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    loaded = load_config(None)
    assert loaded.config.command_socket == str(tmp_path / "sozu.sock")
    assert os.path.isabs(loaded.config.command_socket)


def test_default_text_parses_on_its_own(tmp_path: Path) -> None:
    loaded = parse_config(DEFAULT_CONFIG, base_dir=tmp_path)
    assert loaded.config.command_socket == str(tmp_path / "sozu.sock")


def test_loading_a_config_imports_no_trio_socket_or_ssl(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from sozu.command.config import load_config\n"
        "load_config(None)\n"
        "print(sorted(m for m in ('trio', 'socket', 'ssl') if m in sys.modules))\n"
    )
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert result.stdout.strip() == "[]"
