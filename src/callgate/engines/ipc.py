"""The pipe between the gateway and an inference worker process.

Both ends are callgate itself, started together from one installation, over a private socket
pair that nothing else can reach: so a message is a pickled tuple, framed by a 4-byte
big-endian length. Pickle protocol 5 writes ``bytes`` (PCM) without re-encoding it, so a
turn's audio costs one copy into the socket and one out.

Gateway -> worker: ``(RUN, id, "module:function", args)``, ``(CANCEL, id)``.
Worker -> gateway: ``(READY, pid)`` once, then per request ``(ITEM, id, value)`` ... and one
``(END, id)`` or ``(FAILED, id, exception)``.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any, BinaryIO

RUN, CANCEL, READY, ITEM, END, FAILED = "run", "cancel", "ready", "item", "end", "failed"

_LENGTH = struct.Struct("!I")
# Far above any real message (a minute of 24 kHz PCM is 2.9 MB); a length past it means the
# stream is corrupt, and the reader treats it like a dead worker rather than allocating it.
MAX_MESSAGE = 64 * 1024 * 1024


class BrokenPipeline(Exception):
    """The other end sent something that is not a message of this protocol."""


def encode(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=5)
    return _LENGTH.pack(len(data)) + data


def _decode(body: bytes) -> tuple[Any, ...]:
    message = pickle.loads(body)
    if not isinstance(message, tuple) or not message:
        raise BrokenPipeline(f"not a message: {type(message).__name__}")
    return message


def _length(header: bytes) -> int:
    (size,) = _LENGTH.unpack(header)
    if size > MAX_MESSAGE:
        raise BrokenPipeline(f"message of {size} bytes")
    return int(size)


async def read_message(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or ``None`` at end of stream (the worker is gone)."""
    try:
        header = await reader.readexactly(_LENGTH.size)
        body = await reader.readexactly(_length(header))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return _decode(body)


def read_message_blocking(stream: BinaryIO) -> tuple[Any, ...] | None:
    """The worker's side of :func:`read_message`, on a blocking file object."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        return None
    size = _length(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return _decode(body)
