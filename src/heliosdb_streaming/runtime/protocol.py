"""The control channel between a worker and its control plane: JSON lines over one TCP connection.

Worker -> control: ``hello``, ``heartbeat`` (cumulative metrics), ``log``, ``finished``, ``failed``.
Control -> worker: ``stop``, ``pause``, ``resume``. One message per line; orjson on both ends.
A worker that loses the connection stops at once: its control plane is gone and will restart it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

MAX_LINE = 16 * 1024 * 1024


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS) + b"\n"


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at end of stream."""
    line = await reader.readline()
    if not line:
        return None
    message = orjson.loads(line)
    if not isinstance(message, dict):
        raise ValueError("control message must be a JSON object")
    return message


class Channel:
    """One end of a control connection; ``send`` is safe to call from many coroutines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._lock = asyncio.Lock()
        self.closed = False

    async def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            raise ConnectionError("control channel closed")
        async with self._lock:
            self.writer.write(encode(message))
            await self.writer.drain()

    async def receive(self) -> dict[str, Any] | None:
        return await read_message(self.reader)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
