"""`sozu shutdown|status|events|reload|logging`: the daemon itself."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import click
import msgspec

from sozu.cli.context import SozuCommand, cli_state, command_socket, load_or_fail
from sozu.cli.daemon_client import DaemonFailure, call, follow, print_json, run
from sozu.command import requests as rq
from sozu.command.client import CommandClient, CommandTimeout, DaemonUnavailable
from sozu.command.envelope import ProtocolError, Response
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
    state = cli_state(ctx)
    config = load_or_fail(state).config
    patience = config.worker_timeout * 3 + (config.drain_timeout if wait else 0) + 10
    if worker_id is not None:
        run(
            ctx,
            rq.UpgradeWorker(worker_id=worker_id, wait=wait),
            default_timeout_ms=patience * 1000,
        )
        return
    patience = patience * max(1, config.worker_count) + config.worker_timeout
    timeout_ms = state.timeout_ms or patience * 1000
    deadline = time.monotonic() + timeout_ms / 1000
    answer = call(ctx, rq.UpgradeMain(), default_timeout_ms=timeout_ms)
    before = answer.content
    if not isinstance(before, StatusReport):
        raise DaemonFailure("unexpected answer to UpgradeMain")
    if not state.json:
        click.echo(answer.message or "upgrading", err=True)
    after = _wait_for_upgrade(ctx, before, deadline, config.worker_count)
    if state.json:
        print_json({"status": "ok", "message": "upgraded", "content": status_document(after)})
    else:
        click.echo(
            f"supervisor upgraded (boot generation {after.supervisor.boot_generation}); "
            f"workers {', '.join(str(w.id) for w in after.workers if w.state == 'running')}"
        )


def _wait_for_upgrade(
    ctx: click.Context, before: StatusReport, deadline: float, worker_count: int
) -> StatusReport:
    """Poll the status until the re-executed supervisor has upgraded every worker."""
    generation = before.supervisor.boot_generation
    old_ids = {w.id for w in before.workers}
    while True:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            raise DaemonFailure("the upgrade did not complete in time (see `sozu status`)")
        report = _status_or_none(ctx, min(remaining_ms, 5000))
        if report is not None and report.supervisor.boot_generation > generation:
            running = [w for w in report.workers if w.state == "running"]
            if len(running) == worker_count and all(
                w.hash_ok and w.id not in old_ids for w in running
            ):
                return report
        time.sleep(0.2)


def _status_or_none(ctx: click.Context, timeout_ms: int) -> StatusReport | None:
    """The status, or None while the supervisor is re-executing (socket not answering)."""
    state = cli_state(ctx)
    loaded = load_or_fail(state)
    try:
        with CommandClient.connect(
            command_socket(state, loaded), max_frame_size=loaded.config.max_command_buffer_size
        ) as client:
            response = client.call(rq.Status(), timeout_ms=timeout_ms)
    except (DaemonUnavailable, CommandTimeout, ProtocolError, OSError):
        return None
    return response.content if isinstance(response.content, StatusReport) else None


def status_document(report: StatusReport) -> dict[str, object]:
    """`sozu -j status`: the supervisor object and the live workers; `empty_slots` only when
    a slot has no worker of its own."""
    document: dict[str, object] = {
        "supervisor": msgspec.to_builtins(report.supervisor),
        "workers": [msgspec.to_builtins(worker) for worker in report.workers],
    }
    if report.empty_slots:
        document["empty_slots"] = [msgspec.to_builtins(slot) for slot in report.empty_slots]
    if report.problems:
        document["problems"] = list(report.problems)
    if report.fleet is not None:
        document["fleet"] = msgspec.to_builtins(report.fleet)
    return document


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
    for empty in report.empty_slots:
        adopted = (
            f"its sockets served by worker {empty.adopted_by}"
            if empty.adopted_by is not None
            else "its sockets closed"
        )
        lines.append(f"slot {empty.slot} EMPTY: {empty.reason}; {adopted} (`sozu relaunch`)")
    lines.extend(f"PROBLEM: {problem}" for problem in report.problems)
    fleet = report.fleet
    if fleet is not None:
        line = (
            f"fleet: {fleet.instance_id} {fleet.phase} at {fleet.endpoint} "
            f"(prefix {fleet.prefix}), applied revision {fleet.applied_revision}"
        )
        if fleet.unreachable:
            line += f"; etcd unreachable: {fleet.unreachable}"
        lines.append(line)
        if fleet.refused is not None:
            refused = fleet.refused
            lines.append(
                f"FLEET REFUSED: {refused.key} at revision {refused.revision}: {refused.message}"
            )
    return "\n".join(lines)


@click.command("relaunch", cls=SozuCommand)
@click.option(
    "--slot",
    type=click.IntRange(min=0),
    default=None,
    help="The empty slot to refill (default: every empty slot).",
)
@click.pass_context
def relaunch(ctx: click.Context, slot: int | None) -> None:
    """Launch a worker into empty slots now (after the restart limit or a failed replay)."""
    config = load_or_fail(cli_state(ctx)).config
    patience = max(config.worker_timeout, 10) * 2 + 5
    run(ctx, rq.LaunchWorker(slot=slot), default_timeout_ms=patience * 1000)


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
    """Print events as they happen (one JSON document per line with -j), until interrupted.

    Across a supervisor upgrade the stream resumes where it stopped (events are numbered);
    it ends when the daemon stops (or cannot be reached again within half a minute).
    """
    as_json = cli_state(ctx).json
    seen = {"last": -1, "subscribed": 0, "stopping": 0}

    def subscription() -> rq.Request:
        last = seen["last"]
        return rq.SubscribeEvents(since=last if last >= 0 else None)

    def show(response: Response) -> bool:
        event = response.content
        if not isinstance(event, Event):
            return True
        if event.kind == "EVENTS_SUBSCRIBED":
            seen["subscribed"] += 1
            if seen["last"] < 0:
                seen["last"] = event.seq or 0
            if seen["subscribed"] > 1:
                return True  # a resubscription: not news
        elif event.seq is not None:
            seen["last"] = max(seen["last"], event.seq)
        if event.kind == "SOZU_STOP_REQUESTED" and event.source == "main":
            seen["stopping"] = 1
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
        # After a stop request, the end of the stream is the end of the daemon.
        return not seen["stopping"]

    with contextlib.suppress(KeyboardInterrupt):
        follow(ctx, subscription, show)


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
