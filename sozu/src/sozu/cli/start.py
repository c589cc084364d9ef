"""`sozu start`: run the daemon (supervisor and workers) in the foreground."""

from __future__ import annotations

import click

from sozu.cli.context import SozuCommand, cli_state, load_or_fail, with_socket_option


@click.command("start", cls=SozuCommand)
@click.option("--handoff", type=click.Path(dir_okay=False), hidden=True)
@click.pass_context
def start(ctx: click.Context, handoff: str | None) -> None:
    """Run the proxy (supervisor and workers) in the foreground.

    SIGTERM stops it softly, SIGINT hard. Without -c it runs the embedded default
    configuration. Once ready it prints its command socket, metrics and routes;
    --socket overrides the configuration's command_socket.
    """
    if handoff is not None:
        # The supervisor re-executing itself for `sozu upgrade`.
        from pathlib import Path

        from sozu.supervisor.main import run_from_handoff

        ctx.exit(run_from_handoff(Path(handoff)))
    state = cli_state(ctx)
    loaded = with_socket_option(state, load_or_fail(state))
    # Imported here so that the other commands do not pay for trio.
    from sozu.supervisor.main import run

    ctx.exit(run(loaded, announce=state.config is None))
