"""Core-local UDP configuration types (the keys are in docs/udp.md, Configuration).

The daemon maps protocol/config-file types onto these; the core never imports `sozu.command`.
Times are float seconds.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import msgspec

DEFAULT_FRONT_TIMEOUT = 30.0
DEFAULT_BACK_TIMEOUT = 30.0
DEFAULT_MAX_RX_DATAGRAM_SIZE = 1500
DEFAULT_BUFFER_SIZE = 16_393
DEFAULT_MAX_CONNECTIONS = 10_000


class ClusterConfig(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Routing and per-flow knobs for *new* flows; `cluster == ""` is unrouted.

    A flow keeps the instance in force when it was admitted (its snapshot) for its lifetime.
    `requests`/`responses` of 0 mean unlimited.
    """

    cluster: str = ""
    affinity_with_port: bool = False
    responses: int = 0
    requests: int = 0
    front_timeout: float = DEFAULT_FRONT_TIMEOUT
    back_timeout: float = DEFAULT_BACK_TIMEOUT
    send_proxy_protocol: bool = False
    proxy_protocol_every_datagram: bool = False

    def __post_init__(self) -> None:
        if self.responses < 0 or self.requests < 0:
            raise ValueError("responses and requests must be >= 0")
        if self.front_timeout < 0 or self.back_timeout < 0:
            raise ValueError("timeouts must be >= 0")

    @property
    def routed(self) -> bool:
        return bool(self.cluster)


UNROUTED = ClusterConfig()


class HealthMode(enum.StrEnum):
    HEALTH_OFF = "HEALTH_OFF"
    TCP_PROBE = "TCP_PROBE"
    UDP_PROBE = "UDP_PROBE"


_HEALTH_KEYS = {
    "mode",
    "tcp_port",
    "rise",
    "fall",
    "fail_open",
    "udp_probe_payload",
    "probe_interval_seconds",
    "probe_timeout_seconds",
}


class UdpHealthSettings(msgspec.Struct, frozen=True, kw_only=True):
    """A cluster's UDP health block, defaults filled in (docs/udp.md, Health checks).

    `mode=None` (absent) probes like TCP_PROBE. The TCP companion probe runs whenever checks are
    enabled; the UDP probe also runs whenever a payload is set, whatever the mode. Unlike
    upstream, `fail_open` is honoured (BackendSelector(fail_open=...)).
    """

    mode: HealthMode | None = None
    tcp_port: int | None = None
    rise: int = 2
    fall: int = 3
    fail_open: bool = True
    udp_probe_payload: bytes | None = None
    probe_interval: float = 5.0
    probe_timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise ValueError("rise and fall must be >= 1")
        if self.tcp_port is not None and not 0 < self.tcp_port < 65536:
            raise ValueError(f"tcp_port out of range: {self.tcp_port}")
        if self.probe_interval <= 0 or self.probe_timeout <= 0:
            raise ValueError("probe interval and timeout must be > 0")

    @property
    def enabled(self) -> bool:
        return self.mode is not HealthMode.HEALTH_OFF

    @property
    def runs_tcp_probe(self) -> bool:
        return self.enabled

    @property
    def runs_udp_probe(self) -> bool:
        return self.enabled and self.udp_probe_payload is not None

    def tcp_probe_port(self, data_port: int) -> int:
        return self.tcp_port if self.tcp_port is not None else data_port

    @classmethod
    def from_block(cls, block: Mapping[str, object] | None) -> UdpHealthSettings | None:
        """Parse a `[clusters.<id>.udp.health]` table; None (no block) means checks are off."""
        if block is None:
            return None
        unknown = set(block) - _HEALTH_KEYS
        if unknown:
            raise ValueError(f"unknown health keys: {sorted(unknown)}")

        def get_int(name: str, default: int) -> int:
            value = block.get(name, default)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"health.{name} must be an integer, got {value!r}")
            return value

        mode_name = block.get("mode")
        if mode_name is not None and not isinstance(mode_name, str):
            raise ValueError(f"health.mode must be a string, got {mode_name!r}")
        try:
            mode = None if mode_name is None else HealthMode(mode_name)
        except ValueError:
            raise ValueError(f"unknown health.mode {mode_name!r}") from None
        tcp_port = block.get("tcp_port")
        if tcp_port is not None and (not isinstance(tcp_port, int) or isinstance(tcp_port, bool)):
            raise ValueError(f"health.tcp_port must be an integer, got {tcp_port!r}")
        payload = block.get("udp_probe_payload")
        if payload is not None and not isinstance(payload, str | bytes):
            raise ValueError(f"health.udp_probe_payload must be a string, got {payload!r}")
        fail_open = block.get("fail_open", True)
        if not isinstance(fail_open, bool):
            raise ValueError(f"health.fail_open must be a boolean, got {fail_open!r}")
        return cls(
            mode=mode,
            tcp_port=tcp_port,
            rise=get_int("rise", 2),
            fall=get_int("fall", 3),
            fail_open=fail_open,
            udp_probe_payload=payload.encode() if isinstance(payload, str) else payload,
            probe_interval=float(get_int("probe_interval_seconds", 5)),
            probe_timeout=float(get_int("probe_timeout_seconds", 2)),
        )
