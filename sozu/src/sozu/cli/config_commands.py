"""`sozu config ...`: work with configuration files, without a running daemon."""

from __future__ import annotations

import click
import msgspec

from sozu.cli.context import ConfigFailure, SozuGroup, cli_state, echo_warnings
from sozu.command.config import ConfigError, ConfigSummary, load_config
from sozu.command.config_default import DEFAULT_CONFIG


@click.group("config", cls=SozuGroup)
def config_group() -> None:
    """Configuration files."""


@config_group.command("check")
@click.pass_context
def check(ctx: click.Context) -> None:
    """Load and check the configuration, then print a summary."""
    state = cli_state(ctx)
    try:
        loaded = load_config(state.config)
    except ConfigError as error:
        if state.json:
            failure = {"ok": False, "file": state.source, "path": error.path}
            click.echo(msgspec.json.encode({**failure, "error": error.message}))
        raise ConfigFailure(state.source, error) from None
    echo_warnings(state, loaded)
    summary = ConfigSummary.of(loaded)
    if state.json:
        document = {
            "ok": True,
            "file": state.source,
            **msgspec.to_builtins(summary),
            "warnings": list(loaded.warnings),
        }
        click.echo(msgspec.json.encode(document))
    else:
        click.echo(f"config OK: {summary.describe()}")


@config_group.command("default")
def default() -> None:
    """Print the embedded default configuration (what `sozu start` runs without -c)."""
    click.echo(DEFAULT_CONFIG, nl=False)
