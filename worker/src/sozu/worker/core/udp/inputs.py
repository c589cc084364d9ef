"""Records the shell feeds into the flow core, for `FlowManager.handle_input`.

The hot path uses the equivalent direct methods (`handle_client_datagram`, ...) and builds no
record; these exist for uniform dispatch, traces and the simulator.
"""

from __future__ import annotations

from typing import TypeAlias

import msgspec

from sozu.worker.core.balancing.backend import Address
from sozu.worker.core.udp.config import ClusterConfig
from sozu.worker.core.udp.outputs import CloseReason


class Input(msgspec.Struct, frozen=True, gc=False, tag=True):
    pass


class ClientDatagram(Input, frozen=True):
    src: Address
    payload: bytes


class BackendDatagram(Input, frozen=True):
    flow: int
    payload: bytes


class BackendResolved(Input, frozen=True):
    flow: int
    backend: str
    addr: Address


class SetCluster(Input, frozen=True):
    config: ClusterConfig


class SetMaxFlows(Input, frozen=True):
    max_flows: int


class SetMaxRxDatagramSize(Input, frozen=True):
    size: int


class Drain(Input, frozen=True):
    pass


class Timeout(Input, frozen=True):
    """The armed timer fired (`handle_timeout`)."""


class AbortFlow(Input, frozen=True):
    flow: int
    reason: CloseReason = CloseReason.ABORTED


class CloseAll(Input, frozen=True):
    pass


InputT: TypeAlias = (
    ClientDatagram
    | BackendDatagram
    | BackendResolved
    | SetCluster
    | SetMaxFlows
    | SetMaxRxDatagramSize
    | Drain
    | Timeout
    | AbortFlow
    | CloseAll
)
