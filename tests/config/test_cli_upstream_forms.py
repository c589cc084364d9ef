"""Upstream's spellings of CLI options, parsed as upstream means them."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from sozu.cli.http_commands import _headers, _listener_fields
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


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("request:X-A=1", ("REQUEST", "X-A", "1")),
        ("request=X-A=1", ("REQUEST", "X-A", "1")),  # upstream's
        ("response=X-B=a:b", ("RESPONSE", "X-B", "a:b")),
        ("both:X-C=", ("BOTH", "X-C", "")),
    ],
)
def test_header_edits_in_both_spellings(spelling: str, expected: tuple[str, str, str]) -> None:
    (header,) = _headers((spelling,))
    assert (header.position, header.key, header.val) == expected


def test_a_header_edit_without_a_position_is_refused() -> None:
    with pytest.raises(click.BadParameter, match="request=KEY=VALUE"):
        _headers(("X-A=1",))


def _listener_command(verb: str, proxy: str = "http") -> click.Command:
    group = sozu.commands["listener"]
    assert isinstance(group, click.Group)
    sub = group.commands[proxy]
    assert isinstance(sub, click.Group)
    return sub.commands[verb]


@pytest.mark.parametrize("verb", ["add", "update"])
def test_listener_answer_nnn_files_join_the_answers(verb: str, tmp_path: Path) -> None:
    (tmp_path / "404.html").write_text("not here")
    (tmp_path / "503.html").write_text("busy")
    args = ["-a", "127.0.0.1:8080", "--answer-404", str(tmp_path / "404.html")]
    args += ["--answer", f"503={tmp_path / '503.html'}"]
    context = _listener_command(verb).make_context(verb, args)
    fields = _listener_fields(dict(context.params), False, update=verb == "update")
    assert fields["answers"] == {"404": "not here", "503": "busy"}


def test_https_listener_takes_the_tls_spellings() -> None:
    args = ["-a", "127.0.0.1:8443", "--tls-cipher-list", "ECDHE-RSA-AES128-GCM-SHA256"]
    context = _listener_command("add", "https").make_context("add", args)
    assert context.params["cipher_list"] == ("ECDHE-RSA-AES128-GCM-SHA256",)


def test_hsts_disabled_is_no_hsts() -> None:
    base = ["-a", "127.0.0.1:8443"]
    context = _listener_command("update", "https").make_context(
        "update", [*base, "--hsts-disabled"]
    )
    fields = _listener_fields(dict(context.params), True, update=True)
    assert fields["hsts"].enabled is False
    clash = _listener_command("update", "https").make_context(
        "update", [*base, "--hsts", "--hsts-disabled"]
    )
    with pytest.raises(click.UsageError):
        _listener_fields(dict(clash.params), True, update=True)
