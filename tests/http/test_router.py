"""HTTP request routing (upstream router/mod.rs, pattern_trie.rs): authority, trie, rule lists."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sozu.command.types import PathRule, PathRuleKind, RequestHttpFrontend, RulePosition
from sozu.worker.core.http.router import (
    MEMO_ENTRIES,
    MEMO_MAX_BYTES,
    RouteMatch,
    Router,
    parse_authority,
    split_hostname_pattern,
)

ADDRESS = "127.0.0.1:8080"


def front(
    hostname: str,
    path: str = "",
    kind: PathRuleKind = "PREFIX",
    *,
    method: str | None = None,
    position: RulePosition = "TREE",
    cluster: str | None = "app",
) -> RequestHttpFrontend:
    return RequestHttpFrontend(
        address=ADDRESS,
        hostname=hostname,
        cluster_id=cluster,
        path=PathRule(kind=kind, value=path),
        method=method,
        position=position,
    )


def build(*frontends: RequestHttpFrontend) -> Router:
    router = Router()
    for frontend in frontends:
        router.add(frontend)
        router.check_invariants()
    return router


def routed(router: Router, host: str, path: str = "/", method: str = "GET") -> str | None:
    """The hostname/path of the frontend a request reaches, for compact assertions."""
    match = router.lookup(host, path, method)
    if match is None:
        return None
    return f"{match.frontend.hostname}{match.frontend.path.value}"


# ---------------------------------------------------------------------------------------------
# Authority


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("example.com", ("example.com", None)),
        ("Example.COM:8080", ("example.com", 8080)),
        ("example.com.", ("example.com", None)),
        ("example.com.:443", ("example.com", 443)),
        ("localhost:1", ("localhost", 1)),
        ("a-b.c-d:65535", ("a-b.c-d", 65535)),
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:8080", ("[::1]", 8080)),
        ("[0:0::1]", ("[::1]", None)),
        ("[2001:DB8::1]", ("[2001:db8::1]", None)),
        ("bücher.example", ("xn--bcher-kva.example", None)),
        ("BÜCHER.example:81", ("xn--bcher-kva.example", 81)),
    ],
)
def test_valid_authorities(authority: str, expected: tuple[str, int | None]) -> None:
    assert parse_authority(authority) == expected


@pytest.mark.parametrize(
    "authority",
    [
        "",
        ":80",
        "example.com:",
        "example.com:0",
        "example.com:65536",
        "example.com:123456",
        "example.com:8a",
        "example.com:+80",
        "exa_mple.com",
        "exa mple.com",
        "user@example.com",
        "example.com/path",
        "a..b",
        ".example.com",
        "example.com..",
        ".",
        "::1",
        "[::1",
        "[::1]x",
        "[not-ip]:80",
        "[fe80::1%eth0]",
        "host:80:80",
        "*.example.com",
    ],
)
def test_invalid_authorities(authority: str) -> None:
    assert parse_authority(authority) is None


@given(st.text(max_size=30))
def test_parse_authority_never_raises_and_yields_routable_hosts(authority: str) -> None:
    parsed = parse_authority(authority)
    if parsed is not None:
        host, port = parsed
        assert host == host.lower()
        assert host.isascii()
        assert port is None or 1 <= port <= 65535
        assert parse_authority(host) == (host, None), "a parsed host parses to itself"


# ---------------------------------------------------------------------------------------------
# Configured hostnames


def test_hostname_patterns_split_into_labels() -> None:
    assert split_hostname_pattern("images./cdn[0-9]+/.hello.com") == [
        "images",
        "/cdn[0-9]+/",
        "hello",
        "com",
    ]
    assert split_hostname_pattern("/a.b/.example.com.") == ["/a.b/", "example", "com"]
    assert split_hostname_pattern("*.bücher.de") == ["*", "xn--bcher-kva", "de"]
    assert split_hostname_pattern("*") == ["*"]


@pytest.mark.parametrize(
    "hostname",
    [
        ".example.com",
        "a..com",
        "example.com..",
        "a.*.com",
        "*a.com",
        "/unterminated.com",
        "abc/[0-9]+/.example.com",
        "/[0-9]+/x.example.com",
        "/(/.example.com",
        "x" * 5000,
    ],
)
def test_malformed_hostnames_are_refused_and_leave_the_router_unchanged(hostname: str) -> None:
    router = build(front("kept.com"))
    with pytest.raises(ValueError):
        router.add(front(hostname))
    router.check_invariants()
    assert len(router) == 1
    assert routed(router, "kept.com") == "kept.com"


def test_a_bad_path_regex_is_refused() -> None:
    router = Router()
    with pytest.raises(ValueError):
        router.add(front("a.com", "/(", "REGEX"))
    router.check_invariants()
    assert len(router) == 0


# ---------------------------------------------------------------------------------------------
# The trie


def test_wildcard_matches_exactly_one_leftmost_label() -> None:
    router = build(front("*.example.com"))
    assert routed(router, "a.example.com") == "*.example.com"
    assert routed(router, "example.com") is None
    assert routed(router, "a.b.example.com") is None
    assert routed(router, "aexample.com") is None
    match = router.lookup("www.example.com", "/", "GET")
    assert match is not None
    assert match.host_captures == ("www",)
    assert match.path_captures == ()


def test_exact_beats_wildcard() -> None:
    router = build(front("*.alldomains.org", "", cluster="wild"), front("pouet.alldomains.org"))
    match = router.lookup("pouet.alldomains.org", "/", "GET")
    assert match is not None
    assert match.frontend.hostname == "pouet.alldomains.org"
    assert match.host_captures == ()
    assert routed(router, "other.alldomains.org") == "*.alldomains.org"


def test_regex_labels_are_anchored_and_capture() -> None:
    router = build(front("images./cdn([0-9]+)/.hello.com"))
    match = router.lookup("images.cdn10.hello.com", "/x", "GET")
    assert match is not None
    assert match.host_captures == ("10",)
    assert routed(router, "images.cdn.hello.com") is None
    assert routed(router, "images.xcdn1.hello.com") is None
    assert routed(router, "images.cdn1x.hello.com") is None
    assert routed(router, "images.cdn1.cdn2.hello.com") is None
    assert routed(router, "cdn10.hello.com") is None


def test_alternation_in_a_regex_label_stays_anchored() -> None:
    router = build(front("/a|b/.example.com"))
    assert routed(router, "a.example.com") == "/a|b/.example.com"
    assert routed(router, "axx.example.com") is None
    assert routed(router, "xxb.example.com") is None


def test_regex_labels_are_tried_in_insertion_order() -> None:
    router = build(front("/[a-z]+/.example.com", cluster="first"), front("/[a-c]+/.example.com"))
    match = router.lookup("abc.example.com", "/", "GET")
    assert match is not None
    assert match.frontend.cluster_id == "first"


def test_wildcard_comes_before_regex_on_the_last_label() -> None:
    router = build(front("/[0-9]+/.example.com"), front("*.example.com"))
    assert routed(router, "42.example.com") == "*.example.com"


def test_the_walk_does_not_backtrack() -> None:
    router = build(front("*.example.com"), front("x.a.example.com"))
    # `a` is an exact child on the way to `x.a`, so the wildcard is not tried for `a`.
    assert routed(router, "a.example.com") is None
    assert routed(router, "x.a.example.com") == "x.a.example.com"
    # A leaf whose path rules all miss falls through to POST, not to other trie branches.
    router = build(
        front("*.example.com", "/wild"),
        front("b.example.com", "/only"),
        front("*", "/post", position="POST"),
    )
    assert routed(router, "b.example.com", "/wild") is None
    assert routed(router, "b.example.com", "/post") == "*/post"
    regex_router = build(front("/[a-z]+/.x.com", "/a"), front("/[a-c]+/.x.com", "/b"))
    assert routed(regex_router, "abc.x.com", "/b") is None


def test_a_bare_wildcard_tree_rule_matches_single_label_hosts() -> None:
    router = build(front("*"))
    assert routed(router, "localhost") == "*"
    assert routed(router, "a.b") is None


def test_ipv6_and_ipv4_hosts_route_exactly() -> None:
    router = build(front("[::1]"), front("10.0.0.1"))
    assert routed(router, "[::1]") == "[::1]"
    assert routed(router, "10.0.0.1") == "10.0.0.1"
    assert routed(router, "10.0.0.2") is None


def test_internationalized_hostnames_are_idna_encoded() -> None:
    router = build(front("bücher.example"))
    parsed = parse_authority("BÜCHER.example")
    assert parsed is not None
    assert routed(router, parsed[0]) == "bücher.example"


# ---------------------------------------------------------------------------------------------
# Leaf selection


def test_longest_prefix_wins_whatever_the_order() -> None:
    for order in (1, -1):
        rules = [front("a.com", "/api", cluster="short"), front("a.com", "/api/v2", cluster="long")]
        router = build(*rules[::order])
        assert routed(router, "a.com", "/api/v2/users") == "a.com/api/v2"
        assert routed(router, "a.com", "/api/v1") == "a.com/api"
        assert routed(router, "a.com", "/ap") is None


def test_equals_beats_the_catch_all_prefix() -> None:
    for order in (1, -1):
        router = build(*[front("a.com", "/", "EQUALS"), front("a.com", "")][::order])
        match = router.lookup("a.com", "/", "GET")
        assert match is not None
        assert match.frontend.path.kind == "EQUALS"
        assert routed(router, "a.com", "/x") == "a.com"
        assert routed(router, "a.com", "/?q=1") == "a.com", "the query string is part of the path"


def test_regex_beats_prefix_and_captures() -> None:
    router = build(front("a.com", "/static"), front("a.com", r"/static/(\w+)\.css", "REGEX"))
    match = router.lookup("a.com", "/static/main.css", "GET")
    assert match is not None
    assert match.frontend.path.kind == "REGEX"
    assert match.path_captures == ("main",)
    assert routed(router, "a.com", "/static/main.css.map") == "a.com/static", "anchored"


def test_optional_regex_groups_capture_empty_strings() -> None:
    router = build(front("a.com", r"/(x)?(y)", "REGEX"))
    match = router.lookup("a.com", "/y", "GET")
    assert match is not None
    assert match.path_captures == ("", "y")


def test_method_rules() -> None:
    router = build(front("a.com", "/api", method="GET"))
    assert routed(router, "a.com", "/api", "GET") == "a.com/api"
    assert routed(router, "a.com", "/api", "POST") is None
    assert routed(router, "a.com", "/api", "get") is None, "methods are case-sensitive"


def test_a_regex_or_equals_rule_with_the_request_method_returns_at_once() -> None:
    router = build(
        front("a.com", "/x", "EQUALS", method="POST", cluster="post"),
        front("a.com", "/x", "EQUALS", cluster="any"),
        front("a.com", "/x", "EQUALS", method="GET", cluster="get"),
    )
    for method, cluster in (("GET", "get"), ("POST", "post"), ("PUT", "any")):
        match = router.lookup("a.com", "/x", method)
        assert match is not None
        assert match.frontend.cluster_id == cluster


def test_a_prefix_as_long_as_the_whole_path_ties_with_a_later_declaration() -> None:
    # Sōzu's scan literally: a methodless EQUALS sets the best length to the path length and a
    # later PREFIX of that same length still replaces it.
    router = build(front("a.com", "/a", "EQUALS"), front("a.com", "/a"))
    assert routed(router, "a.com", "/a") == "a.com/a"
    match = router.lookup("a.com", "/a", "GET")
    assert match is not None
    assert match.frontend.path.kind == "PREFIX"


def test_prefix_with_method_and_without() -> None:
    router = build(front("a.com", "/a", method="GET", cluster="get"), front("a.com", "/ab"))
    match = router.lookup("a.com", "/abc", "GET")
    assert match is not None
    assert match.frontend.cluster_id == "app"


# ---------------------------------------------------------------------------------------------
# PRE and POST


def test_pre_rules_come_first_and_post_rules_last() -> None:
    router = build(
        front("a.com", "/", cluster="tree"),
        front("*", "/admin", position="PRE", cluster="pre"),
        front("*", "", position="POST", cluster="post"),
    )
    for path, cluster in (("/admin/x", "pre"), ("/x", "tree")):
        match = router.lookup("a.com", path, "GET")
        assert match is not None
        assert match.frontend.cluster_id == cluster
    match = router.lookup("unknown.org", "/x", "GET")
    assert match is not None
    assert match.frontend.cluster_id == "post"


def test_linear_rules_take_the_first_match_in_declaration_order() -> None:
    router = build(
        front("a.com", "/", position="PRE", cluster="first"),
        front("a.com", "/long", position="PRE", cluster="second"),
    )
    match = router.lookup("a.com", "/long", "GET")
    assert match is not None
    assert match.frontend.cluster_id == "first"


def test_linear_domain_rules() -> None:
    router = build(
        front("*.a.com", position="PRE", cluster="wild"),
        front("/([a-z]+)[0-9]/.b.com", position="PRE", cluster="regex"),
        front("c.com", position="PRE", cluster="exact"),
    )
    cases = {
        "x.a.com": ("wild", ("x",)),
        "a.com": None,
        "y.x.a.com": None,
        "xa.com": None,
        "ab1.b.com": ("regex", ("ab",)),
        "ab1.bxcom": None,
        "ab.b.com": None,
        "ab1.b.com.evil": None,
        "c.com": ("exact", ()),
        "d.c.com": None,
    }
    for host, expected in cases.items():
        match = router.lookup(host, "/", "GET")
        if expected is None:
            assert match is None, host
        else:
            assert match is not None, host
            assert (match.frontend.cluster_id, match.host_captures) == expected


def test_linear_rules_check_path_and_method() -> None:
    router = build(
        front("*", "/x", "EQUALS", method="PUT", position="POST"),
        front("*", "/r/([0-9]+)", "REGEX", position="POST", cluster="r"),
    )
    assert routed(router, "a.com", "/x", "PUT") == "*/x"
    assert routed(router, "a.com", "/x", "GET") is None
    assert routed(router, "a.com", "/x/", "PUT") is None
    match = router.lookup("a.com", "/r/12", "GET")
    assert match is not None
    assert match.path_captures == ("12",)
    assert routed(router, "a.com", "/r/12/x") is None


def test_a_frontend_without_cluster_is_a_denial() -> None:
    router = build(front("a.com", cluster=None), front("b.com"))
    denied = router.lookup("a.com", "/", "GET")
    allowed = router.lookup("b.com", "/", "GET")
    assert denied is not None
    assert allowed is not None
    assert denied.denied
    assert not allowed.denied


# ---------------------------------------------------------------------------------------------
# Mutation


def test_re_adding_a_key_replaces_in_place() -> None:
    router = build(
        front("a.com", "/", position="PRE", cluster="one"),
        front("a.com", "/", position="PRE", method="GET", cluster="two"),
    )
    router.add(front("a.com", "/", position="PRE", cluster="three"))
    router.check_invariants()
    assert len(router) == 2
    match = router.lookup("a.com", "/", "GET")
    assert match is not None
    assert match.frontend.cluster_id == "three", "the replacement keeps its place"


def test_re_adding_a_key_at_another_position_moves_it() -> None:
    router = build(front("a.com", "/", cluster="tree"), front("*", "/", position="PRE"))
    router.add(front("a.com", "/", position="POST", cluster="post"))
    router.check_invariants()
    assert len(router) == 2
    match = router.lookup("a.com", "/", "GET")
    assert match is not None
    assert match.frontend.hostname == "*"
    router.remove(front("*", "/", position="PRE"))
    router.check_invariants()
    match = router.lookup("a.com", "/", "GET")
    assert match is not None
    assert match.frontend.cluster_id == "post"


def test_remove_prunes_the_trie_and_reports_absence() -> None:
    frontends = [
        front("a.example.com"),
        front("*.example.com"),
        front("x./cdn[0-9]/.example.com"),
        front("x./cdn[0-9]/.example.com", "/api"),
        front("*", position="PRE"),
        front("*", "/post", position="POST"),
    ]
    router = build(*frontends)
    assert len(router) == len(frontends)
    assert not router.remove(front("b.example.com"))
    assert not router.remove(front("a.example.com", "/other"))
    for frontend in frontends:
        assert router.remove(frontend)
        router.check_invariants()
        assert not router.remove(frontend)
    assert len(router) == 0
    assert router.frontends() == []


def test_a_removed_regex_label_is_tried_last_once_re_added() -> None:
    first = front("/[a-z]+/.x.com", cluster="first")
    router = build(first, front("/[a-c]+/.x.com", cluster="second"))
    router.remove(first)
    router.add(first)
    router.check_invariants()
    match = router.lookup("abc.x.com", "/", "GET")
    assert match is not None
    assert match.frontend.cluster_id == "second"


def test_build_and_frontends() -> None:
    frontends = [front("a.com"), front("*", position="PRE"), front("*", "/p", position="POST")]
    router = Router.build(frontends)
    router.check_invariants()
    assert sorted(f.route_key() + f.position for f in router.frontends()) == sorted(
        f.route_key() + f.position for f in frontends
    )
    assert isinstance(router.lookup("a.com", "/", "GET"), RouteMatch)


# ---------------------------------------------------------------------------------------------
# Properties

hosts = st.sampled_from(
    ["a.com", "b.a.com", "x.b.a.com", "c.com", "a.b.c.com", "com", "b.com", "ab1.a.com"]
)
tree_hostnames = st.sampled_from(
    ["a.com", "b.a.com", "*.a.com", "*.b.a.com", "c.com", "*.com", "x.b.a.com", "*"]
)
paths = st.sampled_from(["", "/", "/a", "/ab", "/a/b", "/b", "/=a", "/=b", "/a?x=1"])
methods = st.sampled_from(["GET", "POST"])


@st.composite
def order_free_frontends(draw: st.DrawFn) -> RequestHttpFrontend:
    """TREE frontends whose selection cannot tie: methodless prefixes and equals on `/=`."""
    hostname = draw(tree_hostnames)
    if draw(st.booleans()):
        return front(hostname, draw(st.sampled_from(["", "/", "/a", "/ab", "/b"])))
    value = draw(st.sampled_from(["/=a", "/=b"]))
    return front(hostname, value, "EQUALS", method=draw(st.none() | methods))


any_frontends = st.builds(
    front,
    st.sampled_from(
        ["a.com", "*.a.com", "/[a-z]+[0-9]/.a.com", "*", "c.com", "/(a|b)/.com", "x.b.a.com"]
    ),
    st.sampled_from(["", "/", "/a", "/ab", "/=a", "/a.*"]),
    st.sampled_from(["PREFIX", "EQUALS", "REGEX"]),
    method=st.none() | methods,
    position=st.sampled_from(["PRE", "TREE", "TREE", "POST"]),
    cluster=st.sampled_from(["one", "two", None]),
)
queries = st.lists(st.tuples(hosts, paths, methods), min_size=1, max_size=12)


def snapshot(router: Router, requests: list[tuple[str, str, str]]) -> list[RouteMatch | None]:
    return [router.lookup(host, path, method) for host, path, method in requests]


@settings(max_examples=150)
@given(st.lists(order_free_frontends(), max_size=12), st.randoms(), queries)
def test_build_order_is_irrelevant_without_ties(
    frontends: list[RequestHttpFrontend], rnd: Random, requests: list[tuple[str, str, str]]
) -> None:
    shuffled = list(frontends)
    rnd.shuffle(shuffled)
    assert snapshot(build(*frontends), requests) == snapshot(build(*shuffled), requests)


@settings(max_examples=150)
@given(st.lists(any_frontends, max_size=10), st.lists(any_frontends, max_size=6), queries)
def test_adding_then_removing_restores_lookups(
    base: list[RequestHttpFrontend],
    extra: list[RequestHttpFrontend],
    requests: list[tuple[str, str, str]],
) -> None:
    router = build(*base)
    before = snapshot(router, requests)
    keys = {frontend.route_key() for frontend in base}
    added = [frontend for frontend in extra if frontend.route_key() not in keys]
    for frontend in added:
        router.add(frontend)
        router.check_invariants()
    for frontend in added:
        router.remove(frontend)
        router.check_invariants()
    assert len(router) == len({frontend.route_key() for frontend in base})
    assert snapshot(router, requests) == before


@settings(max_examples=150)
@given(st.lists(any_frontends, max_size=10), queries)
def test_a_match_satisfies_its_frontend(
    frontends: list[RequestHttpFrontend], requests: list[tuple[str, str, str]]
) -> None:
    router = build(*frontends)
    held = {frontend.route_key(): frontend for frontend in frontends}
    for (host, path, method), match in zip(requests, snapshot(router, requests), strict=True):
        if match is None:
            continue
        frontend = match.frontend
        assert held[frontend.route_key()] == frontend
        assert frontend.method in (None, method)
        rule = frontend.path
        if rule.kind == "PREFIX":
            assert path.startswith(rule.value)
        elif rule.kind == "EQUALS":
            assert path == rule.value
        hostname = frontend.hostname
        if hostname.startswith("*.") and "/" not in hostname:
            assert host.endswith(hostname[1:])
            assert match.host_captures == (host[: -len(hostname) + 1],)
        elif hostname != "*" and "/" not in hostname:
            assert host == hostname


def fresh_route(
    router: Router, authority: str, path: str, method: str
) -> tuple[str, tuple[str, int | None] | None, str, RouteMatch | None]:
    parsed = parse_authority(authority) if authority else None
    match = None if parsed is None else router.lookup(parsed[0], path, method)
    return authority, parsed, path, match


@settings(max_examples=150)
@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "remove", "route", "route"]), any_frontends, queries),
        max_size=25,
    )
)
def test_memoized_routes_follow_every_change(
    steps: list[tuple[str, RequestHttpFrontend, list[tuple[str, str, str]]]],
) -> None:
    router = Router()
    for operation, frontend, requests in steps:
        if operation == "add":
            router.add(frontend)
        elif operation == "remove":
            router.remove(frontend)
        for host, path, method in requests:
            for authority in (host, f"{host.upper()}:8080", ""):
                raw = authority.encode() if authority else None
                expected = fresh_route(router, authority, path, method)
                # Twice: the first may fill the memo, the second reads it.
                assert router.route(raw, path.encode(), method.encode()) == expected
                assert router.route(raw, path.encode(), method.encode()) == expected
        router.check_invariants()


def test_the_route_memo_is_bounded() -> None:
    router = build(front("a.com"))
    long_path = "/" + "x" * MEMO_MAX_BYTES
    assert router.route(b"a.com", long_path.encode(), b"GET")[3] is not None
    assert not router.memo, "a long key is routed but not remembered"
    for index in range(MEMO_ENTRIES + 10):
        router.route(b"a.com", f"/{index}".encode(), b"GET")
        assert len(router.memo) <= MEMO_ENTRIES
    router.check_invariants()
    router.remove(front("a.com"))
    assert not router.memo
    assert router.route(b"a.com", b"/1", b"GET")[3] is None
