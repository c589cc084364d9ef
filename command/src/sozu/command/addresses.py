"""Socket address strings: parsing, validation and the canonical form used as state keys.

Addresses travel as strings (`127.0.0.1:8080`, `[::1]:8443`) so that JSON, msgpack and the
state file agree; every address that enters the state is canonicalised first, so that two
spellings of one address can never become two keys.
"""

from __future__ import annotations

import functools
import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressError(ValueError):
    """A string that is not an `ip:port` socket address."""


# An IPv6 scope zone: an interface name or index.
_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


def parse_address(text: str) -> tuple[IPAddress, int]:
    """Split `ip:port` or `[ipv6]:port` into an ip address and a port (0..65535)."""
    if not isinstance(text, str) or not text:
        raise AddressError(f"invalid socket address {text!r}")
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise AddressError(f"invalid socket address {text!r}")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise AddressError(f"invalid socket address {text!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise AddressError(f"invalid socket address {text!r}") from None
    zone = getattr(ip, "scope_id", None)
    if zone is not None and not _ZONE.fullmatch(zone):
        raise AddressError(f"invalid IPv6 zone in socket address {text!r}")
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        raise AddressError(f"invalid socket address {text!r}")
    if int(port_text) > 65535:
        raise AddressError(f"invalid socket address {text!r}")
    return ip, int(port_text)


def format_address(ip: IPAddress, port: int) -> str:
    """The canonical text of a socket address."""
    assert 0 <= port <= 65535
    if ip.version == 6:
        return f"[{ip.compressed}]:{port}"
    return f"{ip.compressed}:{port}"


@functools.lru_cache(maxsize=65536)
def canonical_address(text: str) -> str:
    """Validate an address and return its canonical spelling (cached: decoding hot path)."""
    ip, port = parse_address(text)
    return format_address(ip, port)


def to_sockaddr(text: str) -> tuple[str, int]:
    """The `(host, port)` pair the socket module takes."""
    ip, port = parse_address(text)
    return ip.compressed, port
