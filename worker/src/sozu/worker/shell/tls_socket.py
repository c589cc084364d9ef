"""The server side of an accepted TLS connection: the socket and its SSL object in one.

`ssl.SSLContext.wrap_socket` builds an `ssl.SSLSocket`, whose constructor reads the socket's
type, family, timeout and peer back (system calls and enum conversions) and moves the fd into
a second socket object, once per connection. `TlsSocket` takes the accepted fd as it is and
attaches the SSL object (`_ssl._SSLSocket`, the one `SSLSocket` wraps) to it, with the few
calls of `SSLSocket` the data plane uses: `recv`, `send` and `pending` go through TLS (the
other I/O methods of a socket raise), the socket's own `shutdown` stays raw (a write-side
shutdown after close_notify), and `socket.socket.recv(sock, n)` still reads raw bytes (what
a lingering close discards).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from sozu.worker.shell.tls_contexts import ServedCertificate


class TlsSocket(socket.socket):
    """An accepted, non-blocking socket whose bytes are TLS records (server side)."""

    __slots__ = ("_sslobj", "served")

    _sslobj: Any  # _ssl._SSLSocket: the stdlib types it nowhere
    served: ServedCertificate | None  # what the SNI callback chose; None before it ran

    @classmethod
    def accepted(cls, client: socket.socket, context: ssl.SSLContext) -> TlsSocket:
        """Take the fd of `client`, a non-blocking socket (it is left detached), and start its
        server-side TLS with `context` (a listener's; the SNI callback may set another)."""
        assert client.gettimeout() == 0.0, "a blocking socket would make TLS calls spin"
        # The fd is non-blocking already: SOCK_NONBLOCK tells the new object so without a
        # system call. (Without it the SSL object would take the socket for a blocking one
        # and spin on EAGAIN inside each handshake step.)
        sock = cls(client.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, 0, client.detach())
        sock.served = None
        # The owner is what the SNI callback receives (it sets `context` and `served` on it).
        sock._sslobj = context._wrap_socket(sock, True, None, owner=sock)  # type: ignore[attr-defined]
        return sock

    # -- what ssl.SSLSocket offers and the data plane uses

    @property
    def context(self) -> ssl.SSLContext:
        context: ssl.SSLContext = self._sslobj.context
        return context

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:
        self._sslobj.context = context

    @property
    def session_reused(self) -> bool:
        return bool(self._sslobj.session_reused)

    def selected_alpn_protocol(self) -> str | None:
        protocol: str | None = self._sslobj.selected_alpn_protocol()
        return protocol

    def do_handshake(self) -> None:
        self._sslobj.do_handshake()

    def recv(self, size: int, flags: int = 0) -> bytes:
        assert not flags, "TLS reads take no flags"
        data: bytes = self._sslobj.read(size)
        return data

    def send(self, data: Any, flags: int = 0) -> int:
        assert not flags, "TLS writes take no flags"
        sent: int = self._sslobj.write(data)
        return sent

    def pending(self) -> int:
        """Decrypted bytes the SSL object holds (they make no readiness event)."""
        count: int = self._sslobj.pending()
        return count

    def _raw(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise NotImplementedError("a TlsSocket moves bytes through TLS with recv and send only")

    # The socket's other I/O methods would move raw bytes past TLS: refused.
    sendall = sendto = sendmsg = _raw
    recv_into = recvfrom = recvfrom_into = recvmsg = _raw

    def unwrap(self) -> None:
        """Write the close_notify. The peer's is not waited for: the want-read that says it
        has not come yet is the expected outcome on a non-blocking socket."""
        with contextlib.suppress(ssl.SSLWantReadError):
            self._sslobj.shutdown()
