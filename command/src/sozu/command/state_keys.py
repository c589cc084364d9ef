"""How the state files its objects: the order of its backend and TCP/UDP frontend lists, and
each object's key in the state digest (state_hash.py)."""

from __future__ import annotations

from typing import Final

import msgspec

from sozu.command.state_hash import ObjectKey
from sozu.command.types import Backend, RequestTcpFrontend, RequestUdpFrontend

StreamFrontend = RequestTcpFrontend | RequestUdpFrontend


def backend_order(backend: Backend) -> tuple[str, str]:
    return backend.backend_id, backend.address


def backend_key(backend: Backend) -> ObjectKey:
    return ("backend", backend.cluster_id, backend.backend_id, backend.address)


_encoder: Final = msgspec.msgpack.Encoder(order="sorted")


def encode(value: msgspec.Struct) -> bytes:
    return _encoder.encode(value)


def stream_front_order(frontend: StreamFrontend) -> tuple[str, bytes]:
    return frontend.address, encode(frontend)


def stream_front_key(family: str, frontend: StreamFrontend) -> ObjectKey:
    return (f"{family}_front", frontend.cluster_id, frontend.address, encode(frontend).hex())
