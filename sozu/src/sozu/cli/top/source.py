"""Where `sozu top`'s samples and events come from: the command socket, read by two
background threads (one polling, one subscribed to the events), so that the screen never
waits on the daemon."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

from sozu.cli.top.model import Sample
from sozu.command import requests as rq
from sozu.command.client import CommandClient
from sozu.command.responses import (
    CertificatesList,
    Event,
    ListenersList,
    MetricsReport,
    StatusReport,
)

CALL_TIMEOUT_MS = 5000


def poll_once(client: CommandClient, clock: Callable[[], float] = time.monotonic) -> Sample:
    """One sample: metrics totals, status, listeners, certificates (four requests)."""

    def content(request: rq.Request) -> object:
        response = client.call(request, timeout_ms=CALL_TIMEOUT_MS)
        if response.status != "ok":
            raise RuntimeError(response.message)
        return response.content

    metrics = content(rq.QueryMetrics())
    at = clock()
    status = content(rq.Status())
    listeners = content(rq.ListListeners())
    certificates = content(rq.QueryCertificatesFromTheState())
    return Sample(
        at=at,
        metrics=metrics if isinstance(metrics, MetricsReport) else MetricsReport(),
        status=status if isinstance(status, StatusReport) else None,
        listeners=listeners if isinstance(listeners, ListenersList) else None,
        certificates=certificates.certificates
        if isinstance(certificates, CertificatesList)
        else (),
    )


def event_line(event: Event) -> str:
    details = " ".join(
        f"{name}={value}"
        for name in ("cluster_id", "backend_id", "address", "message")
        if (value := getattr(event, name)) is not None
    )
    stamp = time.strftime("%H:%M:%S")
    return f"{stamp} {event.source}: {event.kind} {details}".rstrip()


class Source:
    """The latest sample and the events, kept up to date by background threads."""

    def __init__(self, socket_path: str, refresh: float, max_frame_size: int) -> None:
        self.socket_path = socket_path
        self.refresh = refresh
        self.max_frame_size = max_frame_size
        self.samples: collections.deque[Sample] = collections.deque(maxlen=4)
        self.events: collections.deque[str] = collections.deque(maxlen=500)
        self.error: str | None = None
        self.changed = threading.Event()
        self._stop = threading.Event()

    def sample_now(self) -> Sample:
        """One sample, polled now on a connection of its own (for `--snapshot`)."""
        with CommandClient.connect(self.socket_path, max_frame_size=self.max_frame_size) as c:
            return poll_once(c)

    def start(self) -> None:
        threading.Thread(target=self._poll, name="top-poll", daemon=True).start()
        threading.Thread(target=self._follow, name="top-events", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _poll(self) -> None:
        client: CommandClient | None = None
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if client is None:
                    client = CommandClient.connect(
                        self.socket_path, max_frame_size=self.max_frame_size
                    )
                self.samples.append(poll_once(client))
                self.error = None
            except Exception as error:
                self.error = f"daemon: {error}"
                if client is not None:
                    client.close()
                    client = None
            self.changed.set()
            self._stop.wait(max(0.0, self.refresh - (time.monotonic() - started)))
        if client is not None:
            client.close()

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                with CommandClient.connect(self.socket_path) as client:
                    for response in client.subscribe(rq.SubscribeEvents()):
                        if isinstance(response.content, Event):
                            self.events.append(event_line(response.content))
                            self.changed.set()
                        if self._stop.is_set():
                            return
            except Exception:
                self._stop.wait(1.0)
