"""Hostile values for fuzzing, and every request kind in builtins form generated from its type.

`request_data()` walks the msgspec type of a request (`msgspec.inspect`) and draws plain data
(dicts, lists, str, int, bool, None) for it: values shaped like what each field expects (the
addresses, ids and certificates of `state_strategies`, so that requests meet the objects of a
drawn state) mixed with edge cases (NUL bytes, regex metacharacters, `..`, empty labels,
unicode, numbers at and past every bound, very long strings). With `wrong_types`, a few values
are of another type altogether. The data is what a peer could send in msgpack or JSON;
`typed_request` sends it through msgpack and returns what the state would be handed, or None
when it cannot be sent or decoding refuses it.
"""

from __future__ import annotations

import functools
from typing import Any, Final

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st
from support.certs import pool
from support.state_strategies import CLUSTER_IDS

from sozu.command import requests as rq

HOSTILE_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t",
    "\r\n",
    "\x7f",
    ".",
    "..",
    "a..b",
    "../../etc/passwd",
    "/",
    "//",
    "/(/",
    "/(/.example.com",
    "/[a-z]+/.example.com",
    "*",
    "**",
    "*.",
    ".*",
    "*.*.example.com",
    "(",
    ")",
    "[",
    "]",
    "{",
    "\\",
    "\\;",
    "$",
    "^",
    "|",
    "?",
    "+",
    "(a+)+$",
    "(?P<x>",
    ";",
    "a;b",
    ":",
    "::",
    "%00",
    "-",
    "é",
    "ß",
    "İ",
    "\u202e",
    "\ufeff",
    "\U0001f600",
    "xn--",
    "xn--zz",
    "NaN",
    "null",
    "127.0.0.1:80",
    "[::1]:80",
    "a" * 300,
    "a." * 200,
    "é" * 1000,
)

ADDRESSES: tuple[str, ...] = (
    "127.0.1.1:80",
    "127.0.1.1:8080",
    "127.0.2.1:443",
    "127.0.3.1:80",
    "127.0.4.1:80",
    "127.0.9.1:80",
    "[::1]:9000",
    "[0:0::1]:9000",
    "[::ffff:127.0.0.1]:80",
    "[fe80::1%eth0]:53",
    "[FE80::1]:53",
    "127.0.0.1:0",
    "127.0.0.1:٨٠",
)
BAD_ADDRESSES: tuple[str, ...] = (
    "127.0.0.1:²",
    "127.0.0.1:65536",
    "127.0.0.1:",
    ":80",
    "256.0.0.1:80",
    "127.0.0.1",
    "localhost:80",
    "[::1]",
    "[::1]:80:80",
)
HOSTNAMES: tuple[str, ...] = (
    "example.com",
    "*.example.com",
    "api.example.net",
    "EXAMPLE.com",
    "example.com.",
    "*",
    "*.*",
    "a*.example.com",
    "xn--nxasmq6b.com",
    "ουτοπία.δπθ.gr",
    "İ.example",
    "ß.de",
    "a;b",
    "a b",
    "/(/.example.com",
    "a..b",
    ".example.com",
    "/[a-z]+/.example.com",
    "/a/b/",
)
PATHS: tuple[str, ...] = ("", "/", "/api", "^/v[0-9]+", "/\x00", "/;", "\\;", "/a\\", "(a+)+$")
METHODS: tuple[str, ...] = ("GET", "POST", "get", "", "G ET", "\x00")
HEADER_NAMES: tuple[str, ...] = ("X-A", "Sozu-Id", "SOZUBALANCEID", "", "a b", "a:b", "\r\n")
ALPN: tuple[str, ...] = ("h2", "http/1.1", "h3", "")
STATUS_CODES: tuple[str, ...] = ("404", "503", "301", "999", "abc", "")
URIS: tuple[str, ...] = ("/", "/health", "", "health", "/\x00", "/a b")
_GARBAGE_PEMS: tuple[str, ...] = (
    "",
    "garbage",
    "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    "-----BEGIN CERTIFICATE-----\n",
)

INT_EDGES: tuple[int, ...] = (0, 1, -1, 255, 256, 65535, 65536, 2**31 - 1, 2**32 - 1, 2**32)
INT_EDGES += (2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30)
ints_at_edges: st.SearchStrategy[int] = st.sampled_from(INT_EDGES)
hostile_text: st.SearchStrategy[str] = st.one_of(
    st.sampled_from(HOSTILE_STRINGS),
    st.text(max_size=12),
    st.builds(
        lambda unit, count: unit * count,
        st.sampled_from(["a", ".", "/", "*", "é", "\x00", "a."]),
        st.integers(0, 5000),
    ),
)
wrong_typed: st.SearchStrategy[object] = st.sampled_from(
    (None, True, 0, -1, 2**64, 1.5, "x", b"\x00\xff", [], [1], {}, {"a": 1})
)


@functools.cache
def _pems() -> dict[str, tuple[str, ...]]:
    certificates = pool()
    return {
        "certificate": (*(c.cert_pem for c in certificates), *_GARBAGE_PEMS),
        # drawn apart from the certificates, so often not theirs; a certificate as a key
        "key": (*(c.key_pem for c in certificates), certificates[0].cert_pem, *_GARBAGE_PEMS),
        "chain": (*(p for c in certificates for p in c.chain), *_GARBAGE_PEMS),
        "fingerprint": (
            *(c.fingerprint for c in certificates),
            certificates[0].fingerprint.upper(),
            "0" * 64,
            "g" * 64,
            "0" * 63,
            "",
        ),
        "name": (*(n for c in certificates for n in c.names), "", "*", "a..b"),
    }


def pooled(values: tuple[str, ...], hostile: bool) -> st.SearchStrategy[str]:
    """The pool; when hostile, sometimes anything hostile instead."""
    if not hostile:
        return st.sampled_from(values)
    return st.one_of(st.sampled_from(values), hostile_text)


class ValueStrategies:
    """Builtins data for msgspec types, with strings chosen by field name.

    `text(struct, field, item, hostile)` picks the strings of a field (`item`: the items of a
    sequence, or the keys of a map); subclasses override it for other schemas.
    """

    def __init__(self) -> None:
        self._structs: dict[tuple[type, bool, bool], st.SearchStrategy[dict[str, Any]]] = {}

    def text(self, struct: str, field: str, item: bool, hostile: bool) -> st.SearchStrategy[str]:
        if item:
            return self._item_text(field, hostile)
        if field in ("address", "public_address"):
            return pooled(ADDRESSES + BAD_ADDRESSES if hostile else ADDRESSES, hostile)
        if field == "cluster_id":
            return pooled((*CLUSTER_IDS, "orphan"), hostile)
        if field == "backend_id":
            return pooled(("b0", "b1", "b2"), hostile)
        if field in ("hostname", "domain"):
            return pooled(HOSTNAMES, hostile)
        if (struct, field) in (("PathRule", "value"), ("FrontendSection", "path")):
            return pooled(PATHS, hostile)
        if field == "method":
            return pooled(METHODS, hostile)
        if field in ("sticky_name", "sozu_id_header") or (field == "key" and "Header" in struct):
            return pooled(HEADER_NAMES, hostile)
        if field == "uri":
            return pooled(URIS, hostile)
        if struct == "CertificateAndKey" and field in ("certificate", "key"):
            return st.sampled_from(_pems()[field])
        if field in ("certificate", "key"):  # an HTTPS listener's default certificate
            return pooled(_pems()[field], hostile)
        if field in ("fingerprint", "old_fingerprint"):
            return pooled(_pems()["fingerprint"], hostile)
        return hostile_text

    @staticmethod
    def _item_text(field: str, hostile: bool) -> st.SearchStrategy[str]:
        if field == "alpn_protocols":
            return pooled(ALPN, hostile)
        if field == "certificate_chain":
            return st.sampled_from(_pems()["chain"])
        if field == "names":
            return pooled(_pems()["name"], hostile)
        if field == "answers":
            return pooled(STATUS_CODES, hostile)
        if field in ("cluster_ids", "backend_ids", "clusters"):
            return pooled(CLUSTER_IDS, hostile)
        return hostile_text

    def wrong(self) -> st.SearchStrategy[object]:
        """A value of another type than the one expected."""
        return wrong_typed

    def struct(
        self, cls: type[msgspec.Struct], *, hostile: bool, wrong_types: bool = False
    ) -> st.SearchStrategy[dict[str, Any]]:
        """A map of a struct's fields (required ones always, the others sometimes)."""
        hostile = hostile or wrong_types
        cache_key = (cls, hostile, wrong_types)
        if cache_key not in self._structs:
            info = mi.type_info(cls)
            assert isinstance(info, mi.StructType)
            required: dict[str, st.SearchStrategy[Any]] = {}
            optional: dict[str, st.SearchStrategy[Any]] = {}
            for field in info.fields:
                strategy = self._value(field.type, cls.__name__, field.name, hostile, wrong_types)
                (required if field.required else optional)[field.encode_name] = strategy
            if info.tag_field is not None:
                required[info.tag_field] = st.just(info.tag)
            if wrong_types:
                optional["zz_unknown"] = hostile_text
            self._structs[cache_key] = st.fixed_dictionaries(required, optional=optional)
        return self._structs[cache_key]

    def _value(
        self,
        info: mi.Type,
        struct: str,
        field: str,
        hostile: bool,
        wrong_types: bool,
        item: bool = False,
    ) -> st.SearchStrategy[Any]:
        proper = self._proper(info, struct, field, hostile, wrong_types, item)
        if not wrong_types:
            return proper
        wrong = self.wrong()
        return st.integers(0, 15).flatmap(lambda n: wrong if n == 0 else proper)

    def _proper(
        self, info: mi.Type, struct: str, field: str, hostile: bool, wrong_types: bool, item: bool
    ) -> st.SearchStrategy[Any]:
        if isinstance(info, mi.StructType):
            return self.struct(info.cls, hostile=hostile, wrong_types=wrong_types)
        if isinstance(info, mi.UnionType):
            return st.one_of(
                [self._proper(t, struct, field, hostile, wrong_types, item) for t in info.types]
            )
        if isinstance(info, mi.NoneType):
            return st.none()
        if isinstance(info, mi.BoolType):
            return st.booleans()
        if isinstance(info, mi.IntType):
            return _ints(info, hostile)
        if isinstance(info, mi.FloatType):
            return _floats(info, hostile)
        if isinstance(info, mi.StrType):
            return self.text(struct, field, item, hostile)
        if isinstance(info, mi.BytesType):
            low, high = info.min_length or 0, info.max_length or 96
            if hostile:
                return st.binary(max_size=high + 16)
            return st.binary(min_size=low, max_size=high)
        if isinstance(info, mi.LiteralType):
            choices = tuple(str(v) for v in info.values)
            if not hostile:
                return st.sampled_from(choices)
            near = (*(v.lower() for v in choices), *(v.upper() for v in choices), "", "X")
            return st.one_of(st.sampled_from(choices), st.sampled_from(near))
        if isinstance(info, mi.VarTupleType):
            items = self._value(info.item_type, struct, field, hostile, wrong_types, item=True)
            return st.lists(items, max_size=3)
        if isinstance(info, mi.DictType):
            keys = self.text(struct, field, True, hostile)
            values = self._value(info.value_type, struct, field, hostile, wrong_types)
            return st.dictionaries(keys, values, max_size=3)
        raise AssertionError(f"no strategy for {info!r} ({struct}.{field})")


def _ints(info: mi.IntType, hostile: bool) -> st.SearchStrategy[int]:
    low = info.ge if info.ge is not None else -(2**63)
    high = info.le if info.le is not None else 2**64 - 1
    in_range = st.one_of(st.integers(low, min(high, low + 100)), st.sampled_from((low, high)))
    if not hostile:
        return in_range
    return st.one_of(in_range, st.sampled_from((low - 1, high + 1)), ints_at_edges)


def _floats(info: mi.FloatType, hostile: bool) -> st.SearchStrategy[float]:
    low = info.ge if info.ge is not None else info.gt
    high = info.le if info.le is not None else info.lt
    in_range = st.floats(
        min_value=low,
        max_value=high,
        exclude_min=info.ge is None and info.gt is not None,
        exclude_max=info.le is None and info.lt is not None,
        allow_nan=False,
    )
    if not hostile:
        return in_range
    edges = tuple(v for v in (low, high) if v is not None)
    return st.one_of(in_range, st.sampled_from((*edges, -1.0, 0.0, 1e308)))


REQUEST_VALUES: Final = ValueStrategies()
STATE_KINDS: tuple[type[rq.Request], ...] = tuple(
    cls for cls in rq.REQUEST_TYPES if cls.ROUTING == "state"
)


def request_data(
    kinds: tuple[type[rq.Request], ...] = rq.REQUEST_TYPES,
    *,
    hostile: bool = True,
    wrong_types: bool = False,
) -> st.SearchStrategy[dict[str, Any]]:
    """The builtins form of a request (`type` tag included) of one of `kinds`.

    Not hostile: every value has the type and range its field takes (strings are still odd),
    so most requests decode and reach the state. Hostile: values past bounds and outside
    pools too. Wrong types: a few values of another type, and unknown keys.
    """
    return st.sampled_from(kinds).flatmap(
        lambda cls: REQUEST_VALUES.struct(cls, hostile=hostile, wrong_types=wrong_types)
    )


def typed_request(data: object) -> rq.Request | None:
    """What a peer sending this data in msgpack gets decoded to; None if it cannot be sent
    (an integer msgpack cannot carry) or decoding refuses it."""
    try:
        payload = msgspec.msgpack.encode(data)
    except OverflowError:
        return None
    try:
        return msgspec.msgpack.decode(payload, type=rq.AnyRequest)  # type: ignore[no-any-return]
    except msgspec.ValidationError:
        return None


hostile_requests: st.SearchStrategy[rq.Request | None] = st.one_of(
    request_data(STATE_KINDS, hostile=False),
    request_data(STATE_KINDS, hostile=False),
    request_data(STATE_KINDS),
    request_data(),
).map(typed_request)
"""Requests for a state, mostly of the kinds that change it; None where decoding refused."""
