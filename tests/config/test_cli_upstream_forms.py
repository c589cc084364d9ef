"""Upstream's spellings of CLI options, parsed as upstream means them."""

from __future__ import annotations

import click
import pytest

from sozu.cli.main import sozu

BASE = ["-i", "app", "--backend-id", "b1", "-a", "127.0.0.1:9000"]


def _backend_add() -> click.Command:
    group = sozu.commands["backend"]
    assert isinstance(group, click.Group)
    return group.commands["add"]


@pytest.mark.parametrize(
    ("extra", "backup"),
    [
        ([], False),
        (["-b"], True),  # sozu's flag
        (["-b", "true"], True),  # upstream's `--backup <BOOL>`
        (["--backup", "false", "-w", "3"], False),
    ],
)
def test_backend_add_takes_backup_as_a_flag_or_a_boolean(extra: list[str], backup: bool) -> None:
    context = _backend_add().make_context("add", [*BASE, *extra])
    assert context.params["backup"] is backup
    assert context.params["address"] == "127.0.0.1:9000"


def test_a_backup_value_that_is_not_a_boolean_is_a_usage_error() -> None:
    with pytest.raises(click.BadParameter):
        _backend_add().make_context("add", [*BASE, "-b", "maybe"])
