"""The control channel between a worker and its control plane: JSON lines over one TCP connection.

Worker -> control: ``hello``, ``heartbeat`` (cumulative metrics), ``log``, ``finished``, ``failed``.
Control -> worker: ``stop``, ``pause``, ``resume``. One message per line; orjson on both ends.
A worker that loses the connection stops at once: its control plane is gone and will restart it.
A heartbeat may carry ``problems``: what the worker's connectors are retrying right now (an
unreachable broker), an empty list once it is over; the control plane shows them in the job's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import threading
import time
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


SEND_TIMEOUT_S = 60.0


class WorkerChannel(Channel):
    """The worker's end: every message is written whole to the socket under one thread lock.

    A worker's heartbeats come from a thread so that a step busy on the event loop does not silence
    them; ``send_now`` is that thread's way in, and the loop's own ``send`` takes the same path in an
    executor thread, so lines from both never interleave. The asyncio transport only reads.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        transport_socket = writer.get_extra_info("socket")
        # a descriptor of our own: the transport's socket object refuses direct sends
        self._socket = socket.socket(fileno=os.dup(transport_socket.fileno()))
        self._write_lock = threading.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            raise ConnectionError("control channel closed")
        data = encode(message)
        async with self._lock:  # keeps the loop's messages in the order they were sent
            await asyncio.to_thread(self._write, data)

    def send_now(self, message: dict[str, Any]) -> None:
        """Sends from any thread, blocking (at most ``SEND_TIMEOUT_S``) until the line is written."""
        if self.closed:
            raise ConnectionError("control channel closed")
        self._write(encode(message))

    def _write(self, data: bytes) -> None:
        with self._write_lock:
            if self.closed:
                raise ConnectionError("control channel closed")
            try:
                _send_all(self._socket, data, time.monotonic() + SEND_TIMEOUT_S)
            except TimeoutError:
                # half a line may be out: the stream is unusable, as after a lost connection
                self.closed = True
                raise ConnectionError(f"control plane read nothing for {SEND_TIMEOUT_S:.0f}s") from None

    async def close(self) -> None:
        with self._write_lock:
            self.closed = True
            self._socket.close()
        if not self.writer.is_closing():
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    """``sendall`` for a non-blocking socket (the event loop made it so): waits for room, bounded."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError from None
            select.select([], [sock], [], remaining)
            continue
        view = view[sent:]
