"""`sozu start`: a stub until the supervisor is built (it only loads the configuration)."""

from __future__ import annotations

import click

from sozu.cli.context import SozuCommand, cli_state, echo_warnings, load_or_fail


@click.command("start", cls=SozuCommand)
@click.pass_context
def start(ctx: click.Context) -> None:
    """Run the proxy (supervisor and workers) in the foreground."""
    state = cli_state(ctx)
    loaded = load_or_fail(state)
    echo_warnings(state, loaded)
    click.echo("the daemon is not built yet", err=True)
    ctx.exit(1)
