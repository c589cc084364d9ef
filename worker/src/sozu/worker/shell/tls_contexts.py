"""TLS termination settings of one HTTPS listener on top of Python's ssl module.

One `ssl.SSLContext` per certificate (cached by fingerprint) plus a base context whose SNI
callback asks the `CertificateResolver` which certificate serves the ClientHello's name and
switches the connection to that certificate's context. What the handshake served is kept per
connection so the session can check request authorities against it (SNI/authority binding).
Listener settings Python's ssl cannot express are reported as warnings naming the field.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from sozu.command.certificates import fingerprint as pem_fingerprint
from sozu.command.certificates import inspect_certificate
from sozu.command.state import ConfigState
from sozu.command.types import CertificateAndKey, HttpsListenerConfig
from sozu.worker.core.http.certificate_resolver import CertificateResolver, normalize_name
from sozu.worker.shell.tls_socket import TlsSocket
from sozu.worker.shell.tls_tickets import listener_keys, share_ticket_keys

# Upstream (rustls) cipher names -> OpenSSL names of the TLS 1.2 suites.
TLS12_CIPHERS: Final[dict[str, str]] = {
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
}
# Upstream TLS 1.3 suite names (and their IANA spellings) -> the IANA name.
TLS13_SUITES: Final[dict[str, str]] = {
    "TLS13_AES_256_GCM_SHA384": "TLS_AES_256_GCM_SHA384",
    "TLS13_AES_128_GCM_SHA256": "TLS_AES_128_GCM_SHA256",
    "TLS13_CHACHA20_POLY1305_SHA256": "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_AES_256_GCM_SHA384": "TLS_AES_256_GCM_SHA384",
    "TLS_AES_128_GCM_SHA256": "TLS_AES_128_GCM_SHA256",
    "TLS_CHACHA20_POLY1305_SHA256": "TLS_CHACHA20_POLY1305_SHA256",
}
DEFAULT_CIPHER_LIST: Final[tuple[str, ...]] = (
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
)
ALL_TLS13_SUITES: Final = frozenset(TLS13_SUITES.values())
# Upstream group names -> OpenSSL curve names; X25519MLKEM768 has no ssl-module equivalent.
GROUPS: Final[dict[str, str]] = {
    "x25519": "X25519",
    "p-256": "prime256v1",
    "secp256r1": "prime256v1",
    "p-384": "secp384r1",
    "secp384r1": "secp384r1",
}
ENABLED_VERSIONS: Final[dict[str, ssl.TLSVersion]] = {
    "TLS_V1_2": ssl.TLSVersion.TLSv1_2,
    "TLS_V1_3": ssl.TLSVersion.TLSv1_3,
}
HANDSHAKE_FAILURE_REASONS: Final[tuple[str, ...]] = (
    "alert_received",
    "peer_incompatible",
    "peer_misbehaved",
    "invalid_message",
    "inappropriate_message",
    "inappropriate_handshake_message",
    "oversized_record",
    "no_alpn",
    "invalid_certificate",
    "decrypt_error",
    "no_certificates_present",
    "other",
)
_INCOMPATIBLE: Final = frozenset(
    {
        "NO_SHARED_CIPHER",
        "UNSUPPORTED_PROTOCOL",
        "NO_PROTOCOLS_AVAILABLE",
        "NO_SUITABLE_SIGNATURE_ALGORITHM",
        "NO_SHARED_GROUPS",
        "NO_SUITABLE_KEY_SHARE",
        "VERSION_TOO_LOW",
        "VERSION_TOO_HIGH",
    }
)
_INVALID_MESSAGE: Final = frozenset(
    {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST", "BAD_PACKET_LENGTH"}
)


def classify_handshake_error(error: BaseException) -> str:
    """The upstream failure counter name (`tls.handshake.failed.<reason>`) of a handshake error."""
    reason = getattr(error, "reason", None) or ""
    if reason.startswith(("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")):
        return "alert_received"
    if reason in _INCOMPATIBLE:
        return "peer_incompatible"
    if reason in _INVALID_MESSAGE:
        return "invalid_message"
    if reason == "UNEXPECTED_MESSAGE":
        return "inappropriate_message"
    if reason in ("DATA_LENGTH_TOO_LONG", "RECORD_LENGTH_MISMATCH", "PACKET_LENGTH_TOO_LONG"):
        return "oversized_record"
    if reason in ("DECRYPTION_FAILED_OR_BAD_RECORD_MAC", "BAD_DECRYPT", "BAD_SIGNATURE"):
        return "decrypt_error"
    if reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE",):
        return "no_certificates_present"
    return "other"


@dataclass(frozen=True, slots=True)
class ServedCertificate:
    """What a handshake served, frozen for the connection's lifetime."""

    fingerprint: str
    names: tuple[str, ...]
    server_name: str | None
    default_used: bool


@dataclass(frozen=True, slots=True)
class _Loaded:
    context: ssl.SSLContext
    names: tuple[str, ...]


# Server names whose SNI choice a listener remembers (cleared when full).
CHOSEN_NAMES: Final = 1024

# ssl object (SSLObject or SSLSocket) -> what its handshake served; entries go with the object.
# A TlsSocket keeps its own (`served`).
_SERVED: weakref.WeakKeyDictionary[object, ServedCertificate] = weakref.WeakKeyDictionary()


def served_certificate(ssl_object: object) -> ServedCertificate | None:
    """What the SNI callback chose for a connection (None before it ran or when it refused)."""
    if isinstance(ssl_object, TlsSocket):
        return ssl_object.served
    return _SERVED.get(ssl_object)


def load_context(certificate_pem: str, chain: Iterable[str], key_pem: str) -> ssl.SSLContext:
    """A server context holding one certificate, its chain (leaf copies dropped) and key."""
    leaf = pem_fingerprint(certificate_pem)
    parts = [key_pem.strip(), certificate_pem.strip()]
    parts += [c.strip() for c in chain if c.strip() and pem_fingerprint(c) != leaf]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # The ssl module loads keys from files only: a 0600 temp file, removed right after.
    fd, path = tempfile.mkstemp(prefix="sozu-cert-", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(parts) + "\n")
        context.load_cert_chain(path)
    finally:
        os.unlink(path)
    return context


class ListenerTls:
    """The TLS side of one HTTPS listener: settings, per-certificate contexts, SNI selection."""

    def __init__(self, config: HttpsListenerConfig, *, ticket_secret: bytes | None = None) -> None:
        self.config = config
        self.address = config.address
        self.warnings: list[str] = []
        self.resolver = CertificateResolver()
        self._contexts: dict[str, _Loaded] = {}
        self._default: str | None = None
        # Server name -> what its handshakes get (the SNI callback's choice, made once while
        # the certificates stay as they are; bounded: clients choose the names).
        self._chosen: dict[str | None, tuple[ssl.SSLContext, ServedCertificate]] = {}
        self.default_cert_used = 0
        self.handshake_failures: dict[str, int] = dict.fromkeys(HANDSHAKE_FAILURE_REASONS, 0)
        self._settings = self._compute_settings(config)
        # This listener's session-ticket keys, the same in every worker of the supervisor
        # whose secret they come from (tls_tickets.py); None: each context keeps OpenSSL's own.
        self._ticket_keys = (
            None if ticket_secret is None else listener_keys(ticket_secret, config.address)
        )
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.apply_settings(self.context)
        self.context.sni_callback = self._on_server_name
        if config.certificate is not None and config.key is not None:
            self._default = self.add_certificate(
                CertificateAndKey(
                    certificate=config.certificate,
                    key=config.key,
                    certificate_chain=config.certificate_chain,
                )
            )
        elif config.certificate is not None or config.key is not None:
            self.warnings.append("certificate/key: both are needed for a default certificate")

    # -- settings ------------------------------------------------------------------------------

    def _compute_settings(self, config: HttpsListenerConfig) -> _Settings:
        warn = self.warnings.append
        versions = sorted({ENABLED_VERSIONS[v] for v in config.versions if v in ENABLED_VERSIONS})
        disabled = [v for v in config.versions if v not in ENABLED_VERSIONS]
        if disabled:
            warn(f"versions: {', '.join(disabled)} not enabled (only TLS 1.2 and 1.3 are)")
        if not versions:
            warn("versions: neither TLS_V1_2 nor TLS_V1_3 listed; both enabled")
            versions = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]

        tls12: list[str] = []
        tls13: set[str] = set()
        unknown = []
        for name in config.cipher_list or DEFAULT_CIPHER_LIST:
            if name in TLS12_CIPHERS:
                tls12.append(TLS12_CIPHERS[name])
            elif name in TLS13_SUITES:
                tls13.add(TLS13_SUITES[name])
            else:
                unknown.append(name)
        if unknown:
            warn(f"cipher_list: unknown ciphers {unknown} skipped")
        if ssl.TLSVersion.TLSv1_3 in versions and tls13 != ALL_TLS13_SUITES:
            if tls13:
                warn("cipher_list: TLS 1.3 suites cannot be restricted; all of them are offered")
            elif tls12:
                warn("cipher_list: no TLS 1.3 suite listed; TLS 1.3 disabled")
                versions = [v for v in versions if v != ssl.TLSVersion.TLSv1_3]
        if ssl.TLSVersion.TLSv1_2 in versions and not tls12:
            if len(versions) > 1:
                warn("cipher_list: no TLS 1.2 cipher listed; TLS 1.2 disabled")
                versions = [ssl.TLSVersion.TLSv1_3]
            else:
                warn("cipher_list: no usable TLS 1.2 cipher; OpenSSL defaults used")
        if config.cipher_suites:
            warn("cipher_suites: TLS 1.3 suites cannot be set with Python's ssl; ignored")
        if config.signature_algorithms:
            warn("signature_algorithms: cannot be set with Python's ssl; OpenSSL defaults used")

        groups = [GROUPS[g.lower()] for g in config.groups_list if g.lower() in GROUPS]
        skipped = [g for g in config.groups_list if g.lower() not in GROUPS]
        if skipped:
            warn(f"groups_list: unsupported groups {skipped} skipped")
        curve: str | None = None
        if len(dict.fromkeys(groups)) == 1:
            curve = groups[0]
        elif groups:
            warn("groups_list: only a single group can be set with Python's ssl; defaults used")

        alpn = [p for p in config.alpn_protocols if p in ("h2", "http/1.1")]

        return _Settings(
            minimum=versions[0],
            maximum=versions[-1],
            ciphers=":".join(tls12),
            curve=curve,
            tickets=config.send_tls13_tickets,
            alpn=tuple(alpn),
        )

    def apply_settings(self, context: ssl.SSLContext) -> None:
        """Put the listener's settings on a context (base and per-certificate alike)."""
        settings = self._settings
        context.minimum_version = settings.minimum
        context.maximum_version = settings.maximum
        if settings.ciphers:
            context.set_ciphers(settings.ciphers)
        if settings.curve is not None:
            context.set_ecdh_curve(settings.curve)
        context.num_tickets = settings.tickets
        if settings.alpn:
            context.set_alpn_protocols(list(settings.alpn))
        if self._ticket_keys is not None:
            why = share_ticket_keys(context, self._ticket_keys)
            if why is not None:
                self._ticket_keys = None  # said once; the contexts keep their own keys
                self.warnings.append(f"session tickets: {why}; each worker keeps its own keys")

    # -- certificates --------------------------------------------------------------------------

    @property
    def default_fingerprint(self) -> str | None:
        return self._default

    def add_certificate(self, certificate: CertificateAndKey, expired_at: int | None = None) -> str:
        """Load a certificate (or update its names/expiry) and return its fingerprint.

        Raises ssl.SSLError or CertificateError when the certificate or key cannot be used.
        """
        facts = inspect_certificate(certificate.certificate)
        names = tuple(dict.fromkeys(map(normalize_name, certificate.names or facts.names)))
        loaded = self._contexts.get(facts.fingerprint)
        if loaded is None:
            context = load_context(
                certificate.certificate, certificate.certificate_chain, certificate.key
            )
            self.apply_settings(context)
        else:
            context = loaded.context
        self._contexts[facts.fingerprint] = _Loaded(context, names)
        self.resolver.add(facts.fingerprint, names, facts.not_after, expired_at)
        self._chosen.clear()
        return facts.fingerprint

    def remove_certificate(self, fingerprint: str) -> bool:
        """Stop serving a certificate on new handshakes; open connections keep theirs.

        The listener's default certificate stays the fallback for unknown names.
        """
        fingerprint = fingerprint.lower()
        removed = self.resolver.remove(fingerprint)
        if fingerprint != self._default:
            self._contexts.pop(fingerprint, None)
        self._chosen.clear()
        return removed

    def replace_certificate(
        self, old_fingerprint: str, certificate: CertificateAndKey, expired_at: int | None = None
    ) -> str:
        """Add the new certificate, then remove the old one (unless it is the same)."""
        new = self.add_certificate(certificate, expired_at)
        if old_fingerprint.lower() != new:
            self.remove_certificate(old_fingerprint)
        return new

    def load_state(self, state: ConfigState) -> None:
        """Serve exactly the state's certificates of this listener (plus the default one)."""
        wanted = state.certificates.get(self.address, {})
        for fingerprint in self.resolver.fingerprints():
            if fingerprint not in wanted and fingerprint != self._default:
                self.remove_certificate(fingerprint)
        for stored in wanted.values():
            self.add_certificate(stored.certificate, stored.expired_at)

    @classmethod
    def from_state(
        cls, config: HttpsListenerConfig, state: ConfigState, *, ticket_secret: bytes | None = None
    ) -> ListenerTls:
        tls = cls(config, ticket_secret=ticket_secret)
        tls.load_state(state)
        return tls

    def min_expiry(self) -> int | None:
        return self.resolver.min_expiry()

    # -- handshakes ----------------------------------------------------------------------------

    def served(self, ssl_object: object) -> ServedCertificate | None:
        return served_certificate(ssl_object)

    def record_handshake_failure(self, error: BaseException) -> str:
        """Count a failed handshake under its upstream reason and return the reason."""
        reason = classify_handshake_error(error)
        self.handshake_failures[reason] += 1
        return reason

    def _on_server_name(
        self,
        ssl_object: ssl.SSLObject | ssl.SSLSocket | TlsSocket,
        server_name: str | None,
        _: object,
    ) -> int | None:
        chosen = self._chosen.get(server_name)
        if chosen is None:
            choice = self._choose(server_name)
            if isinstance(choice, int):
                return choice
            chosen = choice
            if len(self._chosen) >= CHOSEN_NAMES:
                self._chosen.clear()
            self._chosen[server_name] = chosen
        context, served = chosen
        if served.default_used:
            self.default_cert_used += 1
        ssl_object.context = context
        if isinstance(ssl_object, TlsSocket):
            ssl_object.served = served
        else:
            _SERVED[ssl_object] = served
        return None

    def _choose(self, server_name: str | None) -> tuple[ssl.SSLContext, ServedCertificate] | int:
        """The context and certificate a server name gets, or the alert refusing it."""
        # Without SNI the listener's default certificate answers (a clear failure when there
        # is none, as upstream): clients that connect by IP address still get a handshake.
        if server_name is None and self._default is None:
            return ssl.ALERT_DESCRIPTION_ACCESS_DENIED
        fingerprint = None if server_name is None else self.resolver.resolve(server_name)
        default_used = fingerprint is None
        if fingerprint is None:
            fingerprint = self._default
            if fingerprint is None:
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        loaded = self._contexts[fingerprint]
        sni = None if server_name is None else normalize_name(server_name)
        return loaded.context, ServedCertificate(fingerprint, loaded.names, sni, default_used)


@dataclass(frozen=True, slots=True)
class _Settings:
    minimum: ssl.TLSVersion
    maximum: ssl.TLSVersion
    ciphers: str
    curve: str | None
    tickets: int
    alpn: tuple[str, ...]
