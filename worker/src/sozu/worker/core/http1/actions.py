"""What an HTTP/1.1 session core asks of the shell running it: action bits, and the backend a
CONNECT is for.

After every input call the shell reads `Http1Session.actions`, resets it to 0 and carries the
bits out in this order: RELEASE_BACK, CLOSE_BACK (both about the backend connection the
previous CONNECT gave), CONNECT, TUNNEL, SHUTDOWN_BACK, SHUTDOWN_FRONT, then CLOSE_FRONT or
LINGER_FRONT. One call may set several (a response completes, the backend connection goes back
to the pool and the pipelined request behind it asks for a new one).
"""

from __future__ import annotations

from typing import Final

from sozu.worker.core.balancing.backend import Address

# Get a backend connection to `target`: an idle pooled one to its address when
# `target.allow_pooled` (checked for staleness by the shell, always when `target.verify`),
# else dial; then call `back_connected` or `back_connect_failed`. The core arms the connect
# timeout; on expiry it sets CLOSE_BACK (abandon the dial) and decides what comes next.
CONNECT: Final = 1
# The exchange is complete: pool the backend connection (to_back is empty by then).
RELEASE_BACK: Final = 2
# Close the backend connection (the core has already emptied to_back).
CLOSE_BACK: Final = 4
# Flush to_front, then close the client connection. The core stays alive until to_front is
# empty (the shell reports sends with `sent`) or its send timer expires; it sets `done` then.
CLOSE_FRONT: Final = 8
# As CLOSE_FRONT, but once flushed: shutdown(SHUT_WR), read and discard client input for up to
# 2 s, then close (a reset must not destroy a response that says close).
LINGER_FRONT: Final = 16
# After a 101: every byte read from one side is appended to the other side's buffer. The core
# keeps doing this in front_data/back_data; the shell may splice plain sockets instead once
# both buffers are empty (it then owns the tunnel's idle timing, see LIFECYCLE.md).
TUNNEL: Final = 32
# Tunnel half-closes: once the side's buffer is flushed, shutdown(SHUT_WR) that connection.
SHUTDOWN_BACK: Final = 64
SHUTDOWN_FRONT: Final = 128

ALL_ACTIONS: Final = 255
_NAMES: Final = (
    (CONNECT, "CONNECT"),
    (RELEASE_BACK, "RELEASE_BACK"),
    (CLOSE_BACK, "CLOSE_BACK"),
    (CLOSE_FRONT, "CLOSE_FRONT"),
    (LINGER_FRONT, "LINGER_FRONT"),
    (TUNNEL, "TUNNEL"),
    (SHUTDOWN_BACK, "SHUTDOWN_BACK"),
    (SHUTDOWN_FRONT, "SHUTDOWN_FRONT"),
)


def describe(actions: int) -> str:
    """`CONNECT|CLOSE_BACK`-style text of a bitmask (for logs and test messages)."""
    assert 0 <= actions <= ALL_ACTIONS, actions
    return "|".join(name for bit, name in _NAMES if actions & bit) or "-"


class BackendTarget:
    """The backend a CONNECT is for. One instance per session, updated in place for each
    CONNECT: the shell keeps the address of the connection it opens with that connection."""

    __slots__ = ("address", "allow_pooled", "backend_id", "cluster_id", "h2", "verify")

    def __init__(self) -> None:
        self.cluster_id = ""
        self.backend_id = ""
        self.address: Address = ("", 0)
        # False on the retry after a stale pooled connection: dial a fresh one.
        self.allow_pooled = True
        # The request has a body and cannot be replayed: check a pooled connection even if it
        # was released a moment ago.
        self.verify = False
        # The cluster speaks HTTP/2 to its backends: the shell gives a stream on an h2c
        # connection (core/h2/upstream.py) instead of a connection of its own; RELEASE_BACK
        # ends the stream, CLOSE_BACK resets it.
        self.h2 = False

    def __repr__(self) -> str:
        return (
            f"BackendTarget({self.cluster_id}/{self.backend_id} {self.address[0]}:"
            f"{self.address[1]} pooled={self.allow_pooled} verify={self.verify} h2={self.h2})"
        )
