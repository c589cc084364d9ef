"""A checked `Config` as the requests that build its state (docs/configuration.md).

Order: listeners (added inactive; HTTP, HTTPS, TCP, UDP), then per cluster in id order its
`AddCluster`, its frontends (an `AddCertificate` before the HTTPS frontend that carries it)
and its backends, then the activations, then the runtime settings. PEM files are read and
checked here, so a bad file is reported with its key path and its name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sozu.command.certificates import (
    CertificateError,
    CertificateFacts,
    check_key_matches,
    check_private_key,
    inspect_certificate,
)
from sozu.command.config_error import ConfigError, join_index, join_key
from sozu.command.config_schema import (
    TLS_VERSIONS,
    ClusterSection,
    Config,
    FileHeaderPosition,
    FileRedirect,
    FileRedirectScheme,
    FrontendSection,
    ListenerSection,
    listeners_by_address,
)
from sozu.command.listener_configs import listener_field_problems
from sozu.command.request_checks import (
    Problem,
    backend_problems,
    cluster_problems,
    http_frontend_problems,
)
from sozu.command.requests import (
    ActivateListener,
    AddBackend,
    AddCertificate,
    AddCluster,
    AddHttpFrontend,
    AddHttpListener,
    AddHttpsFrontend,
    AddHttpsListener,
    AddTcpFrontend,
    AddTcpListener,
    AddUdpFrontend,
    AddUdpListener,
    ConfigureMetrics,
    Request,
    SetMaxConnectionsPerIp,
)
from sozu.command.types import (
    H2_KNOB_NAMES,
    Backend,
    CertificateAndKey,
    Cluster,
    Header,
    HeaderPosition,
    HttpListenerConfig,
    HttpsListenerConfig,
    ListenerType,
    LoadBalancingParams,
    PathRule,
    ProxyProtocolConfig,
    RedirectPolicy,
    RedirectScheme,
    RequestHttpFrontend,
    RequestTcpFrontend,
    RequestUdpFrontend,
    TcpListenerConfig,
    UdpListenerConfig,
)

_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----\s*", re.DOTALL
)
_PROXY: dict[str, ListenerType] = {"http": "HTTP", "https": "HTTPS", "tcp": "TCP", "udp": "UDP"}
_ORDER = {"http": 0, "https": 1, "tcp": 2, "udp": 3}
_REDIRECTS: dict[FileRedirect, RedirectPolicy] = {
    "forward": "FORWARD",
    "permanent": "PERMANENT",
    "found": "FOUND",
    "permanent_redirect": "PERMANENT_REDIRECT",
    "unauthorized": "UNAUTHORIZED",
}
_SCHEMES: dict[FileRedirectScheme, RedirectScheme] = {
    "use-same": "USE_SAME",
    "use-http": "USE_HTTP",
    "use-https": "USE_HTTPS",
}
_HEADER_POSITIONS: dict[FileHeaderPosition, HeaderPosition] = {
    "request": "REQUEST",
    "response": "RESPONSE",
    "both": "BOTH",
}
_HTTP_OPTIONAL: tuple[str, ...] = (
    "expect_proxy",
    "sticky_name",
    "sozu_id_header",
    "elide_x_real_ip",
    "send_x_real_ip",
    *H2_KNOB_NAMES,
)
_TLS_OPTIONAL: tuple[str, ...] = (
    "cipher_list",
    "cipher_suites",
    "groups_list",
    "send_tls13_tickets",
    "alpn_protocols",
    "strict_sni_binding",
    "disable_http11",
    "hsts",
)


def config_to_requests(config: Config) -> list[Request]:
    """The requests that build the state a checked config describes."""
    return _Builder(config).build()


def _set(listener: ListenerSection, names: tuple[str, ...]) -> dict[str, Any]:
    """The named keys the listener sets (unset ones keep the type's default)."""
    found = {name: getattr(listener, name) for name in names}
    return {name: value for name, value in found.items() if value is not None}


def _proxy_protocol(send: bool, expect: bool) -> ProxyProtocolConfig | None:
    if send and expect:
        return "RELAY_HEADER"
    if send:
        return "SEND_HEADER"
    if expect:
        return "EXPECT_HEADER"
    return None


class _Builder:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.listeners = listeners_by_address(config)
        self._texts: dict[str, str] = {}
        self._facts: dict[str, CertificateFacts] = {}
        self._added: set[tuple[str, str]] = set()

    def build(self) -> list[Request]:
        config = self.config
        ordered = sorted(enumerate(config.listeners), key=lambda item: _ORDER[item[1].protocol])
        requests = [self._checked_listener(index, listener) for index, listener in ordered]
        for cluster_id in sorted(config.clusters):
            requests.extend(self._cluster(cluster_id, config.clusters[cluster_id]))
        if config.activate_listeners:
            requests.extend(
                ActivateListener(address=listener.address, proxy=_PROXY[listener.protocol])
                for _, listener in ordered
            )
        if config.disable_cluster_metrics:
            requests.append(ConfigureMetrics(config="DISABLED"))
        if config.max_connections_per_ip:
            requests.append(SetMaxConnectionsPerIp(limit=config.max_connections_per_ip))
        return requests

    # -- listeners --------------------------------------------------------------------------

    def _checked_listener(self, index: int, listener: ListenerSection) -> Request:
        """The Add*Listener request, refused here with its key path if the state would."""
        request = self._listener(index, listener)
        assert isinstance(
            request, AddHttpListener | AddHttpsListener | AddTcpListener | AddUdpListener
        )
        for field, problem in listener_field_problems(request.listener):
            raise ConfigError(f"{join_index('listeners', index)}.{field}", problem)
        return request

    def _listener(self, index: int, listener: ListenerSection) -> Request:
        config = self.config
        path = join_index("listeners", index)
        fields: dict[str, Any] = {
            "address": listener.address,
            "public_address": listener.public_address,
        }
        if listener.protocol == "udp":
            fields |= _set(listener, ("front_timeout", "back_timeout"))
            fields |= _set(listener, ("max_rx_datagram_size", "max_flows"))
            return AddUdpListener(listener=UdpListenerConfig(**fields))
        fields["front_timeout"] = _or(listener.front_timeout, config.front_timeout)
        fields["back_timeout"] = _or(listener.back_timeout, config.back_timeout)
        fields["connect_timeout"] = _or(listener.connect_timeout, config.connect_timeout)
        if listener.protocol == "tcp":
            fields |= _set(listener, ("expect_proxy",))
            return AddTcpListener(listener=TcpListenerConfig(**fields))
        fields["request_timeout"] = _or(listener.request_timeout, config.request_timeout)
        fields["answers"] = listener.answers
        fields |= _set(listener, _HTTP_OPTIONAL)
        if listener.protocol == "http":
            return AddHttpListener(listener=HttpListenerConfig(**fields))
        fields |= _set(listener, _TLS_OPTIONAL)
        if listener.tls_versions is not None:
            fields["versions"] = tuple(TLS_VERSIONS[v] for v in listener.tls_versions)
        if listener.certificate is not None:
            fields["certificate"] = self._certificate(listener.certificate, f"{path}.certificate")
        if listener.key is not None:
            fields["key"] = self._key(listener.key, f"{path}.key", fields.get("certificate"))
        if listener.certificate_chain is not None:
            chain_path = f"{path}.certificate_chain"
            fields["certificate_chain"] = self._chain(listener.certificate_chain, chain_path)
        return AddHttpsListener(listener=HttpsListenerConfig(**fields))

    # -- clusters ---------------------------------------------------------------------------

    def _cluster(self, cluster_id: str, cluster: ClusterSection) -> list[Request]:
        path = join_key("clusters", cluster_id)
        frontends: list[Request] = []
        expect_proxy = False
        for index, frontend in enumerate(cluster.frontends):
            frontend_path = join_index(f"{path}.frontends", index)
            if cluster.protocol == "http":
                frontends.extend(self._http_frontend(cluster_id, frontend_path, frontend))
                continue
            for listener in self._listeners_at(frontend_path, frontend, ("tcp", "udp")):
                if listener.protocol == "tcp":
                    expect_proxy = expect_proxy or bool(listener.expect_proxy)
                    tcp = RequestTcpFrontend(
                        cluster_id=cluster_id, address=frontend.address, tags=frontend.tags
                    )
                    frontends.append(AddTcpFrontend(frontend=tcp))
                else:
                    udp = RequestUdpFrontend(
                        cluster_id=cluster_id, address=frontend.address, tags=frontend.tags
                    )
                    frontends.append(AddUdpFrontend(frontend=udp))
        proxy_protocol = None
        if cluster.protocol == "tcp":
            proxy_protocol = _proxy_protocol(cluster.send_proxy, expect_proxy)
        record = Cluster(
            cluster_id=cluster_id,
            sticky_session=cluster.sticky_session,
            https_redirect=cluster.https_redirect,
            proxy_protocol=proxy_protocol,
            load_balancing=cluster.load_balancing,
            load_metric=cluster.load_metric,
            http2=cluster.http2,
            https_redirect_port=cluster.https_redirect_port,
            authorized_hashes=cluster.authorized_hashes,
            www_authenticate=cluster.www_authenticate,
            answers=cluster.answers,
            max_connections_per_ip=cluster.max_connections_per_ip,
            retry_after=cluster.retry_after,
            health_check=cluster.health_check,
            udp=cluster.udp,
        )
        _refuse(cluster_problems(record), path, path)
        backends: list[Request] = []
        addresses: dict[str, tuple[int, str]] = {}  # backend id -> its first index, address
        for index, backend in enumerate(cluster.backends):
            params = None
            if backend.weight is not None:
                params = LoadBalancingParams(weight=backend.weight)
            backend_id = backend.backend_id
            if backend_id is None:
                backend_id = f"{cluster_id}-{index}-{backend.address}"
            entry = Backend(
                cluster_id=cluster_id,
                backend_id=backend_id,
                address=backend.address,
                sticky_id=backend.sticky_id,
                load_balancing_parameters=params,
                backup=backend.backup,
            )
            _refuse(backend_problems(entry), join_index(f"{path}.backends", index), path)
            first, address = addresses.setdefault(backend_id, (index, entry.address))
            if address != entry.address:
                raise ConfigError(
                    f"{join_index(f'{path}.backends', index)}.backend_id",
                    f"backend id {backend_id!r} already names backends[{first}] at {address};"
                    " a backend id names one address",
                )
            backends.append(AddBackend(backend=entry))
        return [AddCluster(cluster=record), *frontends, *backends]

    def _listeners_at(
        self, path: str, frontend: FrontendSection, protocols: tuple[str, ...]
    ) -> list[ListenerSection]:
        found = [
            listener
            for _, listener in self.listeners.get(frontend.address, [])
            if listener.protocol in protocols
        ]
        if not found:
            wanted = " or ".join(protocols)
            raise ConfigError(f"{path}.address", f"no {wanted} listener at {frontend.address}")
        return found

    def _http_frontend(
        self, cluster_id: str, path: str, frontend: FrontendSection
    ) -> list[Request]:
        listener = self._listeners_at(path, frontend, ("http", "https"))[0]
        if not frontend.hostname:
            raise ConfigError(f"{path}.hostname", "missing: an http cluster's frontend needs one")
        scheme = frontend.redirect_scheme
        request = _http_frontend_record(
            path,
            address=frontend.address,
            hostname=frontend.hostname,
            cluster_id=cluster_id,
            path=PathRule(kind=frontend.path_type or "PREFIX", value=frontend.path or ""),
            method=frontend.method,
            position=frontend.position or "TREE",
            tags=frontend.tags,
            redirect=_REDIRECTS[frontend.redirect] if frontend.redirect else None,
            redirect_scheme=_SCHEMES[scheme] if scheme else None,
            redirect_template=frontend.redirect_template,
            rewrite_host=frontend.rewrite_host,
            rewrite_path=frontend.rewrite_path,
            rewrite_port=frontend.rewrite_port,
            required_auth=frontend.required_auth,
            headers=tuple(
                Header(position=_HEADER_POSITIONS[h.position], key=h.key, val=h.value)
                for h in frontend.headers
            ),
            hsts=frontend.hsts,
        )
        _refuse(http_frontend_problems(request), path, path.rpartition(".frontends[")[0])
        if listener.protocol == "http":
            return [AddHttpFrontend(frontend=request)]
        requests: list[Request] = []
        if frontend.certificate is not None:
            if frontend.key is None:
                raise ConfigError(f"{path}.key", "missing: certificate requires key")
            certificate = self._certificate(frontend.certificate, f"{path}.certificate")
            facts = self._facts[frontend.certificate]
            if not facts.names:
                raise ConfigError(
                    f"{path}.certificate",
                    f"{frontend.certificate!r}: no DNS name (no SAN and no CN) to serve",
                )
            fingerprint = facts.fingerprint
            key = self._key(frontend.key, f"{path}.key", certificate)
            chain: tuple[str, ...] = ()
            if frontend.certificate_chain is not None:
                chain_path = f"{path}.certificate_chain"
                chain = self._chain(frontend.certificate_chain, chain_path)
            if (frontend.address, fingerprint) not in self._added:
                self._added.add((frontend.address, fingerprint))
                versions = tuple(TLS_VERSIONS[v] for v in frontend.tls_versions or ())
                pair = CertificateAndKey(
                    certificate=certificate, key=key, certificate_chain=chain, versions=versions
                )
                requests.append(AddCertificate(address=frontend.address, certificate=pair))
        requests.append(AddHttpsFrontend(frontend=request))
        return requests

    # -- PEM files --------------------------------------------------------------------------

    def _read(self, file: str, path: str) -> str:
        if file not in self._texts:
            try:
                self._texts[file] = Path(file).read_text(encoding="utf-8")
            except OSError as error:
                raise ConfigError(path, f"cannot read {file!r}: {error.strerror}") from None
            except UnicodeDecodeError:
                raise ConfigError(path, f"{file!r} is not a PEM text file") from None
        return self._texts[file]

    def _certificate(self, file: str, path: str) -> str:
        text = self._read(file, path)
        if file not in self._facts:
            try:
                self._facts[file] = inspect_certificate(text)
            except CertificateError as error:
                raise ConfigError(path, f"{file!r}: {error}") from None
        return text

    def _key(self, file: str, path: str, certificate: str | None) -> str:
        """The key's text, checked to be the private half of `certificate` when given."""
        text = self._read(file, path)
        try:
            check_private_key(text)
            if certificate is not None:
                check_key_matches(certificate, text)
        except CertificateError as error:
            raise ConfigError(path, f"{file!r}: {error}") from None
        return text

    def _chain(self, file: str, path: str) -> tuple[str, ...]:
        text = self._read(file, path)
        blocks = tuple(block.strip() + "\n" for block in _PEM_CERTIFICATE.findall(text))
        if not blocks:
            raise ConfigError(path, f"{file!r}: no PEM certificate found")
        for block in blocks:
            try:
                inspect_certificate(block)
            except CertificateError as error:
                raise ConfigError(path, f"{file!r}: {error}") from None
        return blocks


def _http_frontend_record(key_path: str, /, **fields: Any) -> RequestHttpFrontend:
    """The frontend record; what its own validation refuses is named by key."""
    try:
        return RequestHttpFrontend(**fields)
    except ValueError as error:
        # The record's messages start with the field at fault ("hostname 'a b' contains ...").
        field = str(error).split(" ", 1)[0].rstrip(":")
        raise ConfigError(
            f"{key_path}.{field}" if field in fields else key_path, str(error)
        ) from None


def _refuse(problems: list[Problem], path: str, cluster_path: str) -> None:
    """Refuse the first problem the state's checks find in a record, at the key of its field,
    so that a configuration that loads is one the state takes."""
    for field, message in problems:
        if field == "cluster_id":
            raise ConfigError(cluster_path, message)
        if field.startswith("tags."):
            raise ConfigError(join_key(f"{path}.tags", field[len("tags.") :]), message)
        if field.endswith(".val"):  # a header edit's value is `value` in the file
            field = field[: -len("val")] + "value"
        raise ConfigError(f"{path}.{field}", message)


def _or(value: int | None, default: int) -> int:
    return default if value is None else value
