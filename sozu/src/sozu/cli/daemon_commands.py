"""`sozu shutdown|status|events|reload|logging`: the daemon itself."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click
import msgspec

from sozu.cli.context import SozuCommand, cli_state, load_or_fail
from sozu.cli.daemon_client import call, follow, print_json, run
from sozu.command import requests as rq
from sozu.command.envelope import Response
from sozu.command.responses import Event, StatusReport


@click.command("shutdown", cls=SozuCommand)
@click.option("--hard", is_flag=True, help="Cut connections instead of draining them.")
@click.pass_context
def shutdown(ctx: click.Context, hard: bool) -> None:
    """Stop the workers, then the supervisor."""
    config = load_or_fail(cli_state(ctx)).config
    patience = config.worker_timeout + (0 if hard else config.drain_timeout) + 5
    run(ctx, rq.HardStop() if hard else rq.SoftStop(), default_timeout_ms=patience * 1000)


@click.command("upgrade", cls=SozuCommand)
@click.option(
    "--worker",
    "worker_id",
    type=click.IntRange(min=0),
    default=None,
    help="Upgrade this worker (its id in `sozu -j status`); without it, the supervisor and then"
    " every worker.",
)
@click.option("--wait", is_flag=True, help="Also wait for the old worker to finish draining.")
@click.pass_context
def upgrade(ctx: click.Context, worker_id: int | None, wait: bool) -> None:
    """Replace workers (or the supervisor) by new processes running the code on disk.

    A new worker adopts its slot's listener sockets and replays the state before the old one
    stops accepting and drains: no connection is refused or reset. -t limits the whole wait.
    """
    config = load_or_fail(cli_state(ctx)).config
    patience = config.worker_timeout * 3 + (config.drain_timeout if wait else 0) + 10
    if worker_id is None:
        patience = patience * max(1, config.worker_count) + config.worker_timeout
        run(ctx, rq.UpgradeMain(), default_timeout_ms=patience * 1000)
        return
    run(ctx, rq.UpgradeWorker(worker_id=worker_id, wait=wait), default_timeout_ms=patience * 1000)


def status_document(report: StatusReport) -> dict[str, object]:
    """`sozu -j status`: exactly the supervisor object and the live workers."""
    return {
        "supervisor": msgspec.to_builtins(report.supervisor),
        "workers": [msgspec.to_builtins(worker) for worker in report.workers],
    }


def status_text(report: StatusReport) -> str:
    main = report.supervisor
    lines = [
        f"supervisor: pid {main.pid}, boot generation {main.boot_generation}, "
        f"build {main.build_id}, state hash {main.state_hash}",
        f"{'ID':>4} {'SLOT':>4} {'PID':>8}  {'STATE':<13} {'RESTARTS':>8}  {'BUILD':<12}  "
        f"{'STATE HASH':<16}  HASH",
    ]
    for w in report.workers:
        lines.append(
            f"{w.id:>4} {w.slot:>4} {w.pid:>8}  {w.state:<13} {w.restarts:>8}  {w.build_id:<12}  "
            f"{w.state_hash:<16}  {'ok' if w.hash_ok else 'DIFFERS'}"
        )
    return "\n".join(lines)


@click.command("status", cls=SozuCommand)
@click.pass_context
def status(ctx: click.Context) -> None:
    """The supervisor and its live workers, with their state hashes."""
    config = load_or_fail(cli_state(ctx)).config
    response = call(ctx, rq.Status(), default_timeout_ms=max(config.ctl_command_timeout, 3000))
    report = response.content
    if not isinstance(report, StatusReport):
        raise click.ClickException(f"unexpected answer to Status: {report!r}")
    if cli_state(ctx).json:
        print_json(status_document(report))
    else:
        click.echo(status_text(report))


@click.command("events", cls=SozuCommand)
@click.pass_context
def events(ctx: click.Context) -> None:
    """Print events as they happen (one JSON document per line with -j), until interrupted."""
    as_json = cli_state(ctx).json

    def show(response: Response) -> None:
        event = response.content
        if not isinstance(event, Event):
            return
        if as_json:
            document = {"source": event.source, **msgspec.to_builtins(event)}
            document.pop("type", None)
            print_json(document)
        else:
            details = " ".join(
                f"{name}={value}"
                for name in ("cluster_id", "backend_id", "address", "message")
                if (value := getattr(event, name)) is not None
            )
            click.echo(f"{event.source}: {event.kind} {details}".rstrip())

    with contextlib.suppress(KeyboardInterrupt):
        follow(ctx, rq.SubscribeEvents(), show)


@click.command("reload", cls=SozuCommand)
@click.option(
    "-f",
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Configuration file (default: the one the daemon started with).",
)
@click.pass_context
def reload(ctx: click.Context, path: Path | None) -> None:
    """Converge the routing state onto a configuration file (removals included)."""
    request = rq.ReloadConfiguration(path=str(path.absolute()) if path is not None else None)
    run(ctx, request, default_timeout_ms=60_000)


@click.command("logging", cls=SozuCommand)
@click.argument("level", metavar="LEVEL")
@click.pass_context
def logging_level(ctx: click.Context, level: str) -> None:
    """Set the log level of the supervisor and its workers, current and future.

    LEVEL: error, warn (warning), info, debug or trace (same as debug); case-insensitive.
    """
    run(ctx, rq.Logging(filter=level))
