"""Access log lines: upstream's text layout, durations, missing values."""

from __future__ import annotations

from sozu.worker.core.http.access_log import AccessRecord, format_duration, format_line


def _record(**changes: object) -> AccessRecord:
    fields: dict[str, object] = {
        "time_ns": 1_700_000_000_123_456_789,
        "pid": 42,
        "tag": "WRK-00",
        "session_id": "01SESSION",
        "request_id": "01REQUEST",
        "cluster_id": "web",
        "backend_id": "web-1",
        "client": "127.0.0.1:5000",
        "backend_address": "127.0.0.1:8000",
        "request_time": 0.0123,
        "service_time": 0.002,
        "response_time": 0.0101,
        "bytes_in": 80,
        "bytes_out": 250,
        "tags": {"owner": "ops"},
        "user_agent": "curl/8.0 (x)",
        "protocol": "http",
        "authority": "example.com",
        "method": "GET",
        "path": "/a?b",
        "status": 200,
    }
    fields.update(changes)
    return AccessRecord(**fields)  # type: ignore[arg-type]


def test_line_layout() -> None:
    line = format_line(_record())
    assert line == (
        "2023-11-14T22:13:20.123456Z 1700000000123456789 42 INFO-ACCESS WRK-00\t"
        "[01SESSION 01REQUEST web web-1] 127.0.0.1:5000 127.0.0.1:8000 12ms/2000μs/10ms/-/- "
        "80 250 [owner=ops, user-agent=curl/8.0_(x)] - http example.com GET /a?b 200"
    )


def test_errors_and_missing_values() -> None:
    line = format_line(
        _record(
            status=503,
            cluster_id=None,
            backend_id=None,
            backend_address=None,
            service_time=None,
            response_time=None,
            tags={},
            user_agent=None,
            message="no backend available",
        )
    )
    assert " ERROR-ACCESS " in line
    assert "[01SESSION 01REQUEST - -] 127.0.0.1:5000 - 12ms/-/-/-/- " in line
    assert line.endswith("[] - http example.com GET /a?b 503 | no backend available")


def test_durations() -> None:
    assert format_duration(None) == "-"
    assert format_duration(12.5) == "12s"
    assert format_duration(0.25) == "250ms"
    assert format_duration(0.005) == "5000μs"
    assert format_duration(0.0000005) == "500ns"
