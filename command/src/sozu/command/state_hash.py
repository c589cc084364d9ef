"""Incremental state digest: one SHA-256 per object, combined by addition modulo 2**256.

Each object's digest covers its key and its canonical encoding (msgpack, sorted keys,
defaults omitted). Adding, replacing or removing an object costs one SHA-256, whatever the
size of the state, and the result does not depend on insertion order. Per-cluster sums (the
cluster, its backends and its frontends) are kept the same way for QueryClustersHashes.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Final

import msgspec

ObjectKey = tuple[str, ...]
_MODULUS: Final = 1 << 256
_encoder: Final = msgspec.msgpack.Encoder(order="sorted")
_CLUSTER_KINDS: Final = frozenset(
    {"cluster", "backend", "http_front", "https_front", "tcp_front", "udp_front"}
)


@functools.cache
def field_defaults(cls: type[msgspec.Struct]) -> tuple[tuple[str, Any], ...]:
    """(name, default) of every field of a struct class (`msgspec.NODEFAULT` where there is
    none, or a factory); cached: `msgspec.structs.fields` evaluates annotations each call."""
    return tuple((field.name, field.default) for field in msgspec.structs.fields(cls))


def canonical(value: msgspec.Struct) -> msgspec.Struct:
    """`value` with every field equal to its default holding the default object itself.

    msgspec leaves a default off the wire only when the field holds that very object, so
    without this two equal objects (one built from defaults, one given an equal tuple or
    string) would encode, and hash, differently.
    """
    changes: dict[str, Any] = {}
    for name, default in field_defaults(type(value)):
        current = getattr(value, name)
        if current is default:
            continue
        if default is not msgspec.NODEFAULT and current == default:
            changes[name] = default
        elif isinstance(current, msgspec.Struct):
            inner = canonical(current)
            if inner is not current:
                changes[name] = inner
        elif type(current) is tuple and current and isinstance(current[0], msgspec.Struct):
            items = tuple(canonical(item) for item in current)
            if any(a is not b for a, b in zip(items, current, strict=True)):
                changes[name] = items
    return msgspec.structs.replace(value, **changes) if changes else value


def object_digest(key: ObjectKey, value: msgspec.Struct) -> int:
    """The digest of one keyed object, as an integer."""
    hasher = hashlib.sha256(_encoder.encode(key))
    hasher.update(_encoder.encode(canonical(value)))
    return int.from_bytes(hasher.digest(), "big")


def _fold(total: int) -> str:
    return hashlib.sha256(total.to_bytes(32, "big")).hexdigest()[:16]


class StateDigest:
    """A multiset hash over keyed objects."""

    __slots__ = ("_cluster_sums", "_objects", "_total")

    def __init__(self) -> None:
        self._objects: dict[ObjectKey, tuple[int, str | None]] = {}
        self._cluster_sums: dict[str, tuple[int, int]] = {}  # cluster -> (sum, object count)
        self._total = 0

    def put(self, key: ObjectKey, value: msgspec.Struct) -> None:
        """Add or replace the object under `key`."""
        self.drop(key)
        digest = object_digest(key, value)
        cluster = self._cluster_of(key, value)
        self._objects[key] = (digest, cluster)
        self._total = (self._total + digest) % _MODULUS
        if cluster is not None:
            total, count = self._cluster_sums.get(cluster, (0, 0))
            self._cluster_sums[cluster] = ((total + digest) % _MODULUS, count + 1)

    def drop(self, key: ObjectKey) -> None:
        """Remove the object under `key`, if any."""
        entry = self._objects.pop(key, None)
        if entry is None:
            return
        digest, cluster = entry
        self._total = (self._total - digest) % _MODULUS
        if cluster is not None:
            total, count = self._cluster_sums[cluster]
            if count == 1:
                del self._cluster_sums[cluster]
            else:
                self._cluster_sums[cluster] = ((total - digest) % _MODULUS, count - 1)

    @staticmethod
    def _cluster_of(key: ObjectKey, value: msgspec.Struct) -> str | None:
        if key[0] not in _CLUSTER_KINDS:
            return None
        cluster_id = getattr(value, "cluster_id", None)
        return cluster_id if isinstance(cluster_id, str) else None

    def hexdigest(self) -> str:
        return _fold(self._total)

    def cluster_hexdigests(self) -> dict[str, str]:
        return {cluster: _fold(total) for cluster, (total, _) in sorted(self._cluster_sums.items())}

    def keys(self) -> set[ObjectKey]:
        return set(self._objects)

    def copy(self) -> StateDigest:
        twin = StateDigest()
        twin._objects = dict(self._objects)
        twin._cluster_sums = dict(self._cluster_sums)
        twin._total = self._total
        return twin
