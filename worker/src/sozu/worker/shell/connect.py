"""A non-blocking TCP connection to a backend with a timeout (trio), for the health probers."""

from __future__ import annotations

import errno
import socket

import trio


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
