"""Listener configurations as the state takes them.

What makes one invalid, for the state (which refuses it) and the configuration loader (which
names the key): port 0, zero HTTP/2 knobs, header and cookie names that are not tokens,
unsupported ALPN, and an HTTPS listener's own certificate, key and chain that its workers
could not load. And what an Update*Listener request makes of a listener (`patched_listener`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

import msgspec

from sozu.command import requests as rq
from sozu.command.certificates import (
    CertificateError,
    check_key_matches,
    check_private_key,
    inspect_certificate,
)
from sozu.command.types import (
    DEFAULT_ALPN,
    H2_NONZERO_KNOBS,
    HttpListenerConfig,
    HttpsListenerConfig,
    ListenerConfig,
)

_TOKEN: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
VALID_ALPN: Final = frozenset({"h2", "http/1.1"})


def listener_field_problems(listener: ListenerConfig) -> list[tuple[str, str]]:
    """(field, problem) pairs that make a listener configuration invalid."""
    problems = []
    if listener.address.endswith(":0"):
        problems.append(("address", f"listener address {listener.address} has port 0"))
    if isinstance(listener, HttpListenerConfig):
        for knob in H2_NONZERO_KNOBS:
            if getattr(listener, knob) == 0:
                problems.append((knob, f"{knob} must be greater than 0"))
        ratio = listener.h2_stream_shrink_ratio
        if ratio is not None and ratio < 2:
            problems.append(
                (
                    "h2_stream_shrink_ratio",
                    f"h2_stream_shrink_ratio must be at least 2, got {ratio}",
                )
            )
        if not _TOKEN.match(listener.sozu_id_header):
            problems.append(
                (
                    "sozu_id_header",
                    f"sozu_id_header {listener.sozu_id_header!r} is not a header name",
                )
            )
        if not _TOKEN.match(listener.sticky_name):
            problems.append(
                ("sticky_name", f"sticky_name {listener.sticky_name!r} is not a cookie name")
            )
    if isinstance(listener, HttpsListenerConfig):
        unknown = [p for p in listener.alpn_protocols if p not in VALID_ALPN]
        if unknown:
            problems.append(
                ("alpn_protocols", f"alpn_protocols {unknown} not supported (only h2 and http/1.1)")
            )
        if listener.disable_http11 and "http/1.1" in listener.alpn_protocols:
            problems.append(
                ("disable_http11", "disable_http11 conflicts with http/1.1 in alpn_protocols")
            )
        problems += _default_certificate_problems(listener)
    return problems


def _default_certificate_problems(listener: HttpsListenerConfig) -> list[tuple[str, str]]:
    """An HTTPS listener's own certificate, key and chain: what its workers could not load."""
    problems: list[tuple[str, str]] = []
    checks: list[tuple[str, str | None, Callable[[str], object]]] = [
        ("certificate", listener.certificate, inspect_certificate),
        ("key", listener.key, check_private_key),
    ]
    checks += [
        (f"certificate_chain[{index}]", entry, inspect_certificate)
        for index, entry in enumerate(listener.certificate_chain)
        if entry.strip()
    ]
    for field, text, check in checks:
        if text is None:
            continue
        try:
            check(text)
        except CertificateError as error:
            problems.append((field, f"{field}: {error}"))
    if not problems and listener.certificate is not None and listener.key is not None:
        try:
            check_key_matches(listener.certificate, listener.key)
        except CertificateError as error:
            problems.append(("key", f"key: {error}"))
    return problems


def listener_problems(listener: ListenerConfig) -> list[str]:
    """What makes a listener configuration invalid (empty when it is valid)."""
    return [problem for _, problem in listener_field_problems(listener)]


def patched_listener(listener: ListenerConfig, patch: rq._ListenerPatch) -> ListenerConfig:
    """`listener` with the fields an Update*Listener request sets: `answers` merged code by
    code (an empty body removes that answer), an empty `alpn_protocols` back to the default."""
    changes: dict[str, object] = {}
    for field in patch.__struct_fields__:
        value = getattr(patch, field)
        if field == "address" or value is None:
            continue
        if field == "answers":
            assert isinstance(listener, HttpListenerConfig)
            assert isinstance(value, dict)
            merged = dict(listener.answers)
            for code, body in value.items():
                if body:
                    merged[code] = body
                else:
                    merged.pop(code, None)
            value = merged
        elif field == "alpn_protocols" and value == ():
            value = DEFAULT_ALPN
        changes[field] = value
    return msgspec.structs.replace(listener, **changes)
