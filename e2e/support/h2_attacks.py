"""Helpers for HTTP/2 attacks on a real daemon (e2e/test_h2_attacks.py).

* `RawH2`: a TLS connection that negotiated h2 by ALPN and speaks raw frames (hyperframe,
  with its own HPACK coder), so that a test can send what no well-behaved client library
  would (even stream ids, reused ids, more streams than allowed, header blocks that inflate);
  it records what the server answers: its SETTINGS, WINDOW_UPDATEs, each stream's headers,
  body and reset code, PING ACKs and the GOAWAY.
* `WorkerProbe`: a worker process's resident memory (its peak, sampled and from VmHWM once
  reset through clear_refs) and CPU time across a block.
* `CurlLoop`: `curl --http2` requests, one connection each, in a loop on a thread, every
  failure recorded: the other clients that an attack must not hurt.
* `metric_total`: the sum of a Prometheus series' samples matching some labels.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from e2e.support.closing import ClosesOnExit
from e2e.support.net import prometheus_series
from e2e.support.programs import require_program

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9

# RFC 9113 §7 error codes and §6.5.2 setting codes used by the tests.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
STREAM_CLOSED = 0x5
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_HEADER_LIST_SIZE = 0x6
DEFAULT_WINDOW = 65535
MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE's initial value

Headers = list[tuple[bytes, bytes]]


def request_headers(
    authority: str = "alpha.test", path: str = "/", *extra: tuple[str, str]
) -> Headers:
    fields = [(":method", "GET"), (":scheme", "https"), (":authority", authority), (":path", path)]
    return [(name.encode(), value.encode()) for name, value in (*fields, *extra)]


@dataclass
class StreamSeen:
    """What the server sent on one stream."""

    headers: Headers = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None
    head_at: float = 0.0  # monotonic time its first HEADERS arrived
    reset_at: float = 0.0

    @property
    def status(self) -> bytes | None:
        return dict(self.headers).get(b":status")

    @property
    def finished(self) -> bool:
        return self.ended or self.reset is not None


class RawH2(ClosesOnExit):
    """One h2 connection to 127.0.0.1:`port` speaking raw frames (see the module docstring).
    The preface and a SETTINGS frame (`settings`) are sent at once."""

    def __init__(
        self,
        port: int,
        ca_file: Path,
        *,
        settings: dict[int, int] | None = None,
        server_name: str = "alpha.test",
        timeout: float = 10.0,
    ) -> None:
        context = ssl.create_default_context(cafile=str(ca_file))
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            self.tls = context.wrap_socket(raw, server_hostname=server_name)
        except BaseException:
            raw.close()
            raise
        assert self.tls.selected_alpn_protocol() == "h2"
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder(max_header_list_size=1 << 24)
        self._buffer = bytearray()
        self._block: tuple[int, bytearray] | None = None  # a header block in CONTINUATIONs
        self._end_stream = False  # that block's HEADERS had END_STREAM
        # -- what the server sent
        self.settings: dict[int, int] | None = None  # its first SETTINGS
        self.window_updates: list[tuple[int, int]] = []  # (stream id, increment)
        self.streams: dict[int, StreamSeen] = {}
        self.ping_acks: list[bytes] = []
        self.goaway: tuple[int, int] | None = None  # (error code, last stream id)
        self.closed = False  # EOF or a reset connection
        self.send(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())

    # -- sending

    def send(self, data: bytes) -> bool:
        """Send `data`; False when the connection is already closed (a defence cut it)."""
        try:
            self.tls.sendall(data)
        except OSError:
            return False
        return True

    def headers_frame(self, stream_id: int, headers: Headers, *, end_stream: bool = True) -> bytes:
        """A header block coded by this connection's encoder: HEADERS, then CONTINUATION
        frames while it is longer than the default frame size, END_HEADERS on the last."""
        return self.block_frames(stream_id, self.encoder.encode(headers), end_stream=end_stream)

    @staticmethod
    def block_frames(stream_id: int, block: bytes, *, end_stream: bool = True) -> bytes:
        """A header block already coded, as HEADERS and CONTINUATION frames."""
        pieces = [block[i : i + MAX_FRAME] for i in range(0, len(block), MAX_FRAME)]
        out = b""
        for index, piece in enumerate(pieces):
            flags = ["END_HEADERS"] if index == len(pieces) - 1 else []
            if index == 0:
                if end_stream:
                    flags.append("END_STREAM")
                out += HeadersFrame(stream_id, data=piece, flags=flags).serialize()
            else:
                out += ContinuationFrame(stream_id, data=piece, flags=flags).serialize()
        return out

    def request(self, stream_id: int, path: str = "/", authority: str = "alpha.test") -> bytes:
        """A GET without a body (HEADERS with END_STREAM)."""
        return self.headers_frame(stream_id, request_headers(authority, path))

    @staticmethod
    def goaway_frame(last_stream_id: int, code: int = NO_ERROR) -> bytes:
        return GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code).serialize()

    @staticmethod
    def rst(stream_id: int, code: int = CANCEL) -> bytes:
        return RstStreamFrame(stream_id, error_code=code).serialize()

    @staticmethod
    def ping(opaque: bytes) -> bytes:
        return PingFrame(0, opaque_data=opaque).serialize()

    @staticmethod
    def window_update(stream_id: int, increment: int) -> bytes:
        return WindowUpdateFrame(stream_id, window_increment=increment).serialize()

    # -- receiving

    def wait(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Read frames until `condition()` holds, the connection ends or `timeout` passes;
        whether the condition holds."""
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if self.closed or left <= 0:
                return condition()
            self.tls.settimeout(left)
            try:
                data = self.tls.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                self.closed = True
                continue
            self._buffer += data
            self._parse()
        return True

    def wait_closed(self, timeout: float = 10.0) -> bool:
        """Read until the server ends the connection."""
        return self.wait(lambda: self.closed, timeout)

    def stream(self, stream_id: int) -> StreamSeen:
        return self.streams.setdefault(stream_id, StreamSeen())

    def _parse(self) -> None:
        buffer = self._buffer
        while len(buffer) >= FRAME_HEADER:
            frame, length = Frame.parse_frame_header(memoryview(bytes(buffer[:FRAME_HEADER])))
            if len(buffer) < FRAME_HEADER + length:
                return
            frame.parse_body(memoryview(bytes(buffer[FRAME_HEADER : FRAME_HEADER + length])))
            del buffer[: FRAME_HEADER + length]
            self._frame(frame)

    def _frame(self, frame: Frame) -> None:
        now = time.monotonic()
        if isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags:
                if self.settings is None:
                    self.settings = dict(frame.settings)
                self.send(SettingsFrame(0, flags=["ACK"]).serialize())
        elif isinstance(frame, WindowUpdateFrame):
            self.window_updates.append((frame.stream_id, frame.window_increment))
        elif isinstance(frame, PingFrame):
            if "ACK" in frame.flags:
                self.ping_acks.append(bytes(frame.opaque_data))
        elif isinstance(frame, GoAwayFrame):
            self.goaway = (frame.error_code, frame.last_stream_id)
        elif isinstance(frame, RstStreamFrame):
            seen = self.stream(frame.stream_id)
            seen.reset = frame.error_code
            seen.reset_at = now
        elif isinstance(frame, DataFrame):
            seen = self.stream(frame.stream_id)
            seen.body += frame.data
            if frame.flow_controlled_length:
                # Give back what was read, to the connection only: a stream's window is the
                # test's to open (a zero-window client must stay shut).
                self.send(self.window_update(0, frame.flow_controlled_length))
            if "END_STREAM" in frame.flags:
                seen.ended = True
        elif isinstance(frame, HeadersFrame):
            self._block = (frame.stream_id, bytearray(frame.data))
            self._end_stream = "END_STREAM" in frame.flags
            if "END_HEADERS" in frame.flags:
                self._headers_done()
        elif isinstance(frame, ContinuationFrame) and self._block is not None:
            self._block[1].extend(frame.data)
            if "END_HEADERS" in frame.flags:
                self._headers_done()

    def _headers_done(self) -> None:
        assert self._block is not None
        stream_id, block = self._block
        self._block = None
        seen = self.stream(stream_id)
        decoded = [(bytes(n), bytes(v)) for n, v in self.decoder.decode(bytes(block), raw=True)]
        if not seen.headers:
            seen.head_at = time.monotonic()
        seen.headers.extend(decoded)
        if self._end_stream:
            seen.ended = True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.tls.close()


# -- the worker process


def _status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/<pid>/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def rss(pid: int) -> int:
    return _status_kib(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of the process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    # After the command: state (field 3), ..., utime (14) and stime (15).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pid: int, seconds: float = 0.5) -> float:
    """CPU time the process used over `seconds` of wall time."""
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


class WorkerProbe:
    """Resident memory and CPU time of process `pid` across a `with` block: `growth` is the
    peak resident size during the block (sampled every 5 ms, and VmHWM when the kernel let
    it be reset at the start) minus the size before it; `cpu` the CPU time used; `wall`
    the block's duration."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss_before = 0
        self.peak = 0
        self.cpu = 0.0
        self.wall = 0.0
        self._cpu_before = 0.0
        self._started = 0.0
        self._hwm_reset = False
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            with contextlib.suppress(OSError, AssertionError):
                self.peak = max(self.peak, rss(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.rss_before

    def __enter__(self) -> WorkerProbe:
        try:
            # "5" resets the peak resident set size (VmHWM) to the current one.
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            self._hwm_reset = True
        except OSError:
            self._hwm_reset = False
        self.rss_before = rss(self.pid)
        self.peak = self.rss_before
        self._cpu_before = cpu_seconds(self.pid)
        self._started = time.monotonic()
        self._sampler.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._sampler.join(timeout=5)
        self.wall = time.monotonic() - self._started
        self.cpu = cpu_seconds(self.pid) - self._cpu_before
        self.peak = max(self.peak, rss(self.pid))
        if self._hwm_reset:
            self.peak = max(self.peak, _status_kib(self.pid, "VmHWM"))

    def __str__(self) -> str:
        return (
            f"rss {self.rss_before >> 20} MiB -> peak {self.peak >> 20} MiB, "
            f"cpu {self.cpu:.3f} s over {self.wall:.3f} s"
        )


# -- other clients


class CurlLoop:
    """`curl --http2 https://<host>:<port>/` (a connection each) in a loop on a thread until
    `stop()`; each answer must be HTTP/2 200 with `body`."""

    def __init__(self, port: int, ca_file: Path, host: str = "beta.test", body: str = "beta\n"):
        self.command = [
            require_program("curl"),
            "-sS",
            "--http2",
            "--max-time",
            "10",
            "--cacert",
            str(ca_file),
            "--resolve",
            f"{host}:{port}:127.0.0.1",
            "-w",
            "\n%{http_version} %{http_code}",
            f"https://{host}:{port}/",
        ]
        self.expected = f"{body}\n2 200"
        self.served = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = subprocess.run(
                    self.command, capture_output=True, text=True, timeout=30, check=False
                )
            except subprocess.TimeoutExpired as error:
                self.failures.append(f"timed out: {error}")
                continue
            if result.returncode != 0 or result.stdout != self.expected:
                self.failures.append(f"{result.returncode} {result.stdout!r} {result.stderr!r}")
            else:
                self.served += 1

    def __enter__(self) -> CurlLoop:
        self._thread.start()
        return self

    def stop(self, *, at_least: int = 2, timeout: float = 20.0) -> None:
        """Stop once `at_least` requests were served since the start (or `timeout` passed)."""
        deadline = time.monotonic() + timeout
        while self.served < at_least and not self.failures and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        self._thread.join(timeout=40)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=40)


def metric_total(port: int, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(
        value
        for (series, have), value in prometheus_series(port).items()
        if series == name and wanted <= have
    )
