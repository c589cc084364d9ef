"""`sozu cluster add|remove|list`: clusters, their settings (UDP ones included), and the
table of per-cluster hashes as the supervisor and every worker see them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

# Called through the module (`routing.send`), not imported by name: the CLI tests replace
# `routing_commands.send` to see the requests a command builds.
from sozu.cli import routing_commands as routing
from sozu.cli.context import SozuGroup
from sozu.cli.pem_files import answers as read_answers
from sozu.cli.pem_files import read_text
from sozu.command import requests as rq
from sozu.command.envelope import Response
from sozu.command.requests import Request
from sozu.command.responses import ClusterHashes, ClusterInformations, WorkerResponses
from sozu.command.types import LOAD_BALANCING_ALGORITHMS, Cluster, UdpClusterConfig, UdpHealthConfig


@click.group("cluster", cls=SozuGroup)
def cluster_group() -> None:
    """Clusters: add, remove, list; their health checks."""


@cluster_group.command("add")
@click.option("-i", "--id", "cluster_id", required=True, help="Cluster id.")
@click.option(
    "--load-balancing-policy",
    type=click.Choice([a.lower() for a in LOAD_BALANCING_ALGORITHMS], case_sensitive=False),
    help="Default: hrw for UDP clusters, round_robin otherwise.",
)
@click.option("-s", "--sticky-session", is_flag=True, help="Sticky sessions (HTTP).")
@click.option("-r", "--https-redirect", is_flag=True, help="Redirect HTTP to HTTPS.")
@click.option("--send-proxy", is_flag=True, help="Send a PROXY protocol header (TCP).")
@click.option("--expect-proxy", is_flag=True, help="Expect a PROXY protocol header (TCP).")
@click.option(
    "--http2",
    is_flag=True,
    help="Talk HTTP/2 to the backends (not implemented yet: the daemon logs a warning).",
)
@click.option(
    "--https-redirect-port", type=click.IntRange(1, 65535), help="Port of the HTTPS redirect."
)
@click.option(
    "--load-metric",
    type=click.Choice(["connections", "requests", "connection_time"], case_sensitive=False),
    help="What least_loaded and power_of_two compare (only connections is implemented; "
    "the daemon logs a warning for the others).",
)
@click.option(
    "--answer-503",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File: the 503 answer template (same as --answer 503=FILE).",
)
@click.option(
    "--answer",
    "answers",
    multiple=True,
    help="CODE=FILE: custom answer template for that status (repeatable).",
)
@click.option(
    "--authorized-hash",
    "--authorized-hashes",
    "authorized_hashes",
    multiple=True,
    help="USER:HEX, HEX the SHA-256 of the password, for basic auth (repeatable).",
)
@click.option("--www-authenticate", help="Realm of the basic auth challenge.")
@click.option(
    "--max-connections-per-ip",
    type=click.IntRange(0, 2**63 - 1),
    help="Per client IP connection cap for this cluster (0: none).",
)
@click.option(
    "--retry-after", type=click.IntRange(0, 2**32 - 1), help="Retry-After seconds of a 429."
)
@click.option(
    "--udp-affinity",
    type=click.Choice(["source_ip", "source_ip_port"], case_sensitive=False),
    help="UDP flow key.",
)
@click.option("--udp-responses", type=click.IntRange(0), help="UDP: answers per flow (0: any).")
@click.option("--udp-requests", type=click.IntRange(0), help="UDP: queries per flow (0: any).")
@click.option("--udp-send-proxy-protocol", is_flag=True, help="UDP: send PROXY protocol v2.")
@click.option(
    "--udp-proxy-protocol-every-datagram", is_flag=True, help="UDP: PROXY header on each datagram."
)
@click.option(
    "--udp-health-mode",
    type=click.Choice(["tcp_probe", "udp_probe", "health_off"], case_sensitive=False),
    help="UDP backend health probing.",
)
@click.option("--udp-health-tcp-port", type=click.IntRange(1, 65535), help="TCP probe port.")
@click.option("--udp-health-rise", type=click.IntRange(1, 1000), help="Successes to go up.")
@click.option("--udp-health-fall", type=click.IntRange(1, 1000), help="Failures to go down.")
@click.option("--udp-health-no-fail-open", is_flag=True, help="No backend when all are unhealthy.")
@click.option("--udp-health-payload", help="UDP probe payload (sent UTF-8 encoded).")
@click.option("--udp-health-interval", type=click.IntRange(1, 86400), help="Seconds.")
@click.option("--udp-health-timeout", type=click.IntRange(1, 86400), help="Seconds.")
@click.pass_context
def cluster_add(
    ctx: click.Context,
    /,
    cluster_id: str,
    load_balancing_policy: str | None,
    sticky_session: bool,
    https_redirect: bool,
    send_proxy: bool,
    expect_proxy: bool,
    http2: bool,
    https_redirect_port: int | None,
    load_metric: str | None,
    answer_503: Path | None,
    answers: tuple[str, ...],
    authorized_hashes: tuple[str, ...],
    www_authenticate: str | None,
    max_connections_per_ip: int | None,
    retry_after: int | None,
    **udp_options: Any,
) -> None:
    """Add a cluster (or replace it with new settings)."""
    if send_proxy and expect_proxy:
        raise click.UsageError("--send-proxy and --expect-proxy are exclusive")
    proxy = "SEND_HEADER" if send_proxy else "EXPECT_HEADER" if expect_proxy else None
    templates = read_answers(answers)
    if answer_503 is not None:
        if "503" in templates:
            raise click.UsageError("--answer-503 and --answer 503=... are exclusive")
        # Stored in `answers`, as the configuration loader does with `answer_503`.
        templates["503"] = read_text(answer_503, "--answer-503")
    for entry in authorized_hashes:
        if not _AUTHORIZED_HASH.fullmatch(entry):
            raise click.BadParameter(
                f"{entry!r} is not USER:<64 hex digits>", param_hint="--authorized-hash"
            )
    fields: dict[str, Any] = {
        "cluster_id": cluster_id,
        "sticky_session": sticky_session,
        "https_redirect": https_redirect,
        "proxy_protocol": proxy,
        "http2": http2,
        "load_balancing": load_balancing_policy.upper() if load_balancing_policy else None,
        "https_redirect_port": https_redirect_port,
        "load_metric": load_metric.upper() if load_metric else None,
        "answers": templates,
        "authorized_hashes": authorized_hashes,
        "www_authenticate": www_authenticate,
        "max_connections_per_ip": max_connections_per_ip,
        "retry_after": retry_after,
    }
    routing.send(
        ctx,
        routing.build_request(
            lambda: rq.AddCluster(cluster=Cluster(**fields, udp=_udp(udp_options)))
        ),
    )


_AUTHORIZED_HASH = re.compile(r"[^:]+:[0-9a-fA-F]{64}")


_UDP_HEALTH_FIELDS = {
    "udp_health_tcp_port": "tcp_port",
    "udp_health_rise": "rise",
    "udp_health_fall": "fall",
    "udp_health_payload": "udp_probe_payload",
    "udp_health_interval": "probe_interval_seconds",
    "udp_health_timeout": "probe_timeout_seconds",
}


def _udp(options: dict[str, Any]) -> UdpClusterConfig | None:
    """`Cluster.udp` from the `--udp-*` options; None when none is given."""
    if not any(value not in (None, False) for value in options.values()):
        return None
    health: dict[str, Any] = {
        field: options[name]
        for name, field in _UDP_HEALTH_FIELDS.items()
        if options[name] is not None
    }
    if options["udp_health_mode"] is not None:
        health["mode"] = options["udp_health_mode"].upper()
    if options["udp_health_no_fail_open"]:
        health["fail_open"] = False
    fields: dict[str, Any] = {
        "send_proxy_protocol": options["udp_send_proxy_protocol"],
        "proxy_protocol_every_datagram": options["udp_proxy_protocol_every_datagram"],
    }
    if options["udp_affinity"] is not None:
        fields["affinity_key"] = options["udp_affinity"].upper()
    for name in ("responses", "requests"):
        if options[f"udp_{name}"] is not None:
            fields[name] = options[f"udp_{name}"]
    if health:
        fields["health"] = UdpHealthConfig(**health)
    return UdpClusterConfig(**fields)


@cluster_group.command("remove")
@click.option("-i", "--id", "cluster_id", required=True, help="Cluster id.")
@click.pass_context
def cluster_remove(ctx: click.Context, cluster_id: str) -> None:
    """Remove a cluster (its frontends and backends stay, as upstream)."""
    routing.send(ctx, rq.RemoveCluster(cluster_id=cluster_id))


def _divergent(response: Response) -> list[str]:
    content = response.content
    if not isinstance(content, WorkerResponses):
        return []
    main = content.map.get("main")
    return sorted(
        key
        for key, answer in content.map.items()
        if key != "main" and main is not None and answer.content != main.content
    )


def _hash_table(response: Response, main: ClusterHashes) -> str:
    """One row per cluster: the supervisor's hash, then each worker's (`=` when equal, the
    worker's own hash, or `-` when it lacks the cluster, so a divergence stands out)."""
    workers: list[tuple[str, dict[str, str] | None]] = []
    if isinstance(response.content, WorkerResponses):
        for key in sorted((k for k in response.content.map if k != "main"), key=_worker_order):
            answer = response.content.map[key].content
            workers.append((key, answer.map if isinstance(answer, ClusterHashes) else None))
    width = max(len("CLUSTER"), *(len(cluster_id) for cluster_id in main.map))
    header = f"{'CLUSTER':<{width}}  {'SUPERVISOR':<16}" + "".join(
        f"  {'WORKER ' + key:<16}" for key, _ in workers
    )
    lines = [header.rstrip()]
    for cluster_id, digest in sorted(main.map.items()):
        row = f"{cluster_id:<{width}}  {digest:<16}"
        for _, hashes in workers:
            theirs = None if hashes is None else hashes.get(cluster_id)
            cell = (
                "?"
                if hashes is None
                else "-"
                if theirs is None
                else ("=" if theirs == digest else theirs)
            )
            row += f"  {cell:<16}"
        lines.append(row.rstrip())
    return "\n".join(lines)


def _worker_order(key: str) -> tuple[int, str]:
    return (int(key), "") if key.isdigit() else (1 << 30, key)


def _render_clusters(response: Response) -> str:
    content = routing.main_content(response)
    lines: list[str] = []
    if isinstance(content, ClusterHashes):
        lines.append(_hash_table(response, content) if content.map else "no clusters")
    elif isinstance(content, ClusterInformations):
        for info in content.clusters:
            config = info.configuration
            name = config.cluster_id if config is not None else "?"
            lines.append(f"cluster {name}")
            lines += [f"  backend {b.backend_id} {b.address}" for b in info.backends]
            lines += [f"  http frontend {f.hostname}{f.path.value}" for f in info.http_frontends]
            lines += [f"  https frontend {f.hostname}{f.path.value}" for f in info.https_frontends]
            lines += [f"  tcp frontend {f.address}" for f in info.tcp_frontends]
            lines += [f"  udp frontend {f.address}" for f in info.udp_frontends]
        if not content.clusters:
            lines.append("no clusters")
    for worker in _divergent(response):
        lines.append(f"worker {worker} answers differently from the supervisor")
    return "\n".join(lines)


@cluster_group.command("list")
@click.option("-i", "--id", "cluster_id", help="Show this cluster in detail.")
@click.option("-d", "--domain", help="Clusters serving HOST[/PATH].")
@click.pass_context
def cluster_list(ctx: click.Context, cluster_id: str | None, domain: str | None) -> None:
    """Clusters and their hashes, as the supervisor and every worker see them."""
    request: Request
    if cluster_id is not None and domain is not None:
        raise click.UsageError("-i and -d are exclusive")
    if cluster_id is not None:
        request = rq.QueryClusterById(cluster_id=cluster_id)
    elif domain is not None:
        host, slash, path = domain.partition("/")
        request = rq.QueryClustersByDomain(hostname=host, path=slash + path if slash else None)
    else:
        request = rq.QueryClustersHashes()
    routing.send(ctx, request, _render_clusters)
