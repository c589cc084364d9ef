"""`ConfigState.check_invariants`: every structural rule of the state (keys match objects,
lists sorted and without duplicates, one listener per address in the TCP space, certificates
with names), and its digest recomputed from scratch against the incremental one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sozu.command.listener_configs import listener_problems
from sozu.command.state_hash import StateDigest
from sozu.command.state_keys import (
    backend_key,
    backend_order,
    encode,
    stream_front_key,
    stream_front_order,
)
from sozu.command.types import listener_type

if TYPE_CHECKING:
    from sozu.command.state import ConfigState


def check_invariants(state: ConfigState, digest: StateDigest) -> None:
    """Check every structural invariant of `state`, whose incremental digest is `digest`;
    raise AssertionError naming the first broken one."""
    expected = StateDigest()
    for cluster_id, cluster in state.clusters.items():
        _require(cluster.cluster_id == cluster_id, f"cluster key {cluster_id!r} mismatch")
        if cluster.health_check is not None:
            _require(not cluster.health_check.problems(), f"bad health check {cluster_id!r}")
        expected.put(("cluster", cluster_id), cluster)
    for cluster_id, backends in state.backends.items():
        _require(bool(backends), f"empty backend list for {cluster_id!r}")
        _require(backends == sorted(backends, key=backend_order), "backends not sorted")
        identities = {b.backend_id for b in backends}
        _require(len(identities) == len(backends), f"duplicate backend id in {cluster_id!r}")
        for backend in backends:
            _require(backend.cluster_id == cluster_id, "backend filed under another cluster")
            expected.put(backend_key(backend), backend)
    stream_addresses: set[str] = set()
    for proxy, listeners in state.listener_maps().items():
        for address, listener in listeners.items():
            _require(listener.address == address, f"listener key {address} mismatch")
            _require(listener_type(listener) == proxy, f"{address} in the {proxy} map")
            _require(not listener_problems(listener), f"invalid listener {address}")
            if proxy != "UDP":
                _require(address not in stream_addresses, f"two listeners on {address}")
                stream_addresses.add(address)
            expected.put(("listener", proxy, address), listener)
    for family, fronts in (("http", state.http_fronts), ("https", state.https_fronts)):
        for key, front in fronts.items():
            _require(front.route_key() == key, f"{family} frontend key {key!r} mismatch")
            expected.put((f"{family}_front", key), front)
    for family, stream_fronts in (("tcp", state.tcp_fronts), ("udp", state.udp_fronts)):
        for cluster_id, front_list in stream_fronts.items():
            _require(bool(front_list), f"empty {family} frontend list for {cluster_id!r}")
            _require(len(set(map(encode, front_list))) == len(front_list), "duplicate front")
            _require(front_list == sorted(front_list, key=stream_front_order), "unsorted")
            for stream_front in front_list:
                _require(stream_front.cluster_id == cluster_id, f"{family} front elsewhere")
                expected.put(stream_front_key(family, stream_front), stream_front)
    for address, by_fingerprint in state.certificates.items():
        _require(bool(by_fingerprint), f"empty certificate map for {address}")
        for fingerprint, stored in by_fingerprint.items():
            _require(bool(stored.certificate.names), f"certificate {fingerprint} has no name")
            expected.put(("certificate", address, fingerprint), stored)
    _require(expected.hexdigest() == state.hash(), "incremental digest drifted")
    _require(expected.keys() == digest.keys(), "digest tracks other objects")


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"state invariant broken: {what}")
