"""sozu's TOML configuration: loading, checking, and the requests it stands for.

`load_config(path)` reads a file (None: the embedded default) and returns a `LoadedConfig`:
the typed `Config`, the warnings (one per upstream key we do not implement, and things that
are ignored), and the requests that build the state. Any problem raises `ConfigError` naming
the key path. The pieces live in `config_schema` (sections and defaults), `config_keys`
(unimplemented keys), `config_decode` (TOML to Config), `config_checks` (cross-field rules),
`config_requests` (Config to requests) and `config_default` (the embedded default).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from sozu.command.config_checks import check_command_socket, finish_config
from sozu.command.config_decode import decode_config, parse_toml
from sozu.command.config_default import DEFAULT_CONFIG, default_command_socket, runtime_dir
from sozu.command.config_error import ConfigError
from sozu.command.config_keys import UNIMPLEMENTED_KEYS
from sozu.command.config_requests import config_to_requests
from sozu.command.config_schema import Config
from sozu.command.requests import AddCertificate, AddHttpsListener, Request

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_SOURCE",
    "UNIMPLEMENTED_KEYS",
    "Config",
    "ConfigError",
    "ConfigSummary",
    "LoadedConfig",
    "config_to_requests",
    "default_command_socket",
    "load_config",
    "parse_config",
    "runtime_dir",
    "with_command_socket",
]

DEFAULT_SOURCE = "<default>"


@dataclass(frozen=True, kw_only=True)
class LoadedConfig:
    """A checked configuration, where it came from, its warnings and its requests."""

    config: Config
    source: str
    path: Path | None
    warnings: tuple[str, ...]
    requests: tuple[Request, ...]


class ConfigSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What a configuration holds, for `sozu config check`."""

    listeners: int
    clusters: int
    frontends: int
    backends: int
    certificates: int

    @classmethod
    def of(cls, loaded: LoadedConfig) -> ConfigSummary:
        config = loaded.config
        certificates = sum(isinstance(r, AddCertificate) for r in loaded.requests)
        certificates += sum(
            isinstance(r, AddHttpsListener) and r.listener.certificate is not None
            for r in loaded.requests
        )
        return cls(
            listeners=len(config.listeners),
            clusters=len(config.clusters),
            frontends=sum(len(cluster.frontends) for cluster in config.clusters.values()),
            backends=sum(len(cluster.backends) for cluster in config.clusters.values()),
            certificates=certificates,
        )

    def describe(self) -> str:
        return (
            f"{self.listeners} listeners, {self.clusters} clusters, {self.frontends} frontends, "
            f"{self.backends} backends, {self.certificates} certificates"
        )


def load_config(path: Path | None) -> LoadedConfig:
    """Load and check a configuration file; None loads the embedded default."""
    if path is None:
        return parse_config(
            DEFAULT_CONFIG,
            base_dir=Path.cwd(),
            source=DEFAULT_SOURCE,
            command_socket=default_command_socket(),
        )
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError("", f"cannot read the configuration: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError("", f"not UTF-8 text (byte {error.start})") from None
    loaded = parse_config(text, base_dir=path.absolute().parent, source=str(path))
    return LoadedConfig(
        config=loaded.config,
        source=loaded.source,
        path=path.absolute(),
        warnings=loaded.warnings,
        requests=loaded.requests,
    )


def parse_config(
    text: str, *, base_dir: Path, source: str = "<text>", command_socket: Path | None = None
) -> LoadedConfig:
    """Check configuration text whose relative paths are relative to `base_dir`.

    `command_socket` is the socket used when the text sets none (default: `sozu.sock` in
    `base_dir`).
    """
    raw = parse_toml(text)
    if "command_socket" not in raw:
        raw["command_socket"] = str(command_socket or base_dir / "sozu.sock")
    config, warnings = decode_config(raw, base_dir)
    config, more_warnings = finish_config(config)
    requests = config_to_requests(config)
    return LoadedConfig(
        config=config,
        source=source,
        path=None,
        warnings=(*warnings, *more_warnings),
        requests=tuple(requests),
    )


def with_command_socket(loaded: LoadedConfig, path: Path) -> LoadedConfig:
    """The configuration with another `command_socket` (`sozu start -s PATH`, relative to the
    current directory); ConfigError if the path cannot be a unix socket."""
    socket_path = os.path.abspath(path)
    check_command_socket(socket_path)
    config = msgspec.structs.replace(loaded.config, command_socket=socket_path)
    return dataclasses.replace(loaded, config=config)
