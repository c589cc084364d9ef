"""Real TLS between two `ssl.SSLObject`s over memory BIOs: a listener's server context and a
client, for tests that need handshakes without sockets."""

from __future__ import annotations

import ssl


class MemoryTls:
    """One client and one server object; `pump` moves what each wrote to the other."""

    def __init__(
        self,
        server: ssl.SSLContext,
        client: ssl.SSLContext,
        server_name: str | None,
        *,
        session: ssl.SSLSession | None = None,
    ) -> None:
        self._c_in, self._c_out, self._s_in, self._s_out = (ssl.MemoryBIO() for _ in range(4))
        self.client = client.wrap_bio(
            self._c_in, self._c_out, server_hostname=server_name, session=session
        )
        self.server = server.wrap_bio(self._s_in, self._s_out, server_side=True)

    def pump(self) -> None:
        self._s_in.write(self._c_out.read())
        self._c_in.write(self._s_out.read())

    def handshake(self) -> MemoryTls:
        """Both sides' handshakes, to the end (AssertionError if they do not finish)."""
        done = {"client": False, "server": False}
        for _ in range(20):
            for side, obj in (("client", self.client), ("server", self.server)):
                if not done[side]:
                    try:
                        obj.do_handshake()
                        done[side] = True
                    except ssl.SSLWantReadError:
                        pass
                    finally:
                        self.pump()
            if all(done.values()):
                return self
        raise AssertionError("handshake did not finish")
