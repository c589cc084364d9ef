"""TLS session-ticket keys shared by every worker of one supervisor.

OpenSSL encrypts the session tickets a server context issues with keys it draws at random for
each context, so a ticket issued by one worker cannot be opened by another: with N workers
behind one listener, a returning client is resumed only when it lands on the worker that
served it before, and otherwise pays a full handshake (the server's certificate signature
included, about twice the CPU). nginx and HAProxy share their ticket keys across worker
processes; sozu does the same: the supervisor draws KEY_SIZE random bytes once and sends them
to each worker in its ServerConfig; each HTTPS listener derives its own keys from them and its
address (`listener_keys`), so that a session resumes on any worker, never on another listener.

Python's ssl module has no call for this, so `share_ticket_keys` calls OpenSSL's
`SSL_CTX_set_tlsext_ticket_keys` (a `SSL_CTX_ctrl` command) through ctypes, on the `SSL_CTX`
that CPython keeps right after the object header of an `ssl.SSLContext` (read only on the
CPython versions known to keep it there). That pointer is used only once OpenSSL itself
confirms it: the options and verify mode it reports for it must be the ones the Python object
reports. When anything does not match (another interpreter or version, another library)
nothing is written and the caller logs that tickets stay per worker.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import ssl
import sys
from typing import Final

from sozu.command.requests import TLS_TICKET_KEY_SIZE

# The size of the ServerConfig secret, which is also OpenSSL's size for the keys.
KEY_SIZE: Final = TLS_TICKET_KEY_SIZE
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS: Final = 59
_SSL_CTRL_GET_TLSEXT_TICKET_KEYS: Final = 58
# CPython versions whose `PySSLContext` starts with the `SSL_CTX *` (checked in their
# Modules/_ssl.c); others are not read at all, so a changed layout cannot be dereferenced.
_KNOWN_LAYOUT: Final = ((3, 8), (3, 13))
# Python's verify modes -> OpenSSL's flags (CERT_REQUIRED is PEER | FAIL_IF_NO_PEER_CERT).
_VERIFY_MODES: Final = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}


class _OpenSsl:
    """The three libssl functions used, resolved through the `_ssl` extension's own links."""

    def __init__(self) -> None:
        import _ssl

        library = ctypes.CDLL(_ssl.__file__)
        self.ctrl = library.SSL_CTX_ctrl
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        self.ctrl.restype = ctypes.c_long
        self.get_options = library.SSL_CTX_get_options
        self.get_options.argtypes = [ctypes.c_void_p]
        self.get_options.restype = ctypes.c_uint64
        self.get_verify_mode = library.SSL_CTX_get_verify_mode
        self.get_verify_mode.argtypes = [ctypes.c_void_p]
        self.get_verify_mode.restype = ctypes.c_int


@functools.cache
def _library() -> _OpenSsl:
    return _OpenSsl()


def _ssl_ctx(context: ssl.SSLContext) -> tuple[_OpenSsl, int] | str:
    """libssl and the `SSL_CTX *` of `context` once OpenSSL confirms it, else why not."""
    if sys.implementation.name != "cpython":
        return "not CPython"
    if not _KNOWN_LAYOUT[0] <= sys.version_info[:2] <= _KNOWN_LAYOUT[1]:
        return "a CPython whose ssl.SSLContext layout is not known here"
    try:
        openssl = _library()
    except (OSError, AttributeError) as error:
        return f"OpenSSL is not reachable through ctypes ({error})"
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if (
        not pointer
        or pointer % ctypes.alignment(ctypes.c_void_p)
        or openssl.get_options(pointer) != context.options & 0xFFFF_FFFF_FFFF_FFFF
        or openssl.get_verify_mode(pointer) != _VERIFY_MODES.get(context.verify_mode, -1)
    ):
        return "OpenSSL does not confirm this Python's ssl.SSLContext layout"
    return openssl, pointer


def listener_keys(secret: bytes, address: str) -> bytes:
    """The ticket keys of one listener: derived from the supervisor's secret and the
    listener's address, the same in every worker, different for each listener (a session
    one listener issued must not resume on another, which may serve other names)."""
    return hashlib.shake_256(b"sozu tls tickets\0" + secret + b"\0" + address.encode()).digest(
        KEY_SIZE
    )


def share_ticket_keys(context: ssl.SSLContext, keys: bytes) -> str | None:
    """Make `context` encrypt and open session tickets with `keys` (KEY_SIZE bytes). None when
    done, else why not (nothing was changed)."""
    if len(keys) != KEY_SIZE:
        return f"ticket keys must be {KEY_SIZE} bytes, not {len(keys)}"
    found = _ssl_ctx(context)
    if isinstance(found, str):
        return found
    openssl, pointer = found
    buffer = ctypes.create_string_buffer(keys, KEY_SIZE)
    if openssl.ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, KEY_SIZE, buffer) != 1:
        return "OpenSSL refused the ticket keys"
    return None


def ticket_keys(context: ssl.SSLContext) -> bytes | None:
    """The ticket keys `context` uses (for tests), or None if they cannot be read."""
    found = _ssl_ctx(context)
    if isinstance(found, str):
        return None
    openssl, pointer = found
    buffer = ctypes.create_string_buffer(KEY_SIZE)
    if openssl.ctrl(pointer, _SSL_CTRL_GET_TLSEXT_TICKET_KEYS, KEY_SIZE, buffer) != 1:
        return None
    return buffer.raw
