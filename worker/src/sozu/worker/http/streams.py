"""Byte streams over raw non-blocking sockets for the HTTP shell: plain TCP and TLS (trio).

Every operation tries the system call first and waits for readiness only when it would block,
so a read that finds data costs no scheduler pass. TLS drives an `ssl.SSLSocket` directly
(not trio's pure-Python SSLStream): the ssl module encrypts and decrypts in C.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl

import trio

from sozu.worker.tcp.relay import RelayStats, relay

READ_SIZE = 65536
DEFAULT_SEND_TIMEOUT = 60.0


async def _writable(sock: socket.socket, patience: float) -> None:
    """Wait until `sock` accepts bytes; TimeoutError (an OSError) past `patience` seconds."""
    with trio.move_on_after(patience) as scope:
        await trio.lowlevel.wait_writable(sock)
    if scope.cancelled_caught:
        raise TimeoutError(errno.ETIMEDOUT, f"no progress sending for {patience:g} s")


class PlainStream:
    """A TCP connection; a send that cannot progress for `send_timeout` seconds fails."""

    __slots__ = ("send_timeout", "sock")

    tls = False

    def __init__(self, sock: socket.socket, send_timeout: float = DEFAULT_SEND_TIMEOUT) -> None:
        self.sock = sock
        self.send_timeout = send_timeout

    async def receive(self) -> bytes:
        """Some bytes, b"" at end of stream; OSError on a reset."""
        sock = self.sock
        while True:
            try:
                return sock.recv(READ_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.sock
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await _writable(sock, self.send_timeout)
                continue
            view = view[sent:]

    def shutdown_write(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


class TlsStream:
    """A TLS connection on a non-blocking `ssl.SSLSocket` (server side)."""

    __slots__ = ("send_timeout", "sock")

    tls = True

    def __init__(self, sock: ssl.SSLSocket, send_timeout: float = DEFAULT_SEND_TIMEOUT) -> None:
        self.sock = sock
        self.send_timeout = send_timeout

    async def handshake(self) -> None:
        sock = self.sock
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(sock)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(sock)

    async def receive(self) -> bytes:
        sock = self.sock
        while True:
            try:
                return sock.recv(READ_SIZE)
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(sock)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(sock)
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLEOFError:
                return b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.sock
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except ssl.SSLWantWriteError:
                await _writable(sock, self.send_timeout)
                continue
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(sock)
                continue
            view = view[sent:]

    def shutdown_write(self) -> None:
        # close_notify; the TCP write side is shut too so that the peer sees the end.
        with contextlib.suppress(ssl.SSLError, OSError, ValueError):
            self.sock.unwrap()

    def close(self) -> None:
        self.sock.close()


Stream = PlainStream | TlsStream


async def tunnel(
    front: Stream, back: socket.socket, *, front_timeout: float, back_timeout: float
) -> RelayStats:
    """Pipe both ways until both sides are done (WebSocket after a 101)."""
    if isinstance(front, PlainStream):
        return await relay(front.sock, back, front_timeout=front_timeout, back_timeout=back_timeout)
    stats = RelayStats()
    backend = PlainStream(back, back_timeout)

    async def copy(
        source: Stream, sink: Stream, to_backend: bool, idle: float, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                with trio.move_on_after(idle) as waited:
                    data = await source.receive()
                if waited.cancelled_caught or not data:
                    sink.shutdown_write()
                    return
                await sink.send_all(data)
                if to_backend:
                    stats.to_backend += len(data)
                else:
                    stats.to_client += len(data)
        except OSError as error:
            # A reset or TLS error on either side ends the whole tunnel.
            stats.error = str(error)
            scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy, front, backend, True, front_timeout, nursery.cancel_scope)
        nursery.start_soon(copy, backend, front, False, back_timeout, nursery.cancel_scope)
    return stats
