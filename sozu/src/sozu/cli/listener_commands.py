"""`sozu listener ...`: remove, activate and deactivate a listener of any protocol; add and
update TCP and UDP listeners (HTTP and HTTPS ones come from `http_commands`); list them all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

# Called through the module (`routing.send`), not imported by name: the CLI tests replace
# `routing_commands.send` to see the requests a command builds.
from sozu.cli import routing_commands as routing
from sozu.cli.context import SozuCommand, SozuGroup
from sozu.command import requests as rq
from sozu.command.envelope import Response
from sozu.command.requests import Request
from sozu.command.responses import ListenersList
from sozu.command.types import (
    HttpListenerConfig,
    HttpsListenerConfig,
    ListenerType,
    TcpListenerConfig,
    UdpListenerConfig,
)


@click.group("listener", cls=SozuGroup)
def listener_group() -> None:
    """Listeners: add, update, remove, activate, deactivate, list."""


def _listener_group(proxy: ListenerType) -> click.Group:
    """`listener <proxy>`: remove, activate, deactivate; TCP and UDP `add` and `update`.

    HTTP and HTTPS `add` and `update` come from `http_commands`.
    """
    name = proxy.lower()

    @click.group(name, cls=SozuGroup)
    def group() -> None:
        pass

    group.help = f"{proxy} listeners."
    for verb, cls in (
        ("remove", rq.RemoveListener),
        ("activate", rq.ActivateListener),
        ("deactivate", rq.DeactivateListener),
    ):
        _address_command(group, verb, cls, proxy)
    if proxy == "TCP":
        group.add_command(_tcp_listener_add)
        group.add_command(_tcp_listener_update)
    elif proxy == "UDP":
        group.add_command(_udp_listener_add)
        group.add_command(_udp_listener_update)
    return group


_seconds = click.IntRange(0, 2**32 - 1)

_Command = TypeVar("_Command", bound=Callable[..., Any])


def _stream_options(command: _Command) -> _Command:
    """The options TCP and UDP listeners share, in this order: address, public address, front
    and back timeouts (the decorators stacked in that order)."""
    for option in reversed(
        (
            routing.address_option,
            click.option("--public-address", help="Address announced to backends."),
            click.option("--front-timeout", type=_seconds, help="Seconds."),
            click.option("--back-timeout", type=_seconds, help="Seconds."),
        )
    ):
        command = option(command)
    return command


def _udp_options(command: _Command) -> _Command:
    """The shared options, then a UDP listener's own: flows and datagram size."""
    command = click.option(
        "--max-rx-datagram-size", type=click.IntRange(1, 65535), help="Bytes per datagram."
    )(command)
    command = click.option(
        "--max-flows",
        type=click.IntRange(0),
        help="Live UDP flows per worker (0: automatic, from the fd limit and max_connections).",
    )(command)
    return _stream_options(command)


@click.command("add", cls=SozuCommand)
@_stream_options
@click.option("--connect-timeout", type=_seconds, help="Seconds.")
@click.option("--expect-proxy", is_flag=True, help="Expect a PROXY protocol header.")
@click.pass_context
def _tcp_listener_add(ctx: click.Context, /, address: str, **options: Any) -> None:
    """Add a TCP listener (inactive until activated)."""
    if options["public_address"] and options["expect_proxy"]:
        raise click.UsageError("--public-address and --expect-proxy are exclusive")
    fields = {name: value for name, value in options.items() if value not in (None, False)}
    routing.send(
        ctx, routing.build_request(lambda: _add_listener("TCP", {"address": address, **fields}))
    )


@click.command("update", cls=SozuCommand)
@_stream_options
@click.option("--connect-timeout", type=_seconds, help="Seconds.")
@click.option(
    "--expect-proxy/--no-expect-proxy", default=None, help="Expect a PROXY protocol header."
)
@click.pass_context
def _tcp_listener_update(ctx: click.Context, /, address: str, **options: Any) -> None:
    """Update a TCP listener; options not given keep their value."""
    fields = {name: value for name, value in options.items() if value is not None}
    routing.send(
        ctx, routing.build_request(lambda: rq.UpdateTcpListener(address=address, **fields))
    )


@click.command("add", cls=SozuCommand)
@_udp_options
@click.pass_context
def _udp_listener_add(ctx: click.Context, /, address: str, **options: Any) -> None:
    """Add a UDP listener (inactive until activated)."""
    fields = {name: value for name, value in options.items() if value is not None}
    routing.send(
        ctx, routing.build_request(lambda: _add_listener("UDP", {"address": address, **fields}))
    )


@click.command("update", cls=SozuCommand)
@_udp_options
@click.pass_context
def _udp_listener_update(ctx: click.Context, /, address: str, **options: Any) -> None:
    """Update a UDP listener; options not given keep their value."""
    fields = {name: value for name, value in options.items() if value is not None}
    routing.send(
        ctx, routing.build_request(lambda: rq.UpdateUdpListener(address=address, **fields))
    )


def _add_listener(proxy: ListenerType, fields: dict[str, Any]) -> Request:
    if proxy == "HTTP":
        return rq.AddHttpListener(listener=HttpListenerConfig(**fields))
    if proxy == "HTTPS":
        return rq.AddHttpsListener(listener=HttpsListenerConfig(**fields))
    if proxy == "TCP":
        return rq.AddTcpListener(listener=TcpListenerConfig(**fields))
    return rq.AddUdpListener(listener=UdpListenerConfig(**fields))


def _address_command(
    group: click.Group,
    verb: str,
    cls: type[rq.RemoveListener | rq.ActivateListener | rq.DeactivateListener],
    proxy: ListenerType,
) -> None:
    @group.command(verb, help=f"{verb.capitalize()} a {proxy} listener.")
    @routing.address_option
    @click.pass_context
    def command(ctx: click.Context, address: str) -> None:
        routing.send(ctx, routing.build_request(lambda: cls(address=address, proxy=proxy)))


for _proxy in ("HTTP", "HTTPS", "TCP", "UDP"):
    listener_group.add_command(_listener_group(_proxy))


def _render_listeners(response: Response) -> str:
    content = response.content
    if not isinstance(content, ListenersList):
        return response.message
    lines = []
    for proxy, listeners in (
        ("http", content.http),
        ("https", content.https),
        ("tcp", content.tcp),
        ("udp", content.udp),
    ):
        for address, listener in sorted(listeners.items()):
            state = "active" if listener.active else "inactive"
            lines.append(f"{proxy:<5} {address:<24} {state}")
    return "\n".join(lines) or "no listeners"


@listener_group.command("list")
@click.pass_context
def listener_list(ctx: click.Context) -> None:
    """Every listener and whether it is active."""
    routing.send(ctx, rq.ListListeners(), _render_listeners)
