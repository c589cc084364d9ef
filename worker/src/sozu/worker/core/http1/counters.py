"""Plain counters of one HTTP listener, bumped by its session cores and folded into the metrics
by the shell at snapshot time (the same fields as the listener's, plus `pipelined_unanswered`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class HttpCounters:
    """Monotonic counters, and three gauges: `active` (kept by the shell, which accepts
    connections), `websockets_active` and `h2_streams_active` (kept by the cores)."""

    accepted: int = 0
    active: int = 0
    requests: int = 0
    parse_errors: int = 0
    backend_parse_errors: int = 0
    no_backend: int = 0
    retries: int = 0
    backend_errors: int = 0
    bytes_in: int = 0  # every byte read from clients
    bytes_out: int = 0  # every byte queued for clients
    websockets: int = 0
    websockets_active: int = 0
    sni_mismatches: int = 0
    rejected_per_ip: int = 0
    stale_connections: int = 0  # pooled backend connections found closed at reuse
    alpn_rejected: int = 0
    # TLS connections that sent the HTTP/2 preface without negotiating h2 (GOAWAY
    # HTTP_1_1_REQUIRED): h2 is not in the listener's alpn_protocols.
    h2_without_alpn: int = 0
    tls_handshakes: int = 0
    tls_resumed: int = 0  # of which resumed a session (a ticket or a cached session)
    proxy_protocol_errors: int = 0  # invalid PROXY headers on an expect_proxy listener
    h2_connections: int = 0  # connections that negotiated h2
    h2_streams: int = 0  # request streams opened on them
    h2_streams_active: int = 0  # gauge: those still open (kept by the h2 cores)
    h2_refused_streams: int = 0  # streams reset for a malformed request (smuggling checks)
    h2_rapid_resets: int = 0  # connections ended by the rapid reset defence
    h2_protocol_errors: int = 0  # connections ended by GOAWAY PROTOCOL_ERROR (or another code)
    # h2 frames received, by type (h2/flood.py FRAME_NAMES order, unknown types last)
    h2_frames: list[int] = field(default_factory=lambda: [0] * 11)
    # h2 connections ended by a flood defence, by kind (h2/flood.py FLOOD_KINDS)
    h2_floods: dict[str, int] = field(default_factory=dict)
    h2_window_stalls: int = 0  # h2 streams reset after their client kept the window shut
    # Requests still buffered when a connection closed after a response that said close.
    pipelined_unanswered: int = 0
    # final status of every response sent (proxied or generated) -> count
    statuses: dict[int, int] = field(default_factory=dict)
    # status of every answer sozu generated itself -> count
    answers: dict[int, int] = field(default_factory=dict)
    # (cluster id, protocol the client spoke: "http/1.1" or "h2") -> requests sent to a backend
    cluster_requests: dict[tuple[str, str], int] = field(default_factory=dict)
    # (cluster id, final status) of every response of a request routed to a cluster -> count
    cluster_statuses: dict[tuple[str, int], int] = field(default_factory=dict)

    def count_status(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def count_cluster_status(self, cluster_id: str, status: int) -> None:
        key = (cluster_id, status)
        self.cluster_statuses[key] = self.cluster_statuses.get(key, 0) + 1

    def count_answer(self, status: int) -> None:
        self.answers[status] = self.answers.get(status, 0) + 1
        self.count_status(status)

    def clear(self) -> None:
        gauges = self.active, self.websockets_active, self.h2_streams_active
        self.__init__()  # type: ignore[misc]
        self.active, self.websockets_active, self.h2_streams_active = gauges

    def check_invariants(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, int):
                assert value >= 0, (name, value)
        assert len(self.h2_frames) == 11
        assert all(count >= 0 for count in self.h2_frames)
        assert all(count > 0 for count in self.h2_floods.values())
        assert all(count > 0 for count in self.statuses.values())
        assert all(count > 0 for count in self.answers.values())
        assert all(count > 0 for count in self.cluster_statuses.values())
        # A response routed to a cluster is also a status sent.
        assert sum(self.cluster_statuses.values()) <= sum(self.statuses.values())
        # Every generated answer is also a status sent.
        for status, count in self.answers.items():
            assert self.statuses.get(status, 0) >= count, (status, count)
