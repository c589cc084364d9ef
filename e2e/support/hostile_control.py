"""Hostile clients of a daemon's control plane, and steady data-plane loops beside them.

* `generated_payloads(count, protected)`: request envelopes drawn (with a fixed seed) from the
  request strategies of `tests/support/hostile_strategies.py`, every kind but the lifecycle ones,
  valid, hostile and wrongly typed alike. Each socket address in them is on loopback (any other
  is rewritten to 127.0.9.1, the port kept), and none names a `protected` id or address.
* `send_generated(...)`: sends them over a few command connections, several in flight on each,
  and checks that every one gets a final answer.
* Frame-level abuse of the command socket (`reset_mid_frame`, `half_frame_then_close`,
  `oversize_frame`, `future_version`), a command client that never reads its answers
  (`CommandSlowReader`), and the same on the Prometheus endpoint (`prometheus_reset`,
  `prometheus_partial_get`, `PrometheusSlowReader`).
* `CurlLoop` (HTTP through a listener) and `DnsLoop` (DNS over UDP through a listener): one
  request after the other until stopped, successes and failures counted.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import msgspec
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from support.hostile_strategies import request_data, typed_request

from e2e.support.nsd import txt
from sozu.command import requests as rq
from sozu.command.addresses import AddressError, parse_address

IO_TIMEOUT = 30.0
# Kinds that stop, upgrade, relaunch or repopulate the daemon, follow events for ever, write or
# read files, or cap connections per client: the test asserts none of that happened.
LEFT_OUT: frozenset[type[rq.Request]] = frozenset(
    {
        rq.SoftStop,
        rq.HardStop,
        rq.UpgradeMain,
        rq.UpgradeWorker,
        rq.LaunchWorker,
        rq.SubscribeEvents,
        rq.SaveState,
        rq.LoadState,
        rq.ReloadConfiguration,
        rq.SetMaxConnectionsPerIp,
    }
)
KINDS: tuple[type[rq.Request], ...] = tuple(k for k in rq.REQUEST_TYPES if k not in LEFT_OUT)
STATE_KINDS = tuple(k for k in KINDS if k.ROUTING == "state")
ADDRESS_KEYS = frozenset({"address", "public_address"})
STAND_IN_HOST = "127.0.9.1"


# -- generated requests


def is_loopback(host: str) -> bool:
    """127.0.0.0/8 or ::1 (no zone, no IPv4-mapped form)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if ip.version == 4:
        return ip in ipaddress.ip_network("127.0.0.0/8")
    return ip == ipaddress.IPv6Address("::1")


def _split(text: str) -> tuple[str, str] | None:
    """`(host, port text)` of `ip:port` or `[ip]:port`, or None."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    return (host, port) if sep else None


def rewrite_addresses(value: Any) -> Any:
    """`value` with every address field whose host is an IP off loopback moved to loopback."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in ADDRESS_KEYS and isinstance(item, str):
                parts = _split(item)
                if parts is not None and not is_loopback(parts[0]):
                    with contextlib.suppress(ValueError):
                        ipaddress.ip_address(parts[0])
                        item = f"{STAND_IN_HOST}:{parts[1]}"
            out[key] = rewrite_addresses(item)
        return out
    if isinstance(value, list):
        return [rewrite_addresses(item) for item in value]
    return value


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def acceptable(data: dict[str, Any], protected: frozenset[str]) -> bool:
    """Whether `data` may be sent: the daemon refuses it, or it is of a kind kept in, every
    address in it is on loopback and it names nothing protected."""
    request = typed_request(data)
    if request is None:
        try:
            msgspec.msgpack.encode(data)
        except OverflowError:
            return False  # cannot be sent at all
        return True  # the daemon decodes exactly this way: refused before anything happens
    if type(request) in LEFT_OUT:
        return False
    for text in _strings(msgspec.to_builtins(request)):
        if text in protected:
            return False
        try:
            ip, _ = parse_address(text)
        except AddressError:
            continue
        if not is_loopback(str(ip)) or "%" in text:
            return False
    return True


def generated_payloads(count: int, protected: Iterable[str], *, seed: int = 0) -> list[bytes]:
    """`count` request payloads (envelopes), the same ones on every run for one `seed`."""
    kept = frozenset(protected)
    drawn: list[dict[str, Any]] = []
    requests = st.one_of(
        request_data(STATE_KINDS, hostile=False),
        request_data(KINDS, hostile=False),
        request_data(KINDS),
        request_data(KINDS, wrong_types=True),
    )

    # About 95% of the draws can be sent: a quarter more is ample (and, seeded, always enough).
    @hypothesis_seed(seed)
    @settings(
        max_examples=count * 5 // 4,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(requests)
    def draw(data: dict[str, Any]) -> None:
        if len(drawn) < count:
            data = rewrite_addresses(data)
            if acceptable(data, kept):
                drawn.append(data)

    draw()
    assert len(drawn) == count, f"only {len(drawn)} acceptable requests drawn"
    return [
        msgspec.msgpack.encode({"v": 1, "id": f"g{index}", "request": data})
        for index, data in enumerate(drawn)
    ]


# -- the command socket, frame by frame


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def envelope(request: dict[str, Any], request_id: str, version: int = 1) -> bytes:
    return msgspec.msgpack.encode({"v": version, "id": request_id, "request": request})


def connect_unix(path: Path, timeout: float = IO_TIMEOUT) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def read_answer(sock: socket.socket) -> dict[str, Any]:
    """The next answer frame (processing ones included)."""
    (length,) = struct.unpack(">I", read_exactly(sock, 4))
    answer: dict[str, Any] = msgspec.msgpack.decode(read_exactly(sock, length))
    return answer


def read_final(sock: socket.socket, request_id: str) -> dict[str, Any]:
    while True:
        answer = read_answer(sock)
        if answer["id"] == request_id and answer["status"] != "processing":
            return answer


def call(path: Path, request: dict[str, Any], request_id: str = "call") -> dict[str, Any]:
    with connect_unix(path) as sock:
        sock.sendall(frame(envelope(request, request_id)))
        return read_final(sock, request_id)


@dataclass
class Tally:
    """Final answers by status, and what went wrong on the client side."""

    answers: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, status: str) -> None:
        with self.lock:
            self.answers[status] += 1

    def problem(self, what: str) -> None:
        with self.lock:
            self.problems.append(what)


def send_generated(
    path: Path,
    payloads: list[bytes],
    tally: Tally,
    *,
    pace: float = 0.0,
    window: int = 16,
    timeout: float = IO_TIMEOUT,
) -> None:
    """Send `payloads` on one connection, the i-th no earlier than `i * pace` seconds after
    the first, at most `window` in flight; every one must get a final answer."""
    started = time.monotonic()
    try:
        with connect_unix(path, timeout) as sock:
            waiting: set[str] = set()
            sent = 0
            while sent < len(payloads) or waiting:
                while sent < len(payloads) and len(waiting) < window:
                    delay = started + sent * pace - time.monotonic()
                    if delay > 0 and waiting:
                        break  # read answers meanwhile
                    if delay > 0:
                        time.sleep(delay)
                    sock.sendall(frame(payloads[sent]))
                    waiting.add(_id_of(payloads[sent]))
                    sent += 1
                answer = read_answer(sock)
                if answer["status"] != "processing" and answer["id"] in waiting:
                    waiting.discard(answer["id"])
                    tally.count(answer["status"])
    except (OSError, ConnectionError) as error:
        tally.problem(f"generated requests: {error!r}")


def _id_of(payload: bytes) -> str:
    request_id: str = msgspec.msgpack.decode(payload)["id"]
    return request_id


def _await_readable(sock: socket.socket, timeout: float) -> bool:
    """Whether data waits on `sock` (not consumed) within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                return True
        except BlockingIOError:
            time.sleep(0.005)
            continue
        return False
    return False


def reset_mid_frame(path: Path) -> None:
    """An answer left unread, half a frame, then close: the daemon's next read is a reset."""
    with connect_unix(path) as sock:
        sock.sendall(frame(envelope({"type": "ListWorkers"}, "rs")))
        _await_readable(sock, 5.0)
        sock.sendall(struct.pack(">I", 200) + b"\x83\xa1v\x01\xa2id")


def half_frame_then_close(path: Path, cut: int) -> None:
    """`cut` bytes of a valid frame, then end of stream."""
    data = frame(envelope({"type": "AddCluster", "cluster": {"cluster_id": "half"}}, "hf"))
    with connect_unix(path) as sock:
        sock.sendall(data[: cut % len(data)])
        sock.shutdown(socket.SHUT_WR)
        # The daemon closes its side (nothing to answer): wait for that, within reason.
        with contextlib.suppress(OSError):
            sock.recv(1)


def oversize_frame(path: Path, limit: int, *, readable_id: bool) -> dict[str, Any] | None:
    """A frame just over `limit` bytes: with a readable id it is answered (and the connection
    serves on); without one the daemon closes the connection. The answer, or None."""
    head = envelope({"type": "Status", "pad": ""}, "big") if readable_id else b"\xc1" * 16
    with connect_unix(path) as sock:
        sock.sendall(struct.pack(">I", limit + 1) + head)
        sock.sendall(bytes(limit + 1 - len(head)))
        if not readable_id:
            with contextlib.suppress(OSError):
                while sock.recv(65536):
                    pass
            return None
        answer = read_final(sock, "big")
        sock.sendall(frame(envelope({"type": "ListWorkers"}, "after")))
        after = read_final(sock, "after")
        assert after["status"] == "ok", after
        return answer


def oversize_then_reset(path: Path) -> None:
    """A length of 4 GiB, 64 KiB of it, an answer left unread, close."""
    with connect_unix(path) as sock:
        sock.sendall(frame(envelope({"type": "ListWorkers"}, "pre")))
        _await_readable(sock, 5.0)
        sock.sendall(struct.pack(">I", 0xFFFFFFFF) + bytes(65536))


def future_version(path: Path, version: int) -> dict[str, Any]:
    """A request in a protocol version the daemon does not speak: answered Failure."""
    with connect_unix(path) as sock:
        sock.sendall(frame(envelope({"type": "Status"}, "fv", version)))
        return read_final(sock, "fv")


class CommandSlowReader:
    """Sends `count` requests and never reads an answer, until closed."""

    def __init__(self, path: Path, count: int) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(str(path))
        requests = b"".join(
            frame(envelope({"type": "ListListeners"}, f"slow{index}")) for index in range(count)
        )
        self._thread = threading.Thread(target=self._send, args=(requests,), daemon=True)
        self._thread.start()

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)


# -- the Prometheus endpoint


def _linger_reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def prometheus_reset(port: int, request: bytes) -> None:
    """`request` (a partial or whole GET), then a TCP reset."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    with contextlib.suppress(OSError):
        sock.sendall(request)
    _linger_reset(sock)


def prometheus_partial_get(port: int) -> socket.socket:
    """A GET that never ends (the caller closes the socket)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: loc")
    return sock


class PrometheusSlowReader:
    """A whole GET with a tiny receive window, never read, until closed."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")

    def close(self) -> None:
        _linger_reset(self.sock)


# -- data-plane loops


class _Loop:
    """One request after the other in a thread until stopped; successes and failures."""

    def __init__(self) -> None:
        self.successes = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            problem = self.once()
            if problem is None:
                self.successes += 1
            else:
                self.failures.append(problem)

    def once(self) -> str | None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the loop did not stop"


class CurlLoop(_Loop):
    """`curl` GETs through an HTTP listener; each must answer 200 with `body`."""

    def __init__(self, curl: str, port: int, host: str, body: str) -> None:
        super().__init__()
        self.command = [
            curl, "-s", "-S", "-m", "10", "-o", "-", "-w", "\n%{http_code}",
            "-H", f"Host: {host}", f"http://127.0.0.1:{port}/",
        ]  # fmt: skip
        self.expected = f"{body}\n200"

    def once(self) -> str | None:
        result = subprocess.run(
            self.command, capture_output=True, text=True, check=False, timeout=30
        )
        if result.returncode != 0 or result.stdout != self.expected:
            return f"curl exit {result.returncode}: {result.stdout!r} {result.stderr.strip()!r}"
        return None


class DnsLoop(_Loop):
    """TXT queries over UDP through a UDP listener; each must be answered by `who`."""

    def __init__(self, port: int, who: str, timeout: float = 5.0) -> None:
        super().__init__()
        self.port, self.who, self.timeout = port, who, timeout

    def once(self) -> str | None:
        try:
            answer = txt(self.port, timeout=self.timeout)
        except dns.exception.Timeout:
            return f"no DNS answer within {self.timeout} s"
        except Exception as error:
            return f"DNS query failed: {error!r}"
        return None if answer == self.who else f"answered by {answer!r}"
