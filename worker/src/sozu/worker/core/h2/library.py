"""The `h2` library's connection object as sozu's HTTP/2 cores run it, client or server side.

The library's own header checks are off: sozu builds its outbound blocks itself (names
lowercase, no connection-specific field, values trimmed) and checks inbound ones where they
are used (translation.py for requests; a response block becomes an HTTP/1.1 head that the
session core's parser checks). HPACK is sozu's: `hpack_out.FieldEncoder` (no indexing, no
Huffman) and `hpack_in.FieldDecoder` (a fast path for indexed-only blocks).
"""

from __future__ import annotations

from typing import Any, TypeVar

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.errors import ErrorCodes

from sozu.worker.core.h2.hpack_in import FieldDecoder
from sozu.worker.core.h2.hpack_out import FieldEncoder

Connection = TypeVar("Connection", bound=H2Connection)

_OPEN = (ConnectionState.CLIENT_OPEN, ConnectionState.SERVER_OPEN)


class GoawayLetsStreamsFinish(H2Connection):
    """The library's connection, except that a peer's GOAWAY with NO_ERROR leaves it open:
    the streams up to the GOAWAY's last stream id may still finish (RFC 9113 §6.8), where the
    library moves to CLOSED on any GOAWAY and then refuses every later frame. Client side
    (upstream.py) and server side (server_connection.py) alike."""

    def _receive_goaway_frame(self, frame: Any):  # type: ignore[no-untyped-def]
        state = self.state_machine.state
        frames, events = super()._receive_goaway_frame(frame)
        if frame.error_code == ErrorCodes.NO_ERROR and state in _OPEN:
            self.state_machine.state = state
        return frames, events


def h2_connection(kind: type[Connection], *, client_side: bool) -> Connection:
    """A new connection of `kind` (H2Connection or a subclass) set up as above."""
    conn = kind(
        H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_inbound_headers=False,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
    )
    conn.encoder = FieldEncoder()  # type: ignore[assignment]
    conn.decoder = FieldDecoder.replacing(conn.decoder)
    return conn
