"""Global options of the `sozu` CLI, accepted before or after any subcommand.

click has no global options, so `SozuGroup` and `SozuCommand` add `-c/--config`, `-j/--json`,
`-t/--timeout` and `--socket` to every group and command; each occurrence updates the one
`CliState` kept on the root context, the last one on the command line winning. One option has
one meaning in a command: a command whose own option takes one of the short names, like
`cluster add -s`, keeps it and takes only the long form of the global one; a command whose own
option takes the long name, like `cluster health-check set --timeout`, does not take that
global option at all (`sozu -t MS cluster health-check set --timeout S` sets both).
`SOZU_CONFIG` is read by the root group only, so any `-c` on the command line overrides it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click

from sozu.command.config import (
    DEFAULT_SOURCE,
    ConfigError,
    LoadedConfig,
    load_config,
    with_command_socket,
)


@dataclass
class CliState:
    """The global options, merged from every level of the command line."""

    config: Path | None = None
    json: bool = False
    timeout_ms: int | None = None
    socket: Path | None = None

    @property
    def source(self) -> str:
        """How error messages name the configuration."""
        return str(self.config) if self.config is not None else DEFAULT_SOURCE


def cli_state(ctx: click.Context) -> CliState:
    return ctx.find_root().ensure_object(CliState)


def _store(field: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        state = cli_state(ctx)
        if value is not None and value is not False:
            setattr(state, field, value)

    return store


def _global_options(*, root: bool) -> list[click.Parameter]:
    return [
        click.Option(
            ["-c", "--config"],
            type=click.Path(dir_okay=False, path_type=Path),
            metavar="FILE",
            envvar="SOZU_CONFIG" if root else None,
            expose_value=False,
            callback=_store("config"),
            help="Configuration file (default: $SOZU_CONFIG, else the embedded default).",
        ),
        click.Option(
            ["-j", "--json"],
            is_flag=True,
            default=False,
            expose_value=False,
            callback=_store("json"),
            help="Print one JSON document on stdout.",
        ),
        click.Option(
            ["-t", "--timeout"],
            type=click.IntRange(min=0),
            metavar="MS",
            expose_value=False,
            callback=_store("timeout_ms"),
            help="Command timeout in milliseconds; 0: none (default: ctl_command_timeout).",
        ),
        click.Option(
            # Long form only: `-s` keeps upstream's meanings in subcommands (sticky id, sticky
            # session), so that no command talks to another daemon by mistake.
            ["--socket"],
            type=click.Path(dir_okay=False, path_type=Path),
            metavar="PATH",
            expose_value=False,
            callback=_store("socket"),
            help="Command socket (default: the configuration's command_socket).",
        ),
    ]


def _add_global_options(params: list[click.Parameter], *, root: bool) -> None:
    """Append the global options the command does not define itself: one whose long name (or
    value name) the command uses is left out, a short name the command uses is dropped."""
    taken = {name for param in params for name in (*param.opts, *param.secondary_opts)}
    names = {param.name for param in params}
    for option in _global_options(root=root):
        long_name = max(option.opts, key=len)
        if long_name in taken or option.name in names:
            # Two parameters of one name would share one parsed value.
            continue
        option.opts = [name for name in option.opts if name not in taken]
        params.append(option)


class SozuCommand(click.Command):
    """A command that takes the global options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _add_global_options(self.params, root=False)


class SozuGroup(click.Group):
    """A group that takes the global options; its commands and subgroups do too."""

    command_class = SozuCommand
    group_class = type

    def __init__(self, *args: Any, root: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _add_global_options(self.params, root=root)


class ConfigFailure(click.ClickException):
    """A configuration error, printed as `<file>: <key path>: <message>` (exit code 1)."""

    exit_code = 1

    def __init__(self, source: str, error: ConfigError) -> None:
        prefix = f"{source}: {error.path}" if error.path else source
        super().__init__(f"{prefix}: {error.message}")

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(self.message, err=True, file=file)


def load_or_fail(state: CliState) -> LoadedConfig:
    """Load the selected configuration, or fail with the CLI's error format."""
    try:
        return load_config(state.config)
    except ConfigError as error:
        raise ConfigFailure(state.source, error) from None


def with_socket_option(state: CliState, loaded: LoadedConfig) -> LoadedConfig:
    """The configuration whose `command_socket` is `--socket` when given (`sozu start`)."""
    if state.socket is None:
        return loaded
    try:
        return with_command_socket(loaded, state.socket)
    except ConfigError as error:
        raise click.BadParameter(error.message, param_hint="'--socket'") from None


def command_socket(state: CliState, loaded: LoadedConfig) -> str:
    """The socket to talk to: `--socket`, else the configuration's `command_socket`."""
    return str(state.socket) if state.socket is not None else loaded.config.command_socket


def echo_warnings(state: CliState, loaded: LoadedConfig) -> None:
    for warning in loaded.warnings:
        click.echo(f"{state.source}: {warning}", err=True)
