"""A live `max_rx_datagram_size` change applies to replies on flows opened before it.

Each flow reads its upstream socket into a buffer of `max_rx + 1` bytes; a buffer sized for
the old limit would cut a bigger reply to `old + 1` bytes, which the new limit lets through,
so the client would get a truncated datagram. Replies are read whole, then judged by the new
limit: a raised limit delivers them intact, a lowered one drops them as truncated.
"""

from __future__ import annotations

import socket

import trio
from udp.test_shell import EchoBackend, ask, running

from sozu.worker.core.udp.outputs import DropReason


async def test_raised_max_rx_delivers_a_bigger_reply_whole_on_an_existing_flow() -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("k")], max_rx=100) as (address, proxy):
            client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with client:
                await client.bind(("127.0.0.1", 0))
                assert await ask(address, b"a" * 98, client) == b"k:" + b"a" * 98
                proxy.set_max_rx_datagram_size(1000)
                assert await ask(address, b"b" * 500, client) == b"k:" + b"b" * 500
            assert proxy.core.counters.flows_created == 1
            assert proxy.core.counters.dropped_by_reason[DropReason.TRUNCATED] == 0


async def test_lowered_max_rx_drops_a_reply_over_it_on_an_existing_flow() -> None:
    with trio.fail_after(10):
        async with running([EchoBackend("k")], max_rx=1000) as (address, proxy):
            client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with client:
                await client.bind(("127.0.0.1", 0))
                assert await ask(address, b"a" * 98, client) == b"k:" + b"a" * 98
                proxy.set_max_rx_datagram_size(100)
                assert await ask(address, b"b" * 100, client) is None
                assert await ask(address, b"c" * 98, client) == b"k:" + b"c" * 98
            assert proxy.core.counters.flows_created == 1
            assert proxy.core.counters.dropped_by_reason[DropReason.TRUNCATED] == 1
