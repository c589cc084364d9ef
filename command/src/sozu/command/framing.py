"""Length-prefixed frames: a 4-byte big-endian payload length, then the payload (sans-io).

`FrameReader` is fed whatever a socket read returned and yields whole payloads. A length over
the maximum is never buffered: the payload is skipped as it arrives, keeping only its first
bytes so that the caller can still read the request id and answer with a Failure.
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec

DEFAULT_MAX_FRAME_SIZE: Final = 2_000_000
PREFIX: Final = struct.Struct(">I")
# Enough for the envelope's map header, `v` and an `id` of the longest id the envelope accepts
# (256 characters of up to 4 UTF-8 bytes each), so an oversize frame's id can always be read.
OVERSIZE_HEAD_BYTES: Final = 1100


class FrameError(Exception):
    """The byte stream cannot be read as frames any further."""


class OversizeFrame(msgspec.Struct, frozen=True):
    """A frame longer than the maximum, skipped; `head` is its first bytes."""

    length: int
    head: bytes


def encode_frame(payload: bytes | bytearray | memoryview) -> bytes:
    """Prefix a payload with its length."""
    return PREFIX.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into frames.

    `feed(data)` then `next_frame()` until it returns None. `next_frame()` returns the payload
    `bytes`, or an `OversizeFrame` once such a frame has been skipped entirely.
    """

    __slots__ = ("_buffer", "_head", "_max", "_skip", "_skip_length")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        assert max_frame_size > 0
        self._max = max_frame_size
        self._buffer = bytearray()
        self._skip = 0  # bytes of an oversize payload still to discard
        self._skip_length = 0
        self._head = bytearray()

    @property
    def max_frame_size(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of their frame."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buffer += data

    def take_buffered(self) -> bytes:
        """The bytes read but not yet framed (handed to a process that takes over the stream);
        the reader forgets them."""
        assert not self._skip, "inside an oversize frame"
        data = bytes(self._head) + bytes(self._buffer)
        self._head.clear()
        self._buffer.clear()
        return data

    def next_frame(self) -> bytes | OversizeFrame | None:
        buffer = self._buffer
        if self._skip:
            room = OVERSIZE_HEAD_BYTES - len(self._head)
            if room > 0:
                self._head += buffer[: min(room, self._skip)]
            taken = min(self._skip, len(buffer))
            del buffer[:taken]
            self._skip -= taken
            if self._skip:
                return None
            oversize = OversizeFrame(self._skip_length, bytes(self._head))
            self._head.clear()
            return oversize
        if len(buffer) < PREFIX.size:
            return None
        (length,) = PREFIX.unpack_from(buffer)
        if length > self._max:
            del buffer[: PREFIX.size]
            self._skip = length
            self._skip_length = length
            if length == 0:  # pragma: no cover - max is positive, so length > 0 here
                return None
            return self.next_frame()
        end = PREFIX.size + length
        if len(buffer) < end:
            return None
        payload = bytes(buffer[PREFIX.size : end])
        del buffer[:end]
        return payload

    def check_eof(self) -> None:
        """Call at end of stream: a partial frame left over is an error."""
        if self._skip:
            received = self._skip_length - self._skip
            raise FrameError(
                f"connection closed inside a frame of {self._skip_length} bytes"
                f" ({received} bytes of it received)"
            )
        buffered = len(self._buffer)
        if buffered >= PREFIX.size:
            (length,) = PREFIX.unpack_from(self._buffer)
            raise FrameError(
                f"connection closed inside a frame of {length} bytes"
                f" ({buffered - PREFIX.size} bytes of it received)"
            )
        if buffered:
            raise FrameError(
                f"connection closed inside a frame's length prefix"
                f" ({buffered} of {PREFIX.size} bytes received)"
            )
