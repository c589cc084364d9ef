"""What `sozu start` prints when ready: socket, metrics, and every route with its backends."""

from __future__ import annotations

from sozu.command import requests as rq
from sozu.command.state import ConfigState
from sozu.command.types import Backend, Cluster, RequestHttpFrontend, RequestTcpFrontend
from sozu.supervisor.announce import MAX_ROUTES, ready_lines


def _state(clusters: int = 1) -> ConfigState:
    state = ConfigState()
    for index in range(clusters):
        name = f"web{index}"
        state.apply(rq.AddCluster(cluster=Cluster(cluster_id=name)))
        state.apply(
            rq.AddHttpFrontend(
                frontend=RequestHttpFrontend(
                    address="127.0.0.1:8080", hostname=f"{name}.test", cluster_id=name
                )
            )
        )
        state.apply(
            rq.AddBackend(
                backend=Backend(cluster_id=name, backend_id="b", address="127.0.0.1:8000")
            )
        )
    return state


def test_routes_name_their_backends_or_say_why_there_is_none() -> None:
    state = _state()
    state.apply(
        rq.AddHttpFrontend(
            frontend=RequestHttpFrontend(address="127.0.0.1:8080", hostname="denied.test")
        )
    )
    state.apply(rq.AddCluster(cluster=Cluster(cluster_id="db")))
    state.apply(
        rq.AddTcpFrontend(frontend=RequestTcpFrontend(cluster_id="db", address="127.0.0.1:9000"))
    )
    lines = ready_lines(
        state, pid=42, command_socket="/run/sozu.sock", metrics="127.0.0.1:9191", embedded=False
    )
    assert lines[:3] == [
        "sozu is running (configuration file), pid 42",
        "  command socket: /run/sozu.sock",
        "  metrics: http://127.0.0.1:9191/metrics",
    ]
    assert "    http://127.0.0.1:8080 host web0.test / -> cluster web0: 127.0.0.1:8000" in lines
    assert "    http://127.0.0.1:8080 host denied.test / -> deny (401)" in lines
    assert "    tcp://127.0.0.1:9000 -> cluster db: no backend (503)" in lines
    assert not any("to try it" in line for line in lines)


def test_the_embedded_configuration_gets_a_hint_and_big_states_a_summary() -> None:
    lines = ready_lines(_state(30), pid=1, command_socket="s", metrics=None, embedded=True)
    assert lines[2] == "  metrics: none"
    assert lines[3] == "  routes (30):"
    assert sum(line.startswith("    http://") for line in lines) == MAX_ROUTES
    assert "    ... and 10 more (`sozu frontend list`)" in lines
    assert "to try it" in lines[-1]
    assert "(embedded default configuration)" in lines[0]
