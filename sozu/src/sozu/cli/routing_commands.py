"""`sozu backend|frontend ...`, and what every command that changes or lists the routing state
shares: `send`, `build_request`, `parse_tags`, the `--address` option (`address_option`), the
supervisor's own answer in a query's replies (`main_content`). `sozu cluster` is in
cluster_commands, `sozu listener` in listener_commands, HTTP(S) listeners and frontends in
http_commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from sozu.cli.context import SozuGroup
from sozu.cli.daemon_client import checked, run
from sozu.command import requests as rq
from sozu.command.envelope import Response
from sozu.command.requests import Request
from sozu.command.responses import FrontendList, WorkerResponses
from sozu.command.types import Backend, LoadBalancingParams, RequestTcpFrontend, RequestUdpFrontend

address_option = click.option(
    "-a", "--address", required=True, help="Socket address, e.g. 127.0.0.1:80."
)


Transform = Callable[[Response], Response]


def send(
    ctx: click.Context,
    request: Request,
    render: Callable[[Response], str] | None = None,
    *,
    transform: Transform | None = None,
) -> None:
    run(ctx, checked(request), render=render, transform=transform)


def build_request(factory: Callable[[], Request]) -> Request:
    """Build a request from options; a value the types refuse is a usage error."""
    try:
        return factory()
    except (ValueError, TypeError) as error:
        raise click.UsageError(str(error)) from None


def parse_tags(values: tuple[str, ...]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.UsageError(f"tag {value!r} is not KEY=VALUE")
        tags[key] = val
    return tags


def main_content(response: Response) -> object:
    """The supervisor's own answer inside a query's WorkerResponses."""
    content = response.content
    if isinstance(content, WorkerResponses) and "main" in content.map:
        return content.map["main"].content
    return content


# ---------------------------------------------------------------------------------------------
# backend


@click.group("backend", cls=SozuGroup)
def backend_group() -> None:
    """Backends of a cluster: add, remove."""


_cluster_option = click.option("-i", "--id", "cluster_id", required=True, help="Cluster id.")
_backend_id = click.option("--backend-id", required=True, help="Backend id.")


@backend_group.command("add")
@_cluster_option
@_backend_id
@address_option
@click.option("-s", "--sticky-id", help="Sticky session id.")
@click.option(
    "-b",
    "--backup",
    type=click.BOOL,
    is_flag=False,
    flag_value=True,
    default=False,
    metavar="[BOOL]",
    help="Use only when no other backend is up (`-b`, or upstream's `-b true|false`).",
)
@click.option("-w", "--weight", type=click.IntRange(0, 255), help="Load-balancing weight.")
@click.pass_context
def backend_add(
    ctx: click.Context,
    cluster_id: str,
    backend_id: str,
    address: str,
    sticky_id: str | None,
    backup: bool,
    weight: int | None,
) -> None:
    """Add a backend to a cluster."""
    params = LoadBalancingParams(weight=weight) if weight is not None else None
    request = build_request(
        lambda: rq.AddBackend(
            backend=Backend(
                cluster_id=cluster_id,
                backend_id=backend_id,
                address=address,
                sticky_id=sticky_id,
                load_balancing_parameters=params,
                backup=backup or None,
            )
        )
    )
    send(ctx, request)


@backend_group.command("remove")
@_cluster_option
@_backend_id
@address_option
@click.pass_context
def backend_remove(ctx: click.Context, cluster_id: str, backend_id: str, address: str) -> None:
    """Remove a backend from a cluster."""
    request = build_request(
        lambda: rq.RemoveBackend(cluster_id=cluster_id, backend_id=backend_id, address=address)
    )
    send(ctx, request)


# ---------------------------------------------------------------------------------------------
# frontend


@click.group("frontend", cls=SozuGroup)
def frontend_group() -> None:
    """Frontends: HTTP, HTTPS, TCP and UDP add, remove; list all of them."""


def _stream_frontend_group(proxy: str) -> click.Group:
    @click.group(proxy.lower(), cls=SozuGroup, help=f"{proxy} frontends.")
    def group() -> None:
        pass

    def frontend(cluster_id: str, address: str, tags: tuple[str, ...]) -> Any:
        cls = RequestTcpFrontend if proxy == "TCP" else RequestUdpFrontend
        return cls(cluster_id=cluster_id, address=address, tags=parse_tags(tags))

    for verb in ("add", "remove"):
        _frontend_command(group, verb, proxy, frontend)
    return group


def _frontend_command(
    group: click.Group, verb: str, proxy: str, frontend: Callable[..., Any]
) -> None:
    kind = f"{verb.capitalize()}{proxy.capitalize()}Frontend"

    @group.command(verb, help=f"{verb.capitalize()} a {proxy} frontend of a cluster.")
    @click.option("-i", "--id", "cluster_id", required=True, help="Cluster id.")
    @address_option
    @click.option("--tags", "--tag", "tags", multiple=True, help="KEY=VALUE (repeatable).")
    @click.pass_context
    def command(ctx: click.Context, cluster_id: str, address: str, tags: tuple[str, ...]) -> None:
        cls = rq.REQUEST_KINDS[kind]
        send(ctx, build_request(lambda: cls(frontend=frontend(cluster_id, address, tags))))


frontend_group.add_command(_stream_frontend_group("TCP"))
frontend_group.add_command(_stream_frontend_group("UDP"))


def _render_frontends(response: Response) -> str:
    content = response.content
    if not isinstance(content, FrontendList):
        return response.message
    lines = []
    for proxy, http_fronts in (("http", content.http), ("https", content.https)):
        for front in http_fronts:
            path = front.path.value or "/"
            method = front.method or "*"
            target = front.cluster_id if front.cluster_id is not None else "(deny)"
            lines.append(
                f"{proxy:<5} {front.address:<24} {front.hostname:<28} {method:<6} "
                f"{path:<16} {target}"
            )
    for proxy, stream_fronts in (("tcp", content.tcp), ("udp", content.udp)):
        for stream_front in stream_fronts:
            lines.append(
                f"{proxy:<5} {stream_front.address:<24} {'-':<28} {'-':<6} {'-':<16} "
                f"{stream_front.cluster_id}"
            )
    if not lines:
        return "no frontends"
    header = f"{'PROTO':<5} {'ADDRESS':<24} {'HOSTNAME':<28} {'METHOD':<6} {'PATH':<16}"
    return "\n".join([f"{header} CLUSTER", *lines])


@frontend_group.command("list")
@click.option("--http", is_flag=True, help="HTTP frontends.")
@click.option("--https", is_flag=True, help="HTTPS frontends.")
@click.option("--tcp", is_flag=True, help="TCP frontends.")
@click.option("--udp", is_flag=True, help="UDP frontends.")
@click.option("-d", "--domain", help="HTTP(S) frontends whose hostname contains DOMAIN.")
@click.pass_context
def frontend_list(
    ctx: click.Context, http: bool, https: bool, tcp: bool, udp: bool, domain: str | None
) -> None:
    """Frontends, from the supervisor's state (no protocol flag: all of them)."""
    request = rq.ListFrontends(http=http, https=https, tcp=tcp, udp=udp, domain=domain)
    send(ctx, request, _render_frontends)
