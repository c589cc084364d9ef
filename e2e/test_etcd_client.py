"""The etcd client against a real etcd 3.4: range at one revision, transactions, watch,
compaction, an unreachable member, TLS with a client certificate, and authentication."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trustme

from e2e.support.etcd import EtcdMember, EtcdTls
from sozu.supervisor.etcd_client import (
    MAX_TXN_OPS,
    Compacted,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    Event,
    Put,
    prefix_end,
)

pytestmark = [
    pytest.mark.e2e,
    # httpx reads a response through nested async generators; a watch left early (the
    # tests stop at the first events) leaves the inner ones to trio's finalizer, which warns.
    pytest.mark.filterwarnings("ignore:Async generator:ResourceWarning"),
]


def test_prefix_end() -> None:
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"


class _Seen(Exception):
    def __init__(self, events: list[Event]) -> None:
        self.events = events


async def _first_events(client: EtcdClient, prefix: bytes, start: int) -> list[Event]:
    async def stop(events: list[Event]) -> None:
        raise _Seen(events)

    with trio.fail_after(10):
        try:
            await client.watch(prefix, start, stop)
        except _Seen as seen:
            return seen.events
    raise AssertionError("unreachable")


async def test_range_txn_watch(etcd: EtcdMember) -> None:
    async with EtcdClient(["http://127.0.0.1:1", etcd.endpoint]) as client:
        operations = [Put(f"/p/k{i:03}".encode(), str(i).encode()) for i in range(MAX_TXN_OPS)]
        succeeded, first = await client.txn(operations)
        assert succeeded
        assert client.endpoint == etcd.endpoint  # the dead one is tried last from now on
        revision, pairs = await client.range_prefix(b"/p/")
        assert revision == first
        assert len(pairs) == MAX_TXN_OPS
        assert pairs[5] == (b"/p/k005", b"5")
        put = etcd.etcdctl("put", "/other", "x")
        assert put.returncode == 0, put.stderr
        _, two = await client.txn([Delete(b"/p/k000"), Put(b"/p/new", b"n")])
        events = await _first_events(client, b"/p/", revision + 1)
        assert events == [Event(b"/p/k000", None, two), Event(b"/p/new", b"n", two)]
        assert await client.get(b"/p/new") == (two, b"n")
        succeeded, _ = await client.txn(
            [Put(b"/p/x", b"1")],
            compare=[{"key": "L3AvbmV3", "target": "VALUE", "result": "EQUAL", "value": "bw=="}],
        )
        assert not succeeded
        await client.txn([Delete(b"/p/", prefix=True)])
        assert (await client.range_prefix(b"/p/"))[1] == []
        with pytest.raises(AssertionError):
            await client.txn([Put(b"k", b"v")] * (MAX_TXN_OPS + 1))


async def test_compacted_and_unavailable(etcd: EtcdMember) -> None:
    async with EtcdClient([etcd.endpoint], timeout=2) as client:
        for i in range(3):
            await client.put(b"/c/k", str(i).encode())
        revision, _ = await client.range_prefix(b"/c/")
        result = etcd.etcdctl("compaction", str(revision))
        assert result.returncode == 0, result.stderr
        with pytest.raises(Compacted) as caught:
            await _first_events(client, b"/c/", 2)
        assert caught.value.compact_revision == revision
        etcd.stop()
        with pytest.raises(EtcdUnavailable):
            await client.range_prefix(b"/c/")
        etcd.start_again()
        assert (await client.range_prefix(b"/c/"))[1] == [(b"/c/k", b"2")]


async def test_watch_breaks_when_etcd_stops(etcd: EtcdMember) -> None:
    async def ignore(events: list[Event]) -> None:
        pass

    async with EtcdClient([etcd.endpoint]) as client:
        revision, _ = await client.range_prefix(b"/w/")
        outcome: list[BaseException] = []

        async def watch() -> None:
            try:
                await client.watch(b"/w/", revision + 1, ignore)
            except EtcdUnavailable as error:
                outcome.append(error)

        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                await trio.sleep(0.5)
                await trio.to_thread.run_sync(etcd.stop)
        assert len(outcome) == 1


def make_tls(directory: Path) -> EtcdTls:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("sozu-client")
    paths = EtcdTls(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    ca.cert_pem.write_to_path(str(paths.ca))
    server.cert_chain_pems[0].write_to_path(str(paths.server_cert))
    server.private_key_pem.write_to_path(str(paths.server_key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    client.private_key_pem.write_to_path(str(paths.client_key))
    return paths


async def test_tls_and_authentication(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    member = EtcdMember.start(tmp_path / "etcd", tls=tls)
    try:
        member.enable_auth("rootpw")
        ca, cert, key = str(tls.ca), str(tls.client_cert), str(tls.client_key)
        endpoints = [member.endpoint]
        async with EtcdClient(endpoints, ca=ca, certificate=cert, key=key) as anonymous:
            with pytest.raises(EtcdError):
                await anonymous.put(b"/t/k", b"v")
        async with EtcdClient(
            endpoints, ca=ca, certificate=cert, key=key, user="root", password="bad"
        ) as wrong:
            with pytest.raises(EtcdError):
                await wrong.put(b"/t/k", b"v")
        async with EtcdClient(
            endpoints, ca=ca, certificate=cert, key=key, user="root", password="rootpw"
        ) as ok:
            revision = await ok.put(b"/t/k", b"v")
            assert (await ok.range_prefix(b"/t/"))[1] == [(b"/t/k", b"v")]
            put = member.etcdctl("put", "/t/j", "w", user="root:rootpw")
            assert put.returncode == 0, put.stderr
            events = await _first_events(ok, b"/t/", revision + 1)
            assert [e.key for e in events] == [b"/t/j"]
        async with EtcdClient([member.endpoint], ca=str(tls.ca)) as no_client_cert:
            with pytest.raises(EtcdUnavailable):
                await no_client_cert.put(b"/t/k", b"v")
    finally:
        member.remove()
