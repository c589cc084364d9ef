"""A real `sozu start` daemon for end-to-end tests, driven with the real `sozu` CLI.

`Daemon.start(directory)` writes a configuration (a command socket in a short temporary
directory, `debug = true`), starts `python -m sozu.cli start -c FILE` and waits until
`sozu -j status` shows every worker running. `Daemon.start_file(config_path, ...)` does the
same for a configuration the test wrote whole (`short_directory()` gives a place for its
command socket). `stop()` shuts it down through the CLI and kills whatever is left, so a
failing test never leaves processes behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

STARTUP_TIMEOUT = 10.0
CLI_TIMEOUT = 15.0


def wait_for(
    probe: Callable[[], T | None], *, timeout: float = STARTUP_TIMEOUT, what: str = "condition"
) -> T:
    """Poll `probe` every 50 ms until it returns something other than None."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(0.05)


def short_directory() -> Path:
    """A new directory under /tmp whose paths are short enough for a unix socket (108 bytes)."""
    return Path(tempfile.mkdtemp(prefix="sozu-e2e-", dir="/tmp"))


def sozu_cli(*args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run the `sozu` CLI (as `python -m sozu.cli`) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "sozu.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Daemon:
    """One daemon process, its configuration and its log."""

    config_path: Path
    socket_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    worker_count: int
    _cleanup: list[Path] = field(default_factory=list)

    @classmethod
    def write_config(
        cls, directory: Path, *, worker_count: int = 2, worker_timeout: int = 5, extra: str = ""
    ) -> tuple[Path, Path]:
        """A configuration file in `directory`; its command socket lives in a short path."""
        socket_path = short_directory() / "sozu.sock"
        config_path = directory / "sozu.toml"
        config_path.write_text(
            f'command_socket = "{socket_path}"\n'
            f"worker_count = {worker_count}\n"
            f"worker_timeout = {worker_timeout}\n"
            "ctl_command_timeout = 5000\n"
            "debug = true\n"
            f"{extra}\n"
        )
        return config_path, socket_path

    @classmethod
    def launch(cls, config_path: Path, socket_path: Path, worker_count: int) -> Daemon:
        """Start `sozu start -c config_path` without waiting for it."""
        log_path = config_path.with_suffix(".log")
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "sozu.cli", "start", "-c", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        return cls(config_path, socket_path, process, log_path, worker_count)

    @classmethod
    def start(
        cls, directory: Path, *, worker_count: int = 2, worker_timeout: int = 5, extra: str = ""
    ) -> Daemon:
        """Start a daemon and wait until all its workers run."""
        config_path, socket_path = cls.write_config(
            directory, worker_count=worker_count, worker_timeout=worker_timeout, extra=extra
        )
        return cls.start_file(
            config_path, socket_path, worker_count=worker_count, cleanup=socket_path.parent
        )

    @classmethod
    def start_file(
        cls, config_path: Path, socket_path: Path, *, worker_count: int, cleanup: Path | None
    ) -> Daemon:
        """Start `sozu start -c config_path` (a file whose `command_socket` is `socket_path`)
        and wait until its `worker_count` workers run; `cleanup` is removed when it stops."""
        daemon = cls.launch(config_path, socket_path, worker_count)
        if cleanup is not None:
            daemon._cleanup.append(cleanup)
        try:
            daemon.wait_running()
        except BaseException:
            daemon.stop()
            raise
        return daemon

    # -- driving

    def sozu(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """`sozu -c <config> ARGS...`."""
        return sozu_cli("-c", str(self.config_path), *args, timeout=timeout)

    def sozu_json(self, *args: str) -> Any:
        """`sozu -j ...` that must succeed; its JSON document."""
        result = self.sozu("-j", *args)
        assert result.returncode == 0, f"sozu {' '.join(args)}: {result.stderr}{result.stdout}"
        return json.loads(result.stdout)

    def status(self) -> dict[str, Any] | None:
        """`sozu -j status`, or None while the daemon does not answer."""
        result = self.sozu("-j", "status")
        if result.returncode != 0:
            return None
        document: dict[str, Any] = json.loads(result.stdout)
        return document

    def running_status(self, count: int | None = None) -> dict[str, Any] | None:
        """The status once `count` workers (default: all) run with the supervisor's hash."""
        status = self.status()
        if status is None:
            return None
        workers = status["workers"]
        wanted = self.worker_count if count is None else count
        running = [w for w in workers if w["state"] == "running" and w["hash_ok"]]
        return status if len(running) == wanted == len(workers) else None

    def wait_running(self, timeout: float = STARTUP_TIMEOUT) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}:\n{self.log()}")
            return self.running_status()

        return wait_for(probe, timeout=timeout, what="all workers running")

    def follow_events(self) -> EventFollower:
        """`sozu -j events` running in the background, subscribed once this returns."""
        process = subprocess.Popen(
            [sys.executable, "-m", "sozu.cli", "-c", str(self.config_path), "-j", "events"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        follower = EventFollower(process)
        try:
            first = follower.next_event(timeout=STARTUP_TIMEOUT)
            assert first is not None, "no EVENTS_SUBSCRIBED"
            assert first["kind"] == "EVENTS_SUBSCRIBED", first
        except BaseException:
            follower.close()
            raise
        return follower

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- stopping

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """Shut the daemon down (soft, then SIGKILL to its whole session if it lingers)."""
        if self.process.poll() is None:
            # A soft stop waits for UDP flows to go idle: a test's last flows are not waited
            # for longer than this (tests of the soft stop wait for it themselves).
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sozu("shutdown", timeout=4)
                self.process.wait(timeout=4)
        # Workers share the daemon's session: none may outlive a test.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        for path in self._cleanup:
            shutil.rmtree(path, ignore_errors=True)


DaemonFactory = Callable[..., Daemon]


class EventFollower:
    """The JSON lines of a `sozu -j events` process."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._selector = selectors.DefaultSelector()
        assert process.stdout is not None
        self._stdout = process.stdout
        os.set_blocking(self._stdout.fileno(), False)
        self._selector.register(self._stdout, selectors.EVENT_READ)
        self._buffer = b""

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None if none comes within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                return None
            chunk = self._stdout.read()
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        event: dict[str, Any] = json.loads(line)
        return event

    def drain(self, quiet: float = 0.5) -> list[dict[str, Any]]:
        """Every event until none comes for `quiet` seconds."""
        events = []
        while (event := self.next_event(quiet)) is not None:
            events.append(event)
        return events

    def close(self) -> None:
        self._selector.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._stdout.close()
