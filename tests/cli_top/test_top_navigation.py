"""`sozu top`'s scrolling (j/k/g/G) and command palette (`:`), from keys to what is drawn."""

from __future__ import annotations

import io

from rich.console import Console

from sozu.cli.top.app import handle_key
from sozu.cli.top.model import History
from sozu.cli.top.render import View, frame, window


def _type(view: View, keys: str) -> bool:
    going = True
    for key in keys:
        going = handle_key(view, key)
    return going


def _text(view: View, height: int) -> str:
    out = io.StringIO()
    Console(file=out, width=80, height=height).print(frame(History(), view, 80, height, 0.0))
    return out.getvalue()


def test_windows_are_clamped_and_events_start_at_their_end() -> None:
    assert window(10, 4, None) == slice(0, 4)
    assert window(10, 4, None, tail=True) == slice(6, 10)
    assert window(10, 4, 3) == slice(3, 7)
    assert window(10, 4, 99) == slice(6, 10)
    assert window(2, 4, 1) == slice(0, 4)


def test_events_scroll_back_and_return_to_the_newest() -> None:
    view = View(pane="e", events=[f"event {n}" for n in range(30)])
    newest = _text(view, 10)
    assert "event 29" in newest
    assert "event 0\n" not in newest
    _type(view, "g")
    assert "event 0" in _text(view, 10)
    assert "event 29" not in _text(view, 10)
    _type(view, "jj")
    assert _text(view, 10).splitlines()[1] == "event 2"
    _type(view, "k")
    assert _text(view, 10).splitlines()[1] == "event 1"
    _type(view, "G")
    assert "event 29" in _text(view, 10)
    _type(view, "gc")  # another pane starts from its first rows
    assert view.scroll is None


def test_the_palette_switches_panes_sorts_filters_and_quits() -> None:
    view = View()
    assert _type(view, ":back\r")
    assert view.pane == "b"
    assert view.palette is None
    assert _type(view, ":sort conn desc\r")
    assert (view.sort_column, view.descending) == (4, True)
    assert _type(view, ":filter web-1\r")
    assert view.filter == "web-1"
    assert _type(view, ":sort nothing\r")
    assert view.message == "no column 'nothing' in backends"
    assert "no column 'nothing' in backends" in _text(view, 24)
    assert (view.sort_column, view.descending) == (4, True)
    assert _type(view, "j")
    assert view.message == ""  # shown until the next key
    assert _type(view, ":frob\r")
    assert view.message == "unknown command: frob"
    assert _type(view, ":q\x1b")  # Escape closes the palette: q was text, not quit
    assert view.palette is None
    assert _type(view, ":qu")
    assert ":qu_" in _text(view, 24)
    assert _type(view, "it\r") is False
