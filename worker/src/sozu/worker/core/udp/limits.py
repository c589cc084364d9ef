"""Pure sizing rules for a UDP listener: the flow cap and the receive size (docs/udp.md, Limits).

The caller reads the rlimit and configuration; these functions only compute.
"""

from __future__ import annotations

from sozu.worker.core.udp.config import DEFAULT_MAX_CONNECTIONS

FD_SHARE_NUMERATOR = 7
FD_SHARE_DENOMINATOR = 10
UNREADABLE_RLIMIT_FALLBACK = 1024
UNLIMITED_AUTO_FLOWS = 1 << 20


def auto_max_flows(soft_nofile: int | None) -> int:
    """70 % of the soft RLIMIT_NOFILE, at least 1; 1024 when it could not be read (None).

    A negative soft limit is RLIM_INFINITY (-1 in the resource module): UNLIMITED_AUTO_FLOWS.
    """
    if soft_nofile is None:
        return UNREADABLE_RLIMIT_FALLBACK
    if soft_nofile < 0:
        return UNLIMITED_AUTO_FLOWS
    return max(1, soft_nofile * FD_SHARE_NUMERATOR // FD_SHARE_DENOMINATOR)


def effective_max_flows(
    configured: int, soft_nofile: int | None, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> int:
    """The listener's flow cap. Explicit values are verbatim; 0 means auto.

    Auto is clamped to `max_connections` (when non-zero) so UDP cannot starve the session slab.
    """
    if configured < 0:
        raise ValueError(f"max_flows must be >= 0, got {configured}")
    if configured:
        return configured
    auto = auto_max_flows(soft_nofile)
    if max_connections:
        return max(1, min(auto, max_connections))
    return auto


def exceeds_fd_share(configured: int, soft_nofile: int | None) -> bool:
    """Whether an explicit cap is above 70 % of the soft fd limit (config load warns)."""
    if configured <= 0 or soft_nofile is None or soft_nofile < 0:
        return False
    return configured > soft_nofile * FD_SHARE_NUMERATOR // FD_SHARE_DENOMINATOR


def clamp_max_rx(max_rx: int, buffer_size: int) -> int:
    """`max_rx_datagram_size` clamped to `buffer_size`; a buffer size of 0 leaves it as is."""
    if buffer_size <= 0:
        return max_rx
    return min(max_rx, buffer_size)


def recv_buffer_size(max_rx: int) -> int:
    """One byte more than the largest accepted datagram, so an oversized one is seen as such."""
    return max_rx + 1
