"""Worker process entry: `python -m sozu.worker --id N --slot S --fd CHANNEL [--scm FD]`."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import sys

import trio

from sozu.command.log_targets import route_logs
from sozu.worker.shell.channel_loop import WorkerCore, serve_channel

log = logging.getLogger("sozu.worker")


class _WorkerIdFilter(logging.Filter):
    def __init__(self, worker_id: int) -> None:
        super().__init__()
        self.worker_id = worker_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = f"worker {self.worker_id}"
        return True


def setup_logging(worker_id: int, level: str = "INFO", target: str = "stderr") -> None:
    """One line per record with the worker id, to `target`: stderr (inherited from the
    supervisor) until the ServerConfig names the configuration's `log_target`, which the
    channel loop then routes the logs to (`route_logs`)."""
    timestamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{timestamp}%(levelname)s [%(worker)s] %(message)s"))
    handler.addFilter(_WorkerIdFilter(worker_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The HTTP/2 libraries log every frame and header at DEBUG: far too much for a proxy's
    # debug log, and each line costs on the hot path.
    for library in ("h2", "hpack", "hyperframe"):
        logging.getLogger(library).setLevel(logging.WARNING)
    if target != "stderr":
        route_logs(target)


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """Exceptions Python cannot raise to a caller, through the worker's log rather than raw
    to stderr. One is common and nobody's fault here: a TLS client sending a server name
    that is not ASCII, which the ssl module fails to decode before sozu's SNI callback runs
    (the handshake then ends with an alert, counted among the failed handshakes): one debug
    line, not a traceback per handshake."""
    error = unraisable.exc_value
    if isinstance(error, UnicodeDecodeError) and isinstance(unraisable.object, bytes):
        log.debug("TLS server name %r is not ASCII: handshake refused", unraisable.object[:64])
        return
    log.error(
        "%s: %r",
        unraisable.err_msg or "exception ignored",
        unraisable.object,
        exc_info=(unraisable.exc_type, error, unraisable.exc_traceback)
        if error is not None
        else None,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sozu.worker")
    parser.add_argument("--id", type=int, required=True, help="worker id")
    parser.add_argument("--fd", type=int, required=True, help="channel socket fd")
    parser.add_argument("--scm", type=int, default=None, help="SCM_RIGHTS socket fd")
    parser.add_argument("--max-command-buffer-size", type=int, default=2_000_000)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.id)
    sys.unraisablehook = _unraisable
    fault = os.environ.get("SOZU_FAULT_INJECTION")
    if fault and os.path.exists(fault):
        # Tests simulate code that cannot start (a bad upgrade) with this file.
        logging.getLogger("sozu.worker").error("refusing to start: %s exists", fault)
        return 3
    # The supervisor decides when workers stop: a terminal's ^C reaches the whole process
    # group, and the supervisor then stops its workers over their channels.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = socket.socket(fileno=args.fd)
    scm = socket.socket(fileno=args.scm) if args.scm is not None else None
    # What exists now (modules, classes, constants) lives as long as the worker: out of the
    # collector's way, so a full collection walks only the objects of live connections and
    # flows (with 20,000 flows, full collections paused the loop for tens of milliseconds).
    gc.collect()
    gc.freeze()
    try:
        core = WorkerCore(worker_id=args.id)
        return trio.run(serve_channel, core, channel, args.max_command_buffer_size, scm)
    finally:
        if scm is not None:
            scm.close()
