"""A cleartext HTTP/2 (h2c, prior knowledge) backend on the `h2` library, for the clusters
with `http2 = true` in the e2e tests. One thread per connection; every stream is answered
once its request ended:

- `GET /size/N`: N bytes of a fixed pattern (`pattern(N)`), flow control honoured.
- `GET /trailers`: a chunk of body, then trailers (`x-trailer: done`, `grpc-status: 0`).
- anything else: the request echoed; headers `x-method`, `x-path`, `x-authority`,
  `x-scheme`, `x-te`, `x-body-sha256`, the body back as it came.

`goaway()` sends a GOAWAY (NO_ERROR, last stream id) on every open connection, which then
finishes its streams and closes; `connections` counts the connections accepted.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

PATTERN = bytes(range(256)) * 4096


def pattern(size: int) -> bytes:
    whole, rest = divmod(size, len(PATTERN))
    return PATTERN * whole + PATTERN[:rest]


class H2cBackend:
    """A listening h2c server on 127.0.0.1 (see the module docstring)."""

    def __init__(self, *, max_concurrent_streams: int = 128) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.max_concurrent_streams = max_concurrent_streams
        self.connections = 0
        self.streams = 0
        self._open: list[_Connection] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            connection = _Connection(self, sock)
            with self._lock:
                self.connections += 1
                self._open.append(connection)
            threading.Thread(target=connection.run, daemon=True).start()

    def goaway(self) -> None:
        with self._lock:
            for connection in self._open:
                connection.goaway_asked = True
                connection.wake()

    def forget(self, connection: _Connection) -> None:
        with self._lock:
            if connection in self._open:
                self._open.remove(connection)

    def close(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)


class _Stream:
    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = dict(headers)
        self.body = bytearray()
        self.out = b""
        self.trailers: list[tuple[bytes, bytes]] | None = None


class _Connection:
    def __init__(self, server: H2cBackend, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.goaway_asked = False
        self.goaway_sent = False
        self.streams: dict[int, _Stream] = {}
        self.sending: dict[int, _Stream] = {}
        self._waker_r, self._waker_w = socket.socketpair()
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._waker_w.send(b"x")

    def run(self) -> None:
        import selectors

        conn = self.conn
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_concurrent_streams
            },
        )
        conn.initiate_connection()
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ)
        selector.register(self._waker_r, selectors.EVENT_READ)
        try:
            self.sock.sendall(conn.data_to_send())
            while True:
                for key, _ in selector.select(timeout=30):
                    if key.fileobj is self._waker_r:
                        self._waker_r.recv(64)
                        continue
                    data = self.sock.recv(65536)
                    if not data:
                        return
                    for event in conn.receive_data(data):
                        self._event(event)
                if self.goaway_asked and not self.goaway_sent:
                    self.goaway_sent = True
                    last = conn.highest_inbound_stream_id
                    conn.close_connection(ErrorCodes.NO_ERROR, last_stream_id=last)
                    # The library closes its state machine on GOAWAY; streams in flight
                    # still finish on the wire below.
                    conn.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
                self._pump()
                self.sock.sendall(conn.data_to_send())
                if self.goaway_sent and not self.streams and not self.sending:
                    return
        except (OSError, h2.exceptions.ProtocolError):
            return
        finally:
            self.server.forget(self)
            selector.close()
            for sock in (self.sock, self._waker_r, self._waker_w):
                with contextlib.suppress(OSError):
                    sock.close()

    def _event(self, event: h2.events.Event) -> None:
        conn = self.conn
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None
            self.streams[event.stream_id] = _Stream(list(event.headers or []))
            self.server.streams += 1
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.body += event.data or b""
            conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                self._answer(event.stream_id, stream)
        elif isinstance(event, h2.events.StreamReset):
            self.streams.pop(event.stream_id or 0, None)
            self.sending.pop(event.stream_id or 0, None)

    def _answer(self, stream_id: int, stream: _Stream) -> None:
        headers = stream.headers
        path = headers.get(b":path", b"/").decode()
        method = headers.get(b":method", b"GET")
        if path.startswith("/size/"):
            stream.out = pattern(int(path[len("/size/") :]))
            response = [(b":status", b"200"), (b"content-length", str(len(stream.out)).encode())]
        elif path == "/trailers":
            stream.out = b"body before trailers\n"
            stream.trailers = [(b"x-trailer", b"done"), (b"grpc-status", b"0")]
            response = [(b":status", b"200"), (b"content-type", b"text/plain")]
        else:
            stream.out = bytes(stream.body)
            response = [
                (b":status", b"200"),
                (b"x-method", method),
                (b"x-path", path.encode()),
                (b"x-authority", headers.get(b":authority", b"")),
                (b"x-scheme", headers.get(b":scheme", b"")),
                (b"x-te", headers.get(b"te", b"")),
                (b"x-forwarded-for", headers.get(b"x-forwarded-for", b"")),
                (b"x-body-sha256", hashlib.sha256(stream.body).hexdigest().encode()),
            ]
        self.conn.send_headers(stream_id, response, end_stream=False)
        self.sending[stream_id] = stream

    def _pump(self) -> None:
        conn = self.conn
        for stream_id, stream in list(self.sending.items()):
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                while stream.out:
                    size = min(
                        conn.local_flow_control_window(stream_id),
                        conn.max_outbound_frame_size,
                        len(stream.out),
                    )
                    if size <= 0:
                        break
                    conn.send_data(stream_id, stream.out[:size])
                    stream.out = stream.out[size:]
                if stream.out:
                    continue
                if stream.trailers is not None:
                    conn.send_headers(stream_id, stream.trailers, end_stream=True)
                else:
                    conn.end_stream(stream_id)
            del self.sending[stream_id]


@contextlib.contextmanager
def h2c_backend(**kwargs: int) -> Iterator[H2cBackend]:
    backend = H2cBackend(**kwargs)
    try:
        yield backend
    finally:
        backend.close()
