"""Edge-pushing HTTP/1.1 keep-alive clients that account for every request they write.

A `KeepAliveClient` is a thread on a raw socket. With `depth` 1 it writes its next request
the moment the previous response ends (no pause). With `depth` 2 or 3 it pipelines: it writes
`depth` requests at once, and the next batch as soon as the first response of the latest
batch is complete, so up to `2 * depth - 1` requests are in flight. Each request is a
`Target` picked at random (seeded) from the client's list; its response is read by a small
parser (Content-Length, chunked, or until EOF) and its body checked by length and SHA-256.
A small `receive_buffer` (SO_RCVBUF) keeps a big body from fitting in the socket buffers, so
that the proxy relays it for as long as the client takes to read it.
After a response that says `Connection: close` the client closes, reconnects and writes again
the requests left unanswered on the old connection (RFC 9112 §9.3.2); each try counts as one
request.

Every request written ends in exactly one count of its client's `Tally`:

* `answered`: exactly one complete response, with the expected status and body;
* `bad`: one complete response, with a wrong status or body;
* `unanswered_pipelined`: unanswered after a response that said close, written in the same
  write as the request that response answered (pipelined behind it);
* `sent_after_close`: unanswered after a response that said close, written in a later write
  than the request that response answered (the close was on its way, unread);
* `lost`: unanswered because the connection ended (EOF, reset, timeout) without a response
  that said close, i.e. after a response that promised keep-alive or on a connection that
  had answered nothing yet; or its response was cut (EOF or reset inside it).
"""

from __future__ import annotations

import hashlib
import random
import socket
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from types import TracebackType

IO_TIMEOUT = 30.0
RECV_SIZE = 256 * 1024
MAX_HEAD = 64 * 1024
# How many problems (lost or bad requests, errors) a tally describes; the counts go on.
PROBLEMS_KEPT = 20
JOIN_TIMEOUT = IO_TIMEOUT + 30.0


@dataclass(frozen=True)
class Target:
    """A GET a client sends and the body its `200` must carry."""

    host: str
    path: str
    length: int
    sha256: str

    @classmethod
    def of(cls, host: str, path: str, body: bytes) -> Target:
        return cls(host, path, len(body), hashlib.sha256(body).hexdigest())

    def request(self) -> bytes:
        return f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()


@dataclass(frozen=True)
class Response:
    """What a client keeps of a response: status, whether it said close, body size and hash."""

    status: int
    close: bool
    length: int
    sha256: str


class ResponseFailed(Exception):
    """No complete response: the connection ended or failed before or inside it."""


class _Wire:
    """Buffered reads of the responses on one connection, bodies hashed as they stream."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _recv(self, size: int = RECV_SIZE) -> bytes:
        try:
            return self.sock.recv(size)
        except TimeoutError:
            raise ResponseFailed(f"no byte for {IO_TIMEOUT:.0f} s") from None
        except OSError as error:
            raise ResponseFailed(f"{type(error).__name__}: {error}") from None

    def head(self) -> bytes:
        searched = 0
        while (end := self.buf.find(b"\r\n\r\n", max(0, searched - 3))) < 0:
            searched = len(self.buf)
            if searched > MAX_HEAD:
                raise ResponseFailed("response head too long")
            data = self._recv()
            if not data:
                where = "inside a response head" if self.buf else "before the response"
                raise ResponseFailed(f"EOF {where}")
            self.buf += data
        head = bytes(self.buf[: end + 4])
        del self.buf[: end + 4]
        return head

    def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            data = self._recv()
            if not data:
                raise ResponseFailed("EOF inside a chunked body")
            self.buf += data
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def exactly(self, size: int) -> bytes:
        while len(self.buf) < size:
            data = self._recv()
            if not data:
                raise ResponseFailed("EOF inside a chunked body")
            self.buf += data
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data

    def body(self, size: int, digest: hashlib._Hash) -> None:
        """`size` bytes into `digest`."""
        taken = min(size, len(self.buf))
        digest.update(self.buf[:taken])
        del self.buf[:taken]
        left = size - taken
        while left:
            data = self._recv(min(RECV_SIZE, left))
            if not data:
                raise ResponseFailed(f"EOF inside the body, {left} of {size} bytes missing")
            digest.update(data)
            left -= len(data)

    def chunked(self, digest: hashlib._Hash) -> int:
        """A chunked body into `digest` (trailers skipped); its decoded size."""
        total = 0
        while True:
            line = self.line()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ResponseFailed(f"invalid chunk size line {line[:40]!r}") from None
            if size == 0:
                while self.line():
                    pass
                return total
            self.body(size, digest)
            total += size
            if self.exactly(2) != b"\r\n":
                raise ResponseFailed("chunk not followed by CRLF")

    def until_eof(self, digest: hashlib._Hash) -> int:
        total = len(self.buf)
        digest.update(self.buf)
        self.buf.clear()
        while data := self._recv():
            digest.update(data)
            total += len(data)
        return total


def header_pairs(head: bytes) -> list[tuple[str, str]]:
    """The header lines of a head, names lowercased, values stripped."""
    pairs = []
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            pairs.append((name.strip().lower(), value.strip()))
    return pairs


def read_response(wire: _Wire) -> Response:
    """The next response on the connection; `ResponseFailed` when there is none, complete."""
    head = wire.head()
    status_line = head.split(b"\r\n", 1)[0].split(b" ", 2)
    try:
        version, status = status_line[0], int(status_line[1])
    except (IndexError, ValueError):
        raise ResponseFailed(f"invalid status line {head[:60]!r}") from None
    headers = header_pairs(head)
    tokens = {
        token.strip().lower()
        for name, value in headers
        if name == "connection"
        for token in value.split(",")
    }
    close = "close" in tokens or (version == b"HTTP/1.0" and "keep-alive" not in tokens)
    digest = hashlib.sha256()
    lengths = [value for name, value in headers if name == "content-length"]
    chunked = any(
        name == "transfer-encoding" and "chunked" in value.lower() for name, value in headers
    )
    if status < 200 or status in (204, 304):
        length = 0
    elif chunked:
        length = wire.chunked(digest)
    elif lengths:
        length = int(lengths[0])
        wire.body(length, digest)
    else:
        length = wire.until_eof(digest)
        close = True
    return Response(status, close, length, digest.hexdigest())


@dataclass
class Tally:
    """What became of the requests of one client (or of several, merged)."""

    written: int = 0
    answered: int = 0
    bad: int = 0
    unanswered_pipelined: int = 0
    sent_after_close: int = 0
    lost: int = 0
    # Responses that said close, connections opened, connects refused, writes that failed.
    closes: int = 0
    connections: int = 0
    connect_errors: int = 0
    write_errors: int = 0
    body_bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def accounted(self) -> int:
        """Requests that ended in one of the five outcomes (equals `written` when done)."""
        return (
            self.answered + self.bad + self.unanswered_pipelined + self.sent_after_close + self.lost
        )

    def problem(self, text: str) -> None:
        if len(self.problems) < PROBLEMS_KEPT:
            self.problems.append(text)

    @classmethod
    def merged(cls, tallies: Iterable[Tally]) -> Tally:
        total = cls()
        for tally in tallies:
            for item in fields(cls):
                if item.name == "problems":
                    for text in tally.problems:
                        total.problem(text)
                else:
                    setattr(total, item.name, getattr(total, item.name) + getattr(tally, item.name))
        return total

    def summary(self) -> str:
        return (
            f"{self.written} requests: {self.answered} answered, "
            f"{self.sent_after_close} sent after a close, "
            f"{self.unanswered_pipelined} unanswered pipelined after a close, "
            f"{self.lost} lost, {self.bad} bad; {self.closes} responses said close, "
            f"{self.connections} connections, {self.connect_errors} connect errors, "
            f"{self.write_errors} write errors, {self.body_bytes / 1e6:.0f} MB of bodies"
        )


class KeepAliveClient:
    """One edge-pushing client thread (see the module docstring)."""

    def __init__(
        self,
        name: str,
        port: int,
        targets: Sequence[Target],
        stop: threading.Event,
        *,
        depth: int = 1,
        seed: int = 0,
        receive_buffer: int | None = None,
    ) -> None:
        self.name = name
        self.receive_buffer = receive_buffer
        self.address = ("127.0.0.1", port)
        self.targets = targets
        self.stop = stop
        self.depth = depth
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.crashed = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        retry: deque[Target] = deque()
        try:
            while not self.stop.is_set():
                self._connection(retry)
        except Exception as error:
            # A client bug must fail the test, not end the thread unnoticed.
            self.crashed = True
            self.tally.problem(f"{self.name}: client error {type(error).__name__}: {error}")

    def _next(self, retry: deque[Target]) -> Target:
        return retry.popleft() if retry else self.rng.choice(self.targets)

    def _connection(self, retry: deque[Target]) -> None:
        tally = self.tally
        sock = socket.socket()
        try:
            sock.settimeout(IO_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.receive_buffer is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
            sock.connect(self.address)
        except OSError as error:
            sock.close()
            tally.connect_errors += 1
            tally.problem(f"{self.name}: connect: {type(error).__name__}: {error}")
            self.stop.wait(0.1)
            return
        tally.connections += 1
        with sock:
            wire = _Wire(sock)
            # (target, number of the write that sent it), oldest first
            outstanding: deque[tuple[Target, int]] = deque()
            batch = 0
            answered_here = 0

            def write_batch() -> None:
                nonlocal batch
                batch += 1
                sent = [self._next(retry) for _ in range(self.depth)]
                outstanding.extend((target, batch) for target in sent)
                tally.written += len(sent)
                try:
                    sock.sendall(b"".join(target.request() for target in sent))
                except OSError as error:
                    # The responses already on their way may still be read: reading decides.
                    tally.write_errors += 1
                    tally.problem(f"{self.name}: write: {type(error).__name__}: {error}")

            write_batch()
            while outstanding:
                target, number = outstanding[0]
                try:
                    response = read_response(wire)
                except ResponseFailed as failure:
                    tally.lost += len(outstanding)
                    paths = ", ".join(t.path for t, _ in outstanding)
                    tally.problem(
                        f"{self.name}: {failure} after {answered_here} keep-alive responses "
                        f"on the connection; lost: {paths}"
                    )
                    return
                outstanding.popleft()
                answered_here += 1
                tally.body_bytes += response.length
                if (response.status, response.length, response.sha256) == (
                    200,
                    target.length,
                    target.sha256,
                ):
                    tally.answered += 1
                else:
                    tally.bad += 1
                    tally.problem(
                        f"{self.name}: {target.path}: status {response.status}, "
                        f"{response.length} of {target.length} bytes, "
                        f"{'matching' if response.sha256 == target.sha256 else 'wrong'} body"
                    )
                if response.close:
                    tally.closes += 1
                    for left, written_in in outstanding:
                        if written_in == number:
                            tally.unanswered_pipelined += 1
                        else:
                            tally.sent_after_close += 1
                        retry.append(left)
                    return
                if number == batch and not self.stop.is_set():
                    write_batch()


class ClientGroup:
    """Clients sharing one stop event: started on entry, stopped and joined on exit."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.clients: list[KeepAliveClient] = []

    def add(
        self,
        name: str,
        port: int,
        targets: Sequence[Target],
        *,
        depth: int = 1,
        seed: int = 0,
        receive_buffer: int | None = None,
    ) -> KeepAliveClient:
        client = KeepAliveClient(
            name, port, targets, self.stop, depth=depth, seed=seed, receive_buffer=receive_buffer
        )
        self.clients.append(client)
        return client

    def answered(self) -> int:
        """Requests answered so far (read while the clients run: a rough live figure)."""
        return sum(client.tally.answered for client in self.clients)

    def finish(self) -> list[str]:
        """Stop the clients once their requests in flight are answered; the names of any
        still running after `JOIN_TIMEOUT` (each waits at most `IO_TIMEOUT` per read)."""
        self.stop.set()
        for client in self.clients:
            client.thread.join(JOIN_TIMEOUT)
        return [client.name for client in self.clients if client.thread.is_alive()]

    def tally(self, prefix: str = "") -> Tally:
        """The merged tally of the clients whose name starts with `prefix`."""
        return Tally.merged(c.tally for c in self.clients if c.name.startswith(prefix))

    def __enter__(self) -> ClientGroup:
        for client in self.clients:
            client.thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.finish()
