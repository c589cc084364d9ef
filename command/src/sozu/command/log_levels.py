"""Log level filters accepted by `sozu logging` and the `log_level` setting."""

from __future__ import annotations

from typing import Final

LOG_LEVELS: Final = {
    "error": "ERROR",
    "warn": "WARNING",
    "warning": "WARNING",
    "info": "INFO",
    "debug": "DEBUG",
    "trace": "DEBUG",  # Python logging has nothing finer than DEBUG
}


def parse_log_level(text: str) -> str | None:
    """The `logging` level name of a filter (case-insensitive), or None if it is not one."""
    return LOG_LEVELS.get(text.strip().lower())
