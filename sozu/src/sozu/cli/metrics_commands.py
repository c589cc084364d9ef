"""`sozu metrics get|clear`: the workers' metrics, aggregated by the supervisor."""

from __future__ import annotations

import click

from sozu.cli.context import SozuGroup
from sozu.cli.daemon_client import run
from sozu.command import requests as rq
from sozu.command.envelope import Response
from sozu.command.responses import MetricsReport, MetricValue


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


@metrics_group.command("get")
@click.option("-w", "--workers", is_flag=True, help="Also each live worker's own metrics.")
@click.option("-n", "--names", multiple=True, help="Only these metrics (repeatable).")
@click.pass_context
def metrics_get(ctx: click.Context, workers: bool, names: tuple[str, ...]) -> None:
    """Totals over every worker (counters include exited workers)."""
    run(ctx, rq.QueryMetrics(workers=workers, metric_names=names), render=metrics_text)


@metrics_group.command("clear")
@click.pass_context
def metrics_clear(ctx: click.Context) -> None:
    """Reset the workers' counters and histograms."""
    run(ctx, rq.ConfigureMetrics(config="CLEAR"))
