"""Talking to the daemon from a CLI command: one request, its answers, output and exit code.

Exit codes: 0 ok, 1 the daemon answered Failure (or no answer within the timeout), 2 usage,
69 the command socket cannot be reached. With `-j` every command prints one JSON document on
stdout; otherwise results go to stdout and progress and errors to stderr.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NoReturn

import click
import msgspec

from sozu.cli.context import CliState, cli_state, command_socket, load_or_fail
from sozu.command.client import CommandClient, CommandTimeout, DaemonUnavailable
from sozu.command.envelope import ProtocolError, Response
from sozu.command.requests import AnyRequest, Request

EX_UNAVAILABLE = 69

Render = Callable[[Response], str]


class DaemonFailure(click.ClickException):
    """The daemon refused the request (or did not answer in time): exit 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True, file=file)


class DaemonUnreachable(DaemonFailure):
    """The command socket cannot be reached: exit 69 (EX_UNAVAILABLE)."""

    exit_code = EX_UNAVAILABLE


def checked(request: Request) -> Request:
    """The request as the daemon will decode it: out-of-range values are a usage error."""
    try:
        decoded: Request = msgspec.msgpack.decode(msgspec.msgpack.encode(request), type=AnyRequest)
    except (msgspec.ValidationError, ValueError) as error:
        raise click.UsageError(str(error)) from None
    return decoded


def print_json(document: object) -> None:
    click.echo(msgspec.json.encode(document).decode())


def response_document(response: Response) -> dict[str, Any]:
    document: dict[str, Any] = {"status": response.status, "message": response.message}
    if response.content is not None:
        document["content"] = msgspec.to_builtins(response.content)
    return document


def _unavailable(state: CliState, message: str) -> NoReturn:
    if state.json:
        print_json({"status": "unavailable", "message": message})
    raise DaemonUnreachable(message)


def call(
    ctx: click.Context, request: Request, *, default_timeout_ms: int | None = None
) -> Response:
    """Send `request` to the daemon and return its Ok answer; exit on anything else."""
    state = cli_state(ctx)
    loaded = load_or_fail(state)
    config = loaded.config
    timeout_ms: int | None = state.timeout_ms or default_timeout_ms or config.ctl_command_timeout
    if state.timeout_ms == 0:
        timeout_ms = None  # `-t 0`: wait as long as the daemon takes (upstream's meaning)
    try:
        with CommandClient.connect(
            command_socket(state, loaded), max_frame_size=config.max_command_buffer_size
        ) as client:
            response = client.call(
                request,
                timeout_ms=timeout_ms,
                on_processing=None if state.json else _show_progress,
            )
    except DaemonUnavailable as error:
        _unavailable(state, str(error))
    except (CommandTimeout, ProtocolError) as error:
        if state.json:
            print_json({"status": "failure", "message": str(error)})
        raise DaemonFailure(str(error)) from None
    if response.status != "ok":
        if state.json:
            print_json(response_document(response))
        raise DaemonFailure(response.message or "the daemon refused the request")
    return response


def _show_progress(response: Response) -> None:
    if response.message:
        click.echo(response.message, err=True)


def run(
    ctx: click.Context,
    request: Request,
    *,
    render: Render | None = None,
    default_timeout_ms: int | None = None,
    transform: Callable[[Response], Response] | None = None,
) -> None:
    """`call`, then print the answer: its JSON document, or `render(response)` / its message.

    `transform` narrows the answer first (a filter the request itself cannot express), so the
    JSON document and the text show the same thing.
    """
    response = call(ctx, request, default_timeout_ms=default_timeout_ms)
    if transform is not None:
        response = transform(response)
    if cli_state(ctx).json:
        print_json(response_document(response))
    elif render is not None:
        click.echo(render(response))
    elif response.message:
        click.echo(response.message)


# How long a follower whose daemon went away keeps trying to resubscribe: a supervisor
# upgrade re-executes it, and its command socket answers again a few seconds later.
RESUBSCRIBE_WINDOW = 30.0


def follow(
    ctx: click.Context,
    subscription: Callable[[], Request],
    on_answer: Callable[[Response], bool],
) -> None:
    """Send a subscription and hand every answer to `on_answer` until the daemon stops.

    When the connection ends, the subscription is sent again (built anew by `subscription`,
    which may resume where the last one ended) for up to RESUBSCRIBE_WINDOW seconds, unless
    `on_answer` returned False for an answer (the stream is meant to end there).
    """
    state = cli_state(ctx)
    loaded = load_or_fail(state)
    subscribed = False
    lost_at: float | None = None
    while True:
        ended = False
        try:
            with CommandClient.connect(command_socket(state, loaded)) as client:
                for response in client.subscribe(subscription()):
                    if response.status == "failure":
                        raise DaemonFailure(response.message)
                    subscribed, lost_at = True, None
                    if not on_answer(response):
                        ended = True
        except DaemonUnavailable as error:
            if not subscribed:
                _unavailable(state, str(error))
            if ended:
                return
            now = time.monotonic()
            lost_at = now if lost_at is None else lost_at
            if now - lost_at > RESUBSCRIBE_WINDOW:
                return  # the daemon is gone: the stream is over
            time.sleep(0.2)
            continue
        if ended:
            return
