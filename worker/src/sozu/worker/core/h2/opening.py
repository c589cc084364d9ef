"""What the first bytes of an HTTP/1.1 client connection say about HTTP/2 (sans-io): the
connection preface on a plain connection is h2c with prior knowledge (RFC 9113 3.3), to be
served in HTTP/2; on a TLS connection that did not negotiate h2 by ALPN (the listener does
not offer it) it is refused with our preface and GOAWAY HTTP_1_1_REQUIRED, since Python's
ssl cannot fail the handshake with no_application_protocol as upstream does."""

from __future__ import annotations

from typing import Final

from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, SettingsFrame

from sozu.worker.core.h2.flood import PREFACE

HTTP1: Final = 0  # not HTTP/2: the HTTP/1.1 session core reads the bytes
H2C: Final = 1  # hand the connection and these bytes to an HTTP/2 connection
REFUSE: Final = 2  # send REFUSAL, then close

# The server's preface (an empty SETTINGS) and GOAWAY(last stream 0, HTTP_1_1_REQUIRED).
REFUSAL: Final = (
    SettingsFrame(0).serialize()
    + GoAwayFrame(0, last_stream_id=0, error_code=ErrorCodes.HTTP_1_1_REQUIRED).serialize()
)


def opening(data: bytes, *, tls: bool) -> int:
    """HTTP1, H2C or REFUSE for the first bytes read from a connection (before any request)."""
    if not data.startswith(PREFACE):
        return HTTP1
    return REFUSE if tls else H2C
