"""The desired state of a fleet as etcd keys and values: a public interface.

One key per object under `<prefix>/state/`, each value the object's request in the
protocol's JSON form (the tagged request, as a line of the state file carries it):

| key (after `<prefix>/state/`)            | value                                   |
|------------------------------------------|-----------------------------------------|
| `listeners/<http|https|tcp|udp>/<addr>`  | `Add*Listener` (`listener.active`: activate it) |
| `clusters/<cluster_id>`                  | `AddCluster` (without `health_check`)   |
| `health_checks/<cluster_id>`             | `SetHealthCheck`                        |
| `backends/<cluster_id>/<backend_id>`     | `AddBackend`                            |
| `frontends/http/<route key>`             | `AddHttpFrontend`                       |
| `frontends/https/<route key>`            | `AddHttpsFrontend`                      |
| `frontends/tcp/<cluster_id>/<name>`      | `AddTcpFrontend`                        |
| `frontends/udp/<cluster_id>/<name>`      | `AddUdpFrontend`                        |
| `certificates/<addr>/<name>`             | `AddCertificate`                        |

Components are percent-encoded (`urllib.parse.quote`, `:[]` left as they are), so an id
holding `/` stays one component. The key must agree with its value (a backend key names the
backend's cluster and id, ...): a key that does not is refused. `<name>` is free text chosen by
the writer (`sozu fleet push` writes the address, then `<address>#2`, ... for a stream
frontend, and the fingerprint for a certificate).

`<prefix>/state/generation` is written by multi-batch pushes: `{"generation": N, "complete":
false}` before the first batch, `{"generation": N, "complete": true}` in the last one. While it
says `complete: false` instances apply nothing (they wait for the flip).

This module is pure: it maps a `ConfigState` to keys and values, and a set of keys and values
(one range read) to the target `ConfigState`, refusing the whole set on the first bad key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import quote, unquote

import msgspec

from sozu.command import requests as rq
from sozu.command.envelope import UNREADABLE
from sozu.command.requests import AnyRequest, Request, request_kind
from sozu.command.state import ConfigState
from sozu.command.state_errors import StateError
from sozu.command.state_replay import add_listener_request
from sozu.command.types import ListenerConfig, ListenerType, listener_type

STATE_DIR: Final = "state/"
GENERATION: Final = "state/generation"
INSTANCES_DIR: Final = "instances/"

_SAFE: Final = ":[]"
_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(AnyRequest)
_wire: Final = msgspec.msgpack.Encoder()
_PROXIES: Final[dict[str, ListenerType]] = {
    "http": "HTTP",
    "https": "HTTPS",
    "tcp": "TCP",
    "udp": "UDP",
}
_LISTENER_ADD: Final[dict[ListenerType, type[Request]]] = {
    "HTTP": rq.AddHttpListener,
    "HTTPS": rq.AddHttpsListener,
    "TCP": rq.AddTcpListener,
    "UDP": rq.AddUdpListener,
}
# The order in which a target state is built (the replay order of generate_requests).
_KIND_ORDER: Final = (
    "listeners",
    "clusters",
    "health_checks",
    "frontends/http",
    "certificates",
    "frontends/https",
    "frontends/tcp",
    "frontends/udp",
    "backends",
)


class Generation(msgspec.Struct, frozen=True, kw_only=True):
    """The value of `<prefix>/state/generation`."""

    generation: int
    complete: bool


class LayoutError(Exception):
    """A key or value of the desired state that cannot be applied; names the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def normalize_prefix(prefix: str) -> str:
    """`/sozu`, `sozu/`, `/sozu/` -> `/sozu/` (every key starts with it)."""
    stripped = prefix.strip("/")
    return f"/{stripped}/" if stripped else "/"


def _part(text: str) -> str:
    return quote(text, safe=_SAFE)


def encode_value(request: Request) -> bytes:
    return _encoder.encode(request)


def encode_generation(generation: Generation) -> bytes:
    return _encoder.encode(generation)


def decode_generation(key: str, value: bytes) -> Generation:
    try:
        return msgspec.json.decode(value, type=Generation)
    except UNREADABLE as error:
        raise LayoutError(key, f"invalid generation value: {error}") from None


def state_to_kv(state: ConfigState) -> dict[str, bytes]:
    """Every object of `state` as (key relative to the prefix, value)."""
    out: dict[str, bytes] = {}
    for proxy, listeners in state.listener_maps().items():
        for address, listener in listeners.items():
            add = add_listener_request(listener)
            value = msgspec.structs.replace(add, listener=listener)
            out[f"{STATE_DIR}listeners/{proxy.lower()}/{_part(address)}"] = encode_value(value)
    for cluster_id, cluster in state.clusters.items():
        bare = msgspec.structs.replace(cluster, health_check=None)
        out[f"{STATE_DIR}clusters/{_part(cluster_id)}"] = encode_value(rq.AddCluster(cluster=bare))
        if cluster.health_check is not None:
            out[f"{STATE_DIR}health_checks/{_part(cluster_id)}"] = encode_value(
                rq.SetHealthCheck(cluster_id=cluster_id, health_check=cluster.health_check)
            )
    for cluster_id, backends in state.backends.items():
        for backend in backends:
            key = f"{STATE_DIR}backends/{_part(cluster_id)}/{_part(backend.backend_id)}"
            out[key] = encode_value(rq.AddBackend(backend=backend))
    for route, front in state.http_fronts.items():
        out[f"{STATE_DIR}frontends/http/{_part(route)}"] = encode_value(
            rq.AddHttpFrontend(frontend=front)
        )
    for route, front in state.https_fronts.items():
        out[f"{STATE_DIR}frontends/https/{_part(route)}"] = encode_value(
            rq.AddHttpsFrontend(frontend=front)
        )
    for family, fronts in (("tcp", state.tcp_fronts), ("udp", state.udp_fronts)):
        for cluster_id, frontends in fronts.items():
            seen: dict[str, int] = {}
            for frontend in frontends:
                count = seen[frontend.address] = seen.get(frontend.address, 0) + 1
                name = frontend.address if count == 1 else f"{frontend.address}#{count}"
                key = f"{STATE_DIR}frontends/{family}/{_part(cluster_id)}/{_part(name)}"
                request: Request = (
                    rq.AddTcpFrontend(frontend=frontend)  # type: ignore[arg-type]
                    if family == "tcp"
                    else rq.AddUdpFrontend(frontend=frontend)  # type: ignore[arg-type]
                )
                out[key] = encode_value(request)
    for address, by_fingerprint in state.certificates.items():
        for fingerprint, stored in by_fingerprint.items():
            out[f"{STATE_DIR}certificates/{_part(address)}/{_part(fingerprint)}"] = encode_value(
                rq.AddCertificate(
                    address=address, certificate=stored.certificate, expired_at=stored.expired_at
                )
            )
    return out


def _kind_of(key: str) -> tuple[str, list[str]]:
    """The kind directory of a relative key (`frontends/tcp`, `clusters`...) and its parts."""
    parts = key[len(STATE_DIR) :].split("/")
    if parts[0] == "frontends" and len(parts) > 1:
        return f"frontends/{parts[1]}", [unquote(p) for p in parts[2:]]
    return parts[0], [unquote(p) for p in parts[1:]]


def _expect(key: str, condition: bool, message: str) -> None:
    if not condition:
        raise LayoutError(key, message)


def _decode(key: str, value: bytes) -> Request:
    try:
        request: Request = _decoder.decode(value)
        _wire.encode(request)  # JSON integers are unbounded, the protocol's 64-bit
    except UNREADABLE as error:
        raise LayoutError(key, f"invalid value: {error}") from None
    except OverflowError:
        raise LayoutError(key, "invalid value: integer out of the 64-bit range") from None
    return request


def _check_identity(key: str, kind: str, parts: list[str], request: Request) -> list[Request]:
    """The requests a key's value stands for, after checking that they agree with the key."""
    got = request_kind(request)

    def want(expected: str) -> None:
        _expect(key, got == expected, f"a {kind} key holds {expected}, not {got}")

    match kind:
        case "listeners":
            _expect(key, len(parts) == 2, "expected listeners/<protocol>/<address>")
            proxy = _PROXIES.get(parts[0])
            _expect(key, proxy is not None, f"unknown listener protocol {parts[0]!r}")
            assert proxy is not None
            want(request_kind(_LISTENER_ADD[proxy]))
            listener: ListenerConfig = request.listener  # type: ignore[attr-defined]
            _expect(key, listener_type(listener) == proxy, "listener type differs from the key")
            _expect(key, listener.address == parts[1], f"listener address is {listener.address}")
            add = add_listener_request(listener)
            if listener.active:
                return [add, rq.ActivateListener(address=listener.address, proxy=proxy)]
            return [add]
        case "clusters":
            want("AddCluster")
            assert isinstance(request, rq.AddCluster)
            _expect(key, parts == [request.cluster.cluster_id], "cluster id differs from the key")
            _expect(
                key,
                request.cluster.health_check is None,
                "a cluster's health check goes under health_checks/",
            )
        case "health_checks":
            want("SetHealthCheck")
            assert isinstance(request, rq.SetHealthCheck)
            _expect(key, parts == [request.cluster_id], "cluster id differs from the key")
        case "backends":
            want("AddBackend")
            assert isinstance(request, rq.AddBackend)
            backend = request.backend
            _expect(
                key,
                parts == [backend.cluster_id, backend.backend_id],
                "expected backends/<cluster_id>/<backend_id> of the backend",
            )
        case "frontends/http" | "frontends/https":
            want("AddHttpFrontend" if kind == "frontends/http" else "AddHttpsFrontend")
            front = request.frontend  # type: ignore[attr-defined]
            _expect(key, parts == [front.route_key()], f"route key is {front.route_key()!r}")
        case "frontends/tcp" | "frontends/udp":
            want("AddTcpFrontend" if kind == "frontends/tcp" else "AddUdpFrontend")
            front = request.frontend  # type: ignore[attr-defined]
            _expect(
                key,
                len(parts) == 2 and parts[0] == front.cluster_id,
                f"expected {kind}/<cluster_id>/<name> of the frontend",
            )
        case "certificates":
            want("AddCertificate")
            assert isinstance(request, rq.AddCertificate)
            _expect(
                key,
                len(parts) == 2 and parts[0] == request.address,
                "expected certificates/<address>/<name> of the certificate",
            )
        case _:
            raise LayoutError(key, f"unknown object kind {kind!r}")
    return [request]


def _mapped(request: Request, address_map: Mapping[str, str]) -> Request:
    """`request` with its listener address moved as `address_map` says (if it says)."""
    replace = msgspec.structs.replace
    if isinstance(request, rq.ActivateListener | rq.AddCertificate):
        local = address_map.get(request.address)
        return request if local is None else replace(request, address=local)
    for field in ("listener", "frontend"):
        inner = getattr(request, field, None)
        if inner is not None:
            local = address_map.get(inner.address)
            if local is None:
                return request
            return replace(request, **{field: replace(inner, address=local)})
    return request


def target_requests(
    kvs: Mapping[str, bytes], address_map: Mapping[str, str] | None = None
) -> list[tuple[str, Request]]:
    """(key, request) pairs that build the state `kvs` describes, in replay order.

    `kvs` maps keys relative to the prefix to values; keys outside `state/` and the generation
    key are ignored. LayoutError names the first key that is malformed. `address_map` moves
    listener addresses (desired -> local: listeners, frontends and certificates on them) for
    an instance that cannot bind the fleet's addresses as they are.
    """
    by_kind: dict[str, list[tuple[str, Request]]] = {kind: [] for kind in _KIND_ORDER}
    for key in sorted(kvs):
        if not key.startswith(STATE_DIR) or key == GENERATION:
            continue
        kind, parts = _kind_of(key)
        _expect(key, kind in by_kind, f"unknown object kind {kind!r}")
        _expect(key, all(parts), "empty key component")
        request = _decode(key, kvs[key])
        for one in _check_identity(key, kind, parts, request):
            by_kind[kind].append((key, _mapped(one, address_map) if address_map else one))
    listeners = by_kind.pop("listeners")
    # Every listener is added before any is activated, as in a replay.
    ordered = [p for p in listeners if not isinstance(p[1], rq.ActivateListener)]
    ordered += [p for p in listeners if isinstance(p[1], rq.ActivateListener)]
    for kind in _KIND_ORDER[1:]:
        ordered.extend(by_kind[kind])
    return ordered


def build_target(
    kvs: Mapping[str, bytes],
    max_request_size: int | None = None,
    address_map: Mapping[str, str] | None = None,
) -> ConfigState:
    """The state `kvs` describes; LayoutError naming the key of the first refused object."""
    state = ConfigState()
    state.max_request_size = max_request_size
    for key, request in target_requests(kvs, address_map):
        try:
            state.apply(request)
        except StateError as error:
            raise LayoutError(key, f"{request_kind(request)} refused: {error}") from None
    return state


def relative_kvs(prefix: str, pairs: Iterable[tuple[bytes, bytes]]) -> dict[str, bytes]:
    """Keys (bytes, absolute) made relative to `prefix`; keys outside it are dropped."""
    out: dict[str, bytes] = {}
    for key, value in pairs:
        text = key.decode("utf-8", "replace")
        if text.startswith(prefix):
            out[text[len(prefix) :]] = value
    return out
