"""ConfigState: the routing state, changed only by `apply(request)`.

Clusters, backends, listeners of the four protocols, frontends, certificates and health checks.
`apply` is atomic: every handler validates the whole request before its first write, so a
refused request (a `StateError` naming the object) leaves state and hash untouched. Every
write goes through `_put`/`_drop`, which keep the incremental state digest (see state_hash.py).

There are no referential checks, as upstream: a frontend may name a cluster that does not
exist yet, and removing a cluster leaves its frontends and backends in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, Literal, TypeVar

import msgspec

from sozu.command import requests as rq
from sozu.command import state_invariants
from sozu.command.certificates import is_fingerprint
from sozu.command.envelope import MAX_ID_LENGTH
from sozu.command.listener_configs import listener_problems, patched_listener
from sozu.command.request_checks import backend_problems, cluster_problems, http_frontend_problems
from sozu.command.requests import Request, request_kind
from sozu.command.state_errors import (
    AlreadyExists,
    InvalidValue,
    NoChange,
    NotFound,
    StateError,
    Undispatchable,
)
from sozu.command.state_hash import ObjectKey, StateDigest
from sozu.command.state_keys import backend_key, backend_order, stream_front_key, stream_front_order
from sozu.command.stored_certificates import StoredCertificate, checked_certificate
from sozu.command.types import (
    Backend,
    CertificateAndKey,
    Cluster,
    HttpListenerConfig,
    HttpsListenerConfig,
    ListenerConfig,
    ListenerType,
    RequestHttpFrontend,
    RequestTcpFrontend,
    RequestUdpFrontend,
    TcpListenerConfig,
    UdpListenerConfig,
    listener_type,
)

__all__ = ["FULL_INVARIANT_CHECKS", "ConfigState", "Outcome", "forwarded_size"]

Outcome = Literal["changed", "unchanged"]

# Full `check_invariants()` after every mutation costs O(state): on in tests and debug mode,
# off by default so that a large state stays cheap to mutate. Local asserts always run
# under __debug__.
FULL_INVARIANT_CHECKS = False

F = TypeVar("F", RequestTcpFrontend, RequestUdpFrontend)


def forwarded_size(request: Request) -> int:
    """An upper bound of the size of the frame that carries `request` to a worker: the
    request, the envelope around it with the longest id allowed, the length prefix."""
    return len(msgspec.msgpack.encode(request)) + _ENVELOPE_OVERHEAD


# Frame prefix (4), envelope map and keys (~16), version (9), id (str header 3 + bytes).
_ENVELOPE_OVERHEAD: Final = 4 + 16 + 9 + 3 + MAX_ID_LENGTH * 4


class ConfigState:
    """The routing state of the supervisor and of each worker."""

    def __init__(self) -> None:
        self.clusters: dict[str, Cluster] = {}
        # cluster id -> backends sorted by (backend_id, address); never an empty list
        self.backends: dict[str, list[Backend]] = {}
        self.http_listeners: dict[str, HttpListenerConfig] = {}
        self.https_listeners: dict[str, HttpsListenerConfig] = {}
        self.tcp_listeners: dict[str, TcpListenerConfig] = {}
        self.udp_listeners: dict[str, UdpListenerConfig] = {}
        self.http_fronts: dict[str, RequestHttpFrontend] = {}
        self.https_fronts: dict[str, RequestHttpFrontend] = {}
        # cluster id -> frontends sorted by (address, encoding); never an empty list
        self.tcp_fronts: dict[str, list[RequestTcpFrontend]] = {}
        self.udp_fronts: dict[str, list[RequestUdpFrontend]] = {}
        # listener address -> fingerprint -> certificate; never an empty inner map
        self.certificates: dict[str, dict[str, StoredCertificate]] = {}
        self.request_counts: dict[str, int] = {}
        # The supervisor's state refuses a request whose frame to a worker would be larger
        # (what it accepts, every worker accepts; see `forwarded_size`).
        self.max_request_size: int | None = None
        self._digest = StateDigest()

    # -----------------------------------------------------------------------------------------
    # Reading

    def hash(self) -> str:
        """Stable digest of everything but the request counts (16 hex digits)."""
        return self._digest.hexdigest()

    def listener_maps(self) -> dict[ListenerType, dict[str, ListenerConfig]]:
        return {
            "HTTP": self.http_listeners,  # type: ignore[dict-item]
            "HTTPS": self.https_listeners,  # type: ignore[dict-item]
            "TCP": self.tcp_listeners,  # type: ignore[dict-item]
            "UDP": self.udp_listeners,  # type: ignore[dict-item]
        }

    def active_listener_keys(self) -> list[tuple[ListenerType, str]]:
        """(proxy, address) of every active listener."""
        return [
            (proxy, address)
            for proxy, listeners in self.listener_maps().items()
            for address, listener in listeners.items()
            if listener.active
        ]

    def listener(self, proxy: ListenerType, address: str) -> ListenerConfig | None:
        return self.listener_maps()[proxy].get(address)

    def all_backends(self) -> Iterator[Backend]:
        for backends in self.backends.values():
            yield from backends

    def counts(self) -> dict[str, int]:
        """How many objects of each kind the state holds."""
        return {
            "listeners": sum(len(m) for m in self.listener_maps().values()),
            "clusters": len(self.clusters),
            "frontends": len(self.http_fronts)
            + len(self.https_fronts)
            + sum(len(f) for f in self.tcp_fronts.values())
            + sum(len(f) for f in self.udp_fronts.values()),
            "backends": sum(len(b) for b in self.backends.values()),
            "certificates": sum(len(c) for c in self.certificates.values()),
        }

    def cluster_hashes(self) -> dict[str, str]:
        """Per cluster: a digest of the cluster, its backends and its frontends."""
        return self._digest.cluster_hexdigests()

    def generate_requests(self) -> list[Request]:
        """Requests that rebuild this state from an empty one (see state_replay.py)."""
        from sozu.command.state_replay import generate_requests

        return generate_requests(self)

    def diff(self, other: ConfigState) -> list[Request]:
        """Requests that converge this state onto `other` (see state_replay.py)."""
        from sozu.command.state_replay import diff

        return diff(self, other)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfigState):
            return NotImplemented
        return (
            self.clusters == other.clusters
            and self.backends == other.backends
            and self.http_listeners == other.http_listeners
            and self.https_listeners == other.https_listeners
            and self.tcp_listeners == other.tcp_listeners
            and self.udp_listeners == other.udp_listeners
            and self.http_fronts == other.http_fronts
            and self.https_fronts == other.https_fronts
            and self.tcp_fronts == other.tcp_fronts
            and self.udp_fronts == other.udp_fronts
            and self.certificates == other.certificates
        )

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> ConfigState:
        """An independent copy (objects are immutable and shared)."""
        twin = ConfigState()
        twin.clusters = dict(self.clusters)
        twin.backends = {k: list(v) for k, v in self.backends.items()}
        twin.http_listeners = dict(self.http_listeners)
        twin.https_listeners = dict(self.https_listeners)
        twin.tcp_listeners = dict(self.tcp_listeners)
        twin.udp_listeners = dict(self.udp_listeners)
        twin.http_fronts = dict(self.http_fronts)
        twin.https_fronts = dict(self.https_fronts)
        twin.tcp_fronts = {k: list(v) for k, v in self.tcp_fronts.items()}
        twin.udp_fronts = {k: list(v) for k, v in self.udp_fronts.items()}
        twin.certificates = {k: dict(v) for k, v in self.certificates.items()}
        twin.request_counts = dict(self.request_counts)
        twin._digest = self._digest.copy()
        return twin

    # -----------------------------------------------------------------------------------------
    # Writing

    def apply(self, request: Request) -> Outcome:
        """Apply one request atomically; raise a StateError (state unchanged) if refused."""
        kind = request_kind(request)
        self.request_counts[kind] = self.request_counts.get(kind, 0) + 1
        limit = self.max_request_size
        if limit is not None and request.ROUTING == "state":
            size = forwarded_size(request)
            if size > limit:
                raise InvalidValue(
                    f"{kind} would be a {size}-byte frame to the workers, over the "
                    f"{limit}-byte limit (max_command_buffer_size)"
                )
        if __debug__:
            before = self.hash()
        try:
            outcome = self._dispatch(request)
        except StateError:
            assert self.hash() == before, f"refused {kind} changed the state"
            raise
        if __debug__:
            assert (outcome == "unchanged") == (self.hash() == before), kind
            if FULL_INVARIANT_CHECKS:
                self.check_invariants()
        return outcome

    def _dispatch(self, request: Request) -> Outcome:
        match request:
            case rq.AddCluster(cluster=cluster):
                return self._add_cluster(cluster)
            case rq.RemoveCluster(cluster_id=cluster_id):
                if cluster_id not in self.clusters:
                    raise NotFound(f"cluster {cluster_id!r} does not exist")
                self._drop(("cluster", cluster_id))
                del self.clusters[cluster_id]
                return "changed"
            case (
                rq.AddHttpListener(listener=listener)
                | rq.AddHttpsListener(listener=listener)
                | rq.AddTcpListener(listener=listener)
                | rq.AddUdpListener(listener=listener)
            ):
                return self._add_listener(listener)
            case rq.RemoveListener(address=address, proxy=proxy):
                return self._remove_listener(proxy, address)
            case rq.ActivateListener(address=address, proxy=proxy):
                return self._set_active(proxy, address, True)
            case rq.DeactivateListener(address=address, proxy=proxy):
                return self._set_active(proxy, address, False)
            case rq.UpdateHttpsListener():
                return self._update_listener("HTTPS", request)
            case rq.UpdateHttpListener():
                return self._update_listener("HTTP", request)
            case rq.UpdateTcpListener():
                return self._update_listener("TCP", request)
            case rq.UpdateUdpListener():
                return self._update_listener("UDP", request)
            case rq.AddHttpFrontend(frontend=frontend):
                return self._add_http_front("http", self.http_fronts, frontend)
            case rq.AddHttpsFrontend(frontend=frontend):
                return self._add_http_front("https", self.https_fronts, frontend)
            case rq.RemoveHttpFrontend(frontend=frontend):
                return self._remove_http_front("http", self.http_fronts, frontend)
            case rq.RemoveHttpsFrontend(frontend=frontend):
                return self._remove_http_front("https", self.https_fronts, frontend)
            case rq.AddTcpFrontend(frontend=frontend):
                return self._add_stream_front("tcp", self.tcp_fronts, frontend)
            case rq.AddUdpFrontend(frontend=frontend):
                return self._add_stream_front("udp", self.udp_fronts, frontend)
            case rq.RemoveTcpFrontend(frontend=frontend):
                return self._remove_stream_front("tcp", self.tcp_fronts, frontend)
            case rq.RemoveUdpFrontend(frontend=frontend):
                return self._remove_stream_front("udp", self.udp_fronts, frontend)
            case rq.AddBackend(backend=backend):
                return self._add_backend(backend)
            case rq.RemoveBackend(cluster_id=cluster_id, backend_id=backend_id, address=address):
                return self._remove_backend(cluster_id, backend_id, address)
            case rq.AddCertificate(address=address, certificate=certificate, expired_at=expiry):
                return self._add_certificate(address, certificate, expiry)
            case rq.RemoveCertificate(address=address, fingerprint=fingerprint):
                return self._remove_certificate(address, fingerprint)
            case rq.ReplaceCertificate():
                return self._replace_certificate(request)
            case rq.SetHealthCheck(cluster_id=cluster_id, health_check=check):
                cluster = self._cluster(cluster_id)
                problems = check.problems()
                if problems:
                    raise InvalidValue(f"health check of cluster {cluster_id!r}: {problems[0]}")
                return self._put_cluster(msgspec.structs.replace(cluster, health_check=check))
            case rq.RemoveHealthCheck(cluster_id=cluster_id):
                cluster = self._cluster(cluster_id)
                return self._put_cluster(msgspec.structs.replace(cluster, health_check=None))
        if request.ROUTING in ("main",) or isinstance(request, rq.ServerConfig):
            raise Undispatchable(f"{request_kind(request)} is not a state request")
        return "unchanged"  # runtime and query verbs: nothing to change

    # -- clusters ---------------------------------------------------------------------------------

    def _cluster(self, cluster_id: str) -> Cluster:
        cluster = self.clusters.get(cluster_id)
        if cluster is None:
            raise NotFound(f"cluster {cluster_id!r} does not exist")
        return cluster

    def _add_cluster(self, cluster: Cluster) -> Outcome:
        for _, problem in cluster_problems(cluster):
            raise InvalidValue(f"cluster {cluster.cluster_id[:128]!r}: {problem}")
        if cluster.health_check is not None:
            problems = cluster.health_check.problems()
            if problems:
                raise InvalidValue(f"health check of cluster {cluster.cluster_id!r}: {problems[0]}")
        return self._put_cluster(cluster)

    def _put_cluster(self, cluster: Cluster) -> Outcome:
        if self.clusters.get(cluster.cluster_id) == cluster:
            return "unchanged"
        self._put(("cluster", cluster.cluster_id), cluster)
        self.clusters[cluster.cluster_id] = cluster
        return "changed"

    # -- listeners --------------------------------------------------------------------------------

    def _add_listener(self, listener: ListenerConfig) -> Outcome:
        proxy = listener_type(listener)
        address = listener.address
        existing = self._stream_listener_at(address) if proxy != "UDP" else None
        if existing is None:
            existing = self.listener(proxy, address)
        if existing is not None:
            same = msgspec.structs.replace(existing, active=False) == msgspec.structs.replace(
                listener, active=False
            )
            raise AlreadyExists(
                f"a {listener_type(existing)} listener already exists on {address}",
                identical=same,
            )
        problems = listener_problems(listener)
        if problems:
            raise InvalidValue(f"{proxy} listener {address}: {problems[0]}")
        # The activation lifecycle alone sets `active`: a listener always arrives inactive.
        stored = msgspec.structs.replace(listener, active=False) if listener.active else listener
        self._put(("listener", proxy, address), stored)
        self.listener_maps()[proxy][address] = stored
        return "changed"

    def _stream_listener_at(self, address: str) -> ListenerConfig | None:
        """HTTP, HTTPS and TCP listeners share the stream socket namespace."""
        return (
            self.http_listeners.get(address)
            or self.https_listeners.get(address)
            or self.tcp_listeners.get(address)
        )

    def _existing_listener(self, proxy: ListenerType, address: str) -> ListenerConfig:
        listener = self.listener(proxy, address)
        if listener is None:
            raise NotFound(f"no {proxy} listener on {address}")
        return listener

    def _remove_listener(self, proxy: ListenerType, address: str) -> Outcome:
        if self.listener(proxy, address) is None:
            raise NoChange(f"no {proxy} listener on {address} to remove")
        del self.listener_maps()[proxy][address]
        self._drop(("listener", proxy, address))
        return "changed"

    def _set_active(self, proxy: ListenerType, address: str, active: bool) -> Outcome:
        listener = self._existing_listener(proxy, address)
        if listener.active == active:
            return "unchanged"
        self._store_listener(proxy, msgspec.structs.replace(listener, active=active))
        return "changed"

    def _store_listener(self, proxy: ListenerType, listener: ListenerConfig) -> None:
        self._put(("listener", proxy, listener.address), listener)
        self.listener_maps()[proxy][listener.address] = listener

    def _update_listener(self, proxy: ListenerType, patch: rq._ListenerPatch) -> Outcome:
        listener = self._existing_listener(proxy, patch.address)
        updated = patched_listener(listener, patch)
        problems = listener_problems(updated)
        if problems:
            raise InvalidValue(f"{proxy} listener {patch.address}: {problems[0]}")
        if updated == listener:
            return "unchanged"
        self._store_listener(proxy, updated)
        return "changed"

    # -- frontends --------------------------------------------------------------------------------

    def _add_http_front(
        self, family: str, fronts: dict[str, RequestHttpFrontend], frontend: RequestHttpFrontend
    ) -> Outcome:
        for _, problem in http_frontend_problems(frontend):
            raise InvalidValue(f"{family} frontend {frontend.hostname[:128]!r}: {problem}")
        key = frontend.route_key()
        existing = fronts.get(key)
        if existing is not None:
            raise AlreadyExists(
                f"{family} frontend {key!r} already exists", identical=existing == frontend
            )
        self._put((f"{family}_front", key), frontend)
        fronts[key] = frontend
        return "changed"

    def _remove_http_front(
        self, family: str, fronts: dict[str, RequestHttpFrontend], frontend: RequestHttpFrontend
    ) -> Outcome:
        key = frontend.route_key()
        if key not in fronts:
            raise NotFound(f"{family} frontend {key!r} does not exist")
        del fronts[key]
        self._drop((f"{family}_front", key))
        return "changed"

    def _add_stream_front(self, family: str, fronts: dict[str, list[F]], frontend: F) -> Outcome:
        current: list[F] = fronts.get(frontend.cluster_id, [])
        if frontend in current:
            raise AlreadyExists(
                f"{family} frontend of cluster {frontend.cluster_id!r} on {frontend.address}"
                " already exists",
                identical=True,
            )
        updated = list(current)
        updated.append(frontend)
        updated.sort(key=stream_front_order)
        self._put(stream_front_key(family, frontend), frontend)
        fronts[frontend.cluster_id] = updated
        return "changed"

    def _remove_stream_front(self, family: str, fronts: dict[str, list[F]], frontend: F) -> Outcome:
        """Remove every frontend of that cluster on that address, whatever their tags."""
        current = fronts.get(frontend.cluster_id)
        if current is None:
            raise NotFound(f"cluster {frontend.cluster_id!r} has no {family} frontend")
        removed = [f for f in current if f.address == frontend.address]
        if not removed:
            raise NoChange(
                f"cluster {frontend.cluster_id!r} has no {family} frontend on {frontend.address}"
            )
        kept = [f for f in current if f.address != frontend.address]
        if kept:
            fronts[frontend.cluster_id] = kept
        else:
            del fronts[frontend.cluster_id]
        for gone in removed:
            self._drop(stream_front_key(family, gone))
        return "changed"

    # -- backends ---------------------------------------------------------------------------------

    def _add_backend(self, backend: Backend) -> Outcome:
        for _, problem in backend_problems(backend):
            raise InvalidValue(f"backend {backend.backend_id[:128]!r}: {problem}")
        current = self.backends.get(backend.cluster_id, [])
        identity = (backend.backend_id, backend.address)
        position = next(
            (i for i, b in enumerate(current) if (b.backend_id, b.address) == identity), None
        )
        if position is None:
            # A backend id names one backend of its cluster: workers key its health, back-off,
            # load and metrics by id, and would refuse a cluster where it names two.
            for other in current:
                if other.backend_id == backend.backend_id:
                    raise AlreadyExists(
                        f"cluster {backend.cluster_id[:128]!r} already has backend "
                        f"{backend.backend_id[:128]!r} at {other.address}; a backend id names "
                        "one address (remove that backend first)",
                        identical=False,
                    )
        elif current[position] == backend:
            return "unchanged"
        self._put(backend_key(backend), backend)
        if position is not None:
            current[position] = backend
        else:
            self.backends[backend.cluster_id] = sorted([*current, backend], key=backend_order)
        return "changed"

    def _remove_backend(self, cluster_id: str, backend_id: str, address: str) -> Outcome:
        current = self.backends.get(cluster_id)
        if current is None:
            raise NotFound(f"cluster {cluster_id!r} has no backends")
        kept = [b for b in current if (b.backend_id, b.address) != (backend_id, address)]
        if len(kept) == len(current):
            raise NoChange(f"cluster {cluster_id!r} has no backend {backend_id!r} at {address}")
        assert len(kept) == len(current) - 1
        if kept:
            self.backends[cluster_id] = kept
        else:
            del self.backends[cluster_id]
        self._drop(("backend", cluster_id, backend_id, address))
        return "changed"

    # -- certificates -----------------------------------------------------------------------------

    def _add_certificate(
        self, address: str, certificate: CertificateAndKey, expired_at: int | None
    ) -> Outcome:
        fingerprint, stored = checked_certificate(certificate, expired_at)
        if fingerprint in self.certificates.get(address, {}):
            return "unchanged"  # upstream: already present is Ok, skipped
        self._store_certificate(address, fingerprint, stored)
        return "changed"

    def _store_certificate(self, address: str, fingerprint: str, stored: StoredCertificate) -> None:
        self._put(("certificate", address, fingerprint), stored)
        self.certificates.setdefault(address, {})[fingerprint] = stored

    def _remove_certificate(self, address: str, fingerprint: str) -> Outcome:
        if not is_fingerprint(fingerprint):
            raise InvalidValue(f"{fingerprint!r} is not a hex SHA-256 fingerprint")
        fingerprint = fingerprint.lower()
        at_address = self.certificates.get(address, {})
        if fingerprint not in at_address:
            return "unchanged"  # upstream: Ok even if absent
        self._drop_certificate(address, fingerprint)
        return "changed"

    def _drop_certificate(self, address: str, fingerprint: str) -> None:
        at_address = self.certificates[address]
        del at_address[fingerprint]
        if not at_address:
            del self.certificates[address]
        self._drop(("certificate", address, fingerprint))

    def _replace_certificate(self, request: rq.ReplaceCertificate) -> Outcome:
        address = request.address
        if not is_fingerprint(request.old_fingerprint):
            raise InvalidValue(f"{request.old_fingerprint!r} is not a hex SHA-256 fingerprint")
        if address not in self.certificates:
            raise NotFound(f"no certificate on {address}")
        fingerprint, stored = checked_certificate(request.new_certificate, request.new_expired_at)
        old = request.old_fingerprint.lower()
        current = self.certificates[address]
        if current.get(fingerprint) == stored and (old == fingerprint or old not in current):
            return "unchanged"
        if old in current:
            self._drop_certificate(address, old)
        self._store_certificate(address, fingerprint, stored)
        return "changed"

    # -----------------------------------------------------------------------------------------
    # Digest bookkeeping

    def _put(self, key: ObjectKey, value: msgspec.Struct) -> None:
        self._digest.put(key, value)

    def _drop(self, key: ObjectKey) -> None:
        self._digest.drop(key)

    # -----------------------------------------------------------------------------------------
    # Invariants

    def check_invariants(self) -> None:
        """Check every structural invariant; raise AssertionError naming the first broken one."""
        state_invariants.check_invariants(self, self._digest)
