"""Exceptions Python cannot raise to a caller go through the worker's log: a TLS server name
that is not ASCII (the ssl module fails to decode it before the SNI callback runs, once per
such handshake) is one debug line, anything else an error with its traceback."""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace
from typing import cast

import pytest

from sozu.worker.main import _unraisable


def _args(error: BaseException, obj: object) -> sys.UnraisableHookArgs:
    """What Python hands the hook (its type is not importable at run time)."""
    args = SimpleNamespace(
        exc_type=type(error),
        exc_value=error,
        exc_traceback=error.__traceback__,
        err_msg=None,
        object=obj,
    )
    return cast("sys.UnraisableHookArgs", args)


def test_a_server_name_that_is_not_ascii_is_one_debug_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "bénch.test".encode()
    try:
        name.decode("ascii")
    except UnicodeDecodeError as error:
        caught = error
    with caplog.at_level(logging.DEBUG, logger="sozu.worker"):
        _unraisable(_args(caught, name))
    assert [(r.levelno, r.exc_info) for r in caplog.records] == [(logging.DEBUG, None)]
    assert "not ASCII" in caplog.records[0].getMessage()


def test_other_unraisable_errors_are_logged_with_their_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        raise KeyError("in a finalizer")
    except KeyError as error:
        caught = error
    with caplog.at_level(logging.DEBUG, logger="sozu.worker"):
        _unraisable(_args(caught, "some object"))
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.exc_info[1] is caught
