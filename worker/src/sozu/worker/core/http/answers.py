"""Answers the proxy writes itself (404, 503, redirects…): built-ins and custom templates.

Every answer, built-in or custom, is a template: a status line, header lines and a body with
`%PLACEHOLDER`s (see docs/http.md, Answers). Templates are compiled once into literal parts and
variable slots, so rendering only joins bytes. Custom templates come from the listener
`answers` map and the cluster `answers` map (plus the legacy `answer_503`); the cluster's
win over the listener's, which win over the built-ins. A value `file://<path>` is read when
the set is built; a template that cannot be read or parsed falls back to the built-in and
leaves a message in `AnswerSet.warnings`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from http import HTTPStatus
from pathlib import Path
from typing import Final

from sozu.command.types import Cluster

VARIABLES: Final = (
    "REQUEST_ID",
    "CLUSTER_ID",
    "BACKEND_ID",
    "ROUTE",
    "REDIRECT_LOCATION",
    "WWW_AUTHENTICATE",
    "RETRY_AFTER",
    "MESSAGE",
    "PHASE",
    "SUCCESSFULLY_PARSED",
    "PARTIALLY_PARSED",
    "INVALID",
    "CAPACITY",
    "DURATION",
    "TEMPLATE_NAME",
)
# Longest names first so that no name is taken for a prefix of a longer one.
_VARIABLE: Final = re.compile(
    b"%(" + b"|".join(v.encode() for v in sorted(VARIABLES, key=len, reverse=True)) + b")"
)
# Header lines dropped when their value renders empty.
_ELIDABLE: Final = frozenset({b"www-authenticate", b"retry-after"})
# Newlines are CRLF or LF; the body starts after the first blank line and is kept verbatim.
_BLANK_LINE: Final = re.compile(rb"\r?\n\r?\n")
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: .*)?")

REASONS: Final = {
    301: "Moved Permanently",
    302: "Found",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    421: "Misdirected Request",
    429: "Too Many Requests",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    507: "Insufficient Storage",
}
_DESCRIPTIONS: Final = {
    400: "The request could not be parsed.",
    401: "Authentication is required to reach this resource.",
    404: "No frontend matches this request.",
    408: "The request was not received in time.",
    413: "The request headers are too large.",
    421: "The request's authority is not covered by this TLS connection.",
    429: "Too many connections from this address.",
    502: "The backend sent an invalid response or closed the connection.",
    503: "No backend is available to serve this request.",
    504: "The backend did not answer in time.",
    507: "The response headers are too large.",
}
REDIRECT_CODES: Final = frozenset({301, 302, 308})
BUILTIN_CODES: Final = tuple(REASONS)


@dataclass(slots=True)
class AnswerContext:
    """Values of the placeholders for one answer (empty string = nothing to say)."""

    request_id: str = ""
    cluster_id: str = ""
    backend_id: str = ""
    route: str = ""
    redirect_location: str = ""
    www_authenticate: str = ""
    retry_after: int | None = None
    """Seconds; None or 0 renders empty, which drops a `Retry-After` line."""
    message: str = ""
    phase: str = ""
    successfully_parsed: str = "null"
    partially_parsed: str = "null"
    invalid: str = "null"
    capacity: str = ""
    duration: str = ""
    template_name: str = ""


@dataclass(slots=True)
class RenderedAnswer:
    """The bytes to write, whether the frontend closes afterwards, and the status."""

    data: bytes
    close: bool
    status: int


# A compiled piece of text: literal bytes alternate with variable names.
_Parts = tuple[bytes | str, ...]


def _split(text: bytes) -> _Parts:
    parts: list[bytes | str] = []
    position = 0
    for match in _VARIABLE.finditer(text):
        if match.start() > position:
            parts.append(text[position : match.start()])
        parts.append(match.group(1).decode())
        position = match.end()
    if position < len(text):
        parts.append(text[position:])
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class _HeaderLine:
    """A header line whose value holds placeholders (or is Content-Length)."""

    prefix: bytes  # `Name: ` as written in the template
    value: _Parts
    elidable: bool
    content_length: bool


class TemplateError(ValueError):
    """A template that is not an HTTP/1.x response head followed by a body."""


def _context_value(ctx: AnswerContext, name: str) -> str:
    if name == "RETRY_AFTER":
        return str(ctx.retry_after) if ctx.retry_after else ""
    value: str = getattr(ctx, _ATTRIBUTES[name])
    return value


_ATTRIBUTES: Final = {name: name.lower() for name in VARIABLES}


class Template:
    """A compiled answer template.

    The head is kept as constant byte runs and dynamic lines. Values are stripped of CR and
    LF in the head; with `escape_body` they are HTML-escaped in the body (the built-ins do
    this, custom templates are rendered verbatim).
    """

    __slots__ = ("_body", "_head", "close", "escape_body", "status")

    def __init__(self, text: str, *, escape_body: bool = False) -> None:
        raw = text.encode()
        blank = _BLANK_LINE.search(raw)
        if blank is None:
            head, body = raw, b""
        else:
            head, body = raw[: blank.start()], raw[blank.end() :]
        lines = [line.removesuffix(b"\r") for line in head.split(b"\n")]
        match = _STATUS_LINE.fullmatch(lines[0])
        if match is None:
            raise TemplateError(f"invalid status line {lines[0]!r}")
        self.status = int(match.group(1))
        self.escape_body = escape_body
        self.close = False
        segments: list[bytes | _HeaderLine] = [lines[0] + b"\r\n"]
        for line in lines[1:]:
            if not line:
                continue
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise TemplateError(f"invalid header line {line!r}")
            lowered = name.lower()
            if lowered == b"connection" and any(
                token.strip().lower() == b"close" for token in value.split(b",")
            ):
                self.close = True
            value = value.lstrip()
            parts = _split(value)
            content_length = lowered == b"content-length"
            if not content_length and all(isinstance(p, bytes) for p in parts):
                if isinstance(segments[-1], bytes):
                    segments[-1] += line + b"\r\n"
                else:
                    segments.append(line + b"\r\n")
                continue
            segments.append(
                _HeaderLine(
                    prefix=line[: len(line) - len(value)],
                    value=parts,
                    elidable=lowered in _ELIDABLE,
                    content_length=content_length,
                )
            )
        self._head = tuple(segments)
        self._body = _split(body)

    def render(
        self, ctx: AnswerContext, extra_headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> bytes:
        """The answer bytes; `extra_headers` go right before the blank line."""
        body_parts = []
        for part in self._body:
            if isinstance(part, bytes):
                body_parts.append(part)
            elif self.escape_body:
                body_parts.append(html.escape(_context_value(ctx, part), quote=False).encode())
            else:
                body_parts.append(_context_value(ctx, part).encode())
        body = b"".join(body_parts)
        out = []
        for segment in self._head:
            if isinstance(segment, bytes):
                out.append(segment)
            elif segment.content_length:
                out += (segment.prefix, b"%d\r\n" % len(body))
            else:
                value = b"".join(
                    [
                        p if isinstance(p, bytes) else _context_value(ctx, p).encode()
                        for p in segment.value
                    ]
                )
                if b"\r" in value or b"\n" in value:
                    value = value.replace(b"\r", b"").replace(b"\n", b"")
                if segment.elidable and not value.strip():
                    continue
                out += (segment.prefix, value, b"\r\n")
        for name, value in extra_headers:
            out += (name, b": ", value, b"\r\n")
        out += (b"\r\n", body)
        return b"".join(out)


def builtin_text(code: int, sozu_id_header: str = "Sozu-Id") -> str:
    """The built-in template of a status code."""
    reason = REASONS.get(code)
    if reason is None:
        try:
            reason = HTTPStatus(code).phrase
        except ValueError:
            reason = "Unknown"
    lines = [f"HTTP/1.1 {code} {reason}"]
    if code in REDIRECT_CODES:
        lines.append("Location: %REDIRECT_LOCATION")
    else:
        lines.append("Cache-Control: no-cache")
    lines.append("Connection: close")
    if code == 401:
        lines.append("WWW-Authenticate: %WWW_AUTHENTICATE")
    if code in (429, 503):
        lines.append("Retry-After: %RETRY_AFTER")
    lines.append(f"{sozu_id_header}: %REQUEST_ID")
    lines.append("Content-Length: 0")
    if code in REDIRECT_CODES:
        body = ""
    else:
        description = _DESCRIPTIONS.get(code, "")
        body = (
            "<html><head><meta charset='utf-8'>"
            f"<title>{code} {reason}</title></head><body>\n"
            f"<h1>{code} {reason}</h1>\n"
            f"<p>{description}</p>\n"
            "<p>%MESSAGE</p>\n"
            "<p>Request id: %REQUEST_ID</p>\n"
            "<footer>This is an automatic answer by Sōzu.</footer></body></html>\n"
        )
    return "\r\n".join(lines) + "\r\n\r\n" + body


@lru_cache(maxsize=64)
def builtin(code: int, sozu_id_header: str = "Sozu-Id") -> Template:
    """The compiled built-in template of a status code (cached)."""
    return Template(builtin_text(code, sozu_id_header), escape_body=True)


@lru_cache(maxsize=256)
def _inline(text: str) -> Template | None:
    try:
        return Template(text)
    except TemplateError:
        return None


def read_template_file(path: str) -> str:
    """Read a `file://` template (UTF-8)."""
    return Path(path).read_text(encoding="utf-8")


@dataclass(slots=True)
class _Compiled:
    templates: dict[int, Template] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _compile(answers: Mapping[str, str], origin: str, read_file: Callable[[str], str]) -> _Compiled:
    compiled = _Compiled()
    for key, value in answers.items():
        try:
            code = int(key)
        except ValueError:
            compiled.warnings.append(f"{origin} answer {key!r}: not a status code, ignored")
            continue
        text = value
        if value.startswith("file://"):
            path = value[len("file://") :]
            try:
                text = read_file(path)
            except (OSError, UnicodeDecodeError) as error:
                compiled.warnings.append(
                    f"{origin} answer {key}: cannot read {path}: {error}; using the built-in"
                )
                continue
        try:
            template = Template(text)
        except TemplateError as error:
            compiled.warnings.append(f"{origin} answer {key}: {error}; using the built-in")
            continue
        if template.status != code:
            compiled.warnings.append(
                f"{origin} answer {key}: status line says {template.status}; using the built-in"
            )
            continue
        compiled.templates[code] = template
    return compiled


class AnswerSet:
    """The answers of one listener, or of one cluster on that listener.

    `answers` maps status codes (as strings) to inline templates or `file://<path>`.
    """

    __slots__ = ("_by_cluster", "_read_file", "_templates", "sozu_id_header", "warnings")

    def __init__(
        self,
        answers: Mapping[str, str] | None = None,
        sozu_id_header: str = "Sozu-Id",
        *,
        read_file: Callable[[str], str] = read_template_file,
    ) -> None:
        compiled = _compile(answers or {}, "listener", read_file)
        self.sozu_id_header = sozu_id_header
        self.warnings: list[str] = compiled.warnings
        self._templates = compiled.templates
        self._read_file = read_file
        self._by_cluster: dict[str, tuple[Cluster, AnswerSet]] = {}

    def for_cluster(self, cluster: Cluster | None) -> AnswerSet:
        """This set with the cluster's templates on top (cached per cluster id)."""
        if cluster is None or (not cluster.answers and cluster.answer_503 is None):
            return self
        cached = self._by_cluster.get(cluster.cluster_id)
        if cached is not None and (cached[0] is cluster or cached[0] == cluster):
            return cached[1]
        answers = dict(cluster.answers)
        if cluster.answer_503 is not None:
            answers.setdefault("503", cluster.answer_503)
        compiled = _compile(answers, f"cluster {cluster.cluster_id}", self._read_file)
        derived = AnswerSet.__new__(AnswerSet)
        derived.sozu_id_header = self.sozu_id_header
        derived.warnings = compiled.warnings
        derived._templates = self._templates | compiled.templates
        derived._read_file = self._read_file
        derived._by_cluster = {}
        self._by_cluster[cluster.cluster_id] = (cluster, derived)
        return derived

    def forget_cluster(self, cluster_id: str) -> None:
        """Drop the cached set of a removed cluster."""
        self._by_cluster.pop(cluster_id, None)

    def template(self, code: int) -> Template:
        """The template used for a status code."""
        template = self._templates.get(code)
        if template is None:
            return builtin(code, self.sozu_id_header)
        return template

    def _chosen(self, code: int, inline_template: str | None) -> Template:
        template = None
        if inline_template is not None:
            template = _inline(inline_template)
        if template is None:
            template = self.template(code)
        return template

    def closes(self, code: int, inline_template: str | None = None) -> bool:
        """Whether the answer for `code` says `Connection: close` itself."""
        return self._chosen(code, inline_template).close

    def render(
        self,
        code: int,
        ctx: AnswerContext,
        *,
        inline_template: str | None = None,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> RenderedAnswer:
        """Render the answer for `code`.

        `inline_template` (a frontend `redirect_template`) is used instead when it parses;
        `extra_headers` (e.g. Strict-Transport-Security) are added to the head.
        """
        template = self._chosen(code, inline_template)
        return RenderedAnswer(template.render(ctx, extra_headers), template.close, template.status)
