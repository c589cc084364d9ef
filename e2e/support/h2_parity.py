"""Helpers of e2e/test_h2_parity.py: HTTP/2 requests through the real daemon get what
HTTP/1.1 requests get.

* `H2Client`: one HTTP/2 connection (TLS with ALPN `h2` and an SNI, or h2c with prior
  knowledge) on the `h2` library, its own header checks off so that a test can send what
  curl will not (cookie crumbs, a content-length its body contradicts). `request` opens a
  stream, `wait` reads until the streams named have ended, were reset, or the connection
  ended; each gives an `H2Response`.
* `GatedBackend`: an HTTP/1.1 backend that holds every request until `release` is set, so
  that streams stay open while a test looks at the metrics.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import h2.config
import h2.connection
import h2.events

from e2e.support.http_backends import Backend, Reader
from e2e.support.keepalive_clients import header_pairs

IO_TIMEOUT = 15.0
GATE_TIMEOUT = 20.0


@dataclass
class H2Response:
    """What one stream got: the response head, the body, and how it ended."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False  # END_STREAM received
    reset: int | None = None  # the RST_STREAM code, if reset
    goaway: int | None = None  # the GOAWAY code, if the connection ended before the stream
    closed: bool = False  # the connection closed (no GOAWAY) before the stream ended

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None or self.goaway is not None or self.closed

    @property
    def status(self) -> int | None:
        for name, value in self.headers:
            if name == b":status":
                return int(value)
        return None

    def header(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [value.decode("latin-1") for found, value in self.headers if found == key]


class H2Client:
    """One HTTP/2 client connection to 127.0.0.1:`port`: TLS with `server_name` as SNI
    (verified against `ca_file`), or h2c with prior knowledge when `server_name` is None."""

    def __init__(
        self, port: int, server_name: str | None = None, ca_file: Path | None = None
    ) -> None:
        self.port = port
        self.server_name = server_name
        self.ca_file = ca_file
        self.sock: socket.socket | None = None
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config)
        self.responses: dict[int, H2Response] = {}
        self.goaway: int | None = None

    def __enter__(self) -> H2Client:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT)
        if self.server_name is None:
            self.sock = raw
        else:
            context = ssl.create_default_context(cafile=str(self.ca_file))
            context.set_alpn_protocols(["h2"])
            try:
                tls = context.wrap_socket(raw, server_hostname=self.server_name)
            except BaseException:
                raw.close()
                raise
            assert tls.selected_alpn_protocol() == "h2", tls.selected_alpn_protocol()
            self.sock = tls
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(2**24)
        self._send()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.sock is not None:
            self.sock.close()

    def _send(self) -> None:
        data = self.conn.data_to_send()
        if data:
            assert self.sock is not None
            self.sock.sendall(data)

    def request(
        self,
        method: str,
        authority: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | None = None,
        *,
        end_stream: bool | None = None,
    ) -> int:
        """Open a stream: HEADERS (ending the stream when there is no body, unless
        `end_stream` says otherwise), then the body in DATA frames ending it."""
        stream_id: int = self.conn.get_next_available_stream_id()
        scheme = "http" if self.server_name is None else "https"
        block = [(":method", method), (":scheme", scheme), (":authority", authority)]
        block += [(":path", path), *headers]
        encoded = [(name.encode(), value.encode()) for name, value in block]
        ends = body is None if end_stream is None else end_stream
        self.conn.send_headers(stream_id, encoded, end_stream=ends)
        if body is not None:
            size = self.conn.max_outbound_frame_size
            for start in range(0, max(len(body), 1), size):
                last = start + size >= len(body)
                self.conn.send_data(stream_id, body[start : start + size], end_stream=last)
        self.responses[stream_id] = H2Response()
        self._send()
        return stream_id

    def get(self, authority: str, path: str, headers: Sequence[tuple[str, str]] = ()) -> H2Response:
        """One GET, waited for."""
        stream_id = self.request("GET", authority, path, headers)
        return self.wait([stream_id])[stream_id]

    def wait(self, stream_ids: Iterable[int], timeout: float = IO_TIMEOUT) -> dict[int, H2Response]:
        """Read until every stream of `stream_ids` is done (ended, reset, or cut by the
        connection's end); their responses."""
        wanted = list(stream_ids)
        assert self.sock is not None
        deadline = time.monotonic() + timeout
        while not all(self.responses[s].done for s in wanted):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"streams {wanted} not done within {timeout} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                data = b""
            if not data:
                for response in self.responses.values():
                    if not response.done:
                        response.closed = True
                break
            for event in self.conn.receive_data(data):
                self._event(event)
            if self.goaway is None:
                self._send()
        return {stream_id: self.responses[stream_id] for stream_id in wanted}

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = int(event.error_code or 0)
            for pending in self.responses.values():
                if not pending.done:
                    pending.goaway = self.goaway
            return
        stream_id: int = getattr(event, "stream_id", None) or 0
        response = self.responses.get(stream_id)
        if response is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            response.headers.extend(event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            response.body += event.data or b""
            self.conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            response.ended = True
        elif isinstance(event, h2.events.StreamReset):
            response.reset = int(event.error_code or 0)


class GatedBackend(Backend):
    """Answers each request `200` with the body `gated <path>\\n`, only once `release` is set
    (or after GATE_TIMEOUT s); keep-alive. `heads` counts the requests received (a body, by
    content-length or chunked, read whole first)."""

    def __init__(self, name: str) -> None:
        self.release = threading.Event()
        super().__init__(name)

    @property
    def heads(self) -> int:
        return len(self.requests)

    def handle(self, conn: socket.socket, reader: Reader, index: int) -> None:
        while (head := reader.head()) is not None:
            headers = header_pairs(head)
            lengths = [v for k, v in headers if k == "content-length"]
            body: bytes | None = b""
            if ("transfer-encoding", "chunked") in headers:
                body = reader.chunked()
            elif lengths:
                body = reader.exactly(int(lengths[0]))
            if body is None:
                return
            request = self.record(head, body)
            self.release.wait(GATE_TIMEOUT)
            path = request.request_line.split(" ")[1]
            answer = f"gated {path}\n".encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                + f"X-Backend: {self.name}\r\nContent-Length: {len(answer)}\r\n\r\n".encode()
                + answer
            )
