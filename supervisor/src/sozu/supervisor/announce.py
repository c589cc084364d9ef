"""What `sozu start` prints once the daemon is ready: where its command socket and metrics
are, and the routes it serves (listener, frontend, cluster, backends), so that a first curl
that gets a 503 has its explanation on the screen."""

from __future__ import annotations

from collections.abc import Iterator

from sozu.command.state import ConfigState

# A state with more routes than this is summarised (a 10,000-cluster state is not printed).
MAX_ROUTES = 20


def _backends(state: ConfigState, cluster_id: str | None) -> str:
    if cluster_id is None:
        return "deny (401)"
    backends = state.backends.get(cluster_id, [])
    if not backends:
        return f"cluster {cluster_id}: no backend (503)"
    return f"cluster {cluster_id}: " + ", ".join(b.address for b in backends)


def _routes(state: ConfigState) -> Iterator[str]:
    for scheme, fronts in (("http", state.http_fronts), ("https", state.https_fronts)):
        for front in fronts.values():
            path = front.path.value or "/"
            yield f"{scheme}://{front.address} host {front.hostname} {path} -> " + _backends(
                state, front.cluster_id
            )
    for kind, groups in (("tcp", state.tcp_fronts), ("udp", state.udp_fronts)):
        for cluster_id, frontends in groups.items():
            for tcp in frontends:
                yield f"{kind}://{tcp.address} -> " + _backends(state, cluster_id)


def ready_lines(
    state: ConfigState,
    *,
    pid: int,
    command_socket: str,
    metrics: str | None,
    embedded: bool,
) -> list[str]:
    """The lines printed when the daemon is ready."""
    origin = "embedded default configuration" if embedded else "configuration file"
    lines = [f"sozu is running ({origin}), pid {pid}", f"  command socket: {command_socket}"]
    lines.append(f"  metrics: http://{metrics}/metrics" if metrics else "  metrics: none")
    routes = list(_routes(state))
    lines.append(f"  routes ({len(routes)}):" if routes else "  routes: none")
    lines += [f"    {route}" for route in routes[:MAX_ROUTES]]
    if len(routes) > MAX_ROUTES:
        lines.append(f"    ... and {len(routes) - MAX_ROUTES} more (`sozu frontend list`)")
    if embedded:
        lines.append(
            "  to try it, serve something on the backends' addresses, e.g. "
            "`python3 -m http.server 8000 --bind 127.0.0.1`, then "
            "`curl -H 'Host: localhost' http://127.0.0.1:8080/`"
        )
    return lines
