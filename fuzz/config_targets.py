"""Fuzz targets of the configuration loader: any text, and valid TOML drawn from the schema
with hostile values. The files the configurations name live in a temporary directory."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import tomli
from hypothesis import given
from hypothesis import strategies as st
from support import fuzz_checks as checks
from support.config_strategies import config_documents, to_toml, write_config_files

from fuzz.inputs import FUZZ_SETTINGS, Target, hypothesis_target
from sozu.command.config import DEFAULT_CONFIG


@functools.cache
def config_directory() -> Path:
    directory = Path(tempfile.mkdtemp(prefix="sozu-fuzz-config-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    write_config_files(directory)
    return directory


def config_text(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # load_config refuses it before parsing
    try:
        tomli.loads(text)
    except (tomli.TOMLDecodeError, RecursionError):
        valid = False
    else:
        valid = True
    checks.check_config_text(text, config_directory(), toml_valid=valid)


def _config_text_seeds() -> list[bytes]:
    https = (
        '[[listeners]]\nprotocol = "https"\naddress = "127.0.0.1:8443"\n'
        'certificate = "tls/cert.pem"\nkey = "tls/key.pem"\n'
        '[clusters.app]\nprotocol = "http"\n'
        'frontends = [{ address = "127.0.0.1:8443", hostname = "example.com", path = "/api",'
        ' headers = [{ position = "request", key = "X-A", value = "1" }] }]\n'
        'backends = [{ address = "127.0.0.1:9000", weight = 10 }]\n'
    )
    nested = "a = " + "[" * 600 + "]" * 600
    return [DEFAULT_CONFIG.encode(), https.encode(), nested.encode()]


@FUZZ_SETTINGS
@given(
    st.one_of(
        config_documents(hostile=False), config_documents(), config_documents(wrong_types=True)
    )
)
def _config_document(document: dict[str, object]) -> None:
    checks.check_config_text(to_toml(document), config_directory(), toml_valid=True)


TARGETS: tuple[Target, ...] = (
    Target("config_text", config_text, _config_text_seeds, "parse_config of any text"),
    Target(
        "config",
        hypothesis_target(_config_document),
        list,
        "parse_config of valid TOML drawn from the schema, hostile values",
    ),
)
