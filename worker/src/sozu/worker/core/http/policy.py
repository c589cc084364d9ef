"""Frontend policies of an HTTP request: redirects, rewrites, Basic auth and the HSTS value.

Evaluation order follows upstream: an explicit redirect policy first (even without a
cluster), then "unauthorized or no cluster" (401), then the legacy cluster `https_redirect`
(HTTP listeners only, 301), then Basic auth when the frontend requires it.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

from sozu.command.route_patterns import compile_rewrite
from sozu.command.types import Cluster, HstsConfig, RequestHttpFrontend

__all__ = ["compile_rewrite"]

Scheme = Literal["http", "https"]

DEFAULT_HSTS_MAX_AGE: Final = 31_536_000
DEFAULT_MAX_CREDENTIAL_BYTES: Final = 4096

_REDIRECT_STATUS: Final = {"PERMANENT": 301, "FOUND": 302, "PERMANENT_REDIRECT": 308}


@dataclass(frozen=True, slots=True)
class Redirect:
    """Answer the request with a redirect; `template` is the frontend's inline answer."""

    status: int
    location: str
    template: str | None = None


@dataclass(frozen=True, slots=True)
class Unauthorized:
    """Answer 401; `www_authenticate` is the cluster's realm header value, if any."""

    www_authenticate: str | None = None


@dataclass(frozen=True, slots=True)
class Rewrite:
    """What to change in a forwarded request (None = unchanged)."""

    host: str | None = None
    path: str | None = None
    port: int | None = None


def strip_port(authority: str) -> str:
    """The host part of `host[:port]`; bracketed IPv6 literals keep their colons."""
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and port.isascii() and (not host.startswith("[") or host[-1:] == "]"):
        return host
    return authority


def redirect_location(scheme: str, host: str, path: str, port: int | None = None) -> str:
    """`scheme://host[:port]path`, the port left out when absent or the scheme's default."""
    host = strip_port(host)
    if port is None or (port == 80 and scheme == "http") or (port == 443 and scheme == "https"):
        return f"{scheme}://{host}{path}"
    return f"{scheme}://{host}:{port}{path}"


def rewrite_for(
    frontend: RequestHttpFrontend,
    host_captures: Sequence[str] = (),
    path_captures: Sequence[str] = (),
) -> Rewrite:
    """The frontend's rewritten host, path and port for this request's captures."""
    host = path = None
    if frontend.rewrite_host is not None:
        host = compile_rewrite(frontend.rewrite_host).render(host_captures, path_captures)
    if frontend.rewrite_path is not None:
        path = compile_rewrite(frontend.rewrite_path).render(host_captures, path_captures)
    return Rewrite(host=host, path=path, port=frontend.rewrite_port)


def redirect_for(
    frontend: RequestHttpFrontend | None,
    cluster: Cluster | None,
    *,
    listener_scheme: Scheme,
    authority: str,
    target: str,
    host_captures: Sequence[str] = (),
    path_captures: Sequence[str] = (),
) -> Redirect | None:
    """The redirect this request gets: the frontend's policy, else the legacy cluster
    `https_redirect` (HTTP listeners only, 301). `evaluate` also places the 401 checks.
    """
    https_port = cluster.https_redirect_port if cluster is not None else None
    if frontend is not None and frontend.redirect in _REDIRECT_STATUS:
        status = _REDIRECT_STATUS[frontend.redirect]
        scheme: str
        if frontend.redirect_scheme == "USE_HTTPS":
            scheme = "https"
        elif frontend.redirect_scheme == "USE_HTTP":
            scheme = "http"
        else:
            scheme = listener_scheme
        rewrite = rewrite_for(frontend, host_captures, path_captures)
        port = rewrite.port if rewrite.port is not None else https_port
        location = redirect_location(
            scheme,
            rewrite.host if rewrite.host is not None else authority,
            rewrite.path if rewrite.path is not None else target,
            port,
        )
        return Redirect(status, location, frontend.redirect_template)
    if cluster is not None and cluster.https_redirect and listener_scheme == "http":
        return Redirect(301, redirect_location("https", authority, target, https_port))
    return None


def evaluate(
    frontend: RequestHttpFrontend,
    cluster: Cluster | None,
    *,
    listener_scheme: Scheme,
    authority: str,
    target: str,
    authorization: bytes | None = None,
    host_captures: Sequence[str] = (),
    path_captures: Sequence[str] = (),
    max_credential_bytes: int = DEFAULT_MAX_CREDENTIAL_BYTES,
) -> Redirect | Unauthorized | None:
    """What the frontend policy answers instead of forwarding; None means forward."""
    if frontend.redirect in _REDIRECT_STATUS:
        return redirect_for(
            frontend,
            cluster,
            listener_scheme=listener_scheme,
            authority=authority,
            target=target,
            host_captures=host_captures,
            path_captures=path_captures,
        )
    realm = cluster.www_authenticate if cluster is not None else None
    if frontend.redirect == "UNAUTHORIZED" or frontend.cluster_id is None:
        return Unauthorized(realm)
    # A cluster missing from the state forwards anyway (and ends in 503 for want of backends).
    if cluster is not None and cluster.https_redirect and listener_scheme == "http":
        return Redirect(
            301, redirect_location("https", authority, target, cluster.https_redirect_port)
        )
    hashes = cluster.authorized_hashes if cluster is not None else ()
    if frontend.required_auth and not check_basic_auth(authorization, hashes, max_credential_bytes):
        return Unauthorized(realm)
    return None


@lru_cache(maxsize=256)
def _normalised_hashes(authorized_hashes: tuple[str, ...]) -> tuple[bytes, ...]:
    entries = []
    for entry in authorized_hashes:
        user, sep, digest = entry.rpartition(":")
        # An entry without ':' can never match (no credential renders without one).
        entries.append((user + sep + digest.strip().lower()).encode() if sep else b"\x00")
    return tuple(entries)


def check_basic_auth(
    authorization_value: bytes | None,
    authorized_hashes: Sequence[str],
    max_bytes: int = DEFAULT_MAX_CREDENTIAL_BYTES,
) -> bool:
    """Whether an `Authorization` value carries Basic credentials found in the list.

    Entries are `user:hex(sha256(password))`. Every entry is compared (hmac.compare_digest)
    whatever the outcome, so the time taken does not tell which one matched.
    """
    if authorization_value is None or not authorized_hashes:
        return False
    scheme, _, token = authorization_value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return False
    token = token.strip()
    # Four base64 characters carry three bytes: refuse before decoding anything larger.
    if not token or len(token) > (max_bytes + 2) // 3 * 4:
        return False
    try:
        decoded = binascii.a2b_base64(token, strict_mode=True)
    except binascii.Error:
        return False
    if len(decoded) > max_bytes:
        return False
    user, sep, password = decoded.partition(b":")
    if not sep:
        return False
    candidate = user + b":" + hashlib.sha256(password).hexdigest().encode()
    entries = _normalised_hashes(tuple(authorized_hashes))
    found = False
    for entry in entries:
        found |= hmac.compare_digest(candidate, entry)
    return found


def hsts_value(config: HstsConfig | None) -> bytes | None:
    """The `Strict-Transport-Security` value of a policy, None when disabled."""
    if config is None or not config.enabled:
        return None
    max_age = DEFAULT_HSTS_MAX_AGE if config.max_age is None else config.max_age
    value = f"max-age={max_age}"
    if config.include_subdomains:
        value += "; includeSubDomains"
    if config.preload:
        value += "; preload"
    return value.encode()
