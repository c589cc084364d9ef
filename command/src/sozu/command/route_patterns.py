"""Patterns of HTTP frontends: hostname labels, regexes and rewrite templates.

Shared by the state, which refuses a frontend whose patterns do not parse, and by the
workers' router and policy, which compile the very same patterns and so can never fail on a
frontend the state accepted. Regexes use RE2 (linear time in the input, no backtracking, the
syntax of upstream's Rust `regex` crate): a rule that runs on every request cannot be made to
burn a core with a crafted path.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import re2

# Bounds on configured patterns: the trie is walked once per label and regexes are compiled
# and kept per rule, so unbounded ones are a cheap way to grow a worker.
MAX_HOSTNAME_LENGTH: Final = 4096
MAX_PATH_LENGTH: Final = 8192
# RE2's memory budget for one compiled pattern (its default is 8 MiB).
REGEX_MAX_MEMORY: Final = 1 << 20

_CAPTURE: Final = re.compile(r"\$(HOST|PATH)\[([0-9]+)\]")


class PatternError(ValueError):
    """A hostname, regex or template that cannot be used; the message says why."""


if TYPE_CHECKING:
    Regex = re2._Regexp[str]


@functools.lru_cache(maxsize=4096)
def compile_regex(source: str, *, ignore_case: bool = False) -> Regex:
    """The compiled RE2 pattern (cached); PatternError when RE2 refuses it."""
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not ignore_case
    options.max_mem = REGEX_MAX_MEMORY
    try:
        return re2.compile(source, options)
    except re2.error as error:
        reason = error.args[0] if error.args else error
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise PatternError(f"invalid regex {source!r}: {reason}") from None


def _ascii_label(label: str) -> str:
    if label.isascii():
        return label
    try:
        return label.encode("idna").decode("ascii")
    except UnicodeError:
        raise PatternError(f"label {label!r} is not a valid internationalized name") from None


def split_hostname_pattern(hostname: str) -> list[str]:
    """The labels of a configured hostname, left to right; regex labels keep their `/…/`.

    Literal labels are IDNA-encoded; a trailing dot is dropped. PatternError when malformed:
    an empty label, an unterminated `/`, a regex RE2 refuses, a `*` other than a whole
    leftmost label, a wildcard combined with regex labels.
    """
    if not hostname or len(hostname) > MAX_HOSTNAME_LENGTH:
        raise PatternError("hostname is empty or too long")
    labels: list[str] = []
    index, size = 0, len(hostname)
    while True:
        if hostname[index] == "/":
            end = hostname.find("/", index + 1)
            if end < 0:
                raise PatternError(f"unterminated regex label in {hostname!r}")
            label = hostname[index : end + 1]
            compile_regex(label[1:-1], ignore_case=True)
            index = end + 1
        else:
            end = hostname.find(".", index)
            end = size if end < 0 else end
            label = _ascii_label(hostname[index:end])
            if not label or "/" in label or ("*" in label and (label != "*" or labels)):
                raise PatternError(f"invalid label {label!r} in {hostname!r}")
            index = end
        labels.append(label)
        if index == size or (index == size - 1 and hostname[index] == "."):
            break
        if hostname[index] != ".":
            raise PatternError(f"a regex label must be followed by '.' in {hostname!r}")
        index += 1
    if labels[0] == "*" and any(label.startswith("/") for label in labels):
        raise PatternError("a wildcard cannot be combined with regex labels")
    return labels


def domain_regex_source(labels: Sequence[str]) -> str:
    """The whole-host regex of a hostname with regex labels (PRE/POST rules)."""
    return r"\.".join(
        f"(?:{label[1:-1]})" if label.startswith("/") else re.escape(label) for label in labels
    )


class RewriteTemplate:
    """A parsed `rewrite_host` / `rewrite_path` template.

    `$HOST[n]` and `$PATH[n]` name captures (0 = the whole host or path); any other `$`
    is an error. A capture the router did not produce renders as the empty string.
    """

    __slots__ = ("_parts", "text")

    def __init__(self, text: str) -> None:
        parts: list[str | tuple[bool, int]] = []
        position = 0
        for match in _CAPTURE.finditer(text):
            literal = text[position : match.start()]
            if "$" in literal:
                raise PatternError(f"invalid rewrite template {text!r}")
            if literal:
                parts.append(literal)
            parts.append((match.group(1) == "HOST", int(match.group(2))))
            position = match.end()
        tail = text[position:]
        if "$" in tail:
            raise PatternError(f"invalid rewrite template {text!r}")
        if tail:
            parts.append(tail)
        self.text = text
        self._parts = tuple(parts)

    def render(self, host_captures: Sequence[str], path_captures: Sequence[str]) -> str:
        out = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            else:
                is_host, index = part
                captures = host_captures if is_host else path_captures
                if index < len(captures):
                    out.append(captures[index])
        return "".join(out)


@functools.lru_cache(maxsize=4096)
def compile_rewrite(template: str) -> RewriteTemplate:
    """The parsed template (cached); PatternError when it is malformed."""
    return RewriteTemplate(template)
