"""The `sozu` command line: the root group and its commands."""

from __future__ import annotations

import importlib
from typing import ClassVar

import click

from sozu.cli.certificate_commands import certificate_group
from sozu.cli.cluster_commands import cluster_group
from sozu.cli.config_commands import config_group
from sozu.cli.context import SozuGroup
from sozu.cli.daemon_commands import (
    events,
    logging_level,
    relaunch,
    reload,
    shutdown,
    status,
    upgrade,
)
from sozu.cli.health_check_commands import health_check_group
from sozu.cli.http_commands import (
    add_listener_commands,
    http_frontend_group,
    https_frontend_group,
)
from sozu.cli.listener_commands import listener_group
from sozu.cli.metrics_commands import metrics_group
from sozu.cli.routing_commands import backend_group, frontend_group
from sozu.cli.runtime_commands import cluster_h2_group, connection_limit_group
from sozu.cli.start import start
from sozu.cli.state_commands import state_group
from sozu.command.build import build_id


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """`sozu 0.1.0 (build <id>)`: the build id is what `sozu status` shows per process."""
    if not value or ctx.resilient_parsing:
        return
    import importlib.metadata  # here: it costs every other command ~35 ms of imports

    click.echo(f"sozu {importlib.metadata.version('sozu')} (build {build_id()})")
    ctx.exit()


class RootGroup(SozuGroup):
    """The `sozu` group: commands with heavy imports (httpx and trio for `fleet`, rich for
    `top`) are imported only when run or listed, so that every other command starts fast."""

    LAZY: ClassVar[dict[str, tuple[str, str]]] = {
        "fleet": ("sozu.cli.fleet_commands", "fleet_group"),
        "top": ("sozu.cli.top_command", "top"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY and cmd_name not in self.commands:
            module, attribute = self.LAZY[cmd_name]
            command = getattr(importlib.import_module(module), attribute)
            assert isinstance(command, click.Command)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=RootGroup, root=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-V",
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Print the version and build id, then exit.",
)
def sozu() -> None:
    """sozu: a hot-reconfigurable reverse proxy and load balancer.

    -c/--config, -j/--json, -t/--timeout and --socket are accepted before or after any
    subcommand.
    """


sozu.add_command(config_group)
sozu.add_command(start)
sozu.add_command(shutdown)
sozu.add_command(upgrade)
sozu.add_command(relaunch)
sozu.add_command(status)
sozu.add_command(events)
sozu.add_command(reload)
sozu.add_command(logging_level)
sozu.add_command(state_group)
sozu.add_command(cluster_group)
sozu.add_command(backend_group)
sozu.add_command(listener_group)
sozu.add_command(frontend_group)
sozu.add_command(certificate_group)
sozu.add_command(metrics_group)
sozu.add_command(connection_limit_group)

cluster_group.add_command(health_check_group)
cluster_group.add_command(cluster_h2_group)
frontend_group.add_command(http_frontend_group)
frontend_group.add_command(https_frontend_group)
add_listener_commands(listener_group)


def main() -> None:
    sozu(prog_name="sozu")
