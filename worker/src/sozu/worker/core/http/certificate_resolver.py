"""Which certificate serves a TLS server name on one listener, and SNI/authority binding.

Sans-io: certificates are known by fingerprint, names and expiry only; the ssl side lives in
`tls_contexts`. Exact names beat wildcards, a wildcard `*.suffix` covers exactly one leftmost
label, and among the certificates of one name the latest expiry wins (ties: highest
fingerprint, so the choice never depends on the order of additions).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache


def normalize_name(name: str) -> str:
    """Lowercase a DNS name and drop one trailing dot."""
    name = name.strip().lower()
    return name[:-1] if name.endswith(".") else name


def wildcard_key(name: str) -> str | None:
    """The `*.suffix` pattern that would cover a normalized name, if it has a leftmost label."""
    label, dot, suffix = name.partition(".")
    if not dot or not label or not suffix or label == "*":
        return None
    return "*." + suffix


def strip_port(authority: str) -> str:
    """The host part of a request authority (`host`, `host:port`, `[v6]`, `[v6]:port`)."""
    if authority.startswith("["):
        end = authority.find("]")
        return authority[: end + 1] if end >= 0 else authority
    host, colon, port = authority.rpartition(":")
    if colon and port.isdigit() and ":" not in host:
        return host
    return authority


def name_matches(pattern: str, host: str) -> bool:
    """A normalized host equals a normalized certificate name or falls under its wildcard."""
    if pattern == host:
        return True
    return pattern.startswith("*.") and wildcard_key(host) == pattern


def authority_matches(
    cert_names: Iterable[str], sni: str | None, authority: str, default_used: bool
) -> bool:
    """A request authority is allowed on a connection whose handshake served these names.

    The served certificate's names cover it; and when the listener's default certificate
    answered an unknown SNI, the SNI itself is allowed too (upstream allows only the SNI
    then: a client that connected by address, whose SNI names no certificate, could not
    reach a host the default certificate does cover).
    """
    host = normalize_name(strip_port(authority.strip()))
    if not host:
        return False
    if default_used and sni is not None and host == normalize_name(sni):
        return True
    return any(name_matches(normalize_name(name), host) for name in cert_names)


@lru_cache(maxsize=4096)
def authority_allowed(
    cert_names: tuple[str, ...], sni: str | None, authority: str, default_used: bool
) -> bool:
    """`authority_matches`, remembered: the verdict for a connection's handshake and one
    request authority never changes, and a listener's clients repeat both."""
    return authority_matches(cert_names, sni, authority, default_used)


@dataclass(frozen=True, slots=True)
class ResolvedCertificate:
    fingerprint: str
    names: tuple[str, ...]
    expires_at: int


class CertificateResolver:
    """Name -> fingerprint lookup of one listener's certificates."""

    def __init__(self) -> None:
        self._certificates: dict[str, ResolvedCertificate] = {}
        # name (exact or `*.suffix`) -> fingerprints serving it
        self._by_name: dict[str, set[str]] = {}
        # name -> the winning fingerprint, recomputed when the name's set changes
        self._best: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._certificates)

    def __contains__(self, fingerprint: object) -> bool:
        return fingerprint in self._certificates

    def fingerprints(self) -> list[str]:
        return sorted(self._certificates)

    def get(self, fingerprint: str) -> ResolvedCertificate | None:
        return self._certificates.get(fingerprint)

    def add(
        self,
        fingerprint: str,
        names: Iterable[str],
        not_after: int,
        expired_at: int | None = None,
    ) -> None:
        """Add (or update) a certificate; `expired_at` overrides the certificate's own expiry."""
        if fingerprint in self._certificates:
            self.remove(fingerprint)
        normalized = tuple(dict.fromkeys(n for n in map(normalize_name, names) if n))
        expiry = not_after if expired_at is None else expired_at
        self._certificates[fingerprint] = ResolvedCertificate(fingerprint, normalized, expiry)
        for name in normalized:
            self._by_name.setdefault(name, set()).add(fingerprint)
            self._elect(name)

    def remove(self, fingerprint: str) -> bool:
        """Forget a certificate; its names fall to the next-longest-lived one. False if absent."""
        entry = self._certificates.pop(fingerprint, None)
        if entry is None:
            return False
        for name in entry.names:
            holders = self._by_name[name]
            holders.discard(fingerprint)
            if not holders:
                del self._by_name[name]
            self._elect(name)
        return True

    def clear(self) -> None:
        self._certificates.clear()
        self._by_name.clear()
        self._best.clear()

    def _elect(self, name: str) -> None:
        holders = self._by_name.get(name)
        if not holders:
            self._best.pop(name, None)
            return
        self._best[name] = max(holders, key=lambda f: (self._certificates[f].expires_at, f))

    def resolve(self, server_name: str) -> str | None:
        """The fingerprint serving a server name: exact first, then one-label wildcard."""
        name = normalize_name(server_name)
        if not name:
            return None
        exact = self._best.get(name)
        if exact is not None:
            return exact
        pattern = wildcard_key(name)
        return None if pattern is None else self._best.get(pattern)

    def min_expiry(self) -> int | None:
        """The soonest expiry (epoch seconds) among the certificates, None without any."""
        return min((c.expires_at for c in self._certificates.values()), default=None)

    def check_invariants(self) -> None:
        """Raise AssertionError when the indexes disagree with the certificate table."""
        expected: dict[str, set[str]] = {}
        for fingerprint, entry in self._certificates.items():
            assert entry.fingerprint == fingerprint, f"{fingerprint} stored under another key"
            for name in entry.names:
                assert name, f"{fingerprint} has an empty name"
                assert name == normalize_name(name), f"name {name!r} not normalized"
                expected.setdefault(name, set()).add(fingerprint)
        assert self._by_name == expected, "name index differs from the certificates' names"
        assert set(self._best) == set(self._by_name), "winner table misses or keeps a name"
        for name, winner in self._best.items():
            best = max(self._by_name[name], key=lambda f: (self._certificates[f].expires_at, f))
            assert winner == best, f"{name}: {winner} serves instead of {best}"
