"""A slow HTTP/1.1 keep-alive backend: it waits before answering and drips its body.

`GET /slow/<wait_ms>/<drip_ms>`: after `wait_ms` milliseconds the backend sends a `200` head
(`Transfer-Encoding: chunked`) with the first chunk of the body, waits `drip_ms` more, then
sends the other chunks and the last-chunk. The body is `slow_body(wait_ms, drip_ms)`, so a
client checks it byte for byte. A response is thus under way for `drip_ms`, long enough for
a proxy to start draining in the middle of it. Any other path: `404`. Keep-alive unless the
request says `Connection: close`.
"""

from __future__ import annotations

import re
import socket
import time

from e2e.support.http_backends import Backend, Reader

PIECES = 4
PIECE_SIZE = 16 * 1024
_PATH = re.compile(rb"^GET /slow/(\d{1,5})/(\d{1,5}) HTTP/1\.[01]$")


def slow_path(wait_ms: int, drip_ms: int) -> str:
    return f"/slow/{wait_ms}/{drip_ms}"


def slow_body(wait_ms: int, drip_ms: int) -> bytes:
    """The body answering `slow_path(wait_ms, drip_ms)`."""
    line = f"slow {wait_ms} {drip_ms}\n".encode()
    return (line * (PIECES * PIECE_SIZE // len(line) + 1))[: PIECES * PIECE_SIZE]


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class SlowChunked(Backend):
    """Serves `slow_path` requests on keep-alive connections (one thread per connection)."""

    def handle(self, conn: socket.socket, reader: Reader, index: int) -> None:
        while (head := reader.head()) is not None:
            request = self.record(head)
            closing = any(v.lower() == "close" for v in request.header("connection"))
            close_header = b"Connection: close\r\n" if closing else b""
            match = _PATH.match(request.request_line.encode("latin-1"))
            if match is None:
                conn.sendall(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n" + close_header + b"\r\n"
                )
            else:
                self._drip(conn, int(match[1]), int(match[2]), close_header)
            if closing:
                return

    @staticmethod
    def _drip(conn: socket.socket, wait_ms: int, drip_ms: int, close_header: bytes) -> None:
        body = slow_body(wait_ms, drip_ms)
        time.sleep(wait_ms / 1000)
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
            + close_header
            + b"\r\n"
            + _chunk(body[:PIECE_SIZE])
        )
        time.sleep(drip_ms / 1000)
        starts = range(PIECE_SIZE, len(body), PIECE_SIZE)
        rest = b"".join(_chunk(body[start : start + PIECE_SIZE]) for start in starts)
        conn.sendall(rest + b"0\r\n\r\n")
