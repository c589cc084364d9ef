"""Reconnecting HTTP/2 clients that account for every stream they open (h2load never
reconnects after a GOAWAY, so it cannot show what a drain does to streams).

An `H2Client` is a thread on one TLS connection at a time (ALPN `h2`, the `h2` library for
framing) that keeps `streams` GET requests in flight, each for a `Target` picked at random
(seeded), its body checked by length and SHA-256. On a GOAWAY it opens no more streams on
that connection; the streams above the GOAWAY's last stream id, and those reset with
REFUSED_STREAM, were not processed (RFC 9113 §6.8, §8.7) and are sent again on a new
connection. The others must complete. Once none is left the client closes and reconnects.
GOAWAY frames are taken out of the byte stream before the `h2` library reads it (the library
stops reading a connection at its first GOAWAY, so the streams a draining server still
completes could not be read through it).

Every stream opened ends in exactly one count of its client's `H2Tally`:

* `answered`: a complete response (END_STREAM) with status 200 and the expected body;
* `bad`: a complete response with a wrong status or body;
* `retried`: refused (REFUSED_STREAM, or above a GOAWAY's last stream id): sent again;
* `lost`: anything else, i.e. reset with another code, or cut by the connection's end
  although the server had said (by its GOAWAY's last stream id, or by saying nothing) that
  it would process it.
"""

from __future__ import annotations

import hashlib
import random
import socket
import ssl
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import h2.config
import h2.connection
import h2.events
from h2.errors import ErrorCodes

from e2e.support.keepalive_clients import PROBLEMS_KEPT, Target

IO_TIMEOUT = 30.0
JOIN_TIMEOUT = IO_TIMEOUT + 30.0


@dataclass
class H2Tally:
    opened: int = 0
    answered: int = 0
    bad: int = 0
    retried: int = 0
    lost: int = 0
    goaways: int = 0
    connections: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def accounted(self) -> int:
        return self.answered + self.bad + self.retried + self.lost

    def problem(self, text: str) -> None:
        if len(self.problems) < PROBLEMS_KEPT:
            self.problems.append(text)

    def summary(self) -> str:
        return (
            f"{self.opened} streams opened: {self.answered} answered, {self.bad} bad, "
            f"{self.retried} refused and sent again, {self.lost} lost; "
            f"{self.connections} connections, {self.goaways} GOAWAYs"
        )


@dataclass
class _Stream:
    target: Target
    status: int = 0
    length: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)


class H2Client:
    """One thread opening streams until `stop` is set (see the module docstring)."""

    def __init__(
        self,
        name: str,
        port: int,
        server_name: str,
        ca_file: Path,
        targets: list[Target],
        *,
        streams: int = 8,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.port = port
        self.server_name = server_name
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.context.set_alpn_protocols(["h2"])
        self.targets = targets
        self.streams = streams
        self.rng = random.Random(seed)
        self.tally = H2Tally()
        self.stop = threading.Event()
        self.crashed = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        retry: deque[Target] = deque()
        try:
            while not self.stop.is_set():
                self._connection(retry)
        except Exception as error:
            self.crashed = True
            self.tally.problem(f"{self.name}: client crashed: {error!r}")

    def _connection(self, retry: deque[Target]) -> None:
        tally = self.tally
        tally.connections += 1
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=IO_TIMEOUT) as raw,
            self.context.wrap_socket(raw, server_hostname=self.server_name) as tls,
        ):
            if tls.selected_alpn_protocol() != "h2":
                raise AssertionError(f"ALPN chose {tls.selected_alpn_protocol()}")
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            pending: dict[int, _Stream] = {}
            last_processed: int | None = None  # a GOAWAY's last stream id
            frames = bytearray()  # bytes read, not yet split into frames
            while True:
                while (
                    last_processed is None
                    and not self.stop.is_set()
                    and len(pending) < self.streams
                ):
                    target = retry.popleft() if retry else self.rng.choice(self.targets)
                    stream_id = conn.get_next_available_stream_id()
                    headers = [
                        (":method", "GET"),
                        (":scheme", "https"),
                        (":authority", target.host),
                        (":path", target.path),
                    ]
                    conn.send_headers(stream_id, headers, end_stream=True)
                    pending[stream_id] = _Stream(target)
                    tally.opened += 1
                try:
                    tls.sendall(conn.data_to_send())
                except (OSError, ssl.SSLError) as error:
                    tally.problem(f"{self.name}: send failed: {error!r}")
                    self._cut(pending, last_processed, retry)
                    return
                if not pending:
                    return  # stopping, or a GOAWAY with nothing left on this connection
                try:
                    data = tls.recv(65536)
                except (OSError, ssl.SSLError) as error:
                    data = b""
                    tally.problem(f"{self.name}: connection failed: {error!r}")
                if not data:
                    self._cut(pending, last_processed, retry)
                    return
                frames += data
                data, goaways = _split_goaways(frames)
                for last_stream_id, error_code in goaways:
                    tally.goaways += 1
                    last_processed = min(last_stream_id, last_processed or last_stream_id)
                    if error_code != ErrorCodes.NO_ERROR:
                        tally.problem(f"{self.name}: GOAWAY {ErrorCodes(error_code)!r}")
                    for stream_id in [i for i in pending if i > last_processed]:
                        tally.retried += 1
                        retry.append(pending.pop(stream_id).target)
                for event in conn.receive_data(data):
                    stream_id = getattr(event, "stream_id", 0)
                    stream = pending.get(stream_id)
                    if stream is None:
                        # Only the reset of a stream already given up (above a GOAWAY's last
                        # stream id) may name a stream no longer pending.
                        if stream_id and not isinstance(event, h2.events.StreamReset):
                            tally.problem(f"{self.name}: {event!r} for a stream given up")
                        continue
                    if isinstance(event, h2.events.ResponseReceived):
                        for name, value in event.headers:
                            if name == b":status":
                                stream.status = int(value)
                    elif isinstance(event, h2.events.DataReceived):
                        stream.length += len(event.data)
                        stream.digest.update(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        self._ended(pending.pop(stream_id))
                    elif isinstance(event, h2.events.StreamReset):
                        del pending[stream_id]
                        if event.error_code == ErrorCodes.REFUSED_STREAM:
                            tally.retried += 1
                            retry.append(stream.target)
                        else:
                            tally.lost += 1
                            tally.problem(
                                f"{self.name}: stream {stream_id} reset ({event.error_code!r})"
                            )

    def _ended(self, stream: _Stream) -> None:
        target = stream.target
        ok = (
            stream.status == 200
            and stream.length == target.length
            and stream.digest.hexdigest() == target.sha256
        )
        if ok:
            self.tally.answered += 1
        else:
            self.tally.bad += 1
            self.tally.problem(
                f"{self.name}: {target.path} answered {stream.status}, {stream.length} bytes"
            )

    def _cut(
        self, pending: dict[int, _Stream], last_processed: int | None, retry: deque[Target]
    ) -> None:
        """The connection ended with `pending` streams unanswered."""
        for stream_id, stream in pending.items():
            if last_processed is not None and stream_id > last_processed:
                self.tally.retried += 1
                retry.append(stream.target)
            else:
                self.tally.lost += 1
                self.tally.problem(
                    f"{self.name}: stream {stream_id} ({stream.target.path}) cut by the "
                    f"connection's end (GOAWAY last stream id {last_processed})"
                )
        pending.clear()


def _split_goaways(buffer: bytearray) -> tuple[bytes, list[tuple[int, int]]]:
    """The complete frames at the start of `buffer` (removed from it) without their GOAWAY
    frames, and each GOAWAY's (last stream id, error code)."""
    kept = bytearray()
    goaways: list[tuple[int, int]] = []
    position = 0
    while len(buffer) - position >= 9:
        length = int.from_bytes(buffer[position : position + 3], "big")
        end = position + 9 + length
        if end > len(buffer):
            break
        if buffer[position + 3] == 7:  # GOAWAY
            payload = buffer[position + 9 : end]
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            goaways.append((last, int.from_bytes(payload[4:8], "big")))
        else:
            kept += buffer[position:end]
        position = end
    del buffer[:position]
    return bytes(kept), goaways


class H2ClientGroup:
    """Clients started together and stopped together."""

    def __init__(self) -> None:
        self.clients: list[H2Client] = []

    def add(self, client: H2Client) -> None:
        self.clients.append(client)

    def answered(self) -> int:
        return sum(client.tally.answered for client in self.clients)

    def finish(self) -> list[str]:
        """Stop every client and wait; the names of those still running."""
        for client in self.clients:
            client.stop.set()
        for client in self.clients:
            client.thread.join(JOIN_TIMEOUT)
        return [client.name for client in self.clients if client.thread.is_alive()]

    def __enter__(self) -> H2ClientGroup:
        for client in self.clients:
            client.thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.finish()
