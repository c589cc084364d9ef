"""The first bytes of a connection: the HTTP/2 preface means h2c on a plain connection and a
refusal (SETTINGS, GOAWAY HTTP_1_1_REQUIRED) on TLS without h2; anything else is HTTP/1.1."""

from __future__ import annotations

from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame, SettingsFrame

from sozu.worker.core.h2.flood import PREFACE
from sozu.worker.core.h2.opening import H2C, HTTP1, REFUSAL, REFUSE, opening


def test_the_preface_decides_and_nothing_else_does() -> None:
    assert opening(PREFACE + b"\x00\x00\x00\x04", tls=False) == H2C
    assert opening(PREFACE, tls=True) == REFUSE
    assert opening(b"GET / HTTP/1.1\r\n\r\n", tls=False) == HTTP1
    assert opening(PREFACE[:10], tls=False) == HTTP1
    assert opening(b"PRI * HTTP/2.0\r\n\r\n", tls=True) == HTTP1


def test_the_refusal_is_settings_then_goaway_http11_required() -> None:
    settings, length = Frame.parse_frame_header(memoryview(REFUSAL[:9]))
    assert isinstance(settings, SettingsFrame)
    goaway, _ = Frame.parse_frame_header(memoryview(REFUSAL[9 + length : 18 + length]))
    assert isinstance(goaway, GoAwayFrame)
    goaway.parse_body(memoryview(REFUSAL[18 + length :]))
    assert goaway.error_code == ErrorCodes.HTTP_1_1_REQUIRED
    assert goaway.last_stream_id == 0
