"""What a parsed request head becomes: an answer (400, 421, 404, a redirect, 401, 503, 429) or
an edited head on its way to a backend of its cluster (docs/http.md, "Routing").

Decisions come from the sans-io modules of `sozu.worker.core.http` (router, policy, header edits,
certificate names); this module applies them to the session in order and leaves the per-IP
slot the connection holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from sozu.command.types import Cluster, RequestHttpFrontend
from sozu.worker.core.http.certificate_resolver import authority_allowed
from sozu.worker.core.http.codec import (
    H_CONNECTION,
    H_COOKIE,
    H_TARGET_HOST,
    H_X_REAL_IP,
    ChunkedScanner,
    Framing,
    RequestHead,
    header_value,
)
from sozu.worker.core.http.header_edits import (
    FORWARDING_HEADERS,
    compile_frontend_edits,
    edit_request,
    fast_request_head,
    forwarding_block,
    one_connection_line,
    serialize_head,
)
from sozu.worker.core.http.policy import Redirect, Unauthorized, evaluate, rewrite_for
from sozu.worker.core.http1.answering import answer
from sozu.worker.core.http1.exchange import connect_next

if TYPE_CHECKING:
    from sozu.worker.core.clusters import TcpCluster
    from sozu.worker.core.http1.session import Http1Session

_NONE: Final = Framing.NONE
CONNECTION_CLOSE: Final = b"\r\nConnection: close\r\n"
_LENGTH: Final = Framing.LENGTH
# Bits of a head that always take the edit path.
_EDITED: Final = FORWARDING_HEADERS | H_TARGET_HOST


def serve(s: Http1Session, head: RequestHead, now: float) -> None:
    """Take a new request: answer it, or route it towards a backend (CONNECT)."""
    ctx = s.ctx
    shared = ctx.shared
    counters = s.counters
    s.head = head
    s.request_id = shared.ids.generate()
    s.bytes_in += head.length
    framing = head.framing
    if framing is not _NONE:
        s.up_done = False
        if framing is _LENGTH:
            s.up_remaining = head.content_length
        else:
            s.up_scanner = ChunkedScanner()
    if shared.access_log is not None:
        s.account_out()
        s.log_on = True
        s.log_started = now
        s.log_in0 = s.bytes_in - head.length
        s.log_out0 = s.bytes_out
    counters.requests += 1
    text, parsed, path, match = ctx.router.route(head.authority, head.path, head.method)
    if parsed is None:
        answer(s, 400, now, message="invalid authority")
        return
    if ctx.strict_sni:
        allowed = authority_allowed(s.served_names, s.sni, text, s.default_cert)
        if not allowed:
            counters.sni_mismatches += 1
            answer(s, 421, now, message="authority not served")
            return
    if match is None:
        answer(s, 404, now, message="no frontend")
        return
    frontend = match.frontend
    if s.log_on and frontend.tags:
        s.log_tags = frontend.tags
    known = shared.cluster_lookup(frontend.cluster_id) if frontend.cluster_id else None
    cluster_config = known[0] if known is not None else None
    s.routed = True
    s.authority = text
    s.cluster_config = cluster_config
    verdict = None
    if (
        frontend.redirect is not None
        or frontend.cluster_id is None
        or frontend.required_auth
        or (cluster_config is not None and cluster_config.https_redirect)
    ):
        # Only these make `evaluate` answer instead of forwarding.
        verdict = evaluate(
            frontend,
            cluster_config,
            listener_scheme=ctx.scheme,
            authority=text,
            target=path,
            # Only read for basic auth: no scan of the headers for the others.
            authorization=(
                header_value(head.headers, b"authorization") if frontend.required_auth else None
            ),
            # $HOST[0] / $PATH[0] are the whole host and path; the router's captures start at 1.
            host_captures=(parsed[0], *match.host_captures),
            path_captures=(path, *match.path_captures),
        )
    if isinstance(verdict, Redirect):
        answer(
            s,
            verdict.status,
            now,
            redirect_location=verdict.location,
            inline_template=verdict.template,
        )
        return
    if isinstance(verdict, Unauthorized):
        answer(s, 401, now, www_authenticate=verdict.www_authenticate or "")
        return
    if known is None:
        answer(s, 503, now, message="no cluster")
        return
    cluster_config, cluster = known
    if not hold_per_ip_slot(s, cluster_config):
        counters.rejected_per_ip += 1
        answer(
            s,
            429,
            now,
            cluster_id=cluster.cluster_id,
            retry_after=shared.per_ip.retry_after(cluster_config),
            message="too many connections from this address",
        )
        return
    rewrite_host = rewrite_path = None
    if frontend.rewrite_host is not None or frontend.rewrite_path is not None:
        rewrite = rewrite_for(
            frontend, (parsed[0], *match.host_captures), (path, *match.path_captures)
        )
        rewrite_host, rewrite_path = rewrite.host, rewrite.path
    sticky_session = cluster_config.sticky_session
    request_id = s.request_id.encode()
    special = head.special
    closing = s.draining
    raw = head.raw
    # An HTTP/1.1 client's `Connection: close` is about its own connection: the backend's is
    # asked to stay open (and is reused), as a proxy's two connections are separate hops.
    keep_backend = not head.keep_alive and head.version == b"1.1" and not closing
    if (
        keep_backend
        and not head.upgrade
        and raw.count(CONNECTION_CLOSE) == 1
        and one_connection_line(raw)
    ):
        raw = raw.replace(CONNECTION_CLOSE, b"\r\n", 1)  # the usual spelling, edited in place
        special &= ~H_CONNECTION
    if (
        rewrite_host is None
        and rewrite_path is None
        and not frontend.headers
        and not special & _EDITED
        and not (ctx.elide_x_real_ip and special & H_X_REAL_IP)
        and not (sticky_session and special & H_COOKIE)
        and not (closing and special & H_CONNECTION)
        and not (keep_backend and special & H_CONNECTION)
    ):
        # The common case: nothing of the head to change, the proxy's headers added.
        block = s.forwarding
        if block is None:
            block = s.forwarding = forwarding_block(
                s.peer,
                https=ctx.https,
                public_ip=ctx.public_ip,
                public_port=ctx.public_port,
                send_x_real_ip=ctx.send_x_real_ip,
            )
        s.request_bytes = fast_request_head(
            raw,
            special,
            block,
            request_id=request_id,
            sozu_id_header=ctx.sozu_id_header,
            closing=closing,
        )
        s.sticky_found = None
        s.sticky = None
        s.keep_alive = head.keep_alive and not closing
        s.back_keep_asked = s.keep_alive or keep_backend
        s.response_edits = ()
        _linked(s, frontend, cluster, now)
        return
    edits = edit_request(
        head.headers,
        request_id=request_id,
        https=ctx.https,
        public_ip=ctx.public_ip,
        public_port=ctx.public_port,
        peer=s.peer,
        closing=s.draining,
        keep_backend=keep_backend and not head.upgrade,
        sticky_name=ctx.sticky_name if sticky_session else None,
        sozu_id_header=ctx.sozu_id_header,
        elide_x_real_ip=ctx.elide_x_real_ip,
        send_x_real_ip=ctx.send_x_real_ip,
        rewrite_host=rewrite_host.encode() if rewrite_host is not None else None,
        target_host=head.authority if special & H_TARGET_HOST else None,
        edits=compile_frontend_edits(frontend.headers).request if frontend.headers else (),
    )
    target = rewrite_path.encode("latin-1") if rewrite_path is not None else head.target
    # The client's version: a backend must not answer an HTTP/1.0 client in chunks.
    s.request_bytes = serialize_head(
        head.method + b" " + target + b" HTTP/" + head.version, edits.headers
    )
    found = edits.sticky_value
    s.sticky_found = found
    s.sticky = found.decode("latin-1") if found and sticky_session else None
    s.keep_alive = edits.keep_alive and head.keep_alive
    s.back_keep_asked = edits.keep_alive and (head.keep_alive or keep_backend)
    s.response_edits = compile_frontend_edits(frontend.headers).response if frontend.headers else ()
    _linked(s, frontend, cluster, now)


def _linked(
    s: Http1Session, frontend: RequestHttpFrontend, cluster: TcpCluster, now: float
) -> None:
    """The request is ready to go: connect to a backend of its cluster."""
    s.frontend = frontend
    s.cluster = cluster
    s.started = now
    s.attempt = 0
    s.fresh = False
    s.last_timeout = False
    connect_next(s, now)


def hold_per_ip_slot(s: Http1Session, cluster: Cluster) -> bool:
    """Hold the connection's per-IP slot for `cluster` (moved from the cluster of an earlier
    request); False when the cluster's limit for the client's IP is reached. The streams of
    an HTTP/2 connection share its slots (`per_ip_held`): one per cluster they went to, held
    until the connection ends (core/h2/session.py)."""
    held = s.per_ip_held
    if held is not None:
        if cluster.cluster_id in held:
            return True
        if not s.ctx.shared.per_ip.take(cluster, s.peer[0]):
            return False
        held.add(cluster.cluster_id)
        return True
    if s.per_ip_cluster == cluster.cluster_id:
        return True
    if not s.ctx.shared.per_ip.take(cluster, s.peer[0]):
        return False
    release_per_ip_slot(s)
    s.per_ip_cluster = cluster.cluster_id
    return True


def release_per_ip_slot(s: Http1Session) -> None:
    if s.per_ip_cluster is not None:
        s.ctx.shared.per_ip.give(s.per_ip_cluster, s.peer[0])
        s.per_ip_cluster = None
