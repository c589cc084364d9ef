"""The configuration error type and the key-path notation its messages use.

A key path names a value the way the TOML file nests it: `clusters.app.backends[1].address`
(table keys joined with dots, array indices in brackets, odd keys quoted).
"""

from __future__ import annotations

import re

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Quoted keys escape what TOML escapes: a control character would break the error's line.
_ESCAPES = re.compile(r'["\\\x00-\x1f\x7f]')


class ConfigError(Exception):
    """A configuration that cannot be used; `path` is the key path ("" for the whole file)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


def join_key(path: str, key: str) -> str:
    """`path.key`, quoting a key that is not a bare TOML key (escaped as TOML would)."""
    if not _BARE_KEY.fullmatch(key):
        key = '"' + _ESCAPES.sub(_escape, key) + '"'
    return f"{path}.{key}" if path else key


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    return "\\" + char if char in '"\\' else f"\\u{ord(char):04x}"


def join_index(path: str, index: int) -> str:
    return f"{path}[{index}]"


def show_value(value: object) -> str:
    """A short TOML-flavoured rendering of a value for error messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)
