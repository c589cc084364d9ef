"""Checks of the values a request carries to the wire: hostnames, regexes, header edits,
templates, ids and cookie values.

The state refuses a request with any of these problems (InvalidValue) and the configuration
loader names the key, so that whatever the supervisor accepts every worker can apply: a
worker never compiles a pattern that fails, never writes a header value with CR or LF into
a message, never logs a line broken by a control character.

`unhonoured_cluster_settings` names the cluster settings that are accepted but not
implemented: the configuration loader warns about them by key path, the supervisor logs them
when a request carrying them is applied live.
"""

from __future__ import annotations

import re
from typing import Final

from sozu.command.route_patterns import (
    MAX_PATH_LENGTH,
    PatternError,
    compile_regex,
    compile_rewrite,
    split_hostname_pattern,
)
from sozu.command.types import Backend, Cluster, LoadMetric, RequestHttpFrontend

Problem = tuple[str, str]  # (field, message)

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# RFC 6265 cookie-octet: no control characters, white space, DQUOTE, comma, semicolon or
# backslash (the sticky id is a cookie value).
_COOKIE_VALUE: Final = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
# A rewritten host must stay one authority; a rewritten path one request target. Both are
# visible ASCII (a path's other characters percent-encoded, a host's in its IDNA form): they
# are sent as bytes in the request line and the Host header.
_AUTHORITY_UNSAFE: Final = re.compile(r"[^\x21-\x7e]|[/?#@]")
_TARGET_UNSAFE: Final = re.compile(r"[^\x21-\x7e]")
MAX_ID_LENGTH: Final = 1024


def _text_problem(field: str, value: str) -> Problem | None:
    if _CONTROL.search(value):
        return field, f"{field} {value[:64]!r} contains a control character"
    return None


def id_problem(field: str, value: str) -> Problem | None:
    """An id (cluster, backend, ...): bounded, printable."""
    if len(value) > MAX_ID_LENGTH:
        return field, f"{field} is longer than {MAX_ID_LENGTH} characters"
    return _text_problem(field, value)


def http_frontend_problems(frontend: RequestHttpFrontend) -> list[Problem]:
    """What makes an HTTP frontend unusable by a worker (empty when it is valid)."""
    problems: list[Problem] = []
    try:
        split_hostname_pattern(frontend.hostname)
    except PatternError as error:
        problems.append(("hostname", f"hostname {frontend.hostname[:128]!r}: {error}"))
    path = frontend.path
    if len(path.value) > MAX_PATH_LENGTH:
        problems.append(("path", f"path is longer than {MAX_PATH_LENGTH} characters"))
    elif path.kind == "REGEX":
        try:
            compile_regex(path.value)
        except PatternError as error:
            problems.append(("path", str(error)))
    for name, template, unsafe in (
        ("rewrite_host", frontend.rewrite_host, _AUTHORITY_UNSAFE),
        ("rewrite_path", frontend.rewrite_path, _TARGET_UNSAFE),
    ):
        if template is None:
            continue
        try:
            compile_rewrite(template)
        except PatternError as error:
            problems.append((name, str(error)))
        if unsafe.search(template):
            problems.append((name, f"{name} {template!r} contains a character it cannot carry"))
    for index, header in enumerate(frontend.headers):
        if not _TOKEN.fullmatch(header.key):
            problems.append((f"headers[{index}].key", f"{header.key!r} is not a header name"))
        if "\r" in header.val or "\n" in header.val or "\0" in header.val:
            problems.append(
                (f"headers[{index}].val", f"value of {header.key!r} contains CR, LF or NUL")
            )
    for key, value in frontend.tags.items():
        for problem in (_text_problem("tags", key), _text_problem(f"tags.{key}", value)):
            if problem is not None:
                problems.append(problem)
    if frontend.cluster_id is not None:
        problem = id_problem("cluster_id", frontend.cluster_id)
        if problem is not None:
            problems.append(problem)
    return problems


def cluster_problems(cluster: Cluster) -> list[Problem]:
    problems: list[Problem] = []
    problem = id_problem("cluster_id", cluster.cluster_id)
    if problem is not None:
        problems.append(problem)
    if cluster.www_authenticate is not None:
        problem = _text_problem("www_authenticate", cluster.www_authenticate)
        if problem is not None:
            problems.append(problem)
    return problems


def backend_problems(backend: Backend) -> list[Problem]:
    problems: list[Problem] = []
    for field, value in (("cluster_id", backend.cluster_id), ("backend_id", backend.backend_id)):
        problem = id_problem(field, value)
        if problem is not None:
            problems.append(problem)
    sticky = backend.sticky_id
    if sticky is not None and (len(sticky) > MAX_ID_LENGTH or not _COOKIE_VALUE.fullmatch(sticky)):
        problems.append(("sticky_id", f"sticky_id {sticky[:64]!r} is not a cookie value"))
    return problems


def unhonoured_cluster_settings(*, load_metric: LoadMetric | None) -> list[Problem]:
    """(field, message) for each cluster setting that is accepted but not implemented.

    LEAST_LOADED and POWER_OF_TWO compare the connections in use per backend (CONNECTIONS);
    REQUESTS (requests in flight) and CONNECTION_TIME (a moving average of connect times) are
    not measured.
    """
    problems: list[Problem] = []
    if load_metric is not None and load_metric != "CONNECTIONS":
        problems.append(
            (
                "load_metric",
                f"{load_metric} is not implemented and is ignored: least_loaded and "
                "power_of_two compare the connections in use (CONNECTIONS)",
            )
        )
    return problems
