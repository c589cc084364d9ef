"""Non-blocking TCP connections to backends: `start_connect` begins one for the readiness
loop's connections (which then wait for writability), `connect_backend` completes one with a
timeout (trio), for the health probers."""

from __future__ import annotations

import errno
import socket

import trio


def start_connect(address: tuple[str, int]) -> tuple[socket.socket, bool] | None:
    """A non-blocking socket dialling `address` and whether the dial is still in progress
    (then wait for writability and read SO_ERROR), or None when it failed at once."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(address)
    except OSError as error:
        code = error.errno or errno.EIO
    if code not in (0, errno.EINPROGRESS):
        sock.close()
        return None
    return sock, code == errno.EINPROGRESS


async def connect_backend(address: tuple[str, int], connect_timeout: float) -> socket.socket:
    """A connected non-blocking TCP socket, or OSError (timeouts: ETIMEDOUT)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            raise OSError(code, f"connect to {address[0]}:{address[1]}: {errno.errorcode[code]}")
        if code == errno.EINPROGRESS:
            with trio.move_on_after(connect_timeout) as scope:
                await trio.lowlevel.wait_writable(sock)
            if scope.cancelled_caught:
                raise OSError(errno.ETIMEDOUT, f"connect to {address[0]}:{address[1]} timed out")
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(
                    code, f"connect to {address[0]}:{address[1]}: {errno.errorcode[code]}"
                )
    except BaseException:
        sock.close()
        raise
    return sock
