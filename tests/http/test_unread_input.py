"""The shell's check before closing a client connection at once: bytes the kernel holds
unread make it linger instead (closing then would reset the connection under the response)."""

from __future__ import annotations

import socket

from sozu.worker.shell.http_connection import _unread_input


def test_unread_bytes_are_seen_and_nothing_else() -> None:
    left, right = socket.socketpair()
    fd = right.fileno()
    with left, right:
        assert not _unread_input(fd)
        left.sendall(b"\r\n")
        assert _unread_input(fd)
        assert right.recv(16) == b"\r\n"
        assert not _unread_input(fd)
    assert not _unread_input(-1), "no fd: nothing to wait for"
