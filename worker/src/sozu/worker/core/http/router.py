"""Request routing of an HTTP(S) listener: PRE rules, the hostname trie, POST rules.

Sans-io. Follows Sōzu's `lib/src/router`: a request is matched against the PRE rules (first
match), then the hostname trie (whose leaf holds the path/method rules of one hostname), then
the POST rules (first match). The trie never backtracks: once a label chose a branch, a miss
below it falls through to POST.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sozu.command.route_patterns import compile_regex, domain_regex_source, split_hostname_pattern
from sozu.command.types import RequestHttpFrontend

if TYPE_CHECKING:
    from sozu.command.route_patterns import Regex

__all__ = ["RouteMatch", "Router", "parse_authority", "split_hostname_pattern"]

_AUTHORITY = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\[\]:]+))(?::(?P<port>[0-9]{1,5}))?"
)
_HOSTNAME = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*", re.ASCII)

PREFIX, REGEX, EQUALS = 0, 1, 2
_KINDS = {"PREFIX": PREFIX, "REGEX": REGEX, "EQUALS": EQUALS}

ANY, WILDCARD, DOMAIN_REGEX, EXACT = 0, 1, 2, 3


@functools.lru_cache(maxsize=4096)
def parse_authority(authority: str) -> tuple[str, int | None] | None:
    """The host (lowercased, IDNA for non-ASCII, trailing dot dropped) and port of an authority.

    `hostname[:port]` with labels of ASCII letters, digits and `-`, port 1..65535, or a
    bracketed IPv6 literal (returned bracketed, in compressed form). None when invalid: the
    caller answers 400.
    """
    match = _AUTHORITY.fullmatch(authority)
    if match is None:
        return None
    port_text = match["port"]
    port = None
    if port_text is not None:
        port = int(port_text)
        if not 1 <= port <= 65535:
            return None
    literal = match["v6"]
    if literal is not None:
        try:
            address = ipaddress.IPv6Address(literal)
        except ValueError:
            return None
        return f"[{address.compressed}]", port
    host = match["name"]
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if _HOSTNAME.fullmatch(host) is None:
        return None
    return host, port


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """A routed request and what its rewrites may reference.

    The captures leave out the whole host and path (Sōzu's `$HOST[0]`, `$PATH[0]`), so
    `$HOST[n]` is `host_captures[n - 1]`. `host_captures` holds the label a wildcard stood for
    and the groups of regex labels, in walk order (right to left); `path_captures` the groups
    of a REGEX path rule. Groups that took no part in the match capture "".
    """

    frontend: RequestHttpFrontend
    host_captures: tuple[str, ...]
    path_captures: tuple[str, ...]

    @property
    def denied(self) -> bool:
        """A frontend without a cluster answers 401."""
        return self.frontend.cluster_id is None


class _Rule:
    """One frontend, compiled: domain rule (PRE/POST only), path rule and method rule."""

    __slots__ = (
        "domain",
        "domain_pattern",
        "frontend",
        "key",
        "kind",
        "labels",
        "method",
        "name",
        "path",
        "path_pattern",
        "wildcard",
    )

    def __init__(self, frontend: RequestHttpFrontend) -> None:
        self.frontend = frontend
        self.key = frontend.route_key()
        self.labels = split_hostname_pattern(frontend.hostname)
        self.wildcard = self.labels[0] == "*"
        self.kind = _KINDS[frontend.path.kind]
        self.path = frontend.path.value
        self.path_pattern = compile_regex(self.path) if self.kind == REGEX else None
        self.method = frontend.method
        self.name = ""  # the host of an EXACT rule, the `.suffix` of a WILDCARD one
        self.domain_pattern: Regex | None = None
        labels = self.labels
        if any(label.startswith("/") for label in labels):
            self.domain = DOMAIN_REGEX
            self.domain_pattern = compile_regex(domain_regex_source(labels), ignore_case=True)
        elif labels == ["*"]:
            self.domain = ANY
        elif labels[0] == "*":
            self.domain = WILDCARD
            self.name = "." + ".".join(labels[1:])
        else:
            self.domain = EXACT
            self.name = ".".join(labels)

    def domain_captures(self, host: str) -> tuple[str, ...] | None:
        """PRE/POST domain rule: the captures when `host` matches, else None."""
        domain = self.domain
        if domain == EXACT:
            return () if host == self.name else None
        if domain == ANY:
            return ()
        if domain == WILDCARD:
            head = host[: len(host) - len(self.name)]
            if head and host.endswith(self.name) and "." not in head:
                return (head,)
            return None
        assert self.domain_pattern is not None
        match = self.domain_pattern.fullmatch(host)
        return None if match is None else match.groups("")

    def path_captures(self, path: str) -> tuple[str, ...] | None:
        """The path rule: the captures of a REGEX (else ()) when `path` matches, else None."""
        kind = self.kind
        if kind == PREFIX:
            return () if path.startswith(self.path) else None
        if kind == EQUALS:
            return () if path == self.path else None
        assert self.path_pattern is not None
        match = self.path_pattern.fullmatch(path)
        return None if match is None else match.groups("")


def _fullmatch(pattern: Regex | None, path: str) -> bool:
    assert pattern is not None
    return pattern.fullmatch(path) is not None


def _select(rules: list[_Rule], path: str, method: str) -> _Rule | None:
    """Leaf selection, Sōzu's scan: (1) REGEX/EQUALS with this method returns at once;
    (2) REGEX/EQUALS without method is a candidate worth the whole path length; (3) PREFIX at
    least as long as the best so far, method absent or equal, is a candidate; (4) last wins.
    """
    best = 0
    chosen = None
    for rule in rules:
        kind = rule.kind
        if kind == PREFIX:
            prefix = rule.path
            if (
                len(prefix) >= best
                and path.startswith(prefix)
                and (rule.method is None or rule.method == method)
            ):
                best = len(prefix)
                chosen = rule
        elif path == rule.path if kind == EQUALS else _fullmatch(rule.path_pattern, path):
            if rule.method is None:
                best = len(path)
                chosen = rule
            elif rule.method == method:
                return rule
    return chosen


class _Node:
    """A trie level: exact children, regex children in insertion order, and two rule lists:
    the hostname ending here (`leaf`) and `*.<this name>` (`wildcard`)."""

    __slots__ = ("children", "leaf", "regexes", "wildcard")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.regexes: list[tuple[str, Regex, _Node]] = []
        self.leaf: list[_Rule] = []
        self.wildcard: list[_Rule] = []

    def is_empty(self) -> bool:
        return not (self.children or self.regexes or self.leaf or self.wildcard)

    def find(self, host: str) -> tuple[list[_Rule], tuple[str, ...]] | None:
        """The rule list the walk of `host` ends on, with the captures met on the way."""
        labels = host.split(".")
        captures: tuple[str, ...] = ()
        node = self
        for index in range(len(labels) - 1, -1, -1):
            label = labels[index]
            child = node.children.get(label)
            if child is None:
                if index == 0 and node.wildcard:
                    return node.wildcard, (*captures, label)
                for _, pattern, regex_child in node.regexes:
                    match = pattern.fullmatch(label)
                    if match is not None:
                        child = regex_child
                        captures += match.groups("")
                        break
                else:
                    return None
            node = child
        return (node.leaf, captures) if node.leaf else None

    def path_to(self, labels: list[str], create: bool) -> list[_Node] | None:
        """Nodes from the root to where `labels` (without a leading `*`) end."""
        nodes = [self]
        for label in reversed(labels):
            node = nodes[-1]
            if label.startswith("/"):
                child = next((c for source, _, c in node.regexes if source == label), None)
                if child is None and create:
                    child = _Node()
                    node.regexes.append(
                        (label, compile_regex(label[1:-1], ignore_case=True), child)
                    )
            else:
                child = node.children.get(label)
                if child is None and create:
                    child = node.children[label] = _Node()
            if child is None:
                return None
            nodes.append(child)
        return nodes

    def check(self, depth: int) -> int:
        """Assert the subtree's shape; the number of rules it holds."""
        assert depth == 0 or not self.is_empty(), "an emptied node must be pruned"
        count = len(self.leaf) + len(self.wildcard)
        for rule in self.leaf:
            assert rule.labels[0] != "*"
            assert len(rule.labels) == depth
        for rule in self.wildcard:
            assert rule.labels[0] == "*"
            assert len(rule.labels) == depth + 1
        for label, child in self.children.items():
            assert label
            assert "." not in label
            assert not label.startswith("/")
            assert label != "*"
            count += child.check(depth + 1)
        sources = [source for source, _, _ in self.regexes]
        assert len(set(sources)) == len(sources), "regex labels are unique per node"
        for source, pattern, child in self.regexes:
            assert len(source) >= 2
            assert source[0] == source[-1] == "/"
            assert pattern.pattern == source[1:-1]
            count += child.check(depth + 1)
        return count


Routed = tuple[str, "tuple[str, int | None] | None", str, "RouteMatch | None"]

# Routed requests remembered per router (see `Router.memo`): bounded in entries and in the
# size of what a key may hold, cleared whenever a frontend is added or removed.
MEMO_ENTRIES = 2048
MEMO_MAX_BYTES = 256


class Router:
    """The routing table of one listener, keyed by `RequestHttpFrontend.route_key()`.

    `route` remembers what it derived from a request's (authority, path, method) bytes in
    `memo`: a router is a pure function of its frontends, so an entry stays true until the
    next `add` or `remove`, which empty it.
    """

    def __init__(self) -> None:
        self._rules: dict[str, _Rule] = {}
        self._pre: list[_Rule] = []
        self._post: list[_Rule] = []
        self._tree = _Node()
        self.memo: dict[tuple[bytes | None, bytes, bytes], Routed] = {}

    @classmethod
    def build(cls, frontends: Iterable[RequestHttpFrontend]) -> Router:
        router = cls()
        for frontend in frontends:
            router.add(frontend)
        return router

    def __len__(self) -> int:
        return len(self._rules)

    def _list_of(self, rule: _Rule) -> list[_Rule]:
        position = rule.frontend.position
        if position == "PRE":
            return self._pre
        if position == "POST":
            return self._post
        nodes = self._tree.path_to(rule.labels[1:] if rule.wildcard else rule.labels, True)
        assert nodes is not None
        return nodes[-1].wildcard if rule.wildcard else nodes[-1].leaf

    def add(self, frontend: RequestHttpFrontend) -> None:
        """Add a frontend; one with the same route key is replaced in place.

        PatternError (router unchanged) when its hostname or path regex is malformed: the
        state refuses such a frontend, so a worker never sees one.
        """
        rule = _Rule(frontend)
        self.memo.clear()
        old = self._rules.get(rule.key)
        if old is not None and old.frontend.position == frontend.position:
            rules = self._list_of(old)
            rules[rules.index(old)] = rule
        else:
            if old is not None:
                self.remove(old.frontend)
            self._list_of(rule).append(rule)
        self._rules[rule.key] = rule

    def remove(self, frontend: RequestHttpFrontend) -> bool:
        """Remove the frontend with this route key; False when there is none."""
        rule = self._rules.pop(frontend.route_key(), None)
        if rule is None:
            return False
        self.memo.clear()
        position = rule.frontend.position
        if position != "TREE":
            (self._pre if position == "PRE" else self._post).remove(rule)
            return True
        labels = rule.labels[1:] if rule.wildcard else rule.labels
        nodes = self._tree.path_to(labels, False)
        assert nodes is not None, "a stored tree rule has its path"
        (nodes[-1].wildcard if rule.wildcard else nodes[-1].leaf).remove(rule)
        for depth in range(len(nodes) - 1, 0, -1):
            node, parent, label = nodes[depth], nodes[depth - 1], labels[-depth]
            if not node.is_empty():
                break
            if label.startswith("/"):
                parent.regexes = [entry for entry in parent.regexes if entry[2] is not node]
            else:
                del parent.children[label]
        return True

    def route(self, authority: bytes | None, path: bytes, method: bytes) -> Routed:
        """(authority text, `parse_authority` of it, path text, `lookup` match) of a request's
        raw authority, target path and method; the authority text is "" and the parse None
        when the request has none."""
        key = (authority, path, method)
        routed = self.memo.get(key)
        if routed is not None:
            return routed
        text = "" if authority is None else authority.decode("latin-1")
        parsed = parse_authority(text) if text else None
        path_text = path.decode("latin-1")
        match = (
            None if parsed is None else self.lookup(parsed[0], path_text, method.decode("latin-1"))
        )
        routed = (text, parsed, path_text, match)
        if len(path) + len(text) <= MEMO_MAX_BYTES:
            memo = self.memo
            if len(memo) >= MEMO_ENTRIES:
                memo.clear()
            memo[key] = routed
        return routed

    def lookup(self, host: str, path: str, method: str) -> RouteMatch | None:
        """Route a request; `host` as returned by `parse_authority`, `path` the raw target."""
        for rule in self._pre:
            matched = self._linear(rule, host, path, method)
            if matched is not None:
                return matched
        found = self._tree.find(host)
        if found is not None:
            rules, host_captures = found
            chosen = _select(rules, path, method)
            if chosen is not None:
                path_captures = chosen.path_captures(path) if chosen.kind == REGEX else ()
                assert path_captures is not None
                return RouteMatch(chosen.frontend, host_captures, path_captures)
        for rule in self._post:
            matched = self._linear(rule, host, path, method)
            if matched is not None:
                return matched
        return None

    @staticmethod
    def _linear(rule: _Rule, host: str, path: str, method: str) -> RouteMatch | None:
        if rule.method is not None and rule.method != method:
            return None
        host_captures = rule.domain_captures(host)
        if host_captures is None:
            return None
        path_captures = rule.path_captures(path)
        if path_captures is None:
            return None
        return RouteMatch(rule.frontend, host_captures, path_captures)

    def frontends(self) -> list[RequestHttpFrontend]:
        """Every frontend held, PRE then TREE (unspecified order) then POST."""
        tree = [r for r in self._rules.values() if r.frontend.position == "TREE"]
        return [r.frontend for r in (*self._pre, *tree, *self._post)]

    def check_invariants(self) -> None:
        for position, rules in (("PRE", self._pre), ("POST", self._post)):
            assert len({id(rule) for rule in rules}) == len(rules), "a rule is listed once"
            for rule in rules:
                assert rule.frontend.position == position
                assert self._rules.get(rule.key) is rule
        assert len(self.memo) <= MEMO_ENTRIES
        assert all(len(key[1]) <= MEMO_MAX_BYTES for key in self.memo)
        linear = {id(rule) for rule in (*self._pre, *self._post)}
        tree_count = self._tree.check(0)
        assert not self._tree.leaf, "no configured hostname is empty"
        assert tree_count + len(self._pre) + len(self._post) == len(self._rules)
        for key, rule in self._rules.items():
            frontend = rule.frontend
            assert key == rule.key == frontend.route_key()
            assert rule.method == frontend.method
            assert rule.path == frontend.path.value
            assert rule.kind == _KINDS[frontend.path.kind]
            assert (rule.path_pattern is not None) == (rule.kind == REGEX)
            assert (rule.domain_pattern is not None) == (rule.domain == DOMAIN_REGEX)
            assert all(rule.labels), "no empty label"
            if frontend.position == "TREE":
                labels = rule.labels[1:] if rule.wildcard else rule.labels
                nodes = self._tree.path_to(labels, False)
                assert nodes is not None
                held = nodes[-1].wildcard if rule.wildcard else nodes[-1].leaf
                assert sum(r is rule for r in held) == 1, "a tree rule sits on its own node"
                assert id(rule) not in linear, "a tree rule is in neither PRE nor POST"
            else:
                assert id(rule) in linear
