"""UDP cluster health: schedule, rise/fall per probe kind, events, reset when turned off."""

from __future__ import annotations

from sozu.worker.core.balancing import Backend
from sozu.worker.core.udp.config import HealthMode, UdpHealthSettings
from sozu.worker.core.udp.health import ClusterHealth, HealthEvent, Probe

B0 = Backend("b0", ("127.0.0.1", 5300))
B1 = Backend("b1", ("127.0.0.1", 5301))


def settings(**fields: object) -> UdpHealthSettings:
    return UdpHealthSettings(**fields)  # type: ignore[arg-type]


def fail_round(health: ClusterHealth, now: float, failing: set[str]) -> list[HealthEvent]:
    events = []
    for probe in health.due(now):
        events += health.record(probe, probe.backend_id not in failing)
    return events


def test_schedule_runs_every_interval_and_never_doubles_in_flight_probes() -> None:
    health = ClusterHealth("dns", settings(probe_interval=5.0, tcp_port=53), [B0, B1])
    first = health.due(0.0)
    assert first == [Probe("b0", "tcp", ("127.0.0.1", 53)), Probe("b1", "tcp", ("127.0.0.1", 53))]
    assert health.due(1.0) == []
    assert health.next_deadline() == 5.0
    health.record(first[0], True)
    assert health.due(5.0) == [Probe("b0", "tcp", ("127.0.0.1", 53))]  # b1 still in flight


def test_fall_then_rise_with_events_per_backend_and_cluster() -> None:
    health = ClusterHealth("dns", settings(rise=2, fall=3, probe_interval=1.0), [B0, B1])
    events: list[HealthEvent] = []
    for second in range(3):
        events += fail_round(health, float(second), {"b0"})
    assert events == [HealthEvent("HEALTH_CHECK_UNHEALTHY", "dns", "b0")]
    assert not health.healthy("b0")
    assert health.healthy("b1")
    events = []
    for second in range(3, 6):
        events += fail_round(health, float(second), {"b0", "b1"})
    assert events == [
        HealthEvent("HEALTH_CHECK_UNHEALTHY", "dns", "b1"),
        HealthEvent("NO_AVAILABLE_BACKENDS", "dns"),
    ]
    assert fail_round(health, 6.0, set()) == []  # one success: not yet (rise 2)
    recovered = fail_round(health, 7.0, set())
    assert HealthEvent("CLUSTER_RECOVERED", "dns") in recovered
    assert health.available() == 2


def test_each_probe_kind_has_its_own_streak() -> None:
    """Upstream feeds both kinds into one state: alternating results never flip it."""
    health = ClusterHealth(
        "dns", settings(fall=2, udp_probe_payload=b"PING", probe_interval=1.0), [B0]
    )
    for second in range(2):
        for probe in health.due(float(second)):
            health.record(probe, probe.kind == "tcp")  # TCP fine, UDP times out
    assert not health.healthy("b0")


def test_turning_checks_off_resets_health() -> None:
    health = ClusterHealth("dns", settings(fall=1, probe_interval=1.0), [B0])
    fail_round(health, 0.0, {"b0"})
    assert not health.healthy("b0")
    events = health.configure(settings(mode=HealthMode.HEALTH_OFF), [B0])
    assert health.healthy("b0")
    assert events == [HealthEvent("CLUSTER_RECOVERED", "dns")]
    assert health.next_deadline() is None
    assert health.due(100.0) == []


def test_results_for_departed_backends_are_ignored() -> None:
    health = ClusterHealth("dns", settings(fall=1), [B0, B1])
    probes = health.due(0.0)
    health.configure(settings(fall=1), [B1])
    assert health.record(probes[0], False) == []
    assert health.healthy("b0")  # unknown backends count as healthy


def test_no_health_block_means_no_probes() -> None:
    health = ClusterHealth("dns", None, [B0])
    assert health.next_deadline() is None
    assert health.due(0.0) == []
    assert health.healthy("b0")
