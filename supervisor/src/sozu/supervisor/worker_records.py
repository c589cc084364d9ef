"""The records of the worker pool: a worker process and a slot as the supervisor sees them,
the errors of a worker's start-up and upgrade, and the pool's timings and limits."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import trio

from sozu.command.channel import RequestMux
from sozu.command.config_schema import Config
from sozu.command.responses import WorkerRunState
from sozu.supervisor.adopted_process import AdoptedProcess

RESTART_WINDOW = 60.0
# How often an empty slot that failed its replay checks whether the state has moved on.
STATE_POLL = 1.0
BACKOFF_BASE = 0.1
BACKOFF_MAX = 5.0
# How long a worker whose channel closed may take to exit before it is killed.
EXIT_GRACE = 1.0
HELLO_TIMEOUT = 10.0
# How long a status query or a metrics poll waits for each worker's answer (at most the
# configured worker_timeout).
STATUS_PATIENCE = 2.0


# Worker channel frames may exceed a client's limit by this much: answers such as metrics
# snapshots, and requests the state generates on replay. The state itself refuses requests
# over `max_command_buffer_size` (see ConfigState.max_request_size).
WORKER_CHANNEL_MARGIN = 1 << 20


def worker_frame_limit(config: Config) -> int:
    """The frame limit of the supervisor-to-worker channel, on both of its ends."""
    return config.max_command_buffer_size + WORKER_CHANNEL_MARGIN


class WorkerStartError(Exception):
    """A worker that did not complete its start-up handshake."""


@dataclass(eq=False)
class Worker:
    """One live worker process as the supervisor sees it."""

    id: int
    slot: int
    process: trio.Process | AdoptedProcess
    mux: RequestMux
    scm: trio.socket.SocketType
    state: WorkerRunState = "starting"
    build_id: str = ""
    state_hash: str = ""
    replace_reason: str | None = None
    # The replayed request this worker refused or died on, and the state hash then.
    replay_failure: tuple[str, str] | None = None
    # A resync (replacement by a worker upgrade) is under way.
    resyncing: bool = False
    # Why this worker's state differs from the supervisor's, when known (`sozu status`).
    problem: str | None = None
    # One batch of fds at a time on the SCM socket (its messages must not interleave).
    scm_lock: trio.Lock = field(default_factory=trio.Lock)
    # Set once the process has exited and the supervisor has let go of it.
    exited: trio.Event = field(default_factory=trio.Event)

    @property
    def pid(self) -> int:
        return self.process.pid

    def name(self) -> str:
        return f"worker {self.id} (pid {self.pid}, slot {self.slot})"


@dataclass(eq=False)
class Slot:
    index: int
    worker: Worker | None = None
    restarts: int = 0
    restart_times: collections.deque[float] = field(default_factory=collections.deque)
    # Old workers of the slot still draining after an upgrade.
    retiring: list[Worker] = field(default_factory=list)
    # The new worker of an upgrade while it starts (listed as "starting").
    successor: Worker | None = None
    upgrading: bool = False
    # Set when the current worker exits or is replaced by an upgrade.
    wakeup: trio.Event = field(default_factory=trio.Event)
    nursery: trio.Nursery | None = None
    # Why the slot has no worker and none is coming now (None: it has, or one is coming).
    empty_reason: str | None = None
    # The worker of another slot accepting on this slot's sockets while it is empty.
    adopter: Worker | None = None
    # Set to refill an empty slot now (LaunchWorker, UpgradeMain).
    refill: trio.Event = field(default_factory=trio.Event)
    # Set once a refill asked by `WorkerPool.refill` has a running worker.
    refilled: trio.Event = field(default_factory=trio.Event)


class UpgradeError(Exception):
    """An upgrade that could not be done; the old worker keeps serving. `replay_failure`
    names the request the new worker could not replay, if that was the cause."""

    def __init__(self, message: str, replay_failure: str | None = None) -> None:
        super().__init__(message)
        self.replay_failure = replay_failure


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"
