"""Upstream Sōzu's state file format, read and written beside sozu's own.

Upstream writes `WorkerRequest` records as JSON, each followed by `\\n\\0`:
`{"id": "SAVE-0", "content": {"request_type": {"ADD_CLUSTER": {...}}}}`, the payload being
the protobuf message as serde writes it: proto field names, enums as integers, absent
optional fields as `null`, socket addresses as `{"ip": {"inner": {"V4": u32}}, "port": n}`
(`{"V6": {"high": first 8 bytes, "low": last 8 bytes}}` for IPv6).

Every field of the messages the state replays through is listed below with how it maps.
Saving refuses, by name, a value upstream cannot carry (a field sozu added, set to other
than its default). Loading refuses a record with a field neither side knows, set to a
value; fields upstream has and sozu ignores are accepted when empty.

One value does not survive a round trip as written: a cluster's `load_balancing` is
required upstream, so sozu's "unset" (ROUND_ROBIN, HRW for a UDP cluster) is written as that
algorithm, and that algorithm is read back as unset. Both mean the same routing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, Final

import msgspec

from sozu.command import requests as rq
from sozu.command.addresses import AddressError, format_address, parse_address
from sozu.command.requests import Request
from sozu.command.state import ConfigState
from sozu.command.state_hash import field_defaults
from sozu.command.types import (
    DEFAULT_ALPN,
    CertificateAndKey,
    Cluster,
    HealthCheckConfig,
    HstsConfig,
    HttpListenerConfig,
    HttpsListenerConfig,
    LoadBalancingParams,
    RequestHttpFrontend,
    RequestTcpFrontend,
    RequestUdpFrontend,
    TcpListenerConfig,
    UdpClusterConfig,
    UdpHealthConfig,
    UdpListenerConfig,
)
from sozu.command.types import Backend as BackendRecord
from sozu.command.types import Header as HeaderRecord
from sozu.command.types import PathRule as PathRuleRecord

RECORD_SEPARATOR: Final = b"\n\0"


class UpstreamFormatError(ValueError):
    """A state upstream's format cannot carry, or a record sozu cannot read."""


# ---------------------------------------------------------------------------------------------
# Field mappings: upstream enum orders, then one table per message.

_ENUMS: Final[dict[str, tuple[str, ...]]] = {
    "LoadBalancingAlgorithms": (
        "ROUND_ROBIN", "RANDOM", "LEAST_LOADED", "POWER_OF_TWO", "HRW", "MAGLEV",
    ),
    "ProxyProtocolConfig": ("EXPECT_HEADER", "SEND_HEADER", "RELAY_HEADER"),
    "LoadMetric": ("CONNECTIONS", "REQUESTS", "CONNECTION_TIME"),
    "ListenerType": ("HTTP", "HTTPS", "TCP", "UDP"),
    "RedirectPolicy": ("FORWARD", "PERMANENT", "UNAUTHORIZED", "FOUND", "PERMANENT_REDIRECT"),
    "RedirectScheme": ("USE_SAME", "USE_HTTP", "USE_HTTPS"),
    "HeaderPosition": ("HEADER_POSITION_UNSPECIFIED", "REQUEST", "RESPONSE", "BOTH"),
    "PathRuleKind": ("PREFIX", "REGEX", "EQUALS"),
    "RulePosition": ("PRE", "POST", "TREE"),
    "TlsVersion": ("SSL_V2", "SSL_V3", "TLS_V1_0", "TLS_V1_1", "TLS_V1_2", "TLS_V1_3"),
    "UdpAffinityKey": ("SOURCE_IP", "SOURCE_IP_PORT"),
    "UdpHealthMode": ("HEALTH_OFF", "TCP_PROBE", "UDP_PROBE"),
}  # fmt: skip


class _Field(msgspec.Struct, frozen=True):
    """How one field maps: `kind` is scalar, address, enum, enums (repeated), message,
    messages (repeated), payload (UTF-8 text as bytes), or upstream_only (sozu has no such
    field: written as `absent`, accepted when empty)."""

    kind: str
    type_name: str = ""
    absent: Any = None


_S: Final = _Field("scalar")
_ADDR: Final = _Field("address")


def _enum(name: str) -> _Field:
    return _Field("enum", name)


def _message(name: str) -> _Field:
    return _Field("message", name)


def _upstream_only(absent: Any = None) -> _Field:
    return _Field("upstream_only", absent=absent)


_H2_KNOBS: Final = {
    name: _S
    for name in (
        "h2_max_rst_stream_per_window", "h2_max_ping_per_window",
        "h2_max_settings_per_window", "h2_max_empty_data_per_window",
        "h2_max_continuation_frames", "h2_max_glitch_count", "h2_initial_connection_window",
        "h2_max_concurrent_streams", "h2_stream_shrink_ratio", "h2_max_rst_stream_lifetime",
        "h2_max_rst_stream_abusive_lifetime", "h2_max_rst_stream_emitted_lifetime",
        "h2_max_header_list_size", "h2_stream_idle_timeout_seconds",
        "h2_max_header_table_size", "h2_graceful_shutdown_deadline_seconds",
        "h2_max_window_update_stream0_per_window", "h2_max_header_fields",
    )
}  # fmt: skip

_HTTP_LISTENER: Final = {
    "address": _ADDR, "public_address": _ADDR, "expect_proxy": _S, "sticky_name": _S,
    "front_timeout": _S, "back_timeout": _S, "connect_timeout": _S, "request_timeout": _S,
    "active": _S, "http_answers": _upstream_only(), **_H2_KNOBS, "sozu_id_header": _S,
    "answers": _S, "elide_x_real_ip": _S, "send_x_real_ip": _S,
}  # fmt: skip

_MESSAGES: Final[dict[str, tuple[type[msgspec.Struct], dict[str, _Field]]]] = {
    "Cluster": (Cluster, {
        "cluster_id": _S, "sticky_session": _S, "https_redirect": _S,
        "proxy_protocol": _enum("ProxyProtocolConfig"),
        "load_balancing": _enum("LoadBalancingAlgorithms"), "answer_503": _S,
        "load_metric": _enum("LoadMetric"), "http2": _S, "answers": _S,
        "https_redirect_port": _S, "authorized_hashes": _S, "www_authenticate": _S,
        "max_connections_per_ip": _S, "retry_after": _S,
        "health_check": _message("HealthCheckConfig"), "udp": _message("UdpClusterConfig"),
    }),
    "HealthCheckConfig": (HealthCheckConfig, {
        "uri": _S, "interval": _S, "timeout": _S, "healthy_threshold": _S,
        "unhealthy_threshold": _S, "expected_status": _S,
    }),
    "UdpClusterConfig": (UdpClusterConfig, {
        "affinity_key": _enum("UdpAffinityKey"), "responses": _S, "requests": _S,
        "send_proxy_protocol": _S, "proxy_protocol_every_datagram": _S,
        "health": _message("UdpHealthConfig"),
    }),
    "UdpHealthConfig": (UdpHealthConfig, {
        "mode": _enum("UdpHealthMode"), "tcp_port": _S, "rise": _S, "fall": _S,
        "fail_open": _S, "udp_probe_payload": _Field("payload"),
        "probe_interval_seconds": _S, "probe_timeout_seconds": _S,
    }),
    "AddBackend": (BackendRecord, {
        "cluster_id": _S, "backend_id": _S, "address": _ADDR, "sticky_id": _S,
        "load_balancing_parameters": _message("LoadBalancingParams"), "backup": _S,
    }),
    "LoadBalancingParams": (LoadBalancingParams, {"weight": _S}),
    "RequestHttpFrontend": (RequestHttpFrontend, {
        "cluster_id": _S, "address": _ADDR, "hostname": _S, "path": _message("PathRule"),
        "method": _S, "position": _enum("RulePosition"), "tags": _S,
        "redirect": _enum("RedirectPolicy"), "required_auth": _S,
        "redirect_scheme": _enum("RedirectScheme"), "redirect_template": _S,
        "rewrite_host": _S, "rewrite_path": _S, "rewrite_port": _S,
        "headers": _Field("messages", "Header"), "hsts": _message("HstsConfig"),
    }),
    "PathRule": (PathRuleRecord, {"kind": _enum("PathRuleKind"), "value": _S}),
    "Header": (HeaderRecord, {"position": _enum("HeaderPosition"), "key": _S, "val": _S}),
    "HstsConfig": (HstsConfig, {
        "enabled": _S, "max_age": _S, "include_subdomains": _S, "preload": _S,
        "force_replace_backend": _S,
    }),
    "RequestTcpFrontend": (RequestTcpFrontend, {"cluster_id": _S, "address": _ADDR, "tags": _S}),
    "RequestUdpFrontend": (RequestUdpFrontend, {"cluster_id": _S, "address": _ADDR, "tags": _S}),
    "HttpListenerConfig": (HttpListenerConfig, _HTTP_LISTENER),
    "HttpsListenerConfig": (HttpsListenerConfig, {
        **_HTTP_LISTENER, "versions": _Field("enums", "TlsVersion"), "cipher_list": _S,
        "cipher_suites": _S, "signature_algorithms": _S, "groups_list": _S,
        "certificate": _S, "certificate_chain": _S, "key": _S, "send_tls13_tickets": _S,
        "alpn_protocols": _S, "strict_sni_binding": _S, "disable_http11": _S,
        "hsts": _message("HstsConfig"),
    }),
    "TcpListenerConfig": (TcpListenerConfig, {
        "address": _ADDR, "public_address": _ADDR, "expect_proxy": _S, "front_timeout": _S,
        "back_timeout": _S, "connect_timeout": _S, "active": _S,
    }),
    "UdpListenerConfig": (UdpListenerConfig, {
        "address": _ADDR, "public_address": _ADDR, "front_timeout": _S, "back_timeout": _S,
        "max_rx_datagram_size": _S, "max_flows": _S, "active": _S,
    }),
    "CertificateAndKey": (CertificateAndKey, {
        "certificate": _S, "certificate_chain": _S, "key": _S,
        "versions": _Field("enums", "TlsVersion"), "names": _S,
    }),
}  # fmt: skip

# Upstream's `http_answers` names (legacy, beside the `answers` map) by status code.
_LEGACY_ANSWERS: Final = ("301", "400", "401", "404", "408", "413", "421", "429", "502",
                          "503", "504", "507")  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Values


def _address_out(value: str, where: str) -> dict[str, Any]:
    try:
        ip, port = parse_address(value)
    except AddressError as error:
        raise UpstreamFormatError(f"{where}: {error}") from None
    if isinstance(ip, ipaddress.IPv4Address):
        return {"ip": {"inner": {"V4": int(ip)}}, "port": port}
    if ip.scope_id is not None:
        raise UpstreamFormatError(f"{where}: {value!r}: upstream's format has no IPv6 zone")
    packed = ip.packed
    high, low = int.from_bytes(packed[:8], "big"), int.from_bytes(packed[8:], "big")
    return {"ip": {"inner": {"V6": {"high": high, "low": low}}}, "port": port}


def _address_in(value: Any, where: str) -> str:
    try:
        inner = value["ip"]["inner"]
        port = int(value["port"])
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port}")
        if "V4" in inner:
            return format_address(ipaddress.IPv4Address(int(inner["V4"])), port)
        v6 = inner["V6"]
        packed = int(v6["high"]).to_bytes(8, "big") + int(v6["low"]).to_bytes(8, "big")
        return format_address(ipaddress.IPv6Address(packed), port)
    except (KeyError, TypeError, ValueError, OverflowError) as error:
        raise UpstreamFormatError(f"{where}: not a socket address: {value!r}") from error


def _enum_out(name: str, value: str, where: str) -> int:
    try:
        return _ENUMS[name].index(value)
    except ValueError:
        raise UpstreamFormatError(f"{where}: {value!r} is not an upstream {name}") from None


def _enum_in(name: str, value: Any, where: str) -> str:
    names = _ENUMS[name]
    if isinstance(value, str) and value in names:
        return value  # a hand-written file may name the value
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < len(names):
        raise UpstreamFormatError(f"{where}: {value!r} is not a {name} (0..{len(names) - 1})")
    return names[value]


def _is_empty(value: Any) -> bool:
    return value is None or value == [] or value == {} or value is False


def to_upstream(record: msgspec.Struct, message: str, where: str) -> dict[str, Any]:
    """The serde JSON object of `record` as upstream's `message`."""
    cls, fields = _MESSAGES[message]
    assert isinstance(record, cls), (record, cls)
    out: dict[str, Any] = {}
    defaults = dict(field_defaults(cls))
    for name in record.__struct_fields__:
        value = getattr(record, name)
        spec = fields.get(name)
        if spec is None:
            if value != defaults[name]:
                raise UpstreamFormatError(
                    f"{where}: {cls.__name__}.{name} = {value!r} has no equivalent in "
                    "upstream's format (a sozu addition)"
                )
            continue
        out[name] = _value_out(value, spec, f"{where}.{name}")
    for name, spec in fields.items():
        if spec.kind == "upstream_only":
            out[name] = spec.absent
    return out


def _value_out(value: Any, spec: _Field, where: str) -> Any:
    if value is None:
        return None
    if spec.kind == "address":
        return _address_out(value, where)
    if spec.kind == "enum":
        return _enum_out(spec.type_name, value, where)
    if spec.kind == "enums":
        return [_enum_out(spec.type_name, item, where) for item in value]
    if spec.kind == "message":
        return to_upstream(value, spec.type_name, where)
    if spec.kind == "messages":
        return [to_upstream(item, spec.type_name, where) for item in value]
    if spec.kind == "payload":
        return list(value.encode())
    return msgspec.to_builtins(value)


def from_upstream(document: Any, message: str, where: str) -> msgspec.Struct:
    """The sozu record of upstream's serde JSON `message` object."""
    cls, fields = _MESSAGES[message]
    if not isinstance(document, Mapping):
        raise UpstreamFormatError(f"{where}: expected an object, found {document!r}")
    ours = set(cls.__struct_fields__)
    values: dict[str, Any] = {}
    for name, raw in document.items():
        spec = fields.get(name)
        if spec is None or (spec.kind != "upstream_only" and name not in ours):
            if _is_empty(raw):
                continue
            raise UpstreamFormatError(f"{where}: unknown field {name!r} = {raw!r}")
        if spec.kind == "upstream_only":
            if name == "http_answers" and isinstance(raw, Mapping):
                _merge_legacy_answers(values, raw, f"{where}.{name}")
            elif not _is_empty(raw):
                raise UpstreamFormatError(f"{where}: {name} is not supported: {raw!r}")
            continue
        if raw is None:
            continue  # absent: sozu's default
        values[name] = _value_in(raw, spec, f"{where}.{name}")
    if message == "HttpsListenerConfig" and values.get("alpn_protocols") == []:
        values["alpn_protocols"] = list(DEFAULT_ALPN)  # upstream: empty means the default
    # A value equal to its default is left to the class (it then stays off the wire).
    for name, default in field_defaults(cls):
        if (
            name in values
            and default is not msgspec.NODEFAULT
            and values[name] == msgspec.to_builtins(default)
        ):
            del values[name]
    try:
        return msgspec.convert(values, cls)
    except msgspec.ValidationError as error:
        raise UpstreamFormatError(f"{where}: {error}") from None


def _merge_legacy_answers(values: dict[str, Any], raw: Mapping[str, Any], where: str) -> None:
    answers = dict(values.get("answers", {}))
    for code in _LEGACY_ANSWERS:
        text = raw.get(f"answer_{code}")
        if text is not None:
            if not isinstance(text, str):
                raise UpstreamFormatError(f"{where}.answer_{code}: not a string")
            answers.setdefault(code, text)
    if answers:
        values["answers"] = answers


def _value_in(raw: Any, spec: _Field, where: str) -> Any:
    if spec.kind == "address":
        return _address_in(raw, where)
    if spec.kind == "enum":
        return _enum_in(spec.type_name, raw, where)
    if spec.kind == "enums":
        if not isinstance(raw, list):
            raise UpstreamFormatError(f"{where}: expected a list, found {raw!r}")
        return [_enum_in(spec.type_name, item, where) for item in raw]
    if spec.kind == "message":
        return msgspec.to_builtins(from_upstream(raw, spec.type_name, where))
    if spec.kind == "messages":
        if not isinstance(raw, list):
            raise UpstreamFormatError(f"{where}: expected a list, found {raw!r}")
        return [msgspec.to_builtins(from_upstream(item, spec.type_name, where)) for item in raw]
    if spec.kind == "payload":
        try:
            return bytes(raw).decode()
        except (TypeError, ValueError) as error:
            raise UpstreamFormatError(f"{where}: not UTF-8 bytes: {error}") from None
    return raw


# ---------------------------------------------------------------------------------------------
# Requests


def _default_algorithm(cluster: Cluster) -> str:
    return "HRW" if cluster.udp is not None else "ROUND_ROBIN"


def _cluster_out(cluster: Cluster, where: str) -> dict[str, Any]:
    out = to_upstream(cluster, "Cluster", where)
    if out["load_balancing"] is None:  # required upstream
        out["load_balancing"] = _ENUMS["LoadBalancingAlgorithms"].index(_default_algorithm(cluster))
    return out


def _cluster_in(document: Any, where: str) -> Cluster:
    cluster = from_upstream(document, "Cluster", where)
    assert isinstance(cluster, Cluster)
    if cluster.load_balancing == _default_algorithm(cluster):
        cluster = msgspec.structs.replace(cluster, load_balancing=None)
    return cluster


# Requests whose payload is one record under one field: class -> (upstream tag, field,
# upstream message). Both directions read it.
_WRAPPED: Final[dict[type[Request], tuple[str, str, str]]] = {
    rq.AddBackend: ("ADD_BACKEND", "backend", "AddBackend"),
    rq.AddHttpFrontend: ("ADD_HTTP_FRONTEND", "frontend", "RequestHttpFrontend"),
    rq.AddHttpsFrontend: ("ADD_HTTPS_FRONTEND", "frontend", "RequestHttpFrontend"),
    rq.AddTcpFrontend: ("ADD_TCP_FRONTEND", "frontend", "RequestTcpFrontend"),
    rq.AddUdpFrontend: ("ADD_UDP_FRONTEND", "frontend", "RequestUdpFrontend"),
    rq.AddHttpListener: ("ADD_HTTP_LISTENER", "listener", "HttpListenerConfig"),
    rq.AddHttpsListener: ("ADD_HTTPS_LISTENER", "listener", "HttpsListenerConfig"),
    rq.AddTcpListener: ("ADD_TCP_LISTENER", "listener", "TcpListenerConfig"),
    rq.AddUdpListener: ("ADD_UDP_LISTENER", "listener", "UdpListenerConfig"),
}


def request_out(request: Request) -> tuple[str, dict[str, Any]]:
    """Upstream's `request_type` tag and payload of a request of the replay."""
    where = type(request).__name__
    wrapped = _WRAPPED.get(type(request))
    if wrapped is not None:
        tag, field, message = wrapped
        return tag, to_upstream(getattr(request, field), message, where)
    match request:
        case rq.AddCluster(cluster=cluster):
            return "ADD_CLUSTER", _cluster_out(cluster, f"cluster {cluster.cluster_id!r}")
        case rq.ActivateListener(address=address, proxy=proxy, from_scm=from_scm):
            return "ACTIVATE_LISTENER", {
                "address": _address_out(address, where),
                "proxy": _enum_out("ListenerType", proxy, where),
                "from_scm": from_scm,
            }
        case rq.AddCertificate(address=address, certificate=certificate, expired_at=expired):
            return "ADD_CERTIFICATE", {
                "address": _address_out(address, where),
                "certificate": to_upstream(certificate, "CertificateAndKey", where),
                "expired_at": expired,
            }
    raise UpstreamFormatError(f"{where} has no equivalent in upstream's state file")


def _wrapped_in(cls: type[Request], field: str, message: str) -> Callable[[Any, str], Request]:
    def build(payload: Any, where: str) -> Request:
        return cls(**{field: from_upstream(payload, message, where)})

    return build


def _activate_in(payload: Any, where: str) -> Request:
    if not isinstance(payload, Mapping):
        raise UpstreamFormatError(f"{where}: expected an object")
    return rq.ActivateListener(
        address=_address_in(payload.get("address"), f"{where}.address"),
        proxy=_enum_in("ListenerType", payload.get("proxy"), f"{where}.proxy"),  # type: ignore[arg-type]
        from_scm=bool(payload.get("from_scm", False)),
    )


def _certificate_in(payload: Any, where: str) -> Request:
    if not isinstance(payload, Mapping):
        raise UpstreamFormatError(f"{where}: expected an object")
    certificate = from_upstream(payload.get("certificate"), "CertificateAndKey", where)
    assert isinstance(certificate, CertificateAndKey)
    return rq.AddCertificate(
        address=_address_in(payload.get("address"), f"{where}.address"),
        certificate=certificate,
        expired_at=payload.get("expired_at"),
    )


_READERS: Final[dict[str, Callable[[Any, str], Request]]] = {
    "ADD_CLUSTER": lambda payload, where: rq.AddCluster(cluster=_cluster_in(payload, where)),
    "ACTIVATE_LISTENER": _activate_in,
    "ADD_CERTIFICATE": _certificate_in,
    **{tag: _wrapped_in(cls, field, message) for cls, (tag, field, message) in _WRAPPED.items()},
}


def dump_upstream_state(state: ConfigState) -> bytes:
    """The state as upstream's state file, or UpstreamFormatError naming what it cannot
    carry."""
    records = []
    for index, request in enumerate(state.generate_requests()):
        tag, payload = request_out(request)
        document = {"id": f"SAVE-{index}", "content": {"request_type": {tag: payload}}}
        records.append(msgspec.json.encode(document) + RECORD_SEPARATOR)
    return b"".join(records)


def looks_upstream(data: bytes) -> bool:
    """Whether a state file is upstream's (sozu's starts with its header line)."""
    first = data.lstrip()[:200]
    return (
        first.startswith(b"{")
        and b'"sozu_state"' not in data.split(b"\n", 1)[0]
        and (b"\0" in data or b'"request_type"' in first or b'"content"' in first)
    )


def parse_upstream_state(data: bytes, source: str, max_record: int) -> list[Request]:
    """Every request of an upstream state file, or UpstreamFormatError naming the record."""
    requests: list[Request] = []
    for number, chunk in enumerate(data.split(b"\0"), start=1):
        if not chunk.strip():
            continue
        where = f"{source}: record {number}"
        if len(chunk) > max_record:
            raise UpstreamFormatError(f"{where}: longer than {max_record} bytes")
        try:
            document = msgspec.json.decode(chunk)
        except msgspec.DecodeError as error:
            raise UpstreamFormatError(f"{where}: {error}") from None
        content = document.get("content") if isinstance(document, dict) else None
        request_type = content.get("request_type") if isinstance(content, dict) else None
        if not isinstance(request_type, dict) or len(request_type) != 1:
            raise UpstreamFormatError(f"{where}: not a WorkerRequest with one request_type")
        ((tag, payload),) = request_type.items()
        reader = _READERS.get(tag)
        if reader is None:
            raise UpstreamFormatError(f"{where}: {tag} is not a state request")
        try:
            requests.append(reader(payload, f"{where} {tag}"))
        except (ValueError, TypeError) as error:
            if isinstance(error, UpstreamFormatError):
                raise
            raise UpstreamFormatError(f"{where} {tag}: {error}") from None
    return requests
