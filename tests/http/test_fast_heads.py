"""The header fast paths give what the full edits give, serialized: `fast_request_head` and
`fast_response_head` against `edit_request` / `edit_response` then `serialize_head`, over
heads written the canonical way (`Name: value`, as the full path writes them back)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sozu.worker.core.http.codec import H_CONNECTION, parse_request_head, parse_response_head
from sozu.worker.core.http.header_edits import (
    FORWARDING_HEADERS,
    edit_request,
    edit_response,
    fast_request_head,
    fast_response_head,
    forwarding_block,
    serialize_head,
)

RID = b"01J0000000000000000000000A"
CONNECTION_VALUES = [b"keep-alive", b"close", b"Keep-Alive", b"upgrade", b"keep-alive, x"]
OTHER = [
    (b"Server", b"nginx"),
    (b"Content-Type", b"text/plain"),
    (b"Cache-Control", b"no-cache"),
    (b"X-Connection", b"keep-alive"),
]


def _head(headers: list[tuple[bytes, bytes]], length: int) -> bytes:
    return serialize_head(b"HTTP/1.1 200 OK", [*headers, (b"Content-Length", b"%d" % length)])


def _full(raw: bytes, closing: bool) -> tuple[bytes, bool]:
    """What `_edited_response_head` sends, and whether the backend connection stays."""
    response = parse_response_head(raw, b"GET")
    edited = edit_response(response.headers, request_id=RID, closing=closing)
    headers = edited.headers
    if not closing and not edited.keep_alive:
        headers = [(n, v) for n, v in headers if n.lower() != b"connection"]
    start = b"HTTP/1.1 %d %s" % (response.status, response.reason)
    return serialize_head(start, headers), edited.keep_alive and response.keep_alive


@settings(max_examples=400, deadline=None)
@given(
    others=st.lists(st.sampled_from(OTHER), max_size=4),
    connections=st.lists(
        st.tuples(
            st.sampled_from([b"Connection", b"connection"]), st.sampled_from(CONNECTION_VALUES)
        ),
        max_size=2,
    ),
    where=st.integers(min_value=0, max_value=4),
    closing=st.booleans(),
)
def test_fast_response_head_is_the_full_edit(
    others: list[tuple[bytes, bytes]],
    connections: list[tuple[bytes, bytes]],
    where: int,
    closing: bool,
) -> None:
    headers = list(others)
    for line in connections:
        headers.insert(min(where, len(headers)), line)
    raw = _head(headers, 13)
    response = parse_response_head(raw, b"GET")
    quick = fast_response_head(
        raw,
        response.special,
        response.keep_alive,
        request_id=RID,
        sozu_id_header=b"Sozu-Id",
        closing=closing,
    )
    full, back_keep = _full(raw, closing)
    if quick is None:
        # Declined only where the Connection header needs the full edit.
        assert response.special & H_CONNECTION
        return
    assert quick == full
    assert back_keep == response.keep_alive


def test_a_closing_client_turns_the_usual_keep_alive_into_close() -> None:
    raw = _head([(b"Server", b"nginx"), (b"Connection", b"keep-alive")], 13)
    response = parse_response_head(raw, b"GET")
    quick = fast_response_head(
        raw, response.special, True, request_id=RID, sozu_id_header=b"Sozu-Id", closing=True
    )
    assert quick is not None
    assert b"\r\nConnection: close\r\n" in quick
    assert b"keep-alive" not in quick
    assert quick.endswith(b"\r\nSozu-Id: " + RID + b"\r\n\r\n")


def test_other_spellings_and_several_lines_take_the_full_edit() -> None:
    for headers in (
        [(b"connection", b"keep-alive")],
        [(b"Connection", b"Keep-Alive")],
        [(b"Connection", b"keep-alive"), (b"connection", b"x-hop")],
        [(b"Connection", b"close")],
    ):
        raw = _head(headers, 13)
        response = parse_response_head(raw, b"GET")
        assert (
            fast_response_head(
                raw,
                response.special,
                response.keep_alive,
                request_id=RID,
                sozu_id_header=b"Sozu-Id",
                closing=True,
            )
            is None
        ), headers


REQUEST_OTHER = [
    (b"User-Agent", b"bench/1.0"),
    (b"Accept", b"*/*"),
    (b"X-Request-Id", b"given"),
    (b"X-Real-IP", b"10.9.9.9"),
    (b"Connection", b"keep-alive"),
]


@settings(max_examples=300, deadline=None)
@given(
    others=st.lists(st.sampled_from(REQUEST_OTHER), max_size=4, unique=True),
    peer=st.sampled_from([("10.0.0.1", 50000), ("::1", 443), None]),
    https=st.booleans(),
    send_x_real_ip=st.booleans(),
)
def test_fast_request_head_is_the_full_edit(
    others: list[tuple[bytes, bytes]],
    peer: tuple[str, int] | None,
    https: bool,
    send_x_real_ip: bool,
) -> None:
    raw = serialize_head(b"GET /a?b=c HTTP/1.1", [(b"Host", b"web.test"), *others])
    head = parse_request_head(raw)
    assert not head.special & FORWARDING_HEADERS
    block = forwarding_block(
        peer, https=https, public_ip="127.0.0.1", public_port=8080, send_x_real_ip=send_x_real_ip
    )
    quick = fast_request_head(
        raw, head.special, block, request_id=RID, sozu_id_header=b"Sozu-Id", closing=False
    )
    edits = edit_request(
        head.headers,
        request_id=RID,
        https=https,
        public_ip="127.0.0.1",
        public_port=8080,
        peer=peer,
        send_x_real_ip=send_x_real_ip,
    )
    assert quick == serialize_head(b"GET /a?b=c HTTP/1.1", edits.headers)


def test_a_close_in_any_connection_line_counts() -> None:
    for version in (b"1.0", b"1.1"):
        raw = serialize_head(
            b"GET / HTTP/" + version,
            [(b"Host", b"web.test"), (b"Connection", b"keep-alive"), (b"Connection", b"close")],
        )
        assert not parse_request_head(raw).keep_alive, version
    response = _head([(b"Connection", b"keep-alive"), (b"connection", b"close")], 0)
    assert not parse_response_head(response, b"GET").keep_alive
    one_line = serialize_head(
        b"GET / HTTP/1.0", [(b"Host", b"web.test"), (b"Connection", b"keep-alive")]
    )
    assert parse_request_head(one_line).keep_alive
