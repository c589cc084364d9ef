"""The `sozu` command line: the root group and its commands."""

from __future__ import annotations

import click

from sozu.cli.config_commands import config_group
from sozu.cli.context import SozuGroup
from sozu.cli.start import start


@click.group(cls=SozuGroup, root=True, context_settings={"help_option_names": ["-h", "--help"]})
def sozu() -> None:
    """sozu: a hot-reconfigurable reverse proxy and load balancer.

    -c/--config, -j/--json and -t/--timeout are accepted before or after any subcommand.
    """


sozu.add_command(config_group)
sozu.add_command(start)


def main() -> None:
    sozu(prog_name="sozu")
