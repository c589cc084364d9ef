"""gRPC through sozu: a `grpcio` client speaks h2 to an HTTPS listener, sozu speaks h2c to a
`grpcio` server (a cluster with `http2 = true`). Unary, server-streaming, client-streaming and
bidirectional calls; error statuses with their details and trailing metadata intact; a
10 MiB message each way, byte-exact. Raw-bytes methods (no protobuf): the generic handlers
of grpcio."""

from __future__ import annotations

import hashlib
import queue
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from e2e.support.daemon import DaemonFactory
from e2e.support.http_backends import cluster, listener
from e2e.support.net import free_port

pytestmark = pytest.mark.e2e

SERVICE = "sozu.test.Echo"
BIG = 10 * 1024 * 1024
# Room for the 10 MiB messages (grpcio's default limit is 4 MiB).
OPTIONS = [
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
]
CALL_TIMEOUT = 30.0


def _big(seed: int) -> bytes:
    block = hashlib.sha256(b"%d" % seed).digest() * 32  # 1 KiB
    return block * (BIG // len(block))


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"missing":
        context.set_trailing_metadata((("x-detail", "no such thing"),))
        context.abort(grpc.StatusCode.NOT_FOUND, "nothing called missing")
    context.set_trailing_metadata((("x-length", str(len(request))),))
    return request[::-1]


def _server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    if request == b"big":
        yield _big(1)
        return
    for index in range(int(request)):
        yield b"message %d" % index


def _client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
    digest = hashlib.sha256()
    count = 0
    for message in requests:
        digest.update(message)
        count += 1
    return b"%d %s" % (count, digest.hexdigest().encode())


def _bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for message in requests:
        yield b"echo " + message


@dataclass
class GrpcSite:
    channel: grpc.Channel
    server: grpc.Server


@pytest.fixture
def grpc_site(start_daemon: DaemonFactory, tmp_path: Path) -> Iterator[GrpcSite]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTIONS)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    backend_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ca = trustme.CA()
    issued = ca.issue_cert("grpc.test")
    cert, key = tmp_path / "site.crt", tmp_path / "site.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    port = free_port()
    frontend: dict[str, object] = {
        "address": f"127.0.0.1:{port}",
        "hostname": "grpc.test",
        "certificate": str(cert),
        "key": str(key),
    }
    config = listener(port, "https") + cluster(
        "grpc",
        [frontend],
        [{"address": f"127.0.0.1:{backend_port}", "backend_id": "grpc-1"}],
        http2=True,
    )
    start_daemon(extra=config)
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}",
        credentials,
        options=[*OPTIONS, ("grpc.ssl_target_name_override", "grpc.test")],
    )
    try:
        yield GrpcSite(channel, server)
    finally:
        channel.close()
        server.stop(grace=None)


def _method(site: GrpcSite, kind: str, name: str) -> Any:
    """The channel's `kind` callable for `name` (unary_unary, unary_stream...), raw bytes."""
    return getattr(site.channel, kind)(f"/{SERVICE}/{name}")


def test_unary_call_and_its_trailing_metadata(grpc_site: GrpcSite) -> None:
    unary = _method(grpc_site, "unary_unary", "Unary")
    response, call = unary.with_call(b"hello sozu", timeout=CALL_TIMEOUT)
    assert response == b"uzos olleh"
    assert call.code() == grpc.StatusCode.OK
    assert ("x-length", "10") in tuple(call.trailing_metadata())
    for index in range(20):  # one connection, many streams
        assert unary(b"%d" % index, timeout=CALL_TIMEOUT) == (b"%d" % index)[::-1]


def test_an_error_status_arrives_with_details_and_trailers(grpc_site: GrpcSite) -> None:
    unary = _method(grpc_site, "unary_unary", "Unary")
    with pytest.raises(grpc.RpcError) as raised:
        unary(b"missing", timeout=CALL_TIMEOUT)
    error: Any = raised.value  # a grpc.Call as well as an RpcError
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "nothing called missing"
    assert ("x-detail", "no such thing") in tuple(error.trailing_metadata())


def test_server_streaming(grpc_site: GrpcSite) -> None:
    stream = _method(grpc_site, "unary_stream", "ServerStream")
    messages = list(stream(b"50", timeout=CALL_TIMEOUT))
    assert messages == [b"message %d" % i for i in range(50)]
    (big,) = list(stream(b"big", timeout=CALL_TIMEOUT))
    assert hashlib.sha256(big).digest() == hashlib.sha256(_big(1)).digest()


def test_client_streaming_with_a_10_mib_message(grpc_site: GrpcSite) -> None:
    upload = _method(grpc_site, "stream_unary", "ClientStream")
    parts = [b"part %d" % i for i in range(30)] + [_big(2)]
    expected = hashlib.sha256(b"".join(parts)).hexdigest().encode()
    assert upload(iter(parts), timeout=CALL_TIMEOUT) == b"31 " + expected


def test_bidirectional_streaming_answers_each_message_in_turn(grpc_site: GrpcSite) -> None:
    """The next message is sent only once the echo of the previous one came back: the
    request and response bodies of the one stream are relayed both ways at once."""
    bidi = _method(grpc_site, "stream_stream", "Bidi")
    answered: queue.Queue[bytes] = queue.Queue()

    def requests() -> Iterator[bytes]:
        for index in range(25):
            yield b"m%d" % index
            assert answered.get(timeout=CALL_TIMEOUT) == b"echo m%d" % index

    answers = []
    for answer in bidi(requests(), timeout=CALL_TIMEOUT):
        answers.append(answer)
        answered.put(answer)
    assert answers == [b"echo m%d" % i for i in range(25)]
