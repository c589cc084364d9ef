"""Certificate selection by server name and the SNI/authority binding rule."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sozu.worker.core.http.certificate_resolver import (
    CertificateResolver,
    authority_matches,
    normalize_name,
    strip_port,
    wildcard_key,
)

A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)


def test_exact_name_resolves_and_is_case_insensitive() -> None:
    resolver = CertificateResolver()
    resolver.add(A, ["Example.COM."], 100)
    assert resolver.resolve("example.com") == A
    assert resolver.resolve("EXAMPLE.com.") == A
    assert resolver.resolve("www.example.com") is None
    assert resolver.resolve("") is None
    resolver.check_invariants()


def test_exact_beats_wildcard_even_when_wildcard_lives_longer() -> None:
    resolver = CertificateResolver()
    resolver.add(A, ["*.example.com"], 900)
    resolver.add(B, ["www.example.com"], 100)
    assert resolver.resolve("www.example.com") == B
    assert resolver.resolve("api.example.com") == A
    resolver.check_invariants()


def test_wildcard_covers_exactly_one_label() -> None:
    resolver = CertificateResolver()
    resolver.add(A, ["*.example.com"], 100)
    assert resolver.resolve("a.example.com") == A
    assert resolver.resolve("a.b.example.com") is None
    assert resolver.resolve("example.com") is None
    assert resolver.resolve(".example.com") is None


def test_latest_expiry_wins_and_removal_falls_back() -> None:
    resolver = CertificateResolver()
    resolver.add(A, ["example.com"], 100)
    resolver.add(B, ["example.com"], 300)
    resolver.add(C, ["example.com"], 200)
    assert resolver.resolve("example.com") == B
    assert resolver.remove(B)
    assert resolver.resolve("example.com") == C
    assert resolver.remove(C)
    assert resolver.resolve("example.com") == A
    assert resolver.remove(A)
    assert not resolver.remove(A)
    assert resolver.resolve("example.com") is None
    assert len(resolver) == 0
    resolver.check_invariants()


def test_expired_at_override_wins_over_not_after() -> None:
    resolver = CertificateResolver()
    resolver.add(A, ["example.com"], 100, expired_at=1000)
    resolver.add(B, ["example.com"], 500)
    assert resolver.resolve("example.com") == A
    assert resolver.min_expiry() == 500
    resolver.add(A, ["example.com"], 100)  # re-adding updates
    assert resolver.resolve("example.com") == B
    assert resolver.min_expiry() == 100
    resolver.check_invariants()


def test_min_expiry_empty() -> None:
    assert CertificateResolver().min_expiry() is None


def test_helpers() -> None:
    assert normalize_name("WWW.Example.com.") == "www.example.com"
    assert wildcard_key("a.example.com") == "*.example.com"
    assert wildcard_key("com") is None
    assert wildcard_key("*.example.com") is None
    assert strip_port("example.com:8443") == "example.com"
    assert strip_port("[::1]:443") == "[::1]"
    assert strip_port("[::1]") == "[::1]"
    assert strip_port("::1") == "::1"
    assert strip_port("example.com") == "example.com"


@pytest.mark.parametrize(
    ("names", "sni", "authority", "default_used", "expected"),
    [
        (["example.com"], "example.com", "example.com", False, True),
        (["example.com"], "example.com", "EXAMPLE.com.:443", False, True),
        (["example.com"], "example.com", "other.com", False, False),
        (["*.example.com"], "a.example.com", "b.example.com", False, True),
        (["*.example.com"], "a.example.com", "a.b.example.com", False, False),
        (["*.example.com"], "a.example.com", "example.com", False, False),
        (["*.example.com"], "a.example.com", ".example.com", False, False),
        (["a.com", "b.com"], "a.com", "b.com:80", False, True),
        (["default.test"], "unknown.com", "unknown.com:443", True, True),
        (["default.test"], "unknown.com", "default.test", True, True),
        (["default.test"], "unknown.com", "other.test", True, False),
        (["default.test"], None, "default.test", True, True),
        (["default.test"], None, "other.test", True, False),
        (["example.com"], "example.com", "", False, False),
    ],
)
def test_authority_matches(
    names: list[str], sni: str | None, authority: str, default_used: bool, expected: bool
) -> None:
    assert authority_matches(names, sni, authority, default_used) is expected


def test_module_is_sans_io() -> None:
    code = (
        "import sys, sozu.worker.core.http.certificate_resolver\n"
        "print(','.join(m for m in ('ssl', 'socket', 'trio') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


LABELS = st.sampled_from(["a", "b", "www", "api"])
NAMES = st.one_of(
    st.builds(lambda label: f"{label}.example.com", LABELS),
    st.just("*.example.com"),
    st.just("example.com"),
)
FINGERPRINTS = st.sampled_from([A, B, C, D])
OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            FINGERPRINTS,
            st.lists(NAMES, min_size=1, max_size=3),
            st.integers(0, 5),
            st.none() | st.integers(0, 5),
        ),
        st.tuples(st.just("remove"), FINGERPRINTS),
    ),
    max_size=30,
)


def reference_resolve(table: dict[str, tuple[set[str], int]], name: str) -> str | None:
    """Brute force: best exact holder, else best one-label wildcard holder."""
    for pattern in (name, wildcard_key(name)):
        holders = [(exp, fp) for fp, (names, exp) in table.items() if pattern in names]
        if holders:
            return max(holders)[1]
    return None


@settings(max_examples=200, deadline=None)
@given(OPS, st.lists(st.sampled_from(["a", "b", "www", "api", "x.y"]), max_size=5))
def test_resolver_matches_brute_force(ops: list[tuple[object, ...]], probes: list[str]) -> None:
    resolver = CertificateResolver()
    table: dict[str, tuple[set[str], int]] = {}
    for op in ops:
        if op[0] == "add":
            _, fp, names, not_after, expired_at = op
            assert isinstance(fp, str)
            assert isinstance(names, list)
            assert isinstance(not_after, int)
            assert expired_at is None or isinstance(expired_at, int)
            resolver.add(fp, names, not_after, expired_at)
            table[fp] = (set(names), not_after if expired_at is None else expired_at)
        else:
            fp = op[1]
            assert isinstance(fp, str)
            assert resolver.remove(fp) == (fp in table)
            table.pop(fp, None)
        resolver.check_invariants()
        for probe in [*probes, "example.com"]:
            name = probe if probe == "example.com" else f"{probe}.example.com"
            assert resolver.resolve(name) == reference_resolve(table, name)
        expected_min = min((exp for _, exp in table.values()), default=None)
        assert resolver.min_expiry() == expected_min


@given(
    st.sampled_from(["example.com", "*.example.com", "a.example.com"]),
    st.sampled_from(["example.com", "a.example.com", "A.Example.Com.", "a.b.example.com"]),
    st.sampled_from(["", ":443", ":8080"]),
)
def test_authority_binding_is_case_and_port_insensitive(
    cert_name: str, host: str, port: str
) -> None:
    plain = authority_matches([cert_name], None, host.lower().rstrip("."), False)
    assert authority_matches([cert_name], None, host + port, False) is plain
