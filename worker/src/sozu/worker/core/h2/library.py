"""The `h2` library's connection object as sozu's HTTP/2 cores run it, client or server side.

The library's own header checks are off: sozu builds its outbound blocks itself (names
lowercase, no connection-specific field, values trimmed) and checks inbound ones where they
are used (translation.py for requests; a response block becomes an HTTP/1.1 head that the
session core's parser checks). HPACK is sozu's: `hpack_out.FieldEncoder` (no indexing, no
Huffman) and `hpack_in.FieldDecoder` (a fast path for indexed-only blocks).
"""

from __future__ import annotations

from typing import TypeVar

from h2.config import H2Configuration
from h2.connection import H2Connection

from sozu.worker.core.h2.hpack_in import FieldDecoder
from sozu.worker.core.h2.hpack_out import FieldEncoder

Connection = TypeVar("Connection", bound=H2Connection)


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
