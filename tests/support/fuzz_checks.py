"""The properties that fuzzing checks, shared by the bounded runs in tests/fuzz and the atheris
targets in fuzz/.

Each `check_*` takes one input (bytes, text or requests, with the cut points where the input
arrives in pieces) and returns quietly when the code under test behaved: it answered, or
refused with the error it documents. Anything else escapes, as an AssertionError naming the
broken property or as the unexpected exception itself.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec
import trio

from sozu.command.channel import FramedConnection, Rejected, RequestMux
from sozu.command.config import ConfigError, ConfigSummary, LoadedConfig, parse_config
from sozu.command.envelope import (
    MAX_ID_LENGTH,
    PROTOCOL_VERSION,
    ProtocolError,
    RejectedRequest,
    Response,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    peek_id,
)
from sozu.command.framing import (
    OVERSIZE_HEAD_BYTES,
    PREFIX,
    FrameError,
    FrameReader,
    OversizeFrame,
)
from sozu.command.request_checks import http_frontend_problems
from sozu.command.requests import Request
from sozu.command.route_patterns import MAX_HOSTNAME_LENGTH
from sozu.command.state import ConfigState
from sozu.command.state_errors import StateError
from sozu.command.statefile import StateFileError, dump_state, load_requests, parse_state
from sozu.command.types import RequestHttpFrontend
from sozu.worker.core.http.codec import (
    ChunkedScanner,
    Framing,
    HeadError,
    find_head_end,
    parse_request_head,
    parse_response_head,
)
from sozu.worker.core.http.router import Router, parse_authority, split_hostname_pattern
from sozu.worker.core.proxy_protocol import ProxyHeader, ProxyProtocolError, build_v2, parse_v2

STATE_FILE_HEADER = b'{"sozu_state":1,"protocol_version":1,"records":1}\n'


def expect(condition: bool, message: str) -> None:
    """An assertion about an exception being handled (plain `assert` outside handlers)."""
    if not condition:
        raise AssertionError(message)


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """`data` cut at the given offsets (taken modulo its length + 1); pieces may be empty."""
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces = []
    start = 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


# ---------------------------------------------------------------------------------------------
# Command frames, envelopes and the channel


def _reference_frames(data: bytes, max_frame_size: int) -> tuple[list[bytes | OversizeFrame], int]:
    """Whole frames of `data`, read the simple way, and the offset where they end."""
    frames: list[bytes | OversizeFrame] = []
    position = 0
    while len(data) - position >= PREFIX.size:
        (length,) = PREFIX.unpack_from(data, position)
        payload = data[position + PREFIX.size : position + PREFIX.size + length]
        if len(payload) < length:
            break
        if length > max_frame_size:
            frames.append(OversizeFrame(length, payload[:OVERSIZE_HEAD_BYTES]))
        else:
            frames.append(payload)
        position += PREFIX.size + length
    return frames, position


def _read_frames(
    pieces: Sequence[bytes], max_frame_size: int
) -> tuple[list[bytes | OversizeFrame], bool]:
    reader = FrameReader(max_frame_size)
    frames: list[bytes | OversizeFrame] = []
    for piece in pieces:
        reader.feed(piece)
        while (frame := reader.next_frame()) is not None:
            frames.append(frame)
        # Never a whole frame held, and an oversize one never buffered at all.
        assert reader.buffered < PREFIX.size + max_frame_size
    try:
        reader.check_eof()
    except FrameError:
        return frames, False
    return frames, True


def check_frames(data: bytes, max_frame_size: int, cuts: Iterable[int]) -> None:
    """FrameReader: the frames of the simple reading, whatever the pieces the bytes come in."""
    expected, end = _reference_frames(data, max_frame_size)
    for pieces in ([data], split(data, cuts)):
        frames, clean_eof = _read_frames(pieces, max_frame_size)
        assert frames == expected
        assert clean_eof == (end == len(data))


def check_request_payload(payload: bytes) -> None:
    """decode_request: an envelope that survives a round trip, or its documented refusals."""
    head_id = peek_id(payload)
    assert head_id is None or len(head_id) <= MAX_ID_LENGTH
    try:
        envelope = decode_request(payload)
    except ProtocolError:
        return
    except RejectedRequest as rejected:
        expect(len(rejected.request_id) <= MAX_ID_LENGTH, "a rejection's id is too long")
        return
    assert len(envelope.id) <= MAX_ID_LENGTH
    assert 1 <= envelope.v <= PROTOCOL_VERSION
    check_request_round_trip(envelope.request)


def check_request_round_trip(request: Request) -> None:
    """A request that was accepted can be sent on (to the workers) and reads back the same."""
    again = decode_request(encode_request("again", request))
    assert again.request == request, (again.request, request)


def check_response_payload(payload: bytes) -> None:
    """decode_response: a response that re-encodes to itself, or ProtocolError."""
    try:
        response = decode_response(payload)
    except ProtocolError:
        return
    encoded = encode_response(response)
    assert encode_response(decode_response(encoded)) == encoded


class ScriptedStream(trio.abc.Stream):
    """A peer that sends the given chunks, then closes; what it is sent is kept."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = collections.deque(chunk for chunk in chunks if chunk)
        self.sent = bytearray()
        self.closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError
        if not self._chunks:
            return b""
        chunk = self._chunks.popleft()
        if max_bytes is not None and len(chunk) > max_bytes:
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        return chunk

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError
        self.sent += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


async def _serve(chunks: list[bytes], max_frame_size: int) -> list[object]:
    """What a command socket server makes of the bytes a client sent."""
    stream = ScriptedStream(chunks)
    connection = FramedConnection(stream, max_frame_size=max_frame_size)
    seen: list[object] = []
    while True:
        try:
            item = await connection.receive_request()
        except ProtocolError as error:
            assert stream.closed
            seen.append(("protocol error", str(error)))
            return seen
        if item is None:
            return seen
        if isinstance(item, Rejected):
            assert len(item.request_id) <= MAX_ID_LENGTH
            seen.append(("rejected", item.request_id, item.message))
            await connection.send_response(item.failure())
        else:
            seen.append(("request", item.id, encode_request(item.id, item.request)))


async def _client(chunks: list[bytes], max_frame_size: int) -> list[object]:
    """What a client's RequestMux makes of the bytes a server sent."""
    connection = FramedConnection(ScriptedStream(chunks), max_frame_size=max_frame_size)
    unsolicited: list[Response] = []
    mux = RequestMux(connection, on_unsolicited=unsolicited.append)
    await mux.run()
    assert mux.closed_reason is not None
    return [encode_response(response) for response in unsolicited]


def check_channel(data: bytes, max_frame_size: int, cuts: Iterable[int]) -> None:
    """FramedConnection and RequestMux: the same items whatever the pieces, never a crash."""
    pieces = split(data, cuts)
    assert trio.run(_serve, [data], max_frame_size) == trio.run(_serve, pieces, max_frame_size)
    assert trio.run(_client, [data], max_frame_size) == trio.run(_client, pieces, max_frame_size)


# ---------------------------------------------------------------------------------------------
# Requests in msgpack and JSON, the state file, the state


def check_request_data(data: dict[str, object]) -> None:
    """A request in builtins form, sent in msgpack and saved in a JSON state file: decoded
    into something that can be sent on, or refused cleanly with its id or line."""
    try:
        payload = msgspec.msgpack.encode({"v": PROTOCOL_VERSION, "id": "fuzz", "request": data})
    except OverflowError:
        pass  # an integer msgpack cannot carry: no peer can send it
    else:
        try:
            envelope = decode_request(payload)
        except RejectedRequest as rejected:
            expect(rejected.request_id == "fuzz", f"rejected as {rejected.request_id!r}")
        else:
            check_request_round_trip(envelope.request)
    line = msgspec.json.encode({"id": "fuzz", "request": data})
    check_state_file(STATE_FILE_HEADER + line + b"\n")


def check_state_file(data: bytes) -> None:
    """parse_state then load_requests: StateFileError, or requests a state takes or refuses."""
    try:
        requests = parse_state(data)
    except StateFileError:
        return
    for request in requests:
        check_request_round_trip(request)
    state = ConfigState()
    report, applied = load_requests(state, requests)
    assert report.ok == len(applied)
    assert report.ok + report.skipped + report.errors == len(requests)
    state.check_invariants()
    check_replay(state)


def apply_checked(state: ConfigState, request: Request) -> None:
    """Apply: changed, unchanged, or a StateError that left the state (and its hash) alone."""
    before = state.hash()
    try:
        outcome = state.apply(request)
    except StateError:
        assert state.hash() == before, "a refused request changed the state"
    else:
        assert (outcome == "unchanged") == (state.hash() == before)
    state.check_invariants()


def check_replay(state: ConfigState) -> None:
    """A state rebuilds from its requests, sent over the wire or through the state file."""
    requests = state.generate_requests()
    rebuilt = ConfigState()
    for request in requests:
        check_request_round_trip(request)
        rebuilt.apply(request)
    assert rebuilt == state
    assert rebuilt.hash() == state.hash()
    loaded = ConfigState()
    report, _ = load_requests(loaded, parse_state(dump_state(state)))
    assert report.errors == 0
    assert loaded.hash() == state.hash()
    emptied = state.copy()
    for request in state.diff(ConfigState()):
        emptied.apply(request)
    assert emptied == ConfigState()
    assert emptied.hash() == ConfigState().hash()
    check_routers(state)


def check_routers(state: ConfigState) -> None:
    """Every HTTP(S) frontend the state holds builds into its listener's router."""
    by_address: dict[str, list[RequestHttpFrontend]] = {}
    for front in (*state.http_fronts.values(), *state.https_fronts.values()):
        by_address.setdefault(front.address, []).append(front)
    for fronts in by_address.values():
        check_router_invariants(Router.build(fronts))


def check_router_invariants(router: Router) -> None:
    """Router.check_invariants, with room for its recursion: one call per hostname label,
    up to 2048 of them (lookups walk the trie without recursing)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 2 * MAX_HOSTNAME_LENGTH)
    try:
        router.check_invariants()
    finally:
        sys.setrecursionlimit(limit)


def check_state(base: Iterable[Request], requests: Iterable[Request | None]) -> None:
    """Hostile requests applied to a state built from `base` (None: refused by decoding)."""
    state = ConfigState()
    for request in base:
        state.apply(request)
    for hostile in requests:
        if hostile is not None:
            apply_checked(state, hostile)
    check_replay(state)


# ---------------------------------------------------------------------------------------------
# HTTP/1 heads and chunked bodies


def _head_end(pieces: Iterable[bytes], limit: int) -> tuple[str, int]:
    """Where the session finds the head, reading the pieces one by one."""
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        try:
            end = find_head_end(buffer, limit)
        except HeadError as error:
            expect(error.status == 431 and len(buffer) >= limit, f"{error.status} too soon")
            return "too large", 0
        if end > 0:
            assert end <= len(buffer)
            assert buffer[end - 4 : end] == b"\r\n\r\n"
            return "head", end
    return "incomplete", 0


def _found_head(data: bytes, limit: int, cuts: Iterable[int]) -> bytes | None:
    whole = _head_end([data], limit)
    assert _head_end(split(data, cuts), limit) == whole
    if whole[0] == "head":
        assert whole[1] <= limit
        return data[: whole[1]]
    return None


def _refused(error: HeadError, low: int, high: int) -> None:
    expect(low <= error.status < high and bool(error.reason), f"refused with {error.status}")


def check_request_head(data: bytes, limit: int, cuts: Iterable[int]) -> None:
    """find_head_end then parse_request_head: a head, or a HeadError with a 4xx status."""
    for head in (_found_head(data, limit, cuts), data):
        if head is None:
            continue
        try:
            parsed = parse_request_head(head)
        except HeadError as error:
            _refused(error, 400, 500)
            continue
        assert parsed.length == len(head)
        assert parsed.version in (b"1.0", b"1.1")
        assert parsed.method != b"CONNECT"
        assert parsed.content_length >= 0
        assert parsed.framing is Framing.LENGTH or parsed.content_length == 0
        assert parsed.version == b"1.0" or parsed.authority is not None


def check_response_head(data: bytes, method: bytes, limit: int, cuts: Iterable[int]) -> None:
    """find_head_end then parse_response_head: a head, or a HeadError with a 5xx status."""
    for head in (_found_head(data, limit, cuts), data):
        if head is None:
            continue
        try:
            parsed = parse_response_head(head, method)
        except HeadError as error:
            _refused(error, 500, 600)
            continue
        assert parsed.length == len(head)
        assert parsed.version in (b"1.0", b"1.1")
        assert parsed.content_length >= 0
        assert parsed.framing is Framing.LENGTH or parsed.content_length == 0
        if method == b"HEAD":
            assert parsed.framing is Framing.NONE


def _scan(pieces: Iterable[bytes], status: int) -> tuple[str, int]:
    scanner = ChunkedScanner(status)
    consumed = 0
    for piece in pieces:
        try:
            taken = scanner.feed(piece)
        except HeadError as error:
            expect(error.status == status, f"refused with {error.status}")
            return "refused", consumed
        scanner.check_invariants()
        assert 0 <= taken <= len(piece)
        consumed += taken
        if scanner.done:
            return "done", consumed
        assert taken == len(piece)
    return "more", -1


def check_chunked(data: bytes, status: int, cuts: Iterable[int]) -> None:
    """ChunkedScanner: the same end of body (or refusal) whatever the pieces."""
    whole = _scan([data], status)
    outcome, consumed = _scan(split(data, cuts), status)
    assert outcome == whole[0]
    if outcome == "done":
        assert consumed == whole[1]
        assert data[:consumed].endswith(b"\r\n")


# ---------------------------------------------------------------------------------------------
# PROXY protocol v2


def _proxy_header(pieces: Iterable[bytes]) -> ProxyHeader | str:
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        try:
            header = parse_v2(buffer)
        except ProxyProtocolError as error:
            expect(bool(str(error)), "a refusal without a reason")
            return "refused"
        if header is not None:
            assert 16 <= header.length <= min(232, len(buffer))
            return header
    return "incomplete"


def check_proxy_protocol(data: bytes, cuts: Iterable[int]) -> None:
    """parse_v2: the same header (or refusal) whatever the pieces; headers rebuild."""
    whole = _proxy_header([data])
    assert _proxy_header(split(data, cuts)) == whole
    if isinstance(whole, ProxyHeader) and whole.source is not None:
        assert whole.destination is not None
        rebuilt = parse_v2(build_v2(whole.source, whole.destination))
        assert rebuilt is not None
        assert (rebuilt.source, rebuilt.destination) == (whole.source, whole.destination)


# ---------------------------------------------------------------------------------------------
# The configuration file


def check_config_text(text: str, base_dir: Path, *, toml_valid: bool = False) -> None:
    """parse_config: a configuration whose requests build a state, or a ConfigError, which
    names the key at fault whenever the text was valid TOML."""
    try:
        loaded = parse_config(text, base_dir=base_dir, source="fuzz")
    except ConfigError as error:
        expect(bool(error.message), "an error without a message")
        expect(bool(error.path) or not toml_valid, f"no key named: {error}")
        return
    _check_loaded(loaded)


def _check_loaded(loaded: LoadedConfig) -> None:
    ConfigSummary.of(loaded).describe()
    state = ConfigState()
    for request in loaded.requests:
        try:
            state.apply(request)
        except StateError as error:
            raise AssertionError(f"the state refuses {request} of a loaded config") from error
        check_request_round_trip(request)
    state.check_invariants()
    check_routers(state)


# ---------------------------------------------------------------------------------------------
# The HTTP router


def check_router(
    frontends: Iterable[RequestHttpFrontend],
    removed: Iterable[int],
    lookups: Iterable[tuple[str, str, str]],
) -> None:
    """Router: only frontends the state refuses are refused, with ValueError (the router
    unchanged); lookups of any host, path and method answered; parse_authority total and
    idempotent."""
    router = Router()
    added: list[RequestHttpFrontend] = []
    for frontend in frontends:
        before = sorted(f.route_key() for f in router.frontends())
        try:
            router.add(frontend)
        except ValueError as error:
            expect(bool(http_frontend_problems(frontend)), f"the state takes it: {error}")
            assert sorted(f.route_key() for f in router.frontends()) == before
        else:
            added.append(frontend)
        check_router_invariants(router)
    for index in removed:
        if added:
            router.remove(added[index % len(added)])
            check_router_invariants(router)
    for host, path, method in lookups:
        check_hostname_pattern(host)
        router.lookup(host, path, method)
        parsed = parse_authority(host)
        if parsed is None:
            continue
        name, port = parsed
        assert parse_authority(name if port is None else f"{name}:{port}") == parsed
        match = router.lookup(name, path, method)
        if match is not None:
            assert match.frontend in added


def check_hostname_pattern(text: str) -> None:
    """split_hostname_pattern: non-empty labels, or ValueError."""
    try:
        labels = split_hostname_pattern(text)
    except ValueError:
        return
    assert labels
    assert all(labels)
