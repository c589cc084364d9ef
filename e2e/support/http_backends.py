"""Small HTTP/1.1 test backends on loopback (threads, bounded) for what nginx will not do.

* `EchoHeaders`: answers every request `200` with the raw request head as body, keep-alive,
  and records each request (head and body) so a test sees exactly what the proxy forwarded;
* `SlowBackend`: reads the request and never answers (the proxy must answer 504);
* `BrokenBackend`: answers garbage that is not HTTP (the proxy must answer 502);
* `ClosesAfterRequest`: reads the request head, then closes without a byte (502);
* `ClosesAfterResponse`: answers `200` without ever saying `Connection: close` (even when the
  request did), then closes: a connection the proxy must not pool;
* `WebSocketEcho`: completes the RFC 6455 handshake and echoes every data frame.

Each counts its accepted connections; `close()` also closes the connections still open, so
a handler blocked on a silent peer ends with the test. `Reader`, `read_response` and the
frame helpers serve the client side of the tests too; `listener` and `cluster` write the TOML
declaring an HTTP(S) listener and an HTTP cluster in the daemon's configuration.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from e2e.support.closing import ClosesOnExit

IO_TIMEOUT = 30.0
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def websocket_accept(key: str) -> str:
    """The `Sec-WebSocket-Accept` value answering `Sec-WebSocket-Key: key` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest()).decode()


@dataclass(frozen=True)
class Request:
    """One request as a backend received it."""

    head: bytes
    body: bytes

    def headers(self) -> list[tuple[str, str]]:
        """(lowercase name, value) pairs in received order."""
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        pairs = []
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                pairs.append((name.strip().lower(), value.strip()))
        return pairs

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers() if key == name.lower()]

    @property
    def request_line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode("latin-1")


class Reader:
    """Buffered reads on a socket: heads, exact sizes, lines."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""

    def _fill(self) -> bool:
        chunk = self.conn.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def head(self) -> bytes | None:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                return None
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"

    def exactly(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not self._fill():
                return None
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def rest(self) -> bytes:
        """Everything until the peer closes."""
        while self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data

    def line(self) -> bytes | None:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                return None
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def chunked(self) -> bytes | None:
        """A chunked body (trailers skipped); None on EOF or an invalid chunk size."""
        body = b""
        while True:
            line = self.line()
            if line is None:
                return None
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size == 0:
                while self.line() not in (b"", None):
                    pass
                return body
            data = self.exactly(size + 2)
            if data is None or data[-2:] != b"\r\n":
                return None
            body += data[:-2]


class Backend(ClosesOnExit):
    """A threaded server on 127.0.0.1 running `handle` for each accepted connection."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 0
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port: int = self._sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                index = self.connections
                self._open.append(conn)
            threading.Thread(target=self._run, args=(conn, index), daemon=True).start()

    def _run(self, conn: socket.socket, index: int) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(IO_TIMEOUT)
            self.handle(conn, Reader(conn), index)

    def record(self, head: bytes, body: bytes = b"") -> Request:
        request = Request(head, body)
        with self._lock:
            self.requests.append(request)
        return request

    def handle(self, conn: socket.socket, reader: Reader, index: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._sock.close()
        with self._lock:
            still_open, self._open = self._open, []
        for conn in still_open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class EchoHeaders(Backend):
    """Answers `200` with the request head as body; `X-Backend` and `X-Connection` headers."""

    def handle(self, conn: socket.socket, reader: Reader, index: int) -> None:
        while (head := reader.head()) is not None:
            request = Request(head, b"")
            body: bytes | None = b""
            if any(v.lower() == "chunked" for v in request.header("transfer-encoding")):
                body = reader.chunked()
            elif lengths := request.header("content-length"):
                body = reader.exactly(int(lengths[0]))
            if body is None:
                return
            self.record(head, body)
            closing = any(v.lower() == "close" for v in request.header("connection"))
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                + f"X-Backend: {self.name}\r\nX-Connection: {index}\r\n".encode()
                + f"Content-Length: {len(head)}\r\n".encode()
                + (b"Connection: close\r\n" if closing else b"")
                + b"\r\n"
                + head
            )
            if closing:
                return


class SlowBackend(Backend):
    """Reads the request, then stays silent until the peer goes away."""

    def handle(self, conn: socket.socket, reader: Reader, index: int) -> None:
        head = reader.head()
        if head is not None:
            self.record(head)
            while conn.recv(65536):
                pass


class BrokenBackend(Backend):
    """Answers each request head with bytes that are not an HTTP response."""

    def handle(self, conn: socket.socket, reader: Reader, index: int) -> None:
        head = reader.head()
        if head is not None:
            self.record(head)
            conn.sendall(b"TEST\r\n\r\n")
            while conn.recv(65536):
                pass


class ClosesAfterRequest(Backend):
    """Reads the request head, then closes the connection without answering."""

    def handle(self, conn: socket.socket, reader: Reader, index: int) -> None:
        head = reader.head()
        if head is not None:
            self.record(head)


class ClosesAfterResponse(Backend):
    """Answers one request `200` with a keep-alive-looking response, then closes."""

    def handle(self, conn: socket.socket, reader: Reader, index: int) -> None:
        head = reader.head()
        if head is not None:
            self.record(head)
            body = f"{self.name} {index}".encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                + f"X-Connection: {index}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )


class WebSocketEcho(Backend):
    """Accepts a WebSocket upgrade and echoes text/binary frames, answers ping and close."""

    def handle(self, conn: socket.socket, reader: Reader, index: int) -> None:
        head = reader.head()
        if head is None:
            return
        request = self.record(head)
        keys = request.header("sec-websocket-key")
        if not keys or not any("websocket" in v.lower() for v in request.header("upgrade")):
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {websocket_accept(keys[0])}\r\n\r\n".encode()
        )
        while (frame := read_frame(reader)) is not None:
            opcode, payload = frame
            if opcode == 0x8:
                conn.sendall(encode_frame(0x8, payload[:2]))
                return
            conn.sendall(encode_frame(0xA if opcode == 0x9 else opcode, payload))


def encode_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame; masked with the 4-byte `mask` when given (client to server)."""
    first = bytes([0x80 | opcode])
    size = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if size < 126:
        length = bytes([mask_bit | size])
    elif size < 1 << 16:
        length = bytes([mask_bit | 126]) + struct.pack("!H", size)
    else:
        length = bytes([mask_bit | 127]) + struct.pack("!Q", size)
    if mask is None:
        return first + length + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return first + length + mask + masked


def read_frame(reader: Reader) -> tuple[int, bytes] | None:
    """(opcode, unmasked payload) of the next frame, or None on EOF."""
    start = reader.exactly(2)
    if start is None:
        return None
    opcode, size = start[0] & 0x0F, start[1] & 0x7F
    if size == 126:
        extended = reader.exactly(2)
        if extended is None:
            return None
        size = struct.unpack("!H", extended)[0]
    elif size == 127:
        extended = reader.exactly(8)
        if extended is None:
            return None
        size = struct.unpack("!Q", extended)[0]
    mask = reader.exactly(4) if start[1] & 0x80 else None
    payload = reader.exactly(size)
    if payload is None:
        return None
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return opcode, payload


@dataclass(frozen=True)
class Response:
    """One response as a client received it."""

    status: int
    head: bytes
    body: bytes

    def header(self, name: str) -> list[str]:
        return Request(self.head, b"").header(name)


def read_response(reader: Reader, *, head_request: bool = False) -> Response | None:
    """The next response on `reader`'s connection, or None on EOF before a full head.

    The body is delimited by Content-Length, chunked encoding, or the connection's end.
    """
    head = reader.head()
    if head is None:
        return None
    status = int(head.split(b" ", 2)[1])
    response = Response(status, head, b"")
    if head_request or status < 200 or status in (204, 304):
        return response
    body: bytes | None
    if any(v.lower() == "chunked" for v in response.header("transfer-encoding")):
        body = reader.chunked()
    elif lengths := response.header("content-length"):
        body = reader.exactly(int(lengths[0]))
    else:
        body = reader.rest()
    if body is None:
        raise ConnectionError(f"connection ended inside the body of {head!r}")
    return Response(status, head, body)


# -- configuration snippets


def listener(port: int, protocol: str = "http", **keys: object) -> str:
    """`[[listeners]]` on 127.0.0.1:`port` with extra keys (`back_timeout=2`, ...)."""
    lines = ["[[listeners]]", f'protocol = "{protocol}"', f'address = "127.0.0.1:{port}"']
    lines += [f"{key} = {_toml(value)}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def cluster(
    name: str,
    frontends: Iterable[dict[str, object]],
    backends: Iterable[dict[str, object]] = (),
    **keys: object,
) -> str:
    """`[clusters.<name>]`, protocol http, with its frontends, backends and extra keys."""
    lines = [f"[clusters.{name}]", 'protocol = "http"']
    lines += [f"{key} = {_toml(value)}" for key, value in keys.items()]
    lines.append(f"frontends = [{', '.join(_inline(f) for f in frontends)}]")
    lines.append(f"backends = [{', '.join(_inline(b) for b in backends)}]")
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    """A TOML value: booleans, integers, strings, lists and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, dict):
        return _inline(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value))


def _inline(table: dict[str, object]) -> str:
    items = ", ".join(f"{_key(str(key))} = {_toml(value)}" for key, value in table.items())
    return "{ " + items + " }"


def _key(key: str) -> str:
    """A bare TOML key where it may be one, else a quoted one."""
    return key if key and all(c.isalnum() or c in "_-" for c in key) else json.dumps(key)
