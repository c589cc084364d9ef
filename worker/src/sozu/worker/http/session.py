"""One HTTP/1.1 client connection of a listener (trio shell); see LIFECYCLE.md beside it.

Requests are served one after the other (pipelined bytes wait in the buffer). For each one:
read and validate the head, route it, apply the frontend policy (redirect, deny, basic auth),
take a pooled keep-alive connection to a backend of the cluster or open one (3 attempts),
send the edited head and stream the body, read the response head (relaying 1xx), send the
edited head and stream the body, then keep or drop both connections. Bodies are relayed as
raw bytes: Content-Length by count, chunked by `ChunkedScanner`. After a 101 the connection
becomes a tunnel. Any decision that is not I/O lives in the sans-io modules beside this one.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from sozu.command.types import Cluster, HstsConfig, RequestHttpFrontend
from sozu.worker.http.access_log import AccessRecord, format_line
from sozu.worker.http.answers import AnswerContext, AnswerSet
from sozu.worker.http.certificate_resolver import authority_matches
from sozu.worker.http.codec import (
    ChunkedScanner,
    Framing,
    HeadError,
    RequestHead,
    ResponseHead,
    find_head_end,
    header_value,
    parse_request_head,
    parse_response_head,
)
from sozu.worker.http.header_edits import (
    HeaderEdit,
    RequestEdits,
    compile_frontend_edits,
    edit_request,
    edit_response,
    serialize_head,
)
from sozu.worker.http.policy import Redirect, Unauthorized, evaluate, rewrite_for
from sozu.worker.http.router import RouteMatch, parse_authority
from sozu.worker.http.streams import PlainStream, Stream, TlsStream, tunnel
from sozu.worker.tcp.backends import TcpCluster

if TYPE_CHECKING:
    from sozu.worker.http.listener import HttpListenerProxy

log = logging.getLogger("sozu.worker.http")

CONNECT_ATTEMPTS = 3


class _ClientGone(Exception):
    """The client closed or reset while a request was being relayed."""


class _Stale(Exception):
    """A pooled backend connection turned out closed before anything was answered on it."""


@dataclass(slots=True)
class _Exchange:
    """What one request/response exchange leaves behind."""

    back_sock: socket.socket
    status: int = 0
    # Response bytes have been (or are being) sent to the client.
    responding: bool = False
    keep_client: bool = False
    keep_backend: bool = False
    upgraded: bool = False


@dataclass(slots=True)
class _RequestLog:
    """What the access log line of one request needs, filled in as the request goes."""

    started: float
    request_id: str
    head: RequestHead | None
    bytes_in_start: int
    bytes_out_start: int
    cluster_id: str | None = None
    backend_id: str | None = None
    backend_address: str | None = None
    backend_started: float | None = None
    status: int | None = None
    message: str | None = None
    frontend_tags: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class _Job:
    """What the exchange with a backend needs to know about the request it forwards."""

    head: RequestHead
    cluster: TcpCluster
    backend_id: str
    answers: AnswerSet
    request_id: str
    route: str
    keep_alive: bool
    sticky_found: bytes | None
    hsts: HstsConfig | None
    response_edits: tuple[HeaderEdit, ...]


@dataclass(slots=True)
class _Upload:
    """The request body relay running beside the response."""

    done: bool
    failed: bool = False
    scope: trio.CancelScope | None = None
    # The answer owed to the client for a malformed body (400), if nothing was sent yet.
    refused: HeadError | None = None


# `_read_response`: the backend closed before sending a byte (a stale pooled connection).
_STALE = -1


class HttpSession:
    """Serves the requests of one client connection."""

    __slots__ = (
        "body_read",
        "buf",
        "bytes_in",
        "bytes_out",
        "default_cert",
        "front",
        "listener",
        "log",
        "peer",
        "per_ip_cluster",
        "served_names",
        "session_id",
        "sni",
    )

    def __init__(self, listener: HttpListenerProxy, front: Stream, peer: tuple[str, int]) -> None:
        self.listener = listener
        self.front = front
        self.peer = peer
        self.buf = bytearray()
        self.served_names: tuple[str, ...] = ()
        self.sni: str | None = None
        self.default_cert = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.body_read = True
        # What the access log reports about the request in progress (only when logging).
        self.log: _RequestLog | None = None
        self.session_id = ""
        # The cluster whose per-IP slot this connection holds (see `per_ip`).
        self.per_ip_cluster: str | None = None

    async def run(self) -> None:
        listener = self.listener
        try:
            while True:
                head = await self._read_request_head()
                if head is None:
                    return
                keep = await self._serve(head)
                # Draining does not end a connection whose last response promised keep-alive:
                # the client may already be sending its next request, whose response then says
                # close (an idle one is closed when the drain ends).
                if not keep:
                    if self.buf:
                        listener.counters.pipelined_unanswered += 1
                    return
        finally:
            self._release_per_ip_slot()

    def _hold_per_ip_slot(self, cluster: Cluster) -> bool:
        """Hold this connection's per-IP slot for `cluster` (moved from the cluster of an
        earlier request); False when the cluster's limit for the client's IP is reached."""
        if self.per_ip_cluster == cluster.cluster_id:
            return True
        if not self.listener.shared.per_ip.take(cluster, self.peer[0]):
            return False
        self._release_per_ip_slot()
        self.per_ip_cluster = cluster.cluster_id
        return True

    def _release_per_ip_slot(self) -> None:
        if self.per_ip_cluster is not None:
            self.listener.shared.per_ip.give(self.per_ip_cluster, self.peer[0])
            self.per_ip_cluster = None

    # -- request heads

    async def _read_request_head(self) -> RequestHead | None:
        config = self.listener.config
        buf = self.buf
        deadline = trio.current_time() + config.request_timeout if buf else None
        while True:
            try:
                end = find_head_end(buf, self.listener.max_head)
                if end > 0:
                    head = parse_request_head(bytes(buf[:end]))
                    del buf[:end]
                    return head
            except HeadError as error:
                self.listener.counters.parse_errors += 1
                log.debug("request from %s refused: %s", self.peer[0], error.reason)
                await self._answer(error.status, message=error.reason)
                return None
            if deadline is None:
                wait_until = trio.current_time() + config.front_timeout
            else:
                wait_until = deadline
            with trio.move_on_at(wait_until) as scope:
                data = await self.front.receive()
            if scope.cancelled_caught:
                if buf:
                    await self._answer(408, message="request head not received in time")
                return None
            if not data:
                return None
            if deadline is None:
                deadline = trio.current_time() + config.request_timeout
            buf += data

    # -- one request

    async def _serve(self, head: RequestHead) -> bool:
        listener = self.listener
        request_id = listener.ids.generate()
        self.bytes_in += head.length
        if listener.shared.access_log is None:
            return await self._route_checked(head, request_id)
        self.log = _RequestLog(
            trio.current_time(), request_id, head, self.bytes_in - head.length, self.bytes_out
        )
        try:
            return await self._route_checked(head, request_id)
        finally:
            self._write_access_log()
            self.log = None

    async def _route_checked(self, head: RequestHead, request_id: str) -> bool:
        """`_route`, never keeping a connection whose request body was left unread (it would
        be parsed as the next request)."""
        self.body_read = head.framing is Framing.NONE
        keep = await self._route(head, request_id)
        return keep and self.body_read

    async def _route(self, head: RequestHead, request_id: str) -> bool:
        listener = self.listener
        counters = listener.counters
        counters.requests += 1
        authority_bytes = head.authority
        parsed = None
        if authority_bytes is not None:
            parsed = parse_authority(authority_bytes.decode("latin-1"))
        if parsed is None:
            return await self._answer(400, request_id=request_id, message="invalid authority")
        host, _ = parsed
        authority = authority_bytes.decode("latin-1") if authority_bytes else host
        if (
            isinstance(self.front, TlsStream)
            and listener.strict_sni
            and not authority_matches(self.served_names, self.sni, authority, self.default_cert)
        ):
            counters.sni_mismatches += 1
            return await self._answer(421, request_id=request_id, message="authority not served")
        path = head.path.decode("latin-1")
        method = head.method.decode("latin-1")
        match = listener.router.lookup(host, path, method)
        if match is None:
            return await self._answer(404, request_id=request_id, message="no frontend")
        frontend = match.frontend
        if self.log is not None and frontend.tags:
            self.log.frontend_tags = frontend.tags
        route = f"{method} {authority} {path}"
        known = listener.cluster(frontend.cluster_id) if frontend.cluster_id else None
        cluster_config = known[0] if known is not None else None
        answers = listener.answers.for_cluster(cluster_config)
        verdict = evaluate(
            frontend,
            cluster_config,
            listener_scheme=listener.scheme,
            authority=authority,
            target=path,
            authorization=header_value(head.headers, b"authorization"),
            host_captures=match.host_captures,
            path_captures=match.path_captures,
        )
        if isinstance(verdict, Redirect):
            return await self._answer(
                verdict.status,
                answers=answers,
                request_id=request_id,
                route=route,
                redirect_location=verdict.location,
                inline_template=verdict.template,
            )
        if isinstance(verdict, Unauthorized):
            return await self._answer(
                401,
                answers=answers,
                request_id=request_id,
                route=route,
                www_authenticate=verdict.www_authenticate or "",
            )
        if known is None:
            return await self._answer(
                503, answers=answers, request_id=request_id, route=route, message="no cluster"
            )
        cluster_config, cluster = known
        if not self._hold_per_ip_slot(cluster_config):
            counters.rejected_per_ip += 1
            return await self._answer(
                429,
                answers=answers,
                request_id=request_id,
                route=route,
                cluster_id=cluster.cluster_id,
                retry_after=listener.shared.per_ip.retry_after(cluster_config),
                message="too many connections from this address",
            )
        return await self._forward(
            head, frontend, match, cluster_config, cluster, answers, request_id, route
        )

    async def _forward(
        self,
        head: RequestHead,
        frontend: RequestHttpFrontend,
        match: RouteMatch,
        cluster_config: Cluster,
        cluster: TcpCluster,
        answers: AnswerSet,
        request_id: str,
        route: str,
    ) -> bool:
        """Forward a routed request to a backend of its cluster and relay the response."""
        listener = self.listener
        started = trio.current_time()
        rewrite = rewrite_for(frontend, match.host_captures, match.path_captures)
        sticky_name = listener.config.sticky_name.encode()
        edits = edit_request(
            head.headers,
            request_id=request_id.encode(),
            https=listener.scheme == "https",
            public_ip=listener.public_ip,
            public_port=listener.public_port,
            peer=self.peer,
            closing=listener.draining,
            sticky_name=sticky_name if cluster_config.sticky_session else None,
            sozu_id_header=listener.sozu_id_header,
            elide_x_real_ip=listener.config.elide_x_real_ip,
            send_x_real_ip=listener.config.send_x_real_ip,
            rewrite_host=rewrite.host.encode() if rewrite.host is not None else None,
            edits=compile_frontend_edits(frontend.headers).request if frontend.headers else (),
        )
        target = rewrite.path.encode("latin-1") if rewrite.path is not None else head.target
        # The client's version: a backend must not answer an HTTP/1.0 client in chunks.
        request_line = head.method + b" " + target + b" HTTP/" + head.version
        request_bytes = serialize_head(request_line, edits.headers)
        sticky_value = edits.sticky_value.decode("latin-1") if edits.sticky_value else None
        sticky = sticky_value if cluster_config.sticky_session else None
        for attempt in range(2):
            try:
                return await self._forward_once(
                    head,
                    frontend,
                    cluster,
                    answers,
                    request_id,
                    route,
                    request_bytes,
                    edits,
                    sticky,
                    started,
                    fresh=attempt > 0,
                )
            except _Stale:
                listener.counters.stale_connections += 1
        return False

    async def _forward_once(
        self,
        head: RequestHead,
        frontend: RequestHttpFrontend,
        cluster: TcpCluster,
        answers: AnswerSet,
        request_id: str,
        route: str,
        request_bytes: bytes,
        edits: RequestEdits,
        sticky: str | None,
        started: float,
        *,
        fresh: bool,
    ) -> bool:
        """One attempt at a backend exchange; `_Stale` if a pooled connection was dead."""
        listener = self.listener
        counters = listener.counters
        # A request with a body cannot be retried once sent (its body is consumed as it goes):
        # a pooled connection is checked before it carries one.
        has_body = head.framing is not Framing.NONE
        connected = await self._connect(cluster, sticky, fresh=fresh, verify=has_body)
        if connected is None:
            counters.no_backend += 1
            return await self._answer(
                503,
                answers=answers,
                request_id=request_id,
                route=route,
                cluster_id=cluster.cluster_id,
                message="no backend available",
            )
        backend_id, address, back_sock, reused = connected
        if self.log is not None:
            self.log.cluster_id = cluster.cluster_id
            self.log.backend_id = backend_id
            self.log.backend_address = f"{address[0]}:{address[1]}"
            self.log.backend_started = trio.current_time()
        cluster.opened(backend_id)
        counters.cluster_requests[cluster.cluster_id] = (
            counters.cluster_requests.get(cluster.cluster_id, 0) + 1
        )
        exchange = _Exchange(back_sock=back_sock)
        backend_started = trio.current_time()
        try:
            job = _Job(
                head=head,
                cluster=cluster,
                backend_id=backend_id,
                answers=answers,
                request_id=request_id,
                route=route,
                keep_alive=edits.keep_alive and head.keep_alive,
                sticky_found=edits.sticky_value,
                hsts=frontend.hsts,
                response_edits=(
                    compile_frontend_edits(frontend.headers).response if frontend.headers else ()
                ),
            )
            exchange = await self._exchange(job, request_bytes, back_sock, reused=reused)
        except _ClientGone:
            exchange.keep_client = exchange.keep_backend = False
        except _Stale:
            exchange.keep_backend = False
            raise
        finally:
            cluster.closed(backend_id)
            # A backend removed meanwhile gets no pooled connection (none would be taken).
            if (
                exchange.keep_backend
                and not listener.draining
                and cluster.selector.backend(backend_id) is not None
            ):
                listener.pool.give(address, exchange.back_sock)
            else:
                exchange.back_sock.close()
            if self.log is not None:
                self.log.status = exchange.status or None
            if exchange.status:
                counters.count_status(exchange.status)
                listener.observe(
                    cluster.cluster_id,
                    trio.current_time() - started,
                    trio.current_time() - backend_started,
                )
        return exchange.keep_client

    async def _connect(
        self, cluster: TcpCluster, sticky: str | None, *, fresh: bool = False, verify: bool = False
    ) -> tuple[str, tuple[str, int], socket.socket, bool] | None:
        """(backend id, address, socket, reused) of a backend connection, None if none opens;
        `fresh` skips the pool, `verify` checks even a just-released pooled connection."""
        listener = self.listener
        for attempt in range(CONNECT_ATTEMPTS):
            now = trio.current_time()
            backend = None
            if sticky is not None and attempt == 0:
                backend = listener.sticky_backend(cluster, sticky, now)
            if backend is None:
                backend = cluster.choose(now)
            if backend is None:
                return None
            pooled = None if fresh else listener.pool.take(backend.address, verify=verify)
            if pooled is not None:
                return backend.id, backend.address, pooled, True
            if attempt:
                listener.counters.retries += 1
            sock = await cluster.dial(backend, listener.config.connect_timeout)
            if sock is None:
                listener.counters.backend_errors += 1
                continue
            return backend.id, backend.address, sock, False
        return None

    # -- the exchange with a backend

    async def _exchange(
        self, job: _Job, request_bytes: bytes, back_sock: socket.socket, *, reused: bool
    ) -> _Exchange:
        head = job.head
        result = _Exchange(back_sock=back_sock)
        back = PlainStream(back_sock, self.listener.config.back_timeout)
        upload = _Upload(head.framing is Framing.NONE)
        try:
            await back.send_all(request_bytes)
        except OSError:
            if reused:
                raise _Stale from None  # a pooled connection the backend had closed
            upload.done = True  # nothing of the body is owed to a backend that is gone
            return await self._respond(job, 502, back, result, upload)
        self.listener.counters.bytes_in += len(request_bytes)
        if upload.done:
            response = await self._read_response(back, head.method)
            if response == _STALE and reused:
                # The pooled connection was closed by the backend as the request went out.
                raise _Stale
            return await self._respond(job, response, back, result, upload)
        async with trio.open_nursery() as nursery:
            upload.scope = nursery.cancel_scope
            nursery.start_soon(self._upload, head, back, upload)
            try:
                response = await self._read_response(back, head.method)
                await self._respond(job, response, back, result, upload)
            except _ClientGone:
                result.keep_client = result.keep_backend = False
            nursery.cancel_scope.cancel()
        if upload.failed:
            result.keep_client = result.keep_backend = False
            if upload.refused is not None and not result.responding:
                self.listener.counters.parse_errors += 1
                await self._answer(
                    upload.refused.status,
                    answers=job.answers,
                    request_id=job.request_id,
                    route=job.route,
                    message=upload.refused.reason,
                )
                result.status = upload.refused.status
        return result

    async def _upload(self, head: RequestHead, back: PlainStream, upload: _Upload) -> None:
        try:
            await self._upload_body(head, back)
            upload.done = True
            self.body_read = True
        except OSError as error:
            # The backend stopped reading (it may be answering early, e.g. 413): its answer
            # is still read and relayed; neither connection is kept.
            upload.failed = True
            log.debug("request body to the backend: %s", error)
        except (HeadError, _ClientGone) as error:
            upload.failed = True
            if isinstance(error, HeadError):
                upload.refused = error
            log.debug("request body from %s: %s", self.peer[0], error)
            if upload.scope is not None:
                upload.scope.cancel()

    async def _respond(
        self,
        job: _Job,
        response: tuple[ResponseHead, bytes] | int,
        back: PlainStream,
        result: _Exchange,
        upload: _Upload,
    ) -> _Exchange:
        head, cluster, backend_id, request_id = (
            job.head,
            job.cluster,
            job.backend_id,
            job.request_id,
        )
        listener = self.listener
        config = listener.config
        if isinstance(response, int):
            status = 502 if response == _STALE else response
            if status == 502:
                listener.counters.backend_parse_errors += 1
            result.responding = True
            result.keep_client = await self._answer(
                status,
                answers=job.answers,
                request_id=request_id,
                route=job.route,
                cluster_id=cluster.cluster_id,
                backend_id=backend_id,
            )
            result.status = status
            return result
        response_head, leftover = response
        if response_head.status == 101 and head.upgrade:
            result.responding = True
            return await self._upgrade(response_head, leftover, back, request_id, result)
        closing = (
            not job.keep_alive
            or listener.draining
            or response_head.framing is Framing.CLOSE
            or not upload.done
        )
        sticky_value = None
        if job.sticky_found is not None or listener.is_sticky(cluster.cluster_id):
            sticky_value = listener.sticky_id(cluster.cluster_id, backend_id)
        hsts_bytes = listener.hsts_for(job.hsts) if listener.scheme == "https" else None
        edited = edit_response(
            response_head.headers,
            request_id=request_id.encode(),
            closing=closing,
            sozu_id_header=listener.sozu_id_header,
            sticky_name=config.sticky_name.encode(),
            sticky_value=sticky_value.encode() if sticky_value is not None else None,
            sticky_found=job.sticky_found,
            edits=job.response_edits,
            hsts=hsts_bytes,
        )
        status_line = (
            b"HTTP/1.1 " + str(response_head.status).encode() + b" " + response_head.reason
        )
        out = serialize_head(status_line, edited.headers)
        result.responding = True
        body_complete = await self._download_body(response_head, out, leftover, back)
        result.status = response_head.status
        # A request that said close (or HTTP/1.0 without keep-alive) leaves the backend free to
        # close once it has answered, whatever its response says: never pooled.
        result.keep_backend = (
            job.keep_alive
            and body_complete
            and upload.done
            and edited.keep_alive
            and response_head.keep_alive
        )
        result.keep_client = body_complete and not closing and not upload.failed
        return result

    async def _read_response(
        self, back: PlainStream, method: bytes
    ) -> tuple[ResponseHead, bytes] | int:
        """The final response head and the bytes read after it; or the status to answer."""
        listener = self.listener
        rbuf = bytearray()
        deadline = trio.current_time() + listener.config.back_timeout
        while True:
            try:
                end = find_head_end(rbuf, listener.max_head)
                if end > 0:
                    response = parse_response_head(bytes(rbuf[:end]), method)
                    del rbuf[:end]
                    if 100 <= response.status < 200 and response.status != 101:
                        await self._send_front(_raw_head(response))
                        deadline = trio.current_time() + listener.config.back_timeout
                        continue
                    return response, bytes(rbuf)
            except HeadError as error:
                log.info("backend response refused: %s", error.reason)
                return 502
            with trio.move_on_at(deadline) as scope:
                try:
                    data = await back.receive()
                except OSError:
                    return _STALE if not rbuf else 502
            if scope.cancelled_caught:
                return 504
            if not data:
                return _STALE if not rbuf else 502
            rbuf += data

    async def _upgrade(
        self,
        response: ResponseHead,
        leftover: bytes,
        back: PlainStream,
        request_id: str,
        result: _Exchange,
    ) -> _Exchange:
        listener = self.listener
        headers = [*response.headers, (listener.sozu_id_header, request_id.encode())]
        status_line = b"HTTP/1.1 101 " + response.reason
        await self._send_front(serialize_head(status_line, headers) + leftover)
        if self.buf:
            await back.send_all(bytes(self.buf))
            self.buf.clear()
        listener.counters.websockets += 1
        listener.counters.websockets_active += 1
        try:
            await tunnel(
                self.front,
                back.sock,
                front_timeout=listener.config.front_timeout,
                back_timeout=listener.config.back_timeout,
            )
        finally:
            listener.counters.websockets_active -= 1
        result.status = 101
        result.upgraded = True
        return result

    async def _send_front(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.front.send_all(data)
        except OSError as error:
            raise _ClientGone(str(error)) from None
        self.listener.counters.bytes_out += len(data)
        self.bytes_out += len(data)

    async def _receive_front(self) -> bytes:
        with trio.move_on_after(self.listener.config.front_timeout) as scope:
            try:
                data = await self.front.receive()
            except OSError as error:
                raise _ClientGone(str(error)) from None
        if scope.cancelled_caught or not data:
            raise _ClientGone("client closed or timed out during the request body")
        self.listener.counters.bytes_in += len(data)
        return data

    async def _upload_body(self, head: RequestHead, back: PlainStream) -> None:
        """Relay the request body (raw) to the backend; bytes after it stay in `buf`."""
        # `bytes_in` of the session counts body bytes as they are relayed: bytes read past the
        # body belong to the next request, whose head length counts them.
        buf = self.buf
        if head.framing is Framing.LENGTH:
            remaining = head.content_length
            if buf:
                piece = bytes(buf[:remaining])
                del buf[: len(piece)]
                remaining -= len(piece)
                self.bytes_in += len(piece)
                await back.send_all(piece)
            while remaining:
                data = await self._receive_front()
                if len(data) > remaining:
                    buf += data[remaining:]
                    data = data[:remaining]
                remaining -= len(data)
                self.bytes_in += len(data)
                await back.send_all(data)
            return
        scanner = ChunkedScanner()
        if buf:
            used = scanner.feed(buf)
            piece = bytes(buf[:used])
            del buf[:used]
            self.bytes_in += len(piece)
            await back.send_all(piece)
        while not scanner.done:
            data = await self._receive_front()
            used = scanner.feed(data)
            if used < len(data):
                buf += data[used:]
            self.bytes_in += used
            await back.send_all(data[:used] if used < len(data) else data)

    async def _download_body(
        self, response: ResponseHead, head_bytes: bytes, leftover: bytes, back: PlainStream
    ) -> bool:
        """Send the response head and relay its body; True if the body ended as framed."""
        listener = self.listener
        back_timeout = listener.config.back_timeout
        framing = response.framing
        if framing is Framing.NONE:
            await self._send_front(head_bytes)
            return not leftover
        if framing is Framing.LENGTH:
            remaining = response.content_length
            first = leftover[:remaining]
            remaining -= len(first)
            await self._send_front(head_bytes + first)
            if len(leftover) > len(first):
                return False  # bytes past the body: this backend connection is unusable
            while remaining:
                data = await _receive_back(back, back_timeout)
                if not data:
                    return False
                if len(data) > remaining:
                    await self._send_front(data[:remaining])
                    return False
                remaining -= len(data)
                await self._send_front(data)
            return True
        if framing is Framing.CHUNKED:
            scanner = ChunkedScanner(status=502)
            try:
                used = scanner.feed(leftover)
                await self._send_front(head_bytes + leftover[:used])
                if scanner.done:
                    return used == len(leftover)
                while not scanner.done:
                    data = await _receive_back(back, back_timeout)
                    if not data:
                        return False
                    used = scanner.feed(data)
                    await self._send_front(data[:used] if used < len(data) else data)
                    if used < len(data):
                        return False
            except HeadError as error:
                log.info("backend chunked body refused: %s", error.reason)
                return False
            return True
        # Close-delimited: relay until the backend closes; the client connection closes after.
        await self._send_front(head_bytes + leftover)
        while True:
            data = await _receive_back(back, back_timeout)
            if not data:
                return True
            await self._send_front(data)

    # -- generated answers

    async def _answer(
        self,
        code: int,
        *,
        answers: AnswerSet | None = None,
        request_id: str = "",
        route: str = "",
        cluster_id: str = "",
        backend_id: str = "",
        message: str = "",
        redirect_location: str = "",
        www_authenticate: str = "",
        inline_template: str | None = None,
        retry_after: int | None = None,
    ) -> bool:
        """Send a default or custom answer; True if the connection may serve another request."""
        listener = self.listener
        if not request_id:
            request_id = listener.ids.generate()
        context = AnswerContext(
            request_id=request_id,
            cluster_id=cluster_id,
            backend_id=backend_id,
            route=route,
            redirect_location=redirect_location,
            www_authenticate=www_authenticate,
            retry_after=retry_after,
            message=message,
        )
        extra: list[tuple[bytes, bytes]] = []
        if listener.scheme == "https":
            value = listener.hsts_for(None)
            if value is not None:
                extra.append((b"Strict-Transport-Security", value))
        chosen = answers or listener.answers
        if listener.draining and not chosen.closes(code, inline_template):
            extra.append((b"Connection", b"close"))
        rendered = chosen.render(
            code, context, inline_template=inline_template, extra_headers=extra
        )
        listener.counters.count_answer(code)
        log_entry = self.log
        if log_entry is not None:
            log_entry.status = code
            log_entry.message = message or None
            log_entry.cluster_id = log_entry.cluster_id or cluster_id or None
        elif listener.shared.access_log is not None:
            # An answer before any head was parsed (400, 408): logged on its own.
            self.log = _RequestLog(
                trio.current_time(), request_id, None, self.bytes_in, self.bytes_out
            )
            self.log.status, self.log.message = code, message or None
        try:
            await self._send_front(rendered.data)
        except _ClientGone:
            return False
        finally:
            if log_entry is None and self.log is not None:
                self._write_access_log()
                self.log = None
        return not rendered.close and not listener.draining

    def _write_access_log(self) -> None:
        entry = self.log
        sink = self.listener.shared.access_log
        if entry is None or sink is None:
            return
        listener = self.listener
        if not self.session_id:
            self.session_id = listener.ids.generate()
        now = trio.current_time()
        head = entry.head
        user_agent = header_value(head.headers, b"user-agent") if head is not None else None
        backend_started = entry.backend_started
        record = AccessRecord(
            time_ns=time.time_ns(),
            pid=listener.shared.pid,
            tag=listener.shared.tag,
            session_id=self.session_id,
            request_id=entry.request_id,
            cluster_id=entry.cluster_id,
            backend_id=entry.backend_id,
            client=f"{self.peer[0]}:{self.peer[1]}",
            backend_address=entry.backend_address,
            request_time=now - entry.started,
            service_time=None if backend_started is None else backend_started - entry.started,
            response_time=None if backend_started is None else now - backend_started,
            bytes_in=self.bytes_in - entry.bytes_in_start,
            bytes_out=self.bytes_out - entry.bytes_out_start,
            tags=entry.frontend_tags or {},
            user_agent=user_agent.decode("latin-1") if user_agent else None,
            protocol=listener.scheme,
            authority=head.authority.decode("latin-1") if head and head.authority else "",
            method=head.method.decode("latin-1") if head else "",
            path=head.path.decode("latin-1") if head else "",
            status=entry.status,
            message=entry.message,
        )
        try:
            sink(format_line(record))
        except (OSError, ValueError) as error:
            log.debug("access log: %s", error)


async def _receive_back(back: PlainStream, idle: float) -> bytes:
    with trio.move_on_after(idle) as scope:
        try:
            return await back.receive()
        except OSError:
            return b""
    assert scope.cancelled_caught
    return b""


def _raw_head(response: ResponseHead) -> bytes:
    status_line = b"HTTP/1.1 " + str(response.status).encode() + b" " + response.reason
    return serialize_head(status_line, response.headers)
