"""recvmmsg and sendmmsg from Python, three ways: Python-side cost per datagram.

Reads: on loopback, for batch sizes 1, 2, 4, 16 and 64, a sender queues that many 64-byte
datagrams on a socket, then the reader takes them all: with one `recvmmsg` through ctypes
(mmsghdr array, buffers and names preallocated, only the entries used last time reset,
lengths read through a uint32 view, sources from a cache of raw sockaddrs), with the compiled
binding the worker uses (`sozu_mmsg.recv_batch`, mmsg/), or with `recvfrom_into` until EAGAIN.

Sends: the same batch sizes sent to one destination with `sozu_mmsg.SendBatch` (add each,
one flush) or with one `sendto` each (the receiver drains between rounds, untimed).

Prints microseconds per datagram (perf_counter around the reading or sending only). Linux
only; asserts nothing.

Run: `.venv/bin/python -O bench/udp_recvmmsg.py [--rounds 500]`.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import socket
import time

import sozu_mmsg

MSG_DONTWAIT = 0x40
COUNT, SIZE, NAME = 64, 2048, 28


class IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint)]


class RecvBatch:
    """Preallocated recvmmsg state for COUNT datagrams of up to SIZE bytes."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._recvmmsg = libc.recvmmsg
        self._recvmmsg.restype = ctypes.c_int
        self._recvmmsg.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_void_p,
        ]
        self._buffers = ctypes.create_string_buffer(COUNT * SIZE)
        self._names = ctypes.create_string_buffer(COUNT * NAME)
        self._iovs = (IoVec * COUNT)()
        self._msgs = (MMsgHdr * COUNT)()
        for index in range(COUNT):
            self._iovs[index].iov_base = ctypes.addressof(self._buffers) + index * SIZE
            self._iovs[index].iov_len = SIZE
            header = self._msgs[index].msg_hdr
            header.msg_name = ctypes.addressof(self._names) + index * NAME
            header.msg_namelen = NAME
            header.msg_iov = ctypes.pointer(self._iovs[index])
            header.msg_iovlen = 1
        size = ctypes.sizeof(MMsgHdr)
        raw = (ctypes.c_char * (size * COUNT)).from_address(ctypes.addressof(self._msgs))
        self._u32 = memoryview(raw).cast("B").cast("I")
        self._length_at = [(i * size + MMsgHdr.msg_len.offset) // 4 for i in range(COUNT)]
        self._namelen_at = [(i * size + MsgHdr.msg_namelen.offset) // 4 for i in range(COUNT)]
        self.payloads = memoryview(self._buffers).cast("B")
        self.names = memoryview(self._names).cast("B")
        self._address = ctypes.addressof(self._msgs)
        self._last = COUNT
        self._sources: dict[bytes, tuple[str, int]] = {}

    def recv(self, fd: int) -> int:
        u32, at = self._u32, self._namelen_at
        for index in range(self._last):
            u32[at[index]] = NAME
        count: int = self._recvmmsg(fd, self._address, COUNT, MSG_DONTWAIT, None)
        self._last = max(count, 0)
        return count

    def length(self, index: int) -> int:
        return self._u32[self._length_at[index]]

    def source(self, index: int) -> tuple[str, int]:
        raw = self.names[index * NAME : index * NAME + 8].tobytes()
        found = self._sources.get(raw)
        if found is None:
            found = self._sources[raw] = (socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4]))
        return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=500)
    rounds = parser.parse_args().rounds
    reader = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    reader.bind(("127.0.0.1", 0))
    reader.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    target, payload, fd = reader.getsockname(), b"x" * 64, reader.fileno()
    batch = RecvBatch()
    buffer = bytearray(SIZE)
    view = memoryview(buffer)
    slots = bytearray(SIZE * COUNT)
    slots_view = memoryview(slots)
    print("reads (us/datagram)")
    print("batch  ctypes recvmmsg  sozu_mmsg.recv_batch  recvfrom_into loop")
    for size in (1, 2, 4, 16, 64):
        spent = {"ctypes": 0.0, "compiled": 0.0, "loop": 0.0}
        read = dict.fromkeys(spent, 0)
        for _ in range(rounds):
            for _ in range(size):
                sender.sendto(payload, target)
            started = time.perf_counter()
            count = batch.recv(fd)
            for index in range(count):
                batch.payloads[index * SIZE : index * SIZE + batch.length(index)]
                batch.source(index)
            spent["ctypes"] += time.perf_counter() - started
            read["ctypes"] += max(count, 0)
            for _ in range(size):
                sender.sendto(payload, target)
            started = time.perf_counter()
            got = sozu_mmsg.recv_batch(fd, slots, SIZE, COUNT)
            at = 0
            for length, _source in got:
                slots_view[at : at + length]
                at += SIZE
            spent["compiled"] += time.perf_counter() - started
            read["compiled"] += len(got)
            for _ in range(size):
                sender.sendto(payload, target)
            started = time.perf_counter()
            while True:
                try:
                    length, _source = reader.recvfrom_into(buffer)
                except BlockingIOError:
                    break
                view[:length]
                read["loop"] += 1
            spent["loop"] += time.perf_counter() - started
        each = {way: spent[way] / read[way] * 1e6 for way in spent}
        print(f"{size:5d}  {each['ctypes']:15.2f}  {each['compiled']:20.2f}  {each['loop']:18.2f}")
    sender.setblocking(False)
    destination = sender.getsockname()
    sends = sozu_mmsg.SendBatch(COUNT, COUNT * SIZE)
    print("sends (us/datagram)")
    print("batch  SendBatch + flush  sendto each")
    for size in (1, 2, 4, 16, 64):
        spent_batch = spent_loop = 0.0
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(size):
                sends.add(payload, destination)
            sends.flush(fd)
            spent_batch += time.perf_counter() - started
            _drain(sender)
            started = time.perf_counter()
            for _ in range(size):
                reader.sendto(payload, destination)
            spent_loop += time.perf_counter() - started
            _drain(sender)
        sent = rounds * size
        print(f"{size:5d}  {spent_batch / sent * 1e6:17.2f}  {spent_loop / sent * 1e6:11.2f}")


def _drain(sock: socket.socket) -> None:
    while True:
        try:
            sock.recv(SIZE)
        except BlockingIOError:
            return


if __name__ == "__main__":
    main()
