"""The state file: versioned JSON lines, a header then one request envelope per line.

Saving writes `generate_requests()` to a temporary file, fsyncs it and renames it over the
target, so a crash never leaves half a state file. Loading parses the whole file before
anything is applied: a malformed file changes nothing. Applying merges like upstream:
records already present and identical are skipped and counted, others that are refused
are counted as errors and the load goes on.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec

from sozu.command.envelope import PROTOCOL_VERSION, UNREADABLE, RequestEnvelope
from sozu.command.requests import Request
from sozu.command.responses import LoadStateReport
from sozu.command.state import ConfigState
from sozu.command.state_errors import AlreadyExists, StateError
from sozu.command.statefile_upstream import (
    RECORD_SEPARATOR,
    UpstreamFormatError,
    dump_upstream_state,
    looks_upstream,
    parse_upstream_state,
)

STATE_FILE_VERSION: Final = 1
MAX_RECORD_BYTES: Final = 2_000_000


class StateFileError(Exception):
    """A state file that cannot be read; names the line at fault."""


class StateFileHeader(msgspec.Struct, frozen=True, kw_only=True):
    sozu_state: int
    protocol_version: int
    records: int


_encoder: Final = msgspec.json.Encoder()
_header_decoder: Final = msgspec.json.Decoder(StateFileHeader)
_record_decoder: Final = msgspec.json.Decoder(RequestEnvelope)
_wire_encoder: Final = msgspec.msgpack.Encoder()


def dump_state(state: ConfigState) -> bytes:
    """The state file bytes of a state."""
    requests = state.generate_requests()
    header = StateFileHeader(
        sozu_state=STATE_FILE_VERSION, protocol_version=PROTOCOL_VERSION, records=len(requests)
    )
    lines = [_encoder.encode(header)]
    lines.extend(
        _encoder.encode(RequestEnvelope(id=f"SAVE-{index}", request=request))  # type: ignore[arg-type]
        for index, request in enumerate(requests)
    )
    return b"\n".join(lines) + b"\n"


def save_state(state: ConfigState, path: Path, *, upstream: bool = False) -> int:
    """Atomically write the state file (sozu's format, or upstream's); returns the number of
    records written. A state upstream's format cannot carry raises UpstreamFormatError (a
    ValueError) naming what, and writes nothing."""
    if upstream:
        data = dump_upstream_state(state)
        count = data.count(RECORD_SEPARATOR)
    else:
        data = dump_state(state)
        count = data.count(b"\n") - 1
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return count


def parse_state(data: bytes, source: str = "state file") -> list[Request]:
    """All requests of a state file, or StateFileError naming the line at fault."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if not lines:
        raise StateFileError(f"{source}: empty file (no header line)")
    try:
        header = _header_decoder.decode(lines[0])
    except UNREADABLE as error:
        raise StateFileError(f"{source}:1: not a sozu state file header: {error}") from None
    if header.sozu_state > STATE_FILE_VERSION:
        raise StateFileError(
            f"{source}:1: state file version {header.sozu_state} is newer than this sozu "
            f"(reads up to {STATE_FILE_VERSION})"
        )
    if header.protocol_version > PROTOCOL_VERSION:
        raise StateFileError(
            f"{source}:1: protocol version {header.protocol_version} is newer than this sozu "
            f"(speaks up to {PROTOCOL_VERSION})"
        )
    requests: list[Request] = []
    for number, line in enumerate(lines[1:], start=2):
        if len(line) > MAX_RECORD_BYTES:
            raise StateFileError(f"{source}:{number}: record longer than {MAX_RECORD_BYTES} bytes")
        try:
            request = _record_decoder.decode(line).request
        except UNREADABLE as error:
            raise StateFileError(f"{source}:{number}: {error}") from None
        try:
            # JSON integers are unbounded, msgpack's (the protocol, the state hash) 64-bit.
            _wire_encoder.encode(request)
        except OverflowError:
            raise StateFileError(f"{source}:{number}: integer out of the 64-bit range") from None
        requests.append(request)
    if len(requests) != header.records:
        raise StateFileError(
            f"{source}: header announces {header.records} records, the file holds {len(requests)}"
        )
    return requests


def read_state_file(path: Path) -> list[Request]:
    """The requests of a state file in sozu's format or upstream's (told apart by its
    first line)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise StateFileError(f"{path}: {error.strerror or error}") from None
    if looks_upstream(data):
        try:
            return parse_upstream_state(data, str(path), MAX_RECORD_BYTES)
        except UpstreamFormatError as error:
            raise StateFileError(str(error)) from None
    return parse_state(data, str(path))


def load_requests(
    state: ConfigState,
    requests: list[Request],
    admit: Callable[[Request], bool] | None = None,
) -> tuple[LoadStateReport, list[Request]]:
    """Merge requests into a state; returns the counts and the requests that changed it.

    `admit`, when given, is asked before each request is applied (the supervisor binds the
    sockets of a listener to activate there); False counts the request as an error."""
    ok = skipped = errors = 0
    applied: list[Request] = []
    for request in requests:
        if admit is not None and not admit(request):
            errors += 1
            continue
        try:
            outcome = state.apply(request)
        except AlreadyExists as error:
            if error.identical:
                skipped += 1
            else:
                errors += 1
            continue
        except StateError:
            errors += 1
            continue
        if outcome == "changed":
            ok += 1
            applied.append(request)
        else:
            skipped += 1
    return LoadStateReport(ok=ok, skipped=skipped, errors=errors), applied
