"""ResponseReader (response_reader.py): its direct path (a complete head of the shape the
session core writes, with a content-length or no body to expect, its body counted down) held
to the httptools parser's path it shortcuts. For each response, split into feeds in many ways
(every single cut, byte by byte, every two cuts of the short ones, and any cuts hypothesis
draws), a reader free to go direct and one forced onto the parser (`_slow` set right after
construction) give the same head, body, trailers, `complete` and `failed` after every feed, the
body taken and cleared after each feed as the session does.

Two differences are by design and not compared: `reusable` (the direct path never feeds the
parser, which stays at a message boundary, so a reader is reusable after any complete direct
read) and a body longer than its content-length (the direct path fails the response; the
parser would read the excess as the start of a next message), tested on its own. The tests
at the end hold two edges the direct path leaves to the parser: a content-length past what
the parser takes, and bytes after a message without a body in the same feed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sozu.worker.core.h2.response_reader import ResponseReader


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes
    direct: bool  # whether a single feed of the whole response takes the direct path
    method: bytes = b"GET"


CASES = [
    Case(
        "length",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
        True,
    ),
    Case("length-zero", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
    Case(
        "length-long-body",
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 600\r\n\r\n" + b"e" * 600,
        True,
    ),
    Case("no-content", b"HTTP/1.1 204 No Content\r\nServer: sozu\r\n\r\n", True),
    Case(
        "not-modified",
        b'HTTP/1.1 304 Not Modified\r\nETag: "abc"\r\nContent-Length: 10\r\n\r\n',
        True,
    ),
    Case("head", b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", True, b"HEAD"),
    Case("head-no-length", b"HTTP/1.1 200 OK\r\nServer: sozu\r\n\r\n", True, b"HEAD"),
    Case("head-chunked", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", False, b"HEAD"),
    Case(
        "chunked",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        False,
    ),
    Case(
        "chunked-trailers",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: grpc-status\r\n\r\n3\r\nabc\r\n0\r\ngrpc-status: 0\r\n"
        b"Grpc-Message:  fine \r\nConnection: close\r\n\r\n",
        False,
    ),
    Case(
        "close-delimited",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the connection closes",
        False,
    ),
    Case(
        "continue",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        False,
    ),
    Case(
        "early-hints",
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        False,
    ),
    Case(
        "blanks",
        b"HTTP/1.1 200 OK\r\nX-Spaced:   a  b  \r\nX-Tab:\tt\t\r\nX-Empty:\r\n"
        b"Content-Length:  3 \r\n\r\nabc",
        True,
    ),
    Case("obs-fold", b"HTTP/1.1 200 OK\r\nX-Fold: a\r\n b\r\nContent-Length: 2\r\n\r\nok", False),
    Case(
        "duplicate-length",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        False,
    ),
    Case(
        "conflicting-length",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        False,
    ),
    Case(
        "length-and-chunked",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\nok\r\n0\r\n\r\n",
        False,
    ),
    Case("http-1.0", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    Case(
        "connection-specific",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: x-checksum\r\n"
        b"Upgrade: h2c\r\nContent-Length: 2\r\nX-Kept: yes\r\n\r\nok",
        True,
    ),
    Case(
        "connection-close",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        True,
    ),
    Case("uppercase", b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 3\r\nX-UPPER: Value\r\n\r\nabc", True),
    Case("no-reason", b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", True),
    Case("empty-reason", b"HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", True),
    Case(
        "obs-text",
        b"HTTP/1.1 200 \xc3\xa9t\xc3\xa9\r\nX-Bytes: \xff\x80 \xe9\r\nContent-Length: 2\r\n\r\nok",
        True,
    ),
    Case("leading-zeros", b"HTTP/1.1 200 OK\r\nContent-Length: 007\r\n\r\n1234567", True),
    Case("signed-length", b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", False),
    Case("blank-in-name", b"HTTP/1.1 200 OK\r\nBad Name: x\r\nContent-Length: 2\r\n\r\nok", False),
    Case("control-in-value", b"HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 2\r\n\r\nok", False),
    Case("bare-lf", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", False),
    Case(
        "switching-protocols",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        False,
    ),
]
SHORT = 64  # responses up to this length are also read at every pair of cuts

State = tuple[object, bytes, list[tuple[bytes, bytes]], bool, bool]


def reader(method: bytes, *, slow: bool) -> ResponseReader:
    fresh = ResponseReader(method)
    if slow:
        fresh._slow = True
    return fresh


def pieces(raw: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(set(cuts) - {0, len(raw)}), len(raw)]
    return [raw[start:end] for start, end in itertools.pairwise(edges)]


def read(subject: ResponseReader, feeds: list[bytes]) -> list[State]:
    """The reader's state after each feed, its body taken and cleared as the session does."""
    states: list[State] = []
    for data in feeds:
        subject.feed(data)
        body = bytes(subject.body)
        subject.body.clear()
        states.append(
            (subject.head, body, list(subject.trailers), subject.complete, subject.failed)
        )
    return states


def same_reads(case: Case, cuts: list[int]) -> bool:
    """Both readers give the same states; whether the direct path was taken."""
    feeds = pieces(case.raw, cuts)
    direct = reader(case.method, slow=False)
    expected = read(reader(case.method, slow=True), feeds)
    assert read(direct, feeds) == expected, feeds
    return not direct._slow


def splits(raw: bytes) -> list[list[int]]:
    """No cut, each single cut, byte by byte, and each pair of cuts of a short response."""
    every = list(range(1, len(raw)))
    ways = [[], every, *([cut] for cut in every)]
    if len(raw) <= SHORT:
        ways += [list(pair) for pair in itertools.combinations(every, 2)]
    return ways


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_direct_path_matches_parser(case: Case) -> None:
    direct_reads = [same_reads(case, cuts) for cuts in splits(case.raw)]
    # The whole response in one feed goes direct exactly for the heads expected to.
    assert direct_reads[0] == case.direct
    if not case.direct:
        assert not any(direct_reads)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CASES), st.data())
def test_direct_path_matches_parser_any_split(case: Case, data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(1, len(case.raw) - 1), max_size=12), label="cuts")
    same_reads(case, cuts)


def test_reused_readers_read_alike() -> None:
    """Readers reused (reset) whenever `reusable`, along every response in turn, as the
    session reuses them: direct or not, each reads the next response as a new slow one."""
    direct: ResponseReader | None = None
    slow: ResponseReader | None = None
    for case in CASES * 2:
        if direct is not None and direct.reusable:
            direct.reset(case.method)
        else:
            direct = reader(case.method, slow=False)
        if slow is not None and slow.reusable:
            slow.reset(case.method)
        else:
            slow = reader(case.method, slow=False)
        slow._slow = True
        feeds = pieces(case.raw, [len(case.raw) // 2])
        assert read(direct, feeds) == read(slow, feeds), case.name


# -- the direct path is taken


def test_direct_path_counts_the_body_down() -> None:
    subject = reader(b"GET", slow=False)
    subject.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Kept: yes\r\n\r\nhel")
    assert not subject._slow
    assert subject._remaining == 8
    assert subject.head == [(b":status", b"200"), (b"content-length", b"11"), (b"x-kept", b"yes")]
    assert bytes(subject.body) == b"hel"
    assert not subject.complete
    subject.body.clear()
    subject.feed(b"lo world")
    assert not subject._slow
    assert subject._remaining == 0
    assert bytes(subject.body) == b"lo world"
    assert subject.complete
    assert subject.reusable


def test_head_in_pieces_goes_to_the_parser() -> None:
    subject = reader(b"GET", slow=False)
    subject.feed(b"HTTP/1.1 200 OK\r\nContent-Len")
    assert subject._slow
    assert subject._remaining == -1
    subject.feed(b"gth: 2\r\n\r\nok")
    assert subject.head == [(b":status", b"200"), (b"content-length", b"2")]
    assert bytes(subject.body) == b"ok"
    assert subject.complete


# -- by design


@pytest.mark.parametrize(
    "cuts",
    [[], [38], [39], [38, 39]],
    ids=["one-feed", "head-then-body", "head-and-part-then-rest", "head-part-rest"],
)
def test_body_longer_than_its_length_fails(cuts: list[int]) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"
    assert raw.index(b"ok") == 38
    subject = reader(b"GET", slow=False)
    for data in pieces(raw, cuts):
        subject.feed(data)
    assert not subject._slow
    assert subject.failed
    assert not subject.complete
    assert not subject.reusable


def test_connection_close_is_reusable_after_a_direct_read() -> None:
    raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
    direct = reader(b"GET", slow=False)
    slow = reader(b"GET", slow=True)
    assert read(direct, [raw]) == read(slow, [raw])
    assert direct.reusable  # its parser was never fed
    assert not slow.reusable


# -- edges left to the parser


def test_content_length_past_the_parser_limit_fails_alike() -> None:
    case = Case(
        "huge-length", b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\nab", False
    )
    slow = read(reader(b"GET", slow=True), [case.raw])
    assert slow[-1][4]  # the parser refuses it
    same_reads(case, [])


@pytest.mark.parametrize(
    ("method", "raw"),
    [
        (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
        (b"GET", b"HTTP/1.1 204 No Content\r\n\r\nX"),
        (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nX"),
    ],
    ids=["head-with-body", "no-content-with-bytes", "length-zero-with-bytes"],
)
def test_bytes_after_a_head_without_body_read_alike(method: bytes, raw: bytes) -> None:
    slow = reader(method, slow=True)
    slow.feed(raw)
    direct = reader(method, slow=False)
    direct.feed(raw)
    assert (direct.head, bytes(direct.body), direct.complete) == (
        slow.head,
        bytes(slow.body),
        slow.complete,
    )


def test_a_head_fed_as_a_bytearray_gives_bytes_fields() -> None:
    direct = ResponseReader(b"GET")
    direct.feed(bytearray(b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Length: 2\r\n\r\nok"))
    assert direct.head is not None
    assert direct.head == [(b":status", b"200"), (b"server", b"x"), (b"content-length", b"2")]
    assert all(type(name) is bytes and type(value) is bytes for name, value in direct.head)
    assert direct.complete


# -- heads that share all but their last line (read once: `_known_stems`)

STEM = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain"
STEM_WITH_LENGTH = STEM + b"\r\nContent-Length: 2"


@pytest.mark.parametrize(
    ("stem", "last", "direct"),
    [
        (STEM, b"Sozu-Id: 01A", False),  # no content-length: close-delimited
        (STEM, b"Content-Length: 2", True),
        (STEM, b"Content-Length: 2x", False),
        (STEM, b"Transfer-Encoding: chunked", False),
        (STEM, b"Bad Name: 1", False),
        (STEM_WITH_LENGTH, b"Sozu-Id: 01A", True),
        (STEM_WITH_LENGTH, b"Sozu-Id: 01B", True),
        (STEM_WITH_LENGTH, b"Connection: close", True),
        (STEM_WITH_LENGTH, b"Content-Length: 2", False),  # repeated
        (STEM_WITH_LENGTH, b"Transfer-Encoding: chunked", False),
        (STEM_WITH_LENGTH, b"Bad Name: 1", False),
    ],
)
def test_heads_sharing_a_stem_read_alike(stem: bytes, last: bytes, direct: bool) -> None:
    """Run in this order, heads of one stem follow each other: the stem's reading is reused,
    and the last line still decides as the parser would."""
    raw = stem + b"\r\n" + last + b"\r\n\r\nok"
    assert same_reads(Case("stem", raw, direct), []) == direct
