"""Cross-field rules of a decoded `Config`, and the resolutions that complete it.

`finish_config` merges legacy `answer_NNN` keys into `answers`, rejects the combinations
upstream rejects (and a few more that would only fail later, at boot), creates the default
listener of a frontend whose address has none, and clamps UDP datagram sizes. Errors name the
key path of the offending value; things ignored are reported as warnings.

Listener addresses are unique per transport: http, https and tcp listeners share the TCP port
space, udp listeners their own, so a tcp (or https) and a udp listener may share an address
(DNS over TCP and UDP, or HTTPS next to QUIC). A tcp cluster's frontend on such an address
serves both listeners.
"""

from __future__ import annotations

import os
import re

import msgspec

from sozu.command.addresses import format_address, parse_address
from sozu.command.config_error import ConfigError, join_index, join_key
from sozu.command.config_keys import (
    LISTENER_KEYS,
    LISTENER_TLS_KEYS,
    TCP_FRONTEND_KEYS,
    UNAPPLIED_H2_KEYS,
)
from sozu.command.config_schema import (
    ALPN_VALUES,
    LEGACY_ANSWER_CODES,
    MIN_H2_BUFFER_SIZE,
    ClusterSection,
    Config,
    EtcdSection,
    FrontendSection,
    ListenerProtocol,
    ListenerSection,
    listeners_by_address,
)
from sozu.command.request_checks import unhonoured_cluster_settings
from sozu.command.route_patterns import PatternError, compile_regex

_STATUS_CODE = re.compile(r"[1-5][0-9][0-9]")
_AUTHORIZED_HASH = re.compile(r"[^:]+:[0-9a-fA-F]{64}")
# Linux `sun_path` holds 108 bytes, the last one a NUL.
_MAX_UNIX_PATH = 107
_DEFAULT_UDP_DATAGRAM = 1500


def finish_config(config: Config) -> tuple[Config, list[str]]:
    """Check cross-field rules and complete the config; returns it with warnings."""
    warnings: list[str] = []
    _check_top_level(config)
    listeners = tuple(
        _check_listener(config, index, listener, warnings)
        for index, listener in enumerate(config.listeners)
    )
    _check_unique_addresses(listeners)
    clusters = {
        cluster_id: _merge_cluster_answers(cluster, join_key("clusters", cluster_id))
        for cluster_id, cluster in config.clusters.items()
    }
    config = msgspec.structs.replace(config, listeners=listeners, clusters=clusters)
    config = _add_default_listeners(config, warnings)
    _Clusters(config, warnings).check()
    return config, warnings


def _check_top_level(config: Config) -> None:
    if config.automatic_state_save and config.saved_state is None:
        raise ConfigError("automatic_state_save", "true requires saved_state to be set")
    if config.min_buffers > config.max_buffers:
        raise ConfigError(
            "min_buffers", f"{config.min_buffers} exceeds max_buffers ({config.max_buffers})"
        )
    check_command_socket(config.command_socket)
    if config.etcd is not None:
        _check_etcd(config.etcd)


def _check_etcd(etcd: EtcdSection) -> None:
    if not etcd.endpoints:
        raise ConfigError("etcd.endpoints", "at least one endpoint is needed")
    for index, endpoint in enumerate(etcd.endpoints):
        problem = endpoint_problem(endpoint)
        if problem is not None:
            raise ConfigError(join_index("etcd.endpoints", index), problem)
    schemes = {endpoint.split("://", 1)[0] for endpoint in etcd.endpoints}
    if len(schemes) > 1:
        raise ConfigError("etcd.endpoints", "mixes http:// and https:// endpoints")
    if schemes == {"http"}:
        for key in ("ca", "certificate", "key"):
            if getattr(etcd, key) is not None:
                raise ConfigError(f"etcd.{key}", "needs https:// endpoints")
    if (etcd.certificate is None) != (etcd.key is None):
        missing = "key" if etcd.key is None else "certificate"
        raise ConfigError(f"etcd.{missing}", "missing: certificate and key go together")
    if (etcd.user is None) != (etcd.password is None):
        missing = "password" if etcd.password is None else "user"
        raise ConfigError(f"etcd.{missing}", "missing: user and password go together")
    if not etcd.prefix.strip("/"):
        raise ConfigError("etcd.prefix", f"{etcd.prefix!r} is not a key prefix")
    if etcd.instance_id is not None and not _INSTANCE_ID.fullmatch(etcd.instance_id):
        raise ConfigError(
            "etcd.instance_id",
            f"{etcd.instance_id!r}: letters, digits, '.', '_' and '-' only (1 to 128)",
        )
    if etcd.retry_min > etcd.retry_max:
        raise ConfigError("etcd.retry_min", f"{etcd.retry_min} exceeds retry_max")
    for desired in etcd.address_map:
        try:
            ip, port = parse_address(desired)
        except ValueError:
            raise ConfigError(
                join_key("etcd.address_map", desired), "not a socket address"
            ) from None
        if format_address(ip, port) != desired:
            raise ConfigError(
                join_key("etcd.address_map", desired),
                f"write it as {format_address(ip, port)!r}",
            )


_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def endpoint_problem(endpoint: str) -> str | None:
    """Why `endpoint` is not `http(s)://host:port` (None when it is)."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in ("http", "https"):
        return f"{endpoint!r} is not an http:// or https:// URL"
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon or not host or "/" in host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{endpoint!r}: expected {scheme}://host:port"
    return None


def check_command_socket(path: str) -> None:
    """ConfigError (key `command_socket`) if `path` cannot be a unix socket's path."""
    size = len(os.fsencode(path))
    if size > _MAX_UNIX_PATH:
        raise ConfigError(
            "command_socket",
            f"{path!r} is too long for a unix socket ({size} bytes, at most {_MAX_UNIX_PATH})",
        )


def _merge_answers(
    answers: dict[str, str], legacy: dict[int, str | None], path: str
) -> dict[str, str]:
    for status in answers:
        if not _STATUS_CODE.fullmatch(status):
            raise ConfigError(join_key(f"{path}.answers", status), "not an HTTP status code")
    merged = dict(answers)
    for code, text in legacy.items():
        if text is None:
            continue
        if str(code) in answers:
            raise ConfigError(f"{path}.answer_{code}", f"conflicts with {path}.answers.{code}")
        merged[str(code)] = text
    return merged


def _merge_cluster_answers(cluster: ClusterSection, path: str) -> ClusterSection:
    answers = _merge_answers(cluster.answers, {503: cluster.answer_503}, path)
    return msgspec.structs.replace(cluster, answers=answers, answer_503=None)


def _check_listener(
    config: Config, index: int, listener: ListenerSection, warnings: list[str]
) -> ListenerSection:
    path = join_index("listeners", index)
    protocol = listener.protocol
    legacy = {code: getattr(listener, f"answer_{code}") for code in LEGACY_ANSWER_CODES}
    changes: dict[str, object] = {f"answer_{code}": None for code in LEGACY_ANSWER_CODES}
    changes["answers"] = _merge_answers(listener.answers, legacy, path)
    for name in listener.__struct_fields__:
        value = getattr(listener, name)
        if name in LISTENER_KEYS[protocol] or value is None or value == {}:
            continue
        key_path = f"{path}.{name}"
        if name in LISTENER_TLS_KEYS:
            raise ConfigError(key_path, f"needs an https listener, this one is {protocol}")
        if name == "expect_proxy" and value:
            raise ConfigError(key_path, "a udp listener cannot expect a PROXY protocol header")
        warnings.append(
            f"warning: {key_path}: does not apply to a {protocol} listener and is ignored"
        )
    for name in UNAPPLIED_H2_KEYS:
        if name in LISTENER_KEYS[protocol] and getattr(listener, name) is not None:
            warnings.append(f"warning: {path}.{name}: accepted and not applied yet")
    if listener.expect_proxy and listener.public_address is not None:
        raise ConfigError(f"{path}.public_address", "cannot be used with expect_proxy = true")
    if protocol == "https":
        _check_tls_listener(config, path, listener)
    if protocol == "udp":
        size = listener.max_rx_datagram_size or _DEFAULT_UDP_DATAGRAM
        if size > config.buffer_size:
            warnings.append(
                f"warning: {path}.max_rx_datagram_size: {size} is clamped to buffer_size "
                f"({config.buffer_size})"
            )
            changes["max_rx_datagram_size"] = config.buffer_size
    return msgspec.structs.replace(listener, **changes)


def _check_tls_listener(config: Config, path: str, listener: ListenerSection) -> None:
    alpn = listener.effective_alpn()
    for index, protocol in enumerate(alpn):
        if protocol not in ALPN_VALUES:
            raise ConfigError(
                join_index(f"{path}.alpn_protocols", index),
                f"unsupported ALPN protocol {protocol!r} (expected h2 or http/1.1)",
            )
    if listener.disable_http11 and "http/1.1" in alpn:
        raise ConfigError(
            f"{path}.disable_http11",
            "cannot be true while alpn_protocols offers http/1.1 "
            '(the default does; set alpn_protocols = ["h2"])',
        )
    if "h2" in alpn and config.buffer_size < MIN_H2_BUFFER_SIZE:
        raise ConfigError(
            "buffer_size",
            f"must be at least {MIN_H2_BUFFER_SIZE} when an https listener offers h2 "
            f"({path}), got {config.buffer_size}",
        )
    _check_certificate_keys(path, listener.certificate, listener.key, listener.certificate_chain)


def _check_certificate_keys(
    path: str, certificate: str | None, key: str | None, chain: str | None
) -> None:
    if certificate is not None and key is None:
        raise ConfigError(f"{path}.key", "missing: certificate requires key")
    if certificate is None and key is not None:
        raise ConfigError(f"{path}.certificate", "missing: key requires certificate")
    if certificate is None and chain is not None:
        raise ConfigError(f"{path}.certificate", "missing: certificate_chain requires certificate")


def _transport(protocol: str) -> str:
    return "udp" if protocol == "udp" else "tcp"


def _check_unique_addresses(listeners: tuple[ListenerSection, ...]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for index, listener in enumerate(listeners):
        slot = (listener.address, _transport(listener.protocol))
        if slot in seen:
            first = seen[slot]
            raise ConfigError(
                f"{join_index('listeners', index)}.address",
                f"{listener.address} is already used by listeners[{first}] "
                f"({listeners[first].protocol}); a {slot[1].upper()} address takes one listener",
            )
        seen[slot] = index


def _add_default_listeners(config: Config, warnings: list[str]) -> Config:
    existing = listeners_by_address(config)
    with_certificate = {
        frontend.address
        for cluster in config.clusters.values()
        if cluster.protocol == "http"
        for frontend in cluster.frontends
        if frontend.certificate is not None
    }
    created: list[ListenerSection] = []
    for cluster_id in sorted(config.clusters):
        cluster = config.clusters[cluster_id]
        for index, frontend in enumerate(cluster.frontends):
            address = frontend.address
            if address in existing:
                continue
            protocol: ListenerProtocol = "tcp"
            if cluster.protocol == "http":
                protocol = "https" if address in with_certificate else "http"
            listener = ListenerSection(address=address, protocol=protocol)
            existing[address] = [(len(config.listeners) + len(created), listener)]
            created.append(listener)
            path = join_index(f"{join_key('clusters', cluster_id)}.frontends", index)
            warnings.append(
                f"warning: {path}.address: no listener at {address}; "
                f"a default {protocol} listener is created"
            )
    if not created:
        return config
    return msgspec.structs.replace(config, listeners=(*config.listeners, *created))


class _Clusters:
    """Checks of clusters and their frontends against the listeners."""

    def __init__(self, config: Config, warnings: list[str]) -> None:
        self.config = config
        self.warnings = warnings
        self.listeners = listeners_by_address(config)
        self.routes: dict[tuple[str, str, str, str, str | None], str] = {}
        # (address, protocol) of a tcp or udp listener -> (cluster id, frontend path)
        self.owners: dict[tuple[str, str], tuple[str, str]] = {}

    def check(self) -> None:
        for cluster_id in sorted(self.config.clusters):
            self._cluster(cluster_id, self.config.clusters[cluster_id])

    def _cluster(self, cluster_id: str, cluster: ClusterSection) -> None:
        path = join_key("clusters", cluster_id)
        if not cluster_id:
            raise ConfigError(path, "a cluster id must not be empty")
        if cluster.health_check is not None:
            problems = cluster.health_check.problems()
            if problems:
                raise ConfigError(f"{path}.health_check", "; ".join(problems))
        for index, entry in enumerate(cluster.authorized_hashes):
            if not _AUTHORIZED_HASH.fullmatch(entry):
                raise ConfigError(
                    join_index(f"{path}.authorized_hashes", index),
                    "expected 'user:<hex SHA-256 of the password>'",
                )
        for field, message in unhonoured_cluster_settings(load_metric=cluster.load_metric):
            self._warn(f"{path}.{field}", message)
        if cluster.protocol == "http":
            for index, frontend in enumerate(cluster.frontends):
                self._http_frontend(join_index(f"{path}.frontends", index), frontend)
            if cluster.send_proxy:
                self._warn(f"{path}.send_proxy", "applies to tcp clusters only and is ignored")
            if cluster.udp is not None:
                self._warn(f"{path}.udp", "applies to tcp clusters only and is ignored")
        else:
            if cluster.http2:
                self._warn(f"{path}.http2", "applies to http clusters only and is ignored")
            self._tcp_cluster(cluster_id, path, cluster)

    def _warn(self, path: str, message: str) -> None:
        self.warnings.append(f"warning: {path}: {message}")

    def _http_frontend(self, path: str, frontend: FrontendSection) -> None:
        address = frontend.address
        found = [lst for _, lst in self.listeners[address] if lst.protocol in ("http", "https")]
        if not found:
            other = self.listeners[address][0][1].protocol
            raise ConfigError(
                f"{path}.address",
                f"an http cluster's frontend needs an http or https listener; "
                f"{address} is a {other} listener",
            )
        listener = found[0]
        if not frontend.hostname:
            raise ConfigError(f"{path}.hostname", "missing: an http cluster's frontend needs one")
        _check_certificate_keys(
            path, frontend.certificate, frontend.key, frontend.certificate_chain
        )
        if listener.protocol == "http":
            if frontend.certificate is not None:
                raise ConfigError(
                    f"{path}.certificate", f"the listener at {address} is http, not https"
                )
            if frontend.hsts is not None:
                raise ConfigError(
                    f"{path}.hsts", f"HSTS needs https; the listener at {address} is http"
                )
        elif frontend.certificate is None and listener.certificate is None:
            raise ConfigError(
                path,
                f"no certificate: the https listener at {address} has none to lend; "
                "set certificate and key on the frontend or on the listener",
            )
        if frontend.tls_versions is not None and frontend.certificate is None:
            self._warn(f"{path}.tls_versions", "applies with certificate only and is ignored")
        kind = frontend.path_type or "PREFIX"
        if kind == "REGEX":
            try:
                compile_regex(frontend.path or "")  # RE2, as the state and the workers
            except PatternError as error:
                message = str(error).replace("invalid regex", "invalid regular expression", 1)
                raise ConfigError(f"{path}.path", message) from None
        route = (address, frontend.hostname.lower(), kind, frontend.path or "", frontend.method)
        if route in self.routes:
            raise ConfigError(
                path, f"same address, hostname, path and method as {self.routes[route]}"
            )
        self.routes[route] = path

    def _tcp_cluster(self, cluster_id: str, path: str, cluster: ClusterSection) -> None:
        expect_proxy: dict[bool, str] = {}
        has_udp = False
        for index, frontend in enumerate(cluster.frontends):
            frontend_path = join_index(f"{path}.frontends", index)
            for name in frontend.__struct_fields__:
                value = getattr(frontend, name)
                if name not in TCP_FRONTEND_KEYS and value not in (None, (), {}):
                    self._warn(
                        f"{frontend_path}.{name}",
                        "does not apply to a tcp cluster's frontend and is ignored",
                    )
            address = frontend.address
            found = [lst for _, lst in self.listeners[address] if lst.protocol in ("tcp", "udp")]
            if not found:
                other = self.listeners[address][0][1].protocol
                raise ConfigError(
                    f"{frontend_path}.address",
                    f"a tcp cluster's frontend needs a tcp or udp listener; "
                    f"{address} is an {other} listener",
                )
            for listener in found:
                slot = (address, listener.protocol)
                if slot in self.owners:
                    owner, first = self.owners[slot]
                    served = "this cluster" if owner == cluster_id else f"cluster {owner!r}"
                    raise ConfigError(
                        f"{frontend_path}.address",
                        f"the {listener.protocol} listener at {address} already serves "
                        f"{served} ({first}); a tcp or udp listener serves one cluster",
                    )
                self.owners[slot] = (cluster_id, frontend_path)
                if listener.protocol == "udp":
                    has_udp = True
                    continue
                expects = bool(listener.expect_proxy)
                if (not expects) in expect_proxy:
                    raise ConfigError(
                        f"{frontend_path}.address",
                        f"the listener at {address} has expect_proxy = "
                        f"{str(expects).lower()} but {expect_proxy[not expects]} uses one with "
                        f"{str(not expects).lower()}; a tcp cluster's frontends must agree",
                    )
                expect_proxy.setdefault(expects, frontend_path)
        if cluster.send_proxy and not expect_proxy and has_udp:
            self._warn(
                f"{path}.send_proxy",
                "applies to tcp frontends only; a udp cluster sends PROXY headers with "
                "udp.send_proxy_protocol",
            )
        if cluster.udp is not None and not has_udp and cluster.frontends:
            self._warn(f"{path}.udp", "the cluster has no udp frontend; the table is unused")
