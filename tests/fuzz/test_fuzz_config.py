"""Bounded fuzzing of the configuration loader: any text, and valid TOML drawn from the schema
with hostile values, give a configuration whose requests the state takes, or a ConfigError
naming the key at fault (properties in support/fuzz_checks.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import fuzz_checks as checks
from support.config_strategies import config_documents, to_toml, write_config_files

from sozu.command.config import DEFAULT_CONFIG

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("config")
    write_config_files(directory)
    return directory


@FUZZ
@given(
    st.one_of(
        config_documents(hostile=False), config_documents(), config_documents(wrong_types=True)
    )
)
def test_valid_toml_with_hostile_values(config_dir: Path, document: dict[str, object]) -> None:
    text = to_toml(document)
    tomli.loads(text)
    checks.check_config_text(text, config_dir, toml_valid=True)


@st.composite
def edited_default(draw: st.DrawFn) -> str:
    """The default configuration with a few lines replaced, dropped or repeated."""
    lines = DEFAULT_CONFIG.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["replace", "drop", "repeat", "cut"]))
        if action == "replace":
            lines[index] = draw(st.text(max_size=30))
        elif action == "drop":
            del lines[index]
        elif action == "repeat":
            lines.insert(index, lines[index])
        else:
            lines[index] = lines[index][: draw(st.integers(0, len(lines[index])))]
        if not lines:
            break
    return "\n".join(lines)


nested_toml = st.builds(
    lambda opener, closer, depth: "a = " + opener * depth + "1" + closer * depth,
    st.sampled_from(["[", "{b="]),
    st.sampled_from(["]", "}"]),
    st.integers(0, 1000),
)


@FUZZ
@given(st.one_of(st.text(max_size=200), edited_default(), nested_toml))
def test_any_text(config_dir: Path, text: str) -> None:
    try:
        tomli.loads(text)
    except (tomli.TOMLDecodeError, RecursionError):
        valid = False
    else:
        valid = True
    checks.check_config_text(text, config_dir, toml_valid=valid)
