"""`sozu cluster health-check set|remove|list`: active HTTP health checks of clusters."""

from __future__ import annotations

import click

from sozu.cli import routing_commands as routing
from sozu.cli.context import SozuGroup
from sozu.command import requests as rq
from sozu.command.envelope import Response
from sozu.command.responses import HealthChecksList
from sozu.command.types import HealthCheckConfig

_u32 = click.IntRange(0, 2**32 - 1)


@click.group("health-check", cls=SozuGroup)
def health_check_group() -> None:
    """Active HTTP health checks of a cluster's backends: set, remove, list."""


# `--timeout` is the check's: the command timeout is `-t` before the subcommand
# (`sozu -t MS cluster health-check set ...`).
@health_check_group.command("set")
@click.option("-i", "--id", "cluster_id", required=True, help="Cluster id.")
@click.option("-u", "--uri", required=True, help="Path probed on every backend, e.g. /health.")
@click.option(
    "--interval", type=_u32, default=10, show_default=True, help="Seconds between probes."
)
@click.option(
    "--timeout",
    type=_u32,
    default=5,
    show_default=True,
    help="Seconds a probe waits for its answer (the command timeout is -t before the subcommand).",
)
@click.option(
    "--healthy-threshold", type=_u32, default=3, show_default=True, help="Successes to go up."
)
@click.option(
    "--unhealthy-threshold", type=_u32, default=3, show_default=True, help="Failures to go down."
)
@click.option(
    "--expected-status",
    type=_u32,
    default=0,
    show_default=True,
    help="Status a healthy backend answers (0: any 2xx).",
)
@click.pass_context
def health_check_set(
    ctx: click.Context,
    cluster_id: str,
    uri: str,
    interval: int,
    timeout: int,
    healthy_threshold: int,
    unhealthy_threshold: int,
    expected_status: int,
) -> None:
    """Set (or replace) the health check of a cluster."""
    check = HealthCheckConfig(
        uri=uri,
        interval=interval,
        timeout=timeout,
        healthy_threshold=healthy_threshold,
        unhealthy_threshold=unhealthy_threshold,
        expected_status=expected_status,
    )
    problems = check.problems()
    if problems:
        raise click.UsageError("; ".join(problems))
    request = routing.build_request(
        lambda: rq.SetHealthCheck(cluster_id=cluster_id, health_check=check)
    )
    routing.send(ctx, request)


@health_check_group.command("remove")
@click.option("-i", "--id", "cluster_id", required=True, help="Cluster id.")
@click.pass_context
def health_check_remove(ctx: click.Context, cluster_id: str) -> None:
    """Remove the health check of a cluster."""
    routing.send(ctx, rq.RemoveHealthCheck(cluster_id=cluster_id))


def render_health_checks(response: Response) -> str:
    content = routing.main_content(response)
    if not isinstance(content, HealthChecksList):
        return response.message
    if not content.map:
        return "no health checks"
    lines = [
        f"{'CLUSTER':<20} {'URI':<24} {'INTERVAL':>8} {'TIMEOUT':>7} "
        f"{'HEALTHY':>7} {'UNHEALTHY':>9} {'EXPECTED':>8}"
    ]
    for cluster_id, check in sorted(content.map.items()):
        expected = str(check.expected_status) if check.expected_status else "2xx"
        lines.append(
            f"{cluster_id:<20} {check.uri:<24} {check.interval:>8} {check.timeout:>7} "
            f"{check.healthy_threshold:>7} {check.unhealthy_threshold:>9} {expected:>8}"
        )
    return "\n".join(lines)


@health_check_group.command("list")
@click.option("-i", "--id", "cluster_id", help="This cluster only.")
@click.pass_context
def health_check_list(ctx: click.Context, cluster_id: str | None) -> None:
    """Health checks of every cluster that has one, from the supervisor's state."""
    routing.send(ctx, rq.QueryHealthChecks(cluster_id=cluster_id), render_health_checks)
