"""`sozu top`'s terminal: keys in, frames out, the terminal restored however it ends (q,
SIGINT, SIGTERM, SIGHUP)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator
from types import FrameType

from rich.console import Console
from rich.live import Live

from sozu.cli.top.model import History
from sozu.cli.top.render import PANES, View, frame
from sozu.cli.top.source import Source

FRAME_INTERVAL = 0.1  # redraw at most ten times a second


class Stop(Exception):
    """A signal asked to leave."""


def run_command(view: View, text: str) -> bool:
    """A palette command: a pane's title (or its start), `sort COLUMN [desc]` (a header or
    its start), `filter TEXT`, `quit`; False when it asks to quit."""
    view.palette, view.message = None, ""
    words = text.split()
    if not words:
        return True
    verb, rest = words[0].lower(), words[1:]
    if verb in ("q", "quit"):
        return False
    if verb == "filter":
        view.filter, view.scroll = " ".join(rest), None
        return True
    if verb == "sort" and rest:
        headers = PANES[view.pane][1]
        wanted = rest[0].lower()
        for index, header in enumerate(headers):
            if header.lower().startswith(wanted):
                view.sort_column = index
                view.descending = len(rest) > 1 and rest[1].lower() in ("desc", "down")
                return True
        view.message = f"no column {rest[0]!r} in {PANES[view.pane][0]}"
        return True
    keys = [key for key, (title, _) in PANES.items() if title.startswith(verb)]
    if len(keys) == 1 and not rest:
        return handle_key(view, keys[0])
    view.message = f"unknown command: {text.strip()}"
    return True


def handle_key(view: View, key: str) -> bool:
    """Apply one key to the view; False when it asks to quit."""
    if view.palette is not None:
        if key in ("\r", "\n"):
            return run_command(view, view.palette)
        if key == "\x1b":
            view.palette = None
        elif key in ("\x7f", "\b"):
            view.palette = view.palette[:-1]
        elif key.isprintable():
            view.palette += key
        return True
    view.message = ""  # shown until the next key
    if view.editing_filter:
        if key in ("\r", "\n", "\x1b"):
            view.editing_filter = False
            if key == "\x1b":
                view.filter = ""
        elif key in ("\x7f", "\b"):
            view.filter = view.filter[:-1]
        elif key.isprintable():
            view.filter += key
        return True
    if key in ("q", "\x03"):
        return False
    if key in PANES:
        if key != view.pane:
            view.pane, view.sort_column, view.descending = key, 0, False
            view.scroll = None
    elif key == "s":
        columns = len(PANES[view.pane][1])
        view.sort_column = (view.sort_column + 1) % columns if columns else 0
    elif key == "S":
        view.descending = not view.descending
    elif key == "/":
        view.editing_filter = True
    elif key == ":":
        view.palette = ""
    elif key == "j":
        view.scroll = (view.scroll or 0) + 1
    elif key == "k":
        view.scroll = max((view.scroll or 0) - 1, 0)
    elif key == "g":
        view.scroll = 0
    elif key == "G":
        view.scroll = None
    return True


@contextlib.contextmanager
def _raw_terminal() -> Iterator[None]:
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def leave(signum: int, _frame: FrameType | None) -> None:
        raise Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, leave) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        tty.setcbreak(fd)
        yield
    finally:
        with contextlib.suppress(termios.error):  # a terminal that hung up has no settings
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_interactive(source: Source, console: Console) -> None:
    history, view = History(), View()
    source.start()
    try:
        with _raw_terminal(), Live(console=console, screen=True, auto_refresh=False) as live:
            dirty, drawn_size = True, None
            while True:
                if source.changed.is_set():
                    source.changed.clear()
                    dirty = True
                    if source.samples:
                        sample = source.samples[-1]
                        if history.latest is None or sample.at > history.latest.at:
                            history.add(sample)
                    view.events = list(source.events)
                    view.error = source.error
                size = console.size
                if dirty or size != drawn_size:
                    # Drawn only when something changed: an idle screen costs no CPU.
                    live.update(
                        frame(history, view, size.width, size.height, time.time()), refresh=True
                    )
                    dirty, drawn_size = False, size
                ready, _, _ = select.select([sys.stdin], [], [], FRAME_INTERVAL)
                if ready:
                    key = os.read(sys.stdin.fileno(), 1).decode(errors="replace")
                    if not key:
                        return  # end of input: the terminal is gone
                    if not handle_key(view, key):
                        return
                    dirty = True
    except (KeyboardInterrupt, Stop):
        return
    except OSError:
        # Reading from or drawing on a terminal that hung up (leaving the alternate screen
        # writes to it too); the only I/O here is the terminal's, the sockets are the source's.
        return
    finally:
        source.stop()


def run_snapshots(source: Source, console: Console, frames: int, pane: str) -> None:
    """Poll `frames + 1` samples (the first has no rate yet) and print a frame after each."""
    history, view = History(), View(pane=pane)
    size = console.size
    for index in range(frames + 1):
        if index:
            time.sleep(source.refresh)
        history.add(source.sample_now())
        if index:
            console.print(frame(history, view, size.width, size.height, time.time()))
