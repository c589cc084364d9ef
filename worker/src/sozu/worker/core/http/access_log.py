"""Access log lines of HTTP requests in upstream's text form, sans-io (docs/http.md, Access logs).

`<rfc3339µs> <epoch ns> <pid> INFO-ACCESS|ERROR-ACCESS <tag>\t[<session> <request> <cluster>
<backend>] <client> <backend address> <req>/<svc>/<resp>/<crtt>/<srtt> <in> <out> [<tags>,
user-agent=<ua>] <otel> <protocol> <authority> <method> <path> <status>[ | <message>]`.
Missing values print as `-`; durations as `Ns` (>= 10 s), `Nms`, `Nμs` (< 10 ms) or `Nns`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass


@dataclass(slots=True)
class AccessRecord:
    """One request as the access log reports it; durations in seconds."""

    time_ns: int
    pid: int
    tag: str
    session_id: str
    request_id: str
    cluster_id: str | None
    backend_id: str | None
    client: str | None
    backend_address: str | None
    request_time: float | None
    service_time: float | None
    response_time: float | None
    bytes_in: int
    bytes_out: int
    tags: dict[str, str]
    user_agent: str | None
    protocol: str
    authority: str
    method: str
    path: str
    status: int | None
    message: str | None = None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 10:
        return f"{int(seconds)}s"
    if seconds >= 0.01:
        return f"{int(seconds * 1000)}ms"
    if seconds >= 0.000001:
        return f"{int(seconds * 1_000_000)}μs"
    return f"{int(seconds * 1_000_000_000)}ns"


def _or_dash(value: str | None) -> str:
    return value if value else "-"


def format_line(record: AccessRecord) -> str:
    """The text line of one record (no trailing newline)."""
    stamp = datetime.datetime.fromtimestamp(
        record.time_ns // 1_000_000_000, tz=datetime.UTC
    ).replace(microsecond=(record.time_ns // 1000) % 1_000_000)
    level = "ERROR-ACCESS" if record.status is None or record.status >= 500 else "INFO-ACCESS"
    tags = [f"{key}={value}" for key, value in sorted(record.tags.items())]
    if record.user_agent:
        tags.append("user-agent=" + record.user_agent.replace(" ", "_"))
    times = "/".join(
        [
            format_duration(record.request_time),
            format_duration(record.service_time),
            format_duration(record.response_time),
            "-",
            "-",
        ]
    )
    line = (
        f"{stamp.isoformat(timespec='microseconds').replace('+00:00', 'Z')} {record.time_ns} "
        f"{record.pid} {level} {record.tag}\t[{record.session_id} {_or_dash(record.request_id)} "
        f"{_or_dash(record.cluster_id)} {_or_dash(record.backend_id)}] "
        f"{_or_dash(record.client)} {_or_dash(record.backend_address)} {times} "
        f"{record.bytes_in} {record.bytes_out} [{', '.join(tags)}] - {record.protocol} "
        f"{_or_dash(record.authority)} {_or_dash(record.method)} {_or_dash(record.path)} "
        f"{record.status if record.status is not None else '-'}"
    )
    if record.message:
        line += f" | {record.message}"
    return line
