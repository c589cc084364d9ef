"""Runtime settings that are not routing state: `sozu connection-limit set|remove|show` and
`sozu cluster h2 enable|disable` (upstream's commands)."""

from __future__ import annotations

import click
import msgspec

from sozu.cli.context import SozuGroup
from sozu.cli.daemon_client import call, run
from sozu.cli.routing_commands import send
from sozu.command import requests as rq
from sozu.command.envelope import Response
from sozu.command.responses import ClusterInformations, MaxConnectionsPerIp, WorkerResponses


@click.group("connection-limit", cls=SozuGroup)
def connection_limit_group() -> None:
    """The process-wide limit of connections per (cluster, client IP); clusters with their
    own `max_connections_per_ip` keep it. Not persisted: a restart returns to the
    configuration's value."""


@connection_limit_group.command("set")
@click.argument("limit", type=click.IntRange(0))
@click.pass_context
def connection_limit_set(ctx: click.Context, limit: int) -> None:
    """At most LIMIT connections per (cluster, client IP); 0: unlimited."""
    run(ctx, rq.SetMaxConnectionsPerIp(limit=limit))


@connection_limit_group.command("remove")
@click.pass_context
def connection_limit_remove(ctx: click.Context) -> None:
    """No limit (the same as `set 0`)."""
    run(ctx, rq.SetMaxConnectionsPerIp(limit=0))


def _limit_text(response: Response) -> str:
    content = response.content
    if not isinstance(content, MaxConnectionsPerIp):
        return response.message
    if content.limit == 0:
        return "no limit of connections per (cluster, client IP)"
    return f"at most {content.limit} connections per (cluster, client IP)"


@connection_limit_group.command("show")
@click.pass_context
def connection_limit_show(ctx: click.Context) -> None:
    """The current limit (0: unlimited)."""
    run(ctx, rq.QueryMaxConnectionsPerIp(), render=_limit_text)


@click.group("h2", cls=SozuGroup)
def cluster_h2_group() -> None:
    """HTTP/2 towards a cluster's backends (its `http2` setting)."""


def _set_http2(ctx: click.Context, cluster_id: str, enabled: bool) -> None:
    found = call(ctx, rq.QueryClusterById(cluster_id=cluster_id)).content
    if isinstance(found, WorkerResponses) and "main" in found.map:
        found = found.map["main"].content  # the supervisor's view is the state
    if not isinstance(found, ClusterInformations) or not found.clusters:
        raise click.ClickException(f"cluster {cluster_id} does not exist")
    cluster = found.clusters[0].configuration
    if cluster is None:
        raise click.ClickException(f"cluster {cluster_id} has no configuration")
    click.echo(
        "warning: the setting is stored, but backends are still spoken to in HTTP/1.1",
        err=True,
    )
    send(ctx, rq.AddCluster(cluster=msgspec.structs.replace(cluster, http2=enabled)))


@cluster_h2_group.command("enable")
@click.option("-i", "--id", "cluster_id", required=True, help="Cluster id.")
@click.pass_context
def cluster_h2_enable(ctx: click.Context, cluster_id: str) -> None:
    """Speak HTTP/2 (h2c) to this cluster's backends."""
    _set_http2(ctx, cluster_id, True)


@cluster_h2_group.command("disable")
@click.option("-i", "--id", "cluster_id", required=True, help="Cluster id.")
@click.pass_context
def cluster_h2_disable(ctx: click.Context, cluster_id: str) -> None:
    """Speak HTTP/1.1 to this cluster's backends."""
    _set_http2(ctx, cluster_id, False)
