"""Requests that rebuild a state (`generate_requests`) or converge one state onto another (`diff`).

Both produce a deterministic order: maps are walked in sorted key order, never in hash-set
order. `diff` follows upstream 2.1.0, including its fix: a listener active in both states
whose configuration changed is replayed Remove, Add (inactive), Activate, for all four
listener types. Where only the `active` flag differs, one Activate or Deactivate is enough.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from sozu.command import requests as rq
from sozu.command.requests import Request
from sozu.command.state import ConfigState
from sozu.command.stored_certificates import StoredCertificate
from sozu.command.types import (
    LISTENER_TYPES,
    Backend,
    HttpListenerConfig,
    HttpsListenerConfig,
    ListenerConfig,
    ListenerType,
    RequestHttpFrontend,
    RequestTcpFrontend,
    RequestUdpFrontend,
    TcpListenerConfig,
    UdpListenerConfig,
)

_DIFF_LISTENER_ORDER: tuple[ListenerType, ...] = ("TCP", "UDP", "HTTP", "HTTPS")


def add_listener_request(listener: ListenerConfig) -> Request:
    """The Add*Listener request of a listener, always inactive."""
    inactive = msgspec.structs.replace(listener, active=False)
    if isinstance(inactive, HttpsListenerConfig):
        return rq.AddHttpsListener(listener=inactive)
    if isinstance(inactive, HttpListenerConfig):
        return rq.AddHttpListener(listener=inactive)
    if isinstance(inactive, TcpListenerConfig):
        return rq.AddTcpListener(listener=inactive)
    assert isinstance(inactive, UdpListenerConfig)
    return rq.AddUdpListener(listener=inactive)


def _add_certificate(address: str, stored: StoredCertificate) -> Request:
    return rq.AddCertificate(
        address=address, certificate=stored.certificate, expired_at=stored.expired_at
    )


def generate_requests(state: ConfigState) -> list[Request]:
    """Requests that rebuild `state` from an empty one, in upstream's replay order.

    Listeners (HTTP, HTTPS, TCP, UDP; each Add then Activate if active), clusters, HTTP
    frontends, certificates, HTTPS frontends, TCP frontends, UDP frontends, backends.
    """
    out: list[Request] = []
    for proxy, listeners in state.listener_maps().items():
        for address in sorted(listeners):
            out.append(add_listener_request(listeners[address]))
            if listeners[address].active:
                out.append(rq.ActivateListener(address=address, proxy=proxy))
    out.extend(rq.AddCluster(cluster=state.clusters[c]) for c in sorted(state.clusters))
    out.extend(rq.AddHttpFrontend(frontend=state.http_fronts[k]) for k in sorted(state.http_fronts))
    for address in sorted(state.certificates):
        by_fingerprint = state.certificates[address]
        out.extend(_add_certificate(address, by_fingerprint[f]) for f in sorted(by_fingerprint))
    out.extend(
        rq.AddHttpsFrontend(frontend=state.https_fronts[k]) for k in sorted(state.https_fronts)
    )
    for cluster_id in sorted(state.tcp_fronts):
        out.extend(rq.AddTcpFrontend(frontend=f) for f in state.tcp_fronts[cluster_id])
    for cluster_id in sorted(state.udp_fronts):
        out.extend(rq.AddUdpFrontend(frontend=f) for f in state.udp_fronts[cluster_id])
    for cluster_id in sorted(state.backends):
        out.extend(rq.AddBackend(backend=b) for b in state.backends[cluster_id])
    return out


def generate_activate_requests(state: ConfigState) -> list[Request]:
    """Just the activations of the active listeners (HTTP, HTTPS, TCP, UDP)."""
    return [
        rq.ActivateListener(address=address, proxy=proxy)
        for proxy, listeners in state.listener_maps().items()
        for address in sorted(listeners)
        if listeners[address].active
    ]


def diff(current: ConfigState, target: ConfigState) -> list[Request]:
    """Requests that, applied to `current`, make it equal to `target` (counts aside)."""
    out: list[Request] = []
    out.extend(_diff_listeners(current, target))
    for cluster_id in sorted(current.clusters.keys() | target.clusters.keys()):
        old, new = current.clusters.get(cluster_id), target.clusters.get(cluster_id)
        if new is None:
            out.append(rq.RemoveCluster(cluster_id=cluster_id))
        elif old != new:
            out.append(rq.AddCluster(cluster=new))
    out.extend(_diff_backends(current, target))
    out.extend(
        _diff_http_fronts(
            current.http_fronts, target.http_fronts, rq.RemoveHttpFrontend, rq.AddHttpFrontend
        )
    )
    out.extend(
        _diff_http_fronts(
            current.https_fronts, target.https_fronts, rq.RemoveHttpsFrontend, rq.AddHttpsFrontend
        )
    )
    out.extend(_diff_stream_fronts(current.tcp_fronts, target.tcp_fronts, "tcp"))
    out.extend(_diff_stream_fronts(current.udp_fronts, target.udp_fronts, "udp"))
    out.extend(_diff_certificates(current, target))
    return out


def _diff_listeners(current: ConfigState, target: ConfigState) -> list[Request]:
    """Removals first (so an address can change protocol), then additions and toggles."""
    removals: list[Request] = []
    additions: list[Request] = []
    for proxy in _DIFF_LISTENER_ORDER:
        olds, news = current.listener_maps()[proxy], target.listener_maps()[proxy]
        for address in sorted(olds.keys() | news.keys()):
            old, new = olds.get(address), news.get(address)
            if old == new:
                continue
            if new is None:
                assert old is not None
                if old.active:
                    removals.append(rq.DeactivateListener(address=address, proxy=proxy))
                removals.append(rq.RemoveListener(address=address, proxy=proxy))
            elif old is None:
                additions.append(add_listener_request(new))
                if new.active:
                    additions.append(rq.ActivateListener(address=address, proxy=proxy))
            elif msgspec.structs.replace(old, active=new.active) == new:
                toggle = rq.ActivateListener if new.active else rq.DeactivateListener
                additions.append(toggle(address=address, proxy=proxy))
            else:
                removals.append(rq.RemoveListener(address=address, proxy=proxy))
                additions.append(add_listener_request(new))
                if new.active:
                    additions.append(rq.ActivateListener(address=address, proxy=proxy))
                elif old.active:
                    # Upstream emits it; after Remove + Add it is a no-op Ok, kept for parity.
                    additions.append(rq.DeactivateListener(address=address, proxy=proxy))
    return removals + additions


def _backend_map(state: ConfigState) -> dict[tuple[str, str, str], Backend]:
    return {(b.cluster_id, b.backend_id, b.address): b for b in state.all_backends()}


def _diff_backends(current: ConfigState, target: ConfigState) -> Iterable[Request]:
    """Removals first: a backend id that moves to another address is free again when its
    new address is added (an id names one address per cluster)."""
    olds, news = _backend_map(current), _backend_map(target)
    changed = [key for key in sorted(olds.keys() | news.keys()) if olds.get(key) != news.get(key)]
    for key in changed:
        if key in olds:
            cluster_id, backend_id, address = key
            yield rq.RemoveBackend(cluster_id=cluster_id, backend_id=backend_id, address=address)
    for key in changed:
        new = news.get(key)
        if new is not None:
            yield rq.AddBackend(backend=new)


def _diff_http_fronts(
    olds: dict[str, RequestHttpFrontend],
    news: dict[str, RequestHttpFrontend],
    remove: type[rq.RemoveHttpFrontend] | type[rq.RemoveHttpsFrontend],
    add: type[rq.AddHttpFrontend] | type[rq.AddHttpsFrontend],
) -> list[Request]:
    removals: list[Request] = [
        remove(frontend=olds[k]) for k in sorted(olds) if olds[k] != news.get(k)
    ]
    additions: list[Request] = [
        add(frontend=news[k]) for k in sorted(news) if news[k] != olds.get(k)
    ]
    return removals + additions


def _diff_stream_fronts(
    olds: dict[str, list[RequestTcpFrontend]] | dict[str, list[RequestUdpFrontend]],
    news: dict[str, list[RequestTcpFrontend]] | dict[str, list[RequestUdpFrontend]],
    family: str,
) -> list[Request]:
    """TCP/UDP frontends, grouped by (cluster, address): removal drops a whole group."""

    def groups(
        fronts: dict[str, list[RequestTcpFrontend]] | dict[str, list[RequestUdpFrontend]],
    ) -> dict[tuple[str, str], list[RequestTcpFrontend | RequestUdpFrontend]]:
        grouped: dict[tuple[str, str], list[RequestTcpFrontend | RequestUdpFrontend]] = {}
        for cluster_id, front_list in fronts.items():
            for front in front_list:
                grouped.setdefault((cluster_id, front.address), []).append(front)
        return grouped

    old_groups, new_groups = groups(olds), groups(news)
    removals: list[Request] = []
    additions: list[Request] = []
    for key in sorted(old_groups.keys() | new_groups.keys()):
        old = old_groups.get(key, [])
        new = new_groups.get(key, [])
        if old == new:
            continue
        if any(front not in new for front in old):
            removals.append(_stream_front_request(family, "remove", old[0]))
            to_add = new
        else:
            to_add = [front for front in new if front not in old]
        additions.extend(_stream_front_request(family, "add", front) for front in to_add)
    return removals + additions


def _stream_front_request(
    family: str, verb: str, frontend: RequestTcpFrontend | RequestUdpFrontend
) -> Request:
    if family == "tcp":
        assert isinstance(frontend, RequestTcpFrontend)
        if verb == "add":
            return rq.AddTcpFrontend(frontend=frontend)
        return rq.RemoveTcpFrontend(frontend=frontend)
    assert isinstance(frontend, RequestUdpFrontend)
    if verb == "add":
        return rq.AddUdpFrontend(frontend=frontend)
    return rq.RemoveUdpFrontend(frontend=frontend)


def _diff_certificates(current: ConfigState, target: ConfigState) -> list[Request]:
    def flat(state: ConfigState) -> dict[tuple[str, str], StoredCertificate]:
        return {
            (address, fingerprint): stored
            for address, by_fingerprint in state.certificates.items()
            for fingerprint, stored in by_fingerprint.items()
        }

    olds, news = flat(current), flat(target)
    removals: list[Request] = [
        rq.RemoveCertificate(address=address, fingerprint=fingerprint)
        for (address, fingerprint) in sorted(olds)
        if olds[(address, fingerprint)] != news.get((address, fingerprint))
    ]
    additions: list[Request] = [
        _add_certificate(address, news[(address, fingerprint)])
        for (address, fingerprint) in sorted(news)
        if news[(address, fingerprint)] != olds.get((address, fingerprint))
    ]
    return removals + additions


__all__ = [
    "LISTENER_TYPES",
    "add_listener_request",
    "diff",
    "generate_activate_requests",
    "generate_requests",
]


def describe_request(request: Request) -> str:
    """A short, bounded description of a request naming its object, for logs and events."""
    text = msgspec.json.encode(request).decode()
    return text if len(text) <= 240 else text[:237] + "..."
