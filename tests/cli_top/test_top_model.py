"""`sozu top`'s pure parts: series arithmetic, quantiles from bucket deltas, sparklines,
sorting and filtering rows, and what each key does to the view."""

from __future__ import annotations

import pytest

from sozu.cli.top.app import handle_key
from sozu.cli.top.model import (
    History,
    Sample,
    by_label,
    filter_rows,
    quantile,
    sort_rows,
    sparkline,
    split_key,
    total,
)
from sozu.cli.top.render import View
from sozu.command.responses import MetricsReport, MetricValue


def counter(value: float) -> MetricValue:
    return MetricValue(kind="counter", value=value)


def test_series_keys_split_into_name_and_labels() -> None:
    assert split_key("a_total") == ("a_total", {})
    assert split_key('a_total{listener="127.0.0.1:80",status="2xx"}') == (
        "a_total",
        {"listener": "127.0.0.1:80", "status": "2xx"},
    )


def test_totals_add_every_series_of_a_name_and_only_that_name() -> None:
    section = {
        'x_total{status="2xx"}': counter(3),
        'x_total{status="5xx"}': counter(2),
        "x_total_more": counter(100),
    }
    assert total(section, "x_total") == 5
    assert total(section, "x_total", status="5xx") == 2
    assert total(section, "missing") == 0
    assert by_label(section, "x_total", "status") == {"2xx": 3, "5xx": 2}


def test_quantiles_come_from_what_was_observed_between_two_samples() -> None:
    before = {0.001: 10, 0.01: 10, 0.1: 10}
    after = {0.001: 10, 0.01: 100, 0.1: 110}  # 100 new: 90 under 10 ms, 10 under 100 ms
    assert quantile(before, after, 0.5) == 0.01
    assert quantile(before, after, 0.99) == 0.1
    assert quantile(after, after, 0.99) is None
    assert quantile({}, {}, 0.5) is None


def test_sparklines_scale_to_their_maximum_and_keep_the_last_values() -> None:
    assert sparkline([0, 1, 2, 4], 10) == "▁▃▅█"
    assert sparkline([5, 0, 0], 2) == "▁▁"
    assert sparkline([None, 0], 5) == "▁▁"


def test_rates_need_two_samples() -> None:
    history = History()
    report = MetricsReport(main={"sozu_http_requests_total": counter(100)})
    history.add(Sample(1.0, report))
    assert history.overview() is None
    history.add(Sample(3.0, MetricsReport(main={"sozu_http_requests_total": counter(300)})))
    figures = history.overview()
    assert figures is not None
    assert figures.requests_per_s == 100
    assert list(history.series["requests_per_s"]) == [100]
    with pytest.raises(AssertionError):
        history.add(Sample(2.0, report))


def test_rows_sort_by_number_or_text_with_blanks_last_and_filter_on_text() -> None:
    rows: list[tuple[str | float | None, ...]] = [("b", 2.0), ("a", None), ("c", 10.0)]
    assert [r[0] for r in sort_rows(rows, 1, False)] == ["b", "c", "a"]
    assert [r[0] for r in sort_rows(rows, 1, True)] == ["c", "b", "a"]
    assert [r[0] for r in sort_rows(rows, 0, True)] == ["c", "b", "a"]
    assert filter_rows(rows, "B") == [("b", 2.0)]
    assert filter_rows(rows, "") == rows


def test_keys_switch_panes_sort_filter_and_quit() -> None:
    view = View()
    assert handle_key(view, "c")
    assert view.pane == "c"
    assert handle_key(view, "s")
    assert view.sort_column == 1
    assert handle_key(view, "S")
    assert view.descending
    for key in "/we\x7fb\r":
        assert handle_key(view, key)
    assert (view.filter, view.editing_filter) == ("wb", False)
    assert handle_key(view, "/")
    assert handle_key(view, "\x1b")
    assert view.filter == ""
    assert handle_key(view, "q") is False


def test_certificates_close_to_expiry_are_red() -> None:
    from sozu.cli.top.render import _cell

    assert _cell("days", 13.0).style == "bold red"
    assert _cell("days", 14.0).style == ""
    assert _cell("hash", "differs").style == "bold red"
    assert _cell("hash", "ok").style == ""
