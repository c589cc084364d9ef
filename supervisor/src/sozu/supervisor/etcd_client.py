"""A small etcd v3 client over the JSON gateway (`/v3/...`) of etcd 3.4, with httpx on trio.

Only what the fleet needs: a range read of a prefix at one revision, transactions of puts and
deletes, a watch stream, leases, and authentication (`/v3/auth/authenticate`, token sent in the
`Authorization` header, renewed when etcd says it is no longer valid). Endpoints are tried in
order; the one that answered is used first next time. Connection problems raise
`EtcdUnavailable`; a watch on a compacted revision raises `Compacted`; what etcd refuses
raises `EtcdError`.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import httpx
import msgspec

# httpx logs every request at INFO: a watched fleet would fill the daemon's log.
logging.getLogger("httpx").setLevel(logging.WARNING)

# etcd 3.4 refuses a transaction with more operations (--max-txn-ops).
MAX_TXN_OPS: Final = 128
_UNAUTHENTICATED: Final = 16  # gRPC status code
_TOKEN_ERRORS: Final = ("invalid auth token", "auth token", "user name is empty")


class EtcdError(Exception):
    """etcd answered, and refused."""


class EtcdUnavailable(Exception):
    """No endpoint could be reached (or one broke the connection)."""


class Compacted(Exception):
    """The revision asked for is compacted: read everything again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest kept: {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch: a put (value set) or a delete (value None)."""

    key: bytes
    value: bytes | None
    revision: int


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes
    prefix: bool = False


Operation = Put | Delete


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (etcd's range_end)."""
    trimmed = bytearray(prefix)
    while trimmed and trimmed[-1] == 0xFF:
        trimmed.pop()
    if not trimmed:
        return b"\0"
    trimmed[-1] += 1
    return bytes(trimmed)


def _operation(op: Operation) -> dict[str, Any]:
    if isinstance(op, Put):
        put: dict[str, Any] = {"key": b64(op.key), "value": b64(op.value)}
        if op.lease:
            put["lease"] = str(op.lease)
        return {"request_put": put}
    delete: dict[str, Any] = {"key": b64(op.key)}
    if op.prefix:
        delete["range_end"] = b64(prefix_end(op.key))
    return {"request_delete_range": delete}


def tls_context(ca: str | None, certificate: str | None, key: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    if certificate is not None:
        context.load_cert_chain(certificate, key)
    return context


class EtcdClient:
    """One etcd cluster, through any of its endpoints. Use it inside `async with`."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        ca: str | None = None,
        certificate: str | None = None,
        key: str | None = None,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        assert endpoints, "at least one endpoint"
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.user = user
        self.password = password
        self.timeout = timeout
        self._token: str | None = None
        verify: ssl.SSLContext | bool = True
        if any(e.startswith("https://") for e in self.endpoints):
            verify = tls_context(ca, certificate, key)
        self._http = httpx.AsyncClient(verify=verify, timeout=timeout)

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def endpoint(self) -> str:
        """The endpoint tried first (the last one that answered)."""
        return self.endpoints[0]

    def _prefer(self, index: int) -> None:
        if index:
            self.endpoints.insert(0, self.endpoints.pop(index))

    def _headers(self) -> dict[str, str]:
        return {"Authorization": self._token} if self._token else {}

    async def _authenticate(self, endpoint: str) -> None:
        body = {"name": self.user, "password": self.password}
        response = await self._http.post(f"{endpoint}/v3/auth/authenticate", json=body)
        answer = _answer(response)
        self._token = str(answer["token"])

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `/v3/<path>` on the first endpoint that answers."""
        errors: list[str] = []
        for index, endpoint in enumerate(list(self.endpoints)):
            try:
                answer = await self._call_one(endpoint, path, body)
            except (httpx.TransportError, EtcdUnavailable) as error:
                errors.append(f"{endpoint}: {error or type(error).__name__}")
                continue
            self._prefer(index)
            return answer
        raise EtcdUnavailable("; ".join(errors))

    async def _call_one(self, endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self.user is not None and self._token is None:
            await self._authenticate(endpoint)
        response = await self._http.post(
            f"{endpoint}/v3/{path}", json=body, headers=self._headers()
        )
        if self.user is not None and _token_refused(response):
            await self._authenticate(endpoint)
            response = await self._http.post(
                f"{endpoint}/v3/{path}", json=body, headers=self._headers()
            )
        return _answer(response)

    async def range_prefix(self, prefix: bytes) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Every key under `prefix` and its value, at one revision (returned first)."""
        answer = await self.call(
            "kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        )
        revision = int(answer["header"]["revision"])
        pairs = [(unb64(kv["key"]), unb64(kv.get("value", ""))) for kv in answer.get("kvs", ())]
        return revision, pairs

    async def latest_mod_revision(self, prefix: bytes) -> int:
        """The revision of the last put under `prefix` that is still there (0: none)."""
        answer = await self.call(
            "kv/range",
            {
                "key": b64(prefix),
                "range_end": b64(prefix_end(prefix)),
                "limit": "1",
                "sort_order": "DESCEND",
                "sort_target": "MOD",
                "keys_only": True,
            },
        )
        kvs = answer.get("kvs", ())
        return int(kvs[0]["mod_revision"]) if kvs else 0

    async def get(self, key: bytes) -> tuple[int, bytes | None]:
        """The revision of the read and the value of `key` (None: absent)."""
        answer = await self.call("kv/range", {"key": b64(key)})
        kvs = answer.get("kvs", ())
        value = unb64(kvs[0].get("value", "")) if kvs else None
        return int(answer["header"]["revision"]), value

    async def txn(
        self, operations: Sequence[Operation], *, compare: Sequence[dict[str, Any]] = ()
    ) -> tuple[bool, int]:
        """Apply `operations` in one transaction (when every `compare` holds): (succeeded,
        revision)."""
        assert len(operations) <= MAX_TXN_OPS, f"{len(operations)} operations in one txn"
        body = {"compare": list(compare), "success": [_operation(op) for op in operations]}
        answer = await self.call("kv/txn", body)
        return bool(answer.get("succeeded", False)), int(answer["header"]["revision"])

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        return (await self.txn([Put(key, value, lease)]))[1]

    async def grant_lease(self, ttl: int) -> int:
        answer = await self.call("lease/grant", {"TTL": str(ttl)})
        return int(answer["ID"])

    async def keep_alive(self, lease: int) -> int:
        """Renew a lease once; its remaining TTL (0: the lease is gone)."""
        answer = await self.call("lease/keepalive", {"ID": str(lease)})
        result = answer.get("result", answer)
        return int(result.get("TTL", 0))

    async def watch(
        self,
        prefix: bytes,
        start_revision: int,
        handle: Callable[[list[Event]], Awaitable[None]],
    ) -> NoReturn:
        """Call `handle` with the events under `prefix` from `start_revision` on, one list per
        response of etcd (events of one revision are never split across responses). Ends
        only by raising: `EtcdUnavailable` when the stream breaks, `Compacted`, `EtcdError`,
        or whatever `handle` raises."""
        body = {
            "create_request": {
                "key": b64(prefix),
                "range_end": b64(prefix_end(prefix)),
                "start_revision": str(start_revision),
            }
        }
        endpoint = self.endpoints[0]
        try:
            if self.user is not None and self._token is None:
                await self._authenticate(endpoint)
            timeout = httpx.Timeout(self.timeout, read=None)
            async with self._http.stream(
                "POST", f"{endpoint}/v3/watch", json=body, headers=self._headers(), timeout=timeout
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    _answer(response)
                lines = response.aiter_lines()
                async with contextlib.aclosing(lines):  # type: ignore[type-var]
                    async for line in lines:
                        if not line.strip():
                            continue
                        events = _watch_events(line)
                        if events:
                            await handle(events)
        except (httpx.TransportError, EtcdUnavailable) as error:
            if self.user is not None:
                self._token = None
            self.endpoints.append(self.endpoints.pop(0))  # try the next one first
            raise EtcdUnavailable(f"{endpoint}: {error or type(error).__name__}") from None
        self.endpoints.append(self.endpoints.pop(0))
        raise EtcdUnavailable(f"{endpoint}: watch stream ended")


def _watch_events(line: str) -> list[Event]:
    try:
        message = msgspec.json.decode(line)
    except msgspec.DecodeError as error:
        raise EtcdError(f"unreadable watch response: {error}") from None
    if "error" in message:
        # The member went away under the stream (stopping, leader lost): try again.
        raise EtcdUnavailable(f"watch: {_error_text(message['error'])}")
    result = message.get("result", {})
    compact = int(result.get("compact_revision", 0))
    if compact:
        raise Compacted(compact)
    if result.get("canceled"):
        raise EtcdError(f"watch canceled: {result.get('cancel_reason', 'no reason given')}")
    out = []
    for event in result.get("events", ()):
        kv = event["kv"]
        value = None if event.get("type") == "DELETE" else unb64(kv.get("value", ""))
        out.append(Event(unb64(kv["key"]), value, int(kv["mod_revision"])))
    return out


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or error.get("error") or error)
    return str(error)


def _token_refused(response: httpx.Response) -> bool:
    if response.status_code not in (401, 400, 403, 500):
        return False
    try:
        answer = response.json()
    except ValueError:
        return False
    message = str(answer.get("error") or answer.get("message") or "")
    return answer.get("code") == _UNAUTHENTICATED or any(t in message for t in _TOKEN_ERRORS)


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        answer = response.json()
    except ValueError:
        raise EtcdError(f"HTTP {response.status_code}: {response.text[:200]!r}") from None
    if response.status_code == 503 or (isinstance(answer, dict) and answer.get("code") == 14):
        raise EtcdUnavailable(f"HTTP {response.status_code}: {_error_text(answer)}")
    if response.status_code != 200 or not isinstance(answer, dict):
        raise EtcdError(f"HTTP {response.status_code}: {_error_text(answer)}")
    return answer
