"""`sozu fleet push|diff|status`: publish a desired state to etcd and see who follows it.

The etcd cluster is the one of the `[etcd]` section of the configuration (`-c`); the routing
pushed is that of another configuration file (`-f`).
"""

from __future__ import annotations

from pathlib import Path

import click
import msgspec
import trio

from sozu.cli.context import ConfigFailure, SozuGroup, cli_state, load_or_fail
from sozu.cli.daemon_client import print_json
from sozu.command.config import ConfigError, load_config
from sozu.command.config_schema import EtcdSection
from sozu.command.fleet_layout import INSTANCES_DIR, STATE_DIR, normalize_prefix
from sozu.command.responses import FleetStatus
from sozu.command.state import ConfigState
from sozu.command.state_errors import StateError
from sozu.supervisor.etcd_client import EtcdError, EtcdUnavailable
from sozu.supervisor.fleet_push import PushPlan, plan_push, push
from sozu.supervisor.fleet_sync import client_for
from sozu.supervisor.mutations import target_state

EXIT_UNAVAILABLE = 69

_file = click.option(
    "-f",
    "--file",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Configuration whose routing is the desired state.",
)
_merge = click.option(
    "--merge", is_flag=True, help="Keep the objects etcd has that the file does not."
)


@click.group("fleet", cls=SozuGroup)
def fleet_group() -> None:
    """Publish the desired state of a fleet to etcd, and see its instances."""


def _etcd(ctx: click.Context) -> EtcdSection:
    state = cli_state(ctx)
    loaded = load_or_fail(state)
    if loaded.config.etcd is None:
        raise click.ClickException(f"{state.source}: no [etcd] section: which etcd to use?")
    return loaded.config.etcd


def _desired(path: Path) -> ConfigState:
    try:
        loaded = load_config(path)
    except ConfigError as error:
        raise ConfigFailure(str(path), error) from None
    try:
        state = target_state(loaded)
    except StateError as error:
        raise click.ClickException(f"{path}: {error}") from None
    state.max_request_size = loaded.config.max_command_buffer_size
    return state


def _unreachable(ctx: click.Context, error: Exception) -> None:
    """Exit 69 when etcd cannot be reached, 1 when it refuses (authentication, ...)."""
    reachable = isinstance(error, EtcdError)
    message = f"etcd refused: {error}" if reachable else f"etcd unreachable: {error}"
    if cli_state(ctx).json:
        print_json({"status": "failure" if reachable else "unavailable", "message": message})
    else:
        click.echo(message, err=True)
    ctx.exit(1 if reachable else EXIT_UNAVAILABLE)


def _show_plan(plan: PushPlan) -> None:
    for key in plan.deletes:
        click.echo(f"- {key}")
    for key in plan.puts:
        click.echo(f"+ {key}")


@fleet_group.command("push")
@_file
@_merge
@click.pass_context
def push_command(ctx: click.Context, path: Path, merge: bool) -> None:
    """Write the routing of FILE to etcd as the fleet's desired state."""
    etcd = _etcd(ctx)
    desired = _desired(path)
    prefix = normalize_prefix(etcd.prefix)

    async def main() -> tuple[PushPlan, int, int]:
        async with client_for(etcd) as client:
            plan = await plan_push(client, prefix, desired, merge=merge)
            if plan.empty:
                return plan, 0, 0
            result = await push(client, prefix, plan)
            return plan, result.transactions, result.revision

    try:
        plan, transactions, revision = trio.run(main)
    except (EtcdUnavailable, EtcdError) as error:
        _unreachable(ctx, error)
        return
    document = {
        "generation": plan.generation if transactions else None,
        "puts": len(plan.puts),
        "deletes": len(plan.deletes),
        "transactions": transactions,
        "revision": revision or None,
    }
    if cli_state(ctx).json:
        print_json(document)
    elif not transactions:
        click.echo("etcd already holds this desired state: nothing written")
    else:
        click.echo(
            f"generation {plan.generation}: {len(plan.puts)} objects written, "
            f"{len(plan.deletes)} deleted, in {transactions} transactions "
            f"(revision {revision})"
        )


@fleet_group.command("diff")
@_file
@_merge
@click.pass_context
def diff_command(ctx: click.Context, path: Path, merge: bool) -> None:
    """Show what `fleet push` of FILE would change in etcd (`+` written, `-` deleted)."""
    etcd = _etcd(ctx)
    desired = _desired(path)
    prefix = normalize_prefix(etcd.prefix)

    async def main() -> PushPlan:
        async with client_for(etcd) as client:
            return await plan_push(client, prefix, desired, merge=merge)

    try:
        plan = trio.run(main)
    except (EtcdUnavailable, EtcdError) as error:
        _unreachable(ctx, error)
        return
    if cli_state(ctx).json:
        print_json({"puts": list(plan.puts), "deletes": plan.deletes})
    else:
        _show_plan(plan)


@fleet_group.command("status")
@click.pass_context
def status_command(ctx: click.Context) -> None:
    """Every instance that reports to etcd, and whether it applied the latest revision."""
    etcd = _etcd(ctx)
    prefix = normalize_prefix(etcd.prefix)

    async def main() -> tuple[int, list[FleetStatus], list[str]]:
        async with client_for(etcd) as client:
            state_revision = await client.latest_mod_revision((prefix + STATE_DIR).encode())
            _, pairs = await client.range_prefix((prefix + INSTANCES_DIR).encode())
        reports, unreadable = [], []
        for key, value in pairs:
            try:
                reports.append(msgspec.json.decode(value, type=FleetStatus))
            except msgspec.DecodeError:
                unreadable.append(key.decode("utf-8", "replace"))
        return state_revision, reports, unreadable

    try:
        latest, reports, unreadable = trio.run(main)
    except (EtcdUnavailable, EtcdError) as error:
        _unreachable(ctx, error)
        return
    if cli_state(ctx).json:
        print_json(
            {
                "latest_revision": latest,
                "instances": [
                    {**msgspec.to_builtins(r), "converged": converged(r, latest)} for r in reports
                ],
                "unreadable": unreadable,
            }
        )
        return
    click.echo(f"desired state: latest change at revision {latest}")
    for report in reports:
        line = f"{report.instance_id}: {report.phase}, applied revision {report.applied_revision}"
        line += ", converged" if converged(report, latest) else ", NOT converged"
        behind = [w for w, h in sorted(report.workers.items()) if h != report.state_hash]
        if behind:
            line += f"; workers {', '.join(behind)} differ from the supervisor's state hash"
        if report.refused is not None:
            refused = report.refused
            line += f"; refused {refused.key} at revision {refused.revision}: {refused.message}"
        if report.unreachable:
            line += f"; etcd unreachable: {report.unreachable}"
        click.echo(line)
    for key in unreadable:
        click.echo(f"{key}: unreadable report")


def converged(report: FleetStatus, latest: int) -> bool:
    """No refusal, the latest revision applied, every worker with the supervisor's hash."""
    return (
        report.refused is None
        and report.applied_revision >= latest
        and all(h == report.state_hash for h in report.workers.values())
    )
