"""`sozu top`'s panes drawn from two samples recorded from a live daemon under HTTP, HTTPS and
UDP load (`recorded.json`), at 80x24 and 120x40, compared with the committed frames in
`golden/`; the overview and clusters panes also as the SVG screenshots in `docs/`.

`SOZU_TOP_GOLDEN=write` rewrites the committed frames (then review the diff)."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
from rich.console import Console

from sozu.cli.top.model import History, Sample
from sozu.cli.top.render import PANES, View, frame
from sozu.command.responses import (
    CertificateSummary,
    ListenersList,
    MetricsReport,
    StatusReport,
)

HERE = Path(__file__).parent
DOCS = HERE.parent.parent / "docs"
NOW_EPOCH = 1_796_000_000.0  # fixed, so that "days left" does not drift
EVENTS = ["12:00:01 main: BACKEND_DOWN cluster_id=web backend_id=w2-down",
          "12:00:02 0: BACKEND_UP cluster_id=web backend_id=w1"]  # fmt: skip
WRITE = os.environ.get("SOZU_TOP_GOLDEN") == "write"


class Recorded(msgspec.Struct):
    at: float
    metrics: MetricsReport
    status: StatusReport | None = None
    listeners: ListenersList | None = None
    certificates: tuple[CertificateSummary, ...] = ()


def history() -> History:
    recorded = msgspec.json.decode((HERE / "recorded.json").read_bytes(), type=list[Recorded])
    kept = History()
    for item in recorded:
        kept.add(Sample(item.at, item.metrics, item.status, item.listeners, item.certificates))
    return kept


def draw(pane: str, width: int, height: int, svg: bool = False) -> str:
    with open(os.devnull, "w") as sink:
        console = Console(width=width, height=height, record=True, force_terminal=True,
                          color_system="truecolor", file=sink)  # fmt: skip
        view = View(pane=pane, events=list(EVENTS))
        console.print(frame(history(), view, width, height, NOW_EPOCH))
    if svg:
        return console.export_svg(title=f"sozu top: {PANES[pane][0]}")
    return console.export_text()


def _compare(path: Path, text: str) -> None:
    if WRITE:
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with SOZU_TOP_GOLDEN=write"
    assert text == path.read_text(), f"{path.name} differs (SOZU_TOP_GOLDEN=write to accept)"


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
@pytest.mark.parametrize("pane", sorted(PANES))
def test_every_pane_matches_its_committed_frame(pane: str, size: tuple[int, int]) -> None:
    width, height = size
    text = draw(pane, width, height)
    lines = text.rstrip("\n").split("\n")
    assert len(lines) <= height
    assert all(len(line) <= width for line in lines)
    _compare(HERE / "golden" / f"{PANES[pane][0]}-{width}x{height}.txt", text)


def test_the_recorded_load_shows_in_the_overview_and_the_clusters() -> None:
    kept = history()
    figures = kept.overview()
    assert figures is not None
    assert figures.requests_per_s > 10
    assert figures.datagrams_per_s > 10
    assert figures.hashes_match
    clusters = {row[0]: row for row in kept.cluster_rows()}
    assert set(clusters) == {"web", "dns"}
    assert isinstance(clusters["web"][1], float)
    assert clusters["web"][1] > 10
    requests, ok, not_found = clusters["web"][1], clusters["web"][3], clusters["web"][4]
    assert isinstance(requests, float)
    assert isinstance(ok, float)
    assert isinstance(not_found, float)
    assert not_found > 0  # the backend's 404s, counted for its cluster
    assert abs(ok + not_found - requests) <= 0.05 * requests + 2  # responses ~ requests
    assert clusters["dns"][0] == "dns"  # a UDP cluster: its series are per backend


@pytest.mark.parametrize("pane", ["o", "c"])
def test_the_screenshots_in_docs_are_those_of_the_recorded_load(pane: str) -> None:
    _compare(DOCS / f"top-{PANES[pane][0]}.svg", draw(pane, 100, 26, svg=True))
