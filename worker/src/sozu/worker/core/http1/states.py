"""The states of an HTTP/1.1 session core and the phases of a response (see LIFECYCLE.md)."""

from __future__ import annotations

import math
from typing import Final

INF: Final = math.inf

# Connection states, in the order a connection goes through them (CLOSING and DONE last:
# `state >= S_CLOSING` means nothing more is read).
S_HEAD: Final = 0  # waiting for (or parsing) a request head
S_CONNECTING: Final = 1  # a request is routed; CONNECT asked, no backend connection yet
S_EXCHANGE: Final = 2  # request relayed to a backend, response awaited or relayed
S_TUNNEL: Final = 3  # after a 101: raw bytes both ways
S_CLOSING: Final = 4  # the client connection is closing: to_front is being flushed
S_DONE: Final = 5
STATE_NAMES: Final = ("HEAD", "CONNECTING", "EXCHANGE", "TUNNEL", "CLOSING", "DONE")

# Phases of the response, in S_EXCHANGE.
R_HEAD: Final = 0  # no final response head yet (1xx may have been relayed)
R_LENGTH: Final = 1  # Content-Length body, `r_remaining` bytes still due
R_CHUNKED: Final = 2  # chunked body, scanned by `r_scanner`
R_CLOSE: Final = 3  # body delimited by the backend closing

# Which connections the shell reads now (`Http1Session.reads`).
READ_FRONT: Final = 1
READ_BACK: Final = 2

# Connect attempts per request (upstream CONN_RETRIES).
CONNECT_ATTEMPTS: Final = 3
