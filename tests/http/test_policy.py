"""Redirects, rewrites, Basic auth and the HSTS value (docs/http.md, Frontend policies)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from sozu.command.types import Cluster, HstsConfig, RequestHttpFrontend
from sozu.worker.core.http.policy import (
    Redirect,
    Unauthorized,
    check_basic_auth,
    compile_rewrite,
    evaluate,
    hsts_value,
    redirect_for,
    redirect_location,
    rewrite_for,
    strip_port,
)


def frontend(**fields: Any) -> RequestHttpFrontend:
    base: dict[str, Any] = {"address": "127.0.0.1:8080", "hostname": "example.com"}
    return RequestHttpFrontend(**(base | fields))


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def entry(user: str, password: str) -> str:
    return f"{user}:{hashlib.sha256(password.encode()).hexdigest()}"


# ---------------------------------------------------------------------------------------------
# Location


@pytest.mark.parametrize(
    ("scheme", "host", "path", "port", "expected"),
    [
        ("http", "example.com", "/a?b=c", None, "http://example.com/a?b=c"),
        ("http", "example.com:8080", "/", None, "http://example.com/"),
        ("http", "example.com", "/", 80, "http://example.com/"),
        ("https", "example.com", "/", 443, "https://example.com/"),
        ("https", "example.com", "/", 80, "https://example.com:80/"),
        ("http", "example.com", "/", 443, "http://example.com:443/"),
        ("https", "example.com:80", "/x", 8443, "https://example.com:8443/x"),
        ("https", "[::1]:8080", "/", None, "https://[::1]/"),
        ("https", "[::1]", "/", 8443, "https://[::1]:8443/"),
    ],
)
def test_redirect_location(
    scheme: str, host: str, path: str, port: int | None, expected: str
) -> None:
    assert redirect_location(scheme, host, path, port) == expected


def test_strip_port() -> None:
    assert strip_port("a.com:80") == "a.com"
    assert strip_port("a.com") == "a.com"
    assert strip_port("[::1]") == "[::1]"
    assert strip_port("[::1]:1") == "[::1]"
    assert strip_port("a.com:") == "a.com:"


# ---------------------------------------------------------------------------------------------
# Rewrites


def test_rewrite_templates_with_captures() -> None:
    template = compile_rewrite("/$HOST[1]/api$PATH[1]-$PATH[0]")
    assert template.render(("a.example.com", "a"), ("/v1/x", "/x")) == "/a/api/x-/v1/x"
    # Missing captures render empty.
    assert template.render((), ()) == "//api-"
    assert compile_rewrite("plain").render((), ()) == "plain"
    assert compile_rewrite("$HOST[0]") is compile_rewrite("$HOST[0]")


@pytest.mark.parametrize("bad", ["$HOST", "$HOST[]", "$HOST[1", "$FOO[1]", "a$", "$PATH[x]"])
def test_malformed_rewrite_templates(bad: str) -> None:
    with pytest.raises(ValueError, match="rewrite template"):
        compile_rewrite(bad)


def test_rewrite_for_frontend() -> None:
    front = frontend(rewrite_host="$HOST[1].internal", rewrite_path="/new$PATH[1]", rewrite_port=9)
    rewrite = rewrite_for(front, ("x.example.com", "x"), ("/old/y", "/y"))
    assert (rewrite.host, rewrite.path, rewrite.port) == ("x.internal", "/new/y", 9)
    untouched = rewrite_for(frontend())
    assert (untouched.host, untouched.path, untouched.port) == (None, None, None)


# ---------------------------------------------------------------------------------------------
# Redirect decisions


@pytest.mark.parametrize(
    ("policy", "status"), [("PERMANENT", 301), ("FOUND", 302), ("PERMANENT_REDIRECT", 308)]
)
def test_redirect_policies(policy: str, status: int) -> None:
    front = frontend(redirect=policy, cluster_id="c")
    result = redirect_for(
        front,
        Cluster(cluster_id="c"),
        listener_scheme="http",
        authority="example.com:8080",
        target="/p?q",
    )
    assert result == Redirect(status, "http://example.com/p?q")


def test_redirect_scheme_and_ports() -> None:
    cluster = Cluster(cluster_id="c", https_redirect_port=8443)
    to_https = frontend(redirect="PERMANENT", redirect_scheme="USE_HTTPS", cluster_id="c")
    result = redirect_for(
        to_https, cluster, listener_scheme="http", authority="example.com", target="/"
    )
    assert result == Redirect(301, "https://example.com:8443/")
    to_http = frontend(redirect="FOUND", redirect_scheme="USE_HTTP", rewrite_port=80)
    result = redirect_for(
        to_http, cluster, listener_scheme="https", authority="example.com:443", target="/x"
    )
    assert result == Redirect(302, "http://example.com/x")
    same = frontend(redirect="FOUND", redirect_scheme="USE_SAME", rewrite_port=443)
    result = redirect_for(same, None, listener_scheme="https", authority="example.com", target="/")
    assert result == Redirect(302, "https://example.com/")


def test_redirect_uses_rewritten_host_and_path_and_template() -> None:
    front = frontend(
        redirect="PERMANENT",
        rewrite_host="new.$HOST[1].com",
        rewrite_path="/moved$PATH[0]",
        redirect_template="HTTP/1.1 301 Moved Permanently\r\n\r\nbye",
    )
    result = redirect_for(
        front,
        None,
        listener_scheme="https",
        authority="old.example.com",
        target="/a?b",
        host_captures=("old.example.com", "example"),
        path_captures=("/a?b",),
    )
    assert result == Redirect(
        301, "https://new.example.com/moved/a?b", "HTTP/1.1 301 Moved Permanently\r\n\r\nbye"
    )


def test_legacy_https_redirect_on_http_listener_only() -> None:
    cluster = Cluster(cluster_id="c", https_redirect=True)
    front = frontend(cluster_id="c")
    on_http = redirect_for(
        front, cluster, listener_scheme="http", authority="example.com", target="/redirected?true"
    )
    assert on_http == Redirect(301, "https://example.com/redirected?true")
    on_https = redirect_for(
        front, cluster, listener_scheme="https", authority="example.com", target="/"
    )
    assert on_https is None
    with_port = Cluster(cluster_id="c", https_redirect=True, https_redirect_port=443)
    assert redirect_for(
        front, with_port, listener_scheme="http", authority="example.com:80", target="/"
    ) == Redirect(301, "https://example.com/")
    assert (
        redirect_for(
            front, Cluster(cluster_id="c"), listener_scheme="http", authority="a", target="/"
        )
        is None
    )


# ---------------------------------------------------------------------------------------------
# Full evaluation order


def test_evaluate_order() -> None:
    cluster = Cluster(
        cluster_id="c",
        https_redirect=True,
        authorized_hashes=(entry("u", "p"),),
        www_authenticate='Basic realm="r"',
    )
    common: dict[str, Any] = {"listener_scheme": "http", "authority": "h", "target": "/"}
    # Explicit redirect wins even without a cluster.
    assert evaluate(frontend(redirect="FOUND"), None, **common) == Redirect(302, "http://h/")
    # No cluster: 401 without realm.
    assert evaluate(frontend(), None, **common) == Unauthorized(None)
    # A cluster id the state does not know forwards (503 later), unless auth is required.
    assert evaluate(frontend(cluster_id="gone"), None, **common) is None
    gone_auth = frontend(cluster_id="gone", required_auth=True)
    assert evaluate(gone_auth, None, authorization=basic("u", "p"), **common) == Unauthorized()
    # Unauthorized policy: 401 with the cluster realm.
    assert evaluate(frontend(redirect="UNAUTHORIZED", cluster_id="c"), cluster, **common) == (
        Unauthorized('Basic realm="r"')
    )
    # Legacy https_redirect before auth.
    auth = frontend(cluster_id="c", required_auth=True)
    assert evaluate(auth, cluster, **common) == Redirect(301, "https://h/")
    # On HTTPS: auth applies.
    https: dict[str, Any] = common | {"listener_scheme": "https"}
    assert evaluate(auth, cluster, **https) == Unauthorized('Basic realm="r"')
    assert evaluate(auth, cluster, authorization=basic("u", "p"), **https) is None
    assert evaluate(frontend(cluster_id="c"), cluster, **https) is None


# ---------------------------------------------------------------------------------------------
# Basic auth

HASHES = (entry("alice", "wonder"), entry("bob", "builder"))


def test_basic_auth_success() -> None:
    assert check_basic_auth(basic("alice", "wonder"), HASHES)
    assert check_basic_auth(basic("bob", "builder"), HASHES)
    assert check_basic_auth(b"basic  " + base64.b64encode(b"bob:builder"), HASHES)
    upper = (f"alice:{hashlib.sha256(b'wonder').hexdigest().upper()}",)
    assert check_basic_auth(basic("alice", "wonder"), upper)
    assert check_basic_auth(basic("c", "pass:with:colons"), (entry("c", "pass:with:colons"),))


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"Basic",
        b"Basic ",
        b"Bearer abc",
        b"Basic !!!notbase64",
        b"Basic " + base64.b64encode(b"alice"),  # no colon
        b"Basic " + base64.b64encode(b"alice:wrong"),
        b"Basic " + base64.b64encode(b"Alice:wonder"),  # user names are case-sensitive
        b"Basic " + base64.b64encode(b"alice:wonder")[:-1],  # bad padding
    ],
)
def test_basic_auth_failures(value: bytes | None) -> None:
    assert not check_basic_auth(value, HASHES)


def test_basic_auth_empty_list_and_bad_entries() -> None:
    assert not check_basic_auth(basic("alice", "wonder"), ())
    assert not check_basic_auth(basic("alice", "wonder"), ("garbage",))


def test_basic_auth_size_cap() -> None:
    long_password = "x" * 5000
    hashes = (entry("u", long_password),)
    assert not check_basic_auth(basic("u", long_password), hashes)
    assert check_basic_auth(basic("u", long_password), hashes, max_bytes=6000)
    assert not check_basic_auth(basic("u", "p"), (entry("u", "p"),), max_bytes=2)


# ---------------------------------------------------------------------------------------------
# HSTS


def test_hsts_value() -> None:
    assert hsts_value(None) is None
    assert hsts_value(HstsConfig(enabled=False, max_age=5)) is None
    assert hsts_value(HstsConfig(enabled=True)) == b"max-age=31536000"
    assert hsts_value(HstsConfig(enabled=True, max_age=0)) == b"max-age=0"
    full = HstsConfig(enabled=True, max_age=60, include_subdomains=True, preload=True)
    assert hsts_value(full) == b"max-age=60; includeSubDomains; preload"
    assert hsts_value(HstsConfig(enabled=True, max_age=1, preload=True)) == b"max-age=1; preload"
