"""TOML text to a typed `Config`, with the key path of every error.

The decoder walks the parsed TOML along the schema's type hints: unknown keys are errors
(with a suggestion), upstream keys we do not implement give one warning each and are dropped,
scalars are validated one by one so that an error names its exact key, and marked values are
post-processed (addresses canonicalised, paths made absolute, answer files read). Each table
is then built with `msgspec.convert`, which only has to check required keys and `__post_init__`.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import msgspec
import tomli

from sozu.command.addresses import format_address, parse_address
from sozu.command.config_error import ConfigError, join_index, join_key, show_value
from sozu.command.config_keys import UNIMPLEMENTED_KEYS, is_unimplemented
from sozu.command.config_schema import Config, ValueKind

_AT_PATH = re.compile(r" - at `\$(.*)`$")
_MISSING = re.compile(r"Object missing required field `(.+)`$")
_FILE_SCHEME = "file://"


def parse_toml(text: str) -> dict[str, Any]:
    """Parse TOML text (TOML 1.1 with `tomli`: inline tables may span lines, as upstream's own
    documentation writes them); a syntax error names its line and column."""
    try:
        return tomli.loads(text)
    except tomli.TOMLDecodeError as error:
        raise ConfigError("", f"invalid TOML: {error}") from None
    except RecursionError:  # tomli recurses once per level of nested arrays and tables
        raise ConfigError("", "invalid TOML: arrays or tables nested too deeply") from None


def decode_config(raw: dict[str, Any], base_dir: Path) -> tuple[Config, list[str]]:
    """Validate parsed TOML into a Config; returns it with the unimplemented-key warnings."""
    decoder = _Decoder(base_dir)
    config = decoder.value(raw, Config, "", "")
    assert isinstance(config, Config)
    return config, decoder.warnings


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


class _Decoder:
    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.warnings: list[str] = []
        self._warned: set[str] = set()

    def value(self, raw: object, tp: Any, path: str, pattern: str) -> object:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            base, *extras = typing.get_args(tp)
            if _is_struct(base) or typing.get_origin(base) in (tuple, dict):
                value = self.value(raw, base, path, pattern)
            else:
                value = self._scalar(raw, tp, path)
            for extra in extras:
                if isinstance(extra, ValueKind):
                    value = self._post_process(extra, value, path)
            return value
        if origin in (types.UnionType, typing.Union):
            members = [arg for arg in typing.get_args(tp) if arg is not type(None)]
            assert len(members) == 1, f"unsupported union {tp}"
            return self.value(raw, members[0], path, pattern)
        if origin is Literal:
            return self._literal(raw, typing.get_args(tp), path)
        if _is_struct(tp):
            return self._table(raw, tp, path, pattern)
        if origin is tuple:
            item_type, ellipsis = typing.get_args(tp)
            assert ellipsis is Ellipsis
            if not isinstance(raw, list):
                raise ConfigError(path, f"expected an array, got {show_value(raw)}")
            return [
                self.value(item, item_type, join_index(path, index), pattern + "[]")
                for index, item in enumerate(raw)
            ]
        if origin is dict:
            _, value_type = typing.get_args(tp)
            if not isinstance(raw, dict):
                raise ConfigError(path, f"expected a table, got {show_value(raw)}")
            return {
                key: self.value(item, value_type, join_key(path, key), pattern + ".*")
                for key, item in raw.items()
            }
        return self._scalar(raw, tp, path)

    def _table(self, raw: object, cls: type[msgspec.Struct], path: str, pattern: str) -> object:
        if not isinstance(raw, dict):
            raise ConfigError(path, f"expected a table, got {show_value(raw)}")
        hints = _hints(cls)
        fields = cls.__struct_fields__
        values: dict[str, object] = {}
        for key, item in raw.items():
            key_path = join_key(path, key)
            key_pattern = f"{pattern}.{key}" if pattern else key
            if key in fields:
                values[key] = self.value(item, hints[key], key_path, key_pattern)
            elif is_unimplemented(key_pattern):
                if key_pattern not in self._warned:
                    self._warned.add(key_pattern)
                    self.warnings.append(f"warning: {key_path} is not implemented and is ignored")
            else:
                raise ConfigError(key_path, _unknown_key(key, fields, pattern))
        try:
            return msgspec.convert(values, cls)
        except msgspec.ValidationError as error:
            message, at = _split_error(str(error))
            missing = _MISSING.match(message)
            if missing:
                raise ConfigError(join_key(path, missing[1]), "missing required key") from None
            raise ConfigError(path + at, message) from None

    def _literal(self, raw: object, allowed: tuple[object, ...], path: str) -> object:
        if raw in allowed and type(raw) is type(allowed[0]):
            return raw
        if isinstance(raw, str) and all(isinstance(choice, str) for choice in allowed):
            # Names in any case (`ROUND_ROBIN`, `round_robin`), as upstream and the CLI take them.
            for choice in allowed:
                if raw.casefold() == str(choice).casefold():
                    return choice
        choices = ", ".join(str(choice) for choice in allowed)
        raise ConfigError(path, f"invalid value {show_value(raw)} (expected one of: {choices})")

    def _scalar(self, raw: object, tp: Any, path: str) -> object:
        try:
            return msgspec.convert(raw, tp)
        except msgspec.ValidationError as error:
            message, at = _split_error(str(error))
            message = message.replace("`", "").split(", got ")[0]
            message = message[:1].lower() + message[1:]
            raise ConfigError(path + at, f"{message}, got {show_value(raw)}") from None

    def _post_process(self, kind: ValueKind, value: object, path: str) -> object:
        assert isinstance(value, str)
        if kind.name in ("address", "listen_address"):
            try:
                ip, port = parse_address(value)
            except ValueError:  # AddressError, or int() refusing a port such as '²'
                raise ConfigError(path, f"invalid socket address {value!r}") from None
            if port == 0 and kind.name == "listen_address":
                # Every worker slot gets its own socket on the same port: it must be fixed.
                raise ConfigError(path, f"port 0 is not allowed in {value!r}")
            return format_address(ip, port)
        if kind.name == "path":
            return self._path(value, path)
        if kind.name == "answer_file":
            return self._read_answer(self._path(value, path), path)
        if kind.name == "log_target":
            return self._log_target(value, path)
        if value.startswith(_FILE_SCHEME):
            return self._read_answer(self._path(value[len(_FILE_SCHEME) :], path), path)
        return value

    def _log_target(self, value: str, path: str) -> str:
        if value in ("stdout", "stderr"):
            return value
        for scheme in ("udp://", "tcp://"):
            if value.startswith(scheme):
                try:
                    ip, port = parse_address(value[len(scheme) :])
                except ValueError as error:
                    raise ConfigError(path, f"{error} in {value!r}") from None
                return scheme + format_address(ip, port)
        for scheme in (_FILE_SCHEME, "unix://"):
            if value.startswith(scheme):
                return scheme + self._path(value[len(scheme) :], path)
        raise ConfigError(
            path,
            f"unsupported log target {value!r} (expected stdout, stderr, file://PATH, "
            "udp://IP:PORT, tcp://IP:PORT or unix://PATH)",
        )

    def _path(self, value: str, path: str) -> str:
        if not value:
            raise ConfigError(path, "empty path")
        if "\x00" in value:
            # No system call takes one: reading the file would raise ValueError, not OSError.
            raise ConfigError(path, f"path {value!r} contains a NUL character")
        beside = os.path.normpath(self.base_dir / value)
        if os.path.isabs(value) or os.path.exists(beside):
            return beside
        # Upstream resolves relative paths against the working directory: when the file is
        # not next to the configuration but is there, that one is used, and said.
        here = os.path.normpath(Path.cwd() / value)
        if here != beside and os.path.exists(here):
            self.warnings.append(
                f"note: {path}: {value!r} is not in the configuration's folder; "
                f"using {here} (from the working directory)"
            )
            return here
        return beside

    def _read_answer(self, file: str, path: str) -> str:
        try:
            return Path(file).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(path, f"cannot read answer file {file!r}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(path, f"answer file {file!r} is not UTF-8 text") from None


def _split_error(text: str) -> tuple[str, str]:
    """msgspec's message and the key path it names (`$.a[0]` -> `.a[0]`)."""
    match = _AT_PATH.search(text)
    if match is None:
        return text, ""
    return text[: match.start()], match[1]


def _unknown_key(key: str, fields: tuple[str, ...], pattern: str) -> str:
    prefix = f"{pattern}." if pattern else ""
    known = [*fields, *(k[len(prefix) :] for k in UNIMPLEMENTED_KEYS if k.startswith(prefix))]
    close = difflib.get_close_matches(key, [k for k in known if "." not in k], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}"
