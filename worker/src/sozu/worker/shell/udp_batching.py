"""Which system calls a UDP listener uses (docs/udp.md, "System calls"): recvmmsg and sendmmsg
through the compiled `sozu_mmsg` module when it is installed and not turned off, one
recvfrom/sendto per datagram otherwise.

`SOZU_UDP_MMSG=0` in a worker's environment turns batching off (to compare both, or where a
kernel or seccomp policy refuses the calls).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

try:
    import sozu_mmsg
except ImportError:  # not built on this machine: per-datagram calls
    sozu_mmsg = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from sozu_mmsg import SendBatch as SendBatch

# recv_batch(fd, buffer, slot, count) -> [(size, (host, port))]
Receiver = Callable[[int, bytearray, int, int], list[tuple[int, tuple[str, int]]]]

# Datagrams one recvmmsg reads at most, and the bytes its slots may take in all (a listener
# accepting 64 KiB datagrams reads 4 at a time, one accepting 1,500 bytes reads 64).
RECV_SLOTS: Final = 64
RECV_BYTES: Final = 256 * 1024
# Replies one sendmmsg carries at most, and its copy buffer.
SEND_SLOTS: Final = 64
SEND_BYTES: Final = 128 * 1024


assert sozu_mmsg is None or sozu_mmsg.MAX_BATCH >= RECV_SLOTS  # a short read means drained


def available() -> bool:
    """True when the listeners of this process batch their system calls."""
    return sozu_mmsg is not None and os.environ.get("SOZU_UDP_MMSG", "1") != "0"


def new_send_batch() -> SendBatch:
    assert sozu_mmsg is not None
    return sozu_mmsg.SendBatch(SEND_SLOTS, SEND_BYTES)


def receiver() -> Receiver:
    assert sozu_mmsg is not None
    return sozu_mmsg.recv_batch


def recv_slots(slot: int) -> int:
    """How many datagrams of up to `slot` bytes one recvmmsg reads."""
    assert slot > 0, slot
    return max(1, min(RECV_SLOTS, RECV_BYTES // slot))
