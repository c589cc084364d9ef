"""Configuration files for fuzzing: valid TOML documents with values shaped by the schema.

`config_documents(hostile)` draws the data of a whole configuration file from the schema's
types (listeners, clusters, frontends, backends, every top-level key), with the strings and
numbers of `hostile_strategies`; `to_toml` writes it out. Paths name the files that
`write_config_files` puts in the configuration's directory (certificates, keys, an answer)
as well as missing, unreadable and odd ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from hypothesis import strategies as st
from support.certs import pool
from support.hostile_strategies import ValueStrategies, hostile_text, pooled

from sozu.command.config_schema import Config

CERTIFICATE_FILES: tuple[str, ...] = ("tls/cert.pem", "tls/other.pem")
KEY_FILES: tuple[str, ...] = ("tls/key.pem", "tls/other-key.pem")
CHAIN_FILES: tuple[str, ...] = ("tls/chain.pem",)
ODD_FILES: tuple[str, ...] = (
    "missing.pem",
    "",
    ".",
    "tls",
    "/",
    "a\x00b",
    "binary.bin",
    "answer.html",
    "tls/key.pem",
    "tls/cert.pem",
)
ANSWERS: tuple[str, ...] = (
    "file://answer.html",
    "file://missing.html",
    "file://binary.bin",
    "file://a\x00b",
    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
)
_TOML_WRONG: tuple[object, ...] = (True, 0, -1, 2**64, 1.5, "x", [], [1], {}, {"a": 1})


def write_config_files(directory: Path) -> None:
    """The files the drawn configurations name, in their directory."""
    certificates = pool()
    (directory / "tls").mkdir(exist_ok=True)
    (directory / "tls/cert.pem").write_text(certificates[0].cert_pem)
    (directory / "tls/key.pem").write_text(certificates[0].key_pem)
    (directory / "tls/other.pem").write_text(certificates[1].cert_pem)
    (directory / "tls/other-key.pem").write_text(certificates[1].key_pem)
    (directory / "tls/chain.pem").write_text(certificates[2].cert_pem)
    (directory / "answer.html").write_text("HTTP/1.1 503 Unavailable\r\n\r\n")
    (directory / "binary.bin").write_bytes(b"\xff\xfe\x00")


class ConfigValues(ValueStrategies):
    """Values of the configuration schema: file names where the schema takes paths."""

    def text(self, struct: str, field: str, item: bool, hostile: bool) -> st.SearchStrategy[str]:
        if field == "certificate":
            return pooled(CERTIFICATE_FILES + ODD_FILES if hostile else CERTIFICATE_FILES, hostile)
        if field == "key" and struct != "HeaderSection":
            return pooled(KEY_FILES + ODD_FILES if hostile else KEY_FILES, hostile)
        if field == "certificate_chain":
            return pooled(CHAIN_FILES + ODD_FILES if hostile else CHAIN_FILES, hostile)
        if field.startswith("answer_"):
            return pooled(("answer.html", *ODD_FILES), hostile)
        if field == "answers" and not item:
            return pooled(ANSWERS, hostile)
        if field in ("command_socket", "saved_state", "pid_file_path"):
            return pooled(("sozu.sock", "state.json", "/tmp/x", *ODD_FILES), hostile)
        if struct == "HeaderSection" and field == "value":
            return hostile_text
        return super().text(struct, field, item, hostile)

    def wrong(self) -> st.SearchStrategy[object]:
        return st.sampled_from(_TOML_WRONG)


CONFIG_VALUES: Final = ConfigValues()


def config_documents(
    *, hostile: bool = True, wrong_types: bool = False
) -> st.SearchStrategy[dict[str, Any]]:
    """The data of a whole configuration file (None values are left out when written)."""
    return CONFIG_VALUES.struct(Config, hostile=hostile, wrong_types=wrong_types)


def _toml_string(text: str) -> str:
    out = ['"']
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, bytes):
        return _toml_string(value.decode("latin-1"))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value if item is not None) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(_toml_pairs(value)) + "}"
    raise TypeError(f"no TOML for {value!r}")


def _toml_pairs(table: dict[str, Any]) -> list[str]:
    return [f"{_toml_string(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None]


def to_toml(document: dict[str, Any]) -> str:
    """TOML text of a document: one top-level key a line, tables inline."""
    return "".join(line + "\n" for line in _toml_pairs(document))
