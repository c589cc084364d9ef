"""Relative paths in a configuration file: next to the file first, then (upstream's rule) the
working directory, said in a note; a path found in neither stays next to the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sozu.command.config import ConfigError, LoadedConfig, load_config
from sozu.command.requests import AddHttpListener

CONFIG = """
[[listeners]]
protocol = "http"
address = "127.0.0.1:8080"
answer_404 = "{answer}"
"""


def _answer_404(loaded: LoadedConfig) -> str:
    (listener,) = [r.listener for r in loaded.requests if isinstance(r, AddHttpListener)]
    return listener.answers["404"]


def _setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    folder, work = tmp_path / "etc", tmp_path / "work"
    folder.mkdir()
    work.mkdir()
    monkeypatch.chdir(work)
    return folder, work


def test_a_path_next_to_the_file_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, work = _setup(tmp_path, monkeypatch)
    (folder / "404.html").write_text("beside")
    (work / "404.html").write_text("here")
    config = folder / "sozu.toml"
    config.write_text(CONFIG.format(answer="404.html"))
    loaded = load_config(config)
    assert _answer_404(loaded) == "beside"
    assert not any("working directory" in w for w in loaded.warnings)


def test_else_the_working_directory_is_used_and_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, work = _setup(tmp_path, monkeypatch)
    (work / "404.html").write_text("here")
    config = folder / "sozu.toml"
    config.write_text(CONFIG.format(answer="404.html"))
    loaded = load_config(config)
    assert _answer_404(loaded) == "here"
    (note,) = [w for w in loaded.warnings if "working directory" in w]
    assert "listeners[0].answer_404" in note
    assert str(work / "404.html") in note


def test_found_nowhere_names_the_path_next_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, _ = _setup(tmp_path, monkeypatch)
    config = folder / "sozu.toml"
    config.write_text(CONFIG.format(answer="missing.html"))
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert str(folder / "missing.html") in caught.value.message
