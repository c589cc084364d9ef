"""`sozu state save|load -f FILE`: the routing state to and from a state file; `state stats`."""

from __future__ import annotations

from pathlib import Path

import click

from sozu.cli.context import SozuGroup
from sozu.cli.daemon_client import run
from sozu.command import requests as rq
from sozu.command.envelope import Response
from sozu.command.responses import RequestCounts

_file = click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="State file.",
)


@click.group("state", cls=SozuGroup)
def state_group() -> None:
    """Save or load the routing state."""


@state_group.command("save")
@_file
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["sozu", "upstream"]),
    default="sozu",
    show_default=True,
    help="upstream: Sōzu's own state file (`state load` reads both).",
)
@click.pass_context
def save(ctx: click.Context, path: Path, file_format: str) -> None:
    """Write the daemon's state to FILE (written by the daemon, atomically)."""
    request = rq.SaveState(path=str(path.absolute()), format=file_format)  # type: ignore[arg-type]
    run(ctx, request)


@state_group.command("load")
@_file
@click.pass_context
def load(ctx: click.Context, path: Path) -> None:
    """Merge FILE (sozu's format or upstream's) into the daemon's state; existing identical
    records are skipped."""
    run(ctx, rq.LoadState(path=str(path.absolute())), default_timeout_ms=60_000)


def _counts_text(response: Response) -> str:
    counts = response.content
    if not isinstance(counts, RequestCounts):
        return response.message
    if not counts.map:
        return "no request received yet"
    width = max(len(kind) for kind in counts.map)
    return "\n".join(f"{kind:<{width}}  {n}" for kind, n in sorted(counts.map.items()))


@state_group.command("stats")
@click.pass_context
def stats(ctx: click.Context) -> None:
    """How many state requests of each kind the supervisor received since it started
    (refused ones included)."""
    run(ctx, rq.CountRequests(), render=_counts_text)
