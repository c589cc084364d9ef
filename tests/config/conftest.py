"""Fixtures for configuration tests: PEM files from a throw-away CA, config files on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import trustme


@pytest.fixture(scope="session")
def pems() -> dict[str, str]:
    """PEM texts: a leaf for example.com signed by an intermediate, and a listener default."""
    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert("example.com", "www.example.com")
    listener = root.issue_cert("default.example")
    return {
        "example.pem": leaf.cert_chain_pems[0].bytes().decode(),
        "example.key": leaf.private_key_pem.bytes().decode(),
        "chain.pem": leaf.cert_chain_pems[1].bytes().decode(),
        "listener.pem": listener.cert_chain_pems[0].bytes().decode(),
        "listener.key": listener.private_key_pem.bytes().decode(),
    }


@pytest.fixture
def tls_files(tmp_path: Path, pems: dict[str, str]) -> dict[str, str]:
    """The PEM texts, also written as `<tmp>/tls/<name>`."""
    directory = tmp_path / "tls"
    directory.mkdir()
    for name, text in pems.items():
        (directory / name).write_text(text)
    return pems


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write TOML text to `<tmp>/sozu.toml` and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "sozu.toml"
        path.write_text(text)
        return path

    return write
