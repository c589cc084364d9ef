"""Entry of the daemon: `run(loaded)` runs the supervisor in the foreground until it stops."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import trio

from sozu.command import state as state_module
from sozu.command.config import LoadedConfig
from sozu.supervisor.daemon_io import (
    StartupError,
    bind_metrics_socket,
    remove_pid_file,
    setup_logging,
    write_pid_file,
)
from sozu.supervisor.server import CommandSocket
from sozu.supervisor.supervisor import Supervisor, initial_state
from sozu.supervisor.workers import default_debug

log = logging.getLogger("sozu.supervisor")


def run(loaded: LoadedConfig, *, announce: bool = False) -> int:
    """Run the daemon; the process exit status (0 after a stop, 1 if it cannot start).

    `announce` prints where the command socket and metrics are once the daemon is ready (for
    the embedded default configuration, whose paths the user did not choose).
    """
    config = loaded.config
    setup_logging(config.log_level)
    for warning in loaded.warnings:
        log.warning("%s: %s", loaded.source, warning)
    pid_file = Path(config.pid_file_path) if config.pid_file_path is not None else None
    command_socket: CommandSocket | None = None
    metrics_socket: socket.socket | None = None
    debug = default_debug(config)
    if debug:
        state_module.FULL_INVARIANT_CHECKS = True
    try:
        state = initial_state(loaded)
        if pid_file is not None:
            write_pid_file(pid_file)
        command_socket = CommandSocket(Path(config.command_socket))
        address = config.metrics.prometheus_address
        metrics_socket = bind_metrics_socket(address) if address is not None else None

        def on_ready() -> None:
            if announce:
                assert command_socket is not None
                print(f"sozu is running (embedded default configuration), pid {os.getpid()}")
                print(f"  command socket: {command_socket.path.absolute()}")
                if address is not None:
                    print(f"  metrics: http://{address}/metrics")
                sys.stdout.flush()

        supervisor = Supervisor(
            loaded,
            state,
            command_socket,
            metrics_socket=metrics_socket,
            debug=debug,
            on_ready=on_ready,
        )
        trio.run(supervisor.run)
    except StartupError as error:
        log.error("cannot start: %s", error)
        return 1
    finally:
        if command_socket is not None:
            command_socket.remove()
            command_socket.sock.close()
        if metrics_socket is not None:
            metrics_socket.close()
        if pid_file is not None:
            remove_pid_file(pid_file)
    log.info("stopped")
    return 0
