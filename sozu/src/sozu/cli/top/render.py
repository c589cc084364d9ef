"""`sozu top`'s screens as rich renderables, from a `History` and the view's settings: pure
(the same inputs draw the same frame, which the snapshot tests compare)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from sozu.cli.top.model import History, filter_rows, sort_rows, sparkline

Row = tuple[str | float | None, ...]

# Pane key -> (title, column headers).
PANES: dict[str, tuple[str, tuple[str, ...]]] = {
    "o": ("overview", ()),
    "c": (
        "clusters",
        ("cluster", "req/s", "p99", "2xx/s", "4xx/s", "5xx/s", "active", "err/s", "up"),
    ),
    "b": ("backends", ("backend", "state", "healthy", "active", "conn/s", "err/s")),
    "l": ("listeners", ("address", "proto", "active", "open")),
    "u": ("udp", ("listener", "in/s", "out/s", "flows", "created", "evicted", "shed", "drops")),
    "t": ("certificates", ("names", "address", "expires", "days")),
    "w": ("workers", ("id", "slot", "pid", "state", "restarts", "build", "hash")),
    "e": ("events", ()),
}
KEYS = "o c b l u t w e: panes  s/S: sort  /: filter  q: quit"
RED_DAYS = 14


@dataclass
class View:
    """What the operator chose: the pane, its sort column and order, the filter."""

    pane: str = "o"
    sort_column: int = 0
    descending: bool = False
    filter: str = ""
    editing_filter: bool = False
    events: list[str] = field(default_factory=list)
    error: str | None = None
    # Rows scrolled past; None: the first rows (the last ones for events, which grow).
    scroll: int | None = None
    # The command palette's text while it is open (`:`), and what the last command said.
    palette: str | None = None
    message: str = ""


def window(count: int, room: int, scroll: int | None, *, tail: bool = False) -> slice:
    """The rows shown: `room` of `count` from the scroll position (clamped), else the
    first ones, or with `tail` the last ones."""
    last_start = max(count - room, 0)
    if scroll is None:
        start = last_start if tail else 0
    else:
        start = min(scroll, last_start)
    return slice(start, start + room)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def _number(value: float) -> str:
    if value >= 100_000:
        return f"{value / 1000:.0f}k"
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.1f}"


def _cell(column: str, value: str | float | None) -> Text:
    if value is None:
        return Text("-")
    if column == "p99":
        return Text(_seconds(float(value)))
    if column == "days" and isinstance(value, float):
        return Text(f"{value:.0f}", style="bold red" if value < RED_DAYS else "")
    if column == "hash" and value == "differs":
        return Text(str(value), style="bold red")
    if column == "state" and value == "down":
        return Text(str(value), style="red")
    if isinstance(value, float):
        return Text(_number(value))
    return Text(str(value))


def rows_of(history: History, pane: str, now_epoch: float) -> list[Row]:
    makers: dict[str, Callable[[], list[Row]]] = {
        "c": history.cluster_rows,
        "b": history.backend_rows,
        "l": history.listener_rows,
        "u": history.udp_rows,
        "t": lambda: history.certificate_rows(now_epoch),
        "w": history.worker_rows,
    }
    return makers[pane]()


def _table(headers: Sequence[str], rows: Sequence[Row], view: View, limit: int) -> Table:
    table = Table(expand=True, box=None, pad_edge=False, header_style="bold")
    for index, header in enumerate(headers):
        marker = ("▼" if view.descending else "▲") if index == view.sort_column else ""
        table.add_column(
            header + marker,
            no_wrap=True,
            overflow="ellipsis",
            justify="left" if index == 0 else "right",
        )
    shown = window(len(rows), limit, view.scroll)
    for row in rows[shown]:
        table.add_row(*(_cell(h, v) for h, v in zip(headers, row, strict=False)))
    if len(rows) > shown.stop:
        table.add_row(Text(f"... {len(rows) - shown.stop} more (j/k)", style="dim"))
    return table


def _overview(history: History, width: int) -> RenderableType:
    figures = history.overview()
    if figures is None:
        return Text("waiting for a second sample ...")
    spark = max(8, width - 44)
    table = Table(box=None, expand=False, show_header=False, pad_edge=False)
    table.add_column("what", no_wrap=True, width=20)
    table.add_column("value", no_wrap=True, justify="right", width=12)
    table.add_column("last minute", no_wrap=True, overflow="crop")

    def line(label: str, value: str, series: str, style: str = "") -> None:
        points = history.series.get(series, ())
        table.add_row(label, Text(value, style=style), Text(sparkline(points, spark), "cyan"))

    line("requests/s", _number(figures.requests_per_s), "requests_per_s")
    line(
        "errors (4xx+5xx)",
        f"{figures.error_rate * 100:.1f} %",
        "error_rate",
        "red" if figures.error_rate > 0.05 else "",
    )
    table.add_row("answers by sozu/s", _number(figures.answers_per_s), "")
    table.add_row("latency p50", _seconds(figures.p50), "")
    line("latency p99", _seconds(figures.p99), "p99")
    line("connections", _number(figures.active_connections), "active_connections")
    line("UDP datagrams/s", _number(figures.datagrams_per_s), "datagrams_per_s")
    line("UDP live flows", _number(figures.live_flows), "live_flows")
    hashes = Text(
        "match" if figures.hashes_match else "DIFFER",
        style="green" if figures.hashes_match else "bold red",
    )
    table.add_row("workers", str(figures.workers), hashes)
    return table


def frame(history: History, view: View, width: int, height: int, now_epoch: float) -> Group:
    """One screen: a title line, the pane, a status line."""
    title, headers = PANES[view.pane]
    head = Text.assemble(
        ("sozu top", "bold"), f"  {title}  ", (KEYS if width >= 80 else "q: quit", "dim")
    )
    body_height = max(1, height - 3)
    body: RenderableType
    if view.pane == "o":
        body = _overview(history, width)
    elif view.pane == "e":
        shown = window(len(view.events), body_height, view.scroll, tail=True)
        body = Text("\n".join(view.events[shown]) or "no events yet")
    else:
        rows = filter_rows(rows_of(history, view.pane, now_epoch), view.filter)
        rows = sort_rows(rows, view.sort_column, view.descending)
        body = _table(headers, rows, view, max(1, body_height - 1))
    if view.palette is not None:
        status = Text(f":{view.palette}_  (pane, sort COLUMN [desc], filter TEXT, quit)")
    elif view.message:
        status = Text(view.message, style="red")
    elif view.editing_filter:
        status = Text(f"filter: {view.filter}_", style="bold")
    elif view.error:
        status = Text(view.error, style="red")
    else:
        status = Text(f"filter: {view.filter}" if view.filter else "", style="dim")
    return Group(head, body, status)
