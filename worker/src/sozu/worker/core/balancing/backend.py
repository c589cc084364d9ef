"""Backend descriptors and the address type shared by every balancer and the UDP core.

An `Address` is a `(host, port)` tuple exactly as the socket module returns it for IPv4; the
host is an IP literal (IPv4 dotted quad or IPv6 text, no brackets, no scope handling). Shells
normalise IPv6 4-tuples `(host, port, flowinfo, scope_id)` to `(host, port)` before handing them
to pure code. Hostnames are not accepted: resolution belongs to the control plane.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

Address: TypeAlias = tuple[str, int]

DEFAULT_WEIGHT = 100


class Backend(msgspec.Struct, frozen=True, gc=False):
    """One backend of a cluster. `weight` below 1 is treated as 1 (upstream clamps too)."""

    id: str
    address: Address
    weight: int = DEFAULT_WEIGHT
    backup: bool = False

    @property
    def effective_weight(self) -> int:
        return self.weight if self.weight >= 1 else 1
