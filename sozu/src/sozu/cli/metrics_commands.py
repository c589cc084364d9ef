"""`sozu metrics get|clear|enable|disable`: the workers' metrics, aggregated by the supervisor."""

from __future__ import annotations

import time

import click

from sozu.cli.context import SozuGroup
from sozu.cli.daemon_client import run
from sozu.cli.pem_files import split_list
from sozu.command import requests as rq
from sozu.command.envelope import Response
from sozu.command.responses import AvailableMetrics, MetricsReport, MetricValue


@click.group("metrics", cls=SozuGroup)
def metrics_group() -> None:
    """Query or reset the metrics."""


def _value(value: MetricValue) -> str:
    if value.kind == "histogram":
        return f"count {value.count}, sum {value.sum:g}"
    return f"{value.value:g}"


def metrics_text(response: Response) -> str:
    report = response.content
    if not isinstance(report, MetricsReport):
        return response.message
    lines = [f"{name} {_value(value)}" for name, value in sorted(report.main.items())]
    for title, section in (
        ("cluster", report.clusters),
        ("backend", report.backends),
        ("worker", report.workers),
    ):
        for key, values in sorted(section.items()):
            lines.append(f"{title} {key}:")
            lines += [f"  {name} {_value(value)}" for name, value in sorted(values.items())]
    return "\n".join(lines) if lines else "no metrics yet"


def available_text(response: Response) -> str:
    names = response.content
    if not isinstance(names, AvailableMetrics):
        return response.message
    lines = ["process-wide:", *(f"  {name}" for name in names.proxy_metrics)]
    lines += ["per cluster or backend:", *(f"  {name}" for name in names.cluster_metrics)]
    return "\n".join(lines)


@metrics_group.command("get")
@click.option("-l", "--list", "list_names", is_flag=True, help="Only the metric names there are.")
@click.option(
    "-r",
    "--refresh",
    type=click.IntRange(1),
    metavar="SECS",
    help="Print again every SECS seconds until interrupted.",
)
@click.option("-n", "--names", multiple=True, help="Only these metrics (repeatable or a,b,...).")
@click.option(
    "-k",
    "--clusters",
    "--cluster-ids",
    "clusters",
    multiple=True,
    help="Only these clusters' metrics (repeatable or a,b,...).",
)
@click.option(
    "-b",
    "--backends",
    "--backend-ids",
    "backends",
    multiple=True,
    help="Only these backends' metrics: BACKEND or CLUSTER/BACKEND (repeatable or a,b,...).",
)
@click.option("--no-clusters", is_flag=True, help="Leave out per-cluster and per-backend series.")
@click.option("-w", "--workers", is_flag=True, help="Also each live worker's own metrics.")
@click.pass_context
def metrics_get(
    ctx: click.Context,
    list_names: bool,
    refresh: int | None,
    names: tuple[str, ...],
    clusters: tuple[str, ...],
    backends: tuple[str, ...],
    no_clusters: bool,
    workers: bool,
) -> None:
    """Totals over every worker (counters include exited workers)."""
    if no_clusters and (clusters or backends):
        raise click.UsageError("--no-clusters contradicts --clusters and --backends")
    request = rq.QueryMetrics(
        list=list_names,
        workers=workers,
        metric_names=tuple(split_list(names)),
        cluster_ids=tuple(split_list(clusters)),
        backend_ids=tuple(split_list(backends)),
        no_clusters=no_clusters,
    )
    render = available_text if list_names else metrics_text
    while True:
        run(ctx, request, render=render)
        if refresh is None:
            return
        time.sleep(refresh)


@metrics_group.command("clear")
@click.pass_context
def metrics_clear(ctx: click.Context) -> None:
    """Reset the workers' counters and histograms."""
    run(ctx, rq.ConfigureMetrics(config="CLEAR"))


@metrics_group.command("enable")
@click.pass_context
def metrics_enable(ctx: click.Context) -> None:
    """Record per-cluster and per-backend series again (new workers too)."""
    run(ctx, rq.ConfigureMetrics(config="ENABLED"))


@metrics_group.command("disable")
@click.pass_context
def metrics_disable(ctx: click.Context) -> None:
    """Stop recording per-cluster and per-backend series, as `disable_cluster_metrics`
    (process-wide series stay; not persisted)."""
    run(ctx, rq.ConfigureMetrics(config="DISABLED"))
