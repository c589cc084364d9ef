"""`sozu top [--refresh-ms N] [--snapshot N]`: the live terminal view (see `sozu.cli.top`)."""

from __future__ import annotations

import os
import shutil
import sys

import click
from rich.console import Console

from sozu.cli.context import SozuCommand, cli_state, command_socket, load_or_fail
from sozu.cli.daemon_client import DaemonFailure, DaemonUnreachable
from sozu.cli.top.app import run_interactive, run_snapshots
from sozu.cli.top.render import PANES
from sozu.cli.top.source import Source
from sozu.command.client import CommandTimeout, DaemonUnavailable
from sozu.command.envelope import ProtocolError


@click.command("top", cls=SozuCommand)
@click.option(
    "--refresh-ms",
    type=click.IntRange(100, 60_000),
    default=1000,
    show_default=True,
    help="How often the daemon is polled.",
)
@click.option(
    "--snapshot",
    "frames",
    type=click.IntRange(1, 1000),
    help="Print N frames as text (one per refresh) and exit, without terminal control.",
)
@click.option(
    "--pane",
    type=click.Choice(sorted(PANES)),
    default="o",
    show_default=True,
    help="The pane --snapshot prints (o overview, c clusters, b backends, l listeners, "
    "u udp, t certificates, w workers, e events).",
)
@click.pass_context
def top(ctx: click.Context, refresh_ms: int, frames: int | None, pane: str) -> None:
    """A live view of the proxy: rates, latency, clusters, backends, listeners, UDP flows,
    certificates, workers and events (keys: o c b l u t w e, s/S sort, / filter, j/k/g/G
    scroll, : command palette, q quit)."""
    state = cli_state(ctx)
    loaded = load_or_fail(state)
    source = Source(
        command_socket(state, loaded), refresh_ms / 1000, loaded.config.max_command_buffer_size
    )
    no_color = "NO_COLOR" in os.environ
    if frames is not None:
        width, height = shutil.get_terminal_size((80, 24))
        console = Console(width=width, height=height, no_color=no_color, highlight=False,
                          force_terminal=False if no_color else None)  # fmt: skip
        try:
            run_snapshots(source, console, frames, pane)
        except DaemonUnavailable as error:
            raise DaemonUnreachable(str(error)) from None  # exit 69, as every command
        except (CommandTimeout, ProtocolError, RuntimeError, OSError) as error:
            # RuntimeError: a query the daemon refused (its message).
            raise DaemonFailure(str(error)) from None
        return
    if not sys.stdin.isatty():
        raise click.UsageError("sozu top needs a terminal (or --snapshot N)")
    run_interactive(source, Console(no_color=no_color, highlight=False))
