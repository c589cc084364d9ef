"""Entry of the daemon: `run(loaded)` runs the supervisor in the foreground until it stops."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import trio

from sozu.command import state as state_module
from sozu.command.config import LoadedConfig, load_config
from sozu.command.state import ConfigState
from sozu.supervisor.announce import ready_lines
from sozu.supervisor.daemon_io import (
    StartupError,
    bind_metrics_socket,
    remove_pid_file,
    setup_logging,
    write_pid_file,
)
from sozu.supervisor.handoff import Handoff, read_handoff
from sozu.supervisor.orphans import Orphans, take_over_orphans
from sozu.supervisor.server import CommandSocket
from sozu.supervisor.supervisor import Supervisor, initial_state
from sozu.supervisor.workers import default_debug

log = logging.getLogger("sozu.supervisor")


def run_from_handoff(path: Path) -> int:
    """The new supervisor image of an in-place upgrade: adopt everything the old one held."""
    handoff = read_handoff(path)
    loaded = load_config(Path(handoff.config_path) if handoff.config_path else None)
    state = ConfigState()
    for request in handoff.state:
        state.apply(request)
    state.max_request_size = loaded.config.max_command_buffer_size
    command_socket = CommandSocket.adopt(
        handoff.command_socket_fd,
        Path(handoff.command_socket_path),
        handoff.command_socket_inode,
    )
    metrics_socket = None
    if handoff.metrics_socket_fd is not None:
        os.set_inheritable(handoff.metrics_socket_fd, False)
        metrics_socket = socket.socket(fileno=handoff.metrics_socket_fd)
    return run(
        loaded,
        state=state,
        command_socket=command_socket,
        metrics_socket=metrics_socket,
        handoff=handoff,
    )


def run(
    loaded: LoadedConfig,
    *,
    announce: bool = False,
    state: ConfigState | None = None,
    command_socket: CommandSocket | None = None,
    metrics_socket: socket.socket | None = None,
    handoff: Handoff | None = None,
) -> int:
    """Run the daemon; the process exit status (0 after a stop, 1 if it cannot start).

    Once the daemon is ready it prints where its command socket and metrics are and the
    routes it serves (`announce`: the embedded default configuration, with a hint on how to
    try it).
    """
    config = loaded.config
    setup_logging(config.log_level, config.log_target)
    for warning in loaded.warnings:
        log.warning("%s: %s", loaded.source, warning)
    pid_file = Path(config.pid_file_path) if config.pid_file_path is not None else None
    debug = default_debug(config)
    if debug:
        state_module.FULL_INVARIANT_CHECKS = True
    address = config.metrics.prometheus_address
    orphans: Orphans | None = None
    try:
        if handoff is None:
            state = initial_state(loaded)
            if pid_file is not None:
                write_pid_file(pid_file)
            command_socket = CommandSocket(Path(config.command_socket))
            # Workers of a supervisor of this instance that died: theirs are our sockets.
            orphans = take_over_orphans(config.command_socket, config.worker_count)
            metrics_socket = bind_metrics_socket(address) if address is not None else None
        assert state is not None
        assert command_socket is not None

        def on_ready() -> None:
            assert command_socket is not None
            assert state is not None
            lines = ready_lines(
                state,
                pid=os.getpid(),
                command_socket=str(command_socket.path.absolute()),
                metrics=address,
                embedded=announce,
            )
            print("\n".join(lines), flush=True)

        supervisor = Supervisor(
            loaded,
            state,
            command_socket,
            metrics_socket=metrics_socket,
            debug=debug,
            on_ready=on_ready,
            handoff=handoff,
            orphans=orphans,
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
