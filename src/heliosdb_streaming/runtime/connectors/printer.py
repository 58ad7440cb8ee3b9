"""The ``print`` sink: one JSON line per record on a text stream (stdout by default), for demos."""

from __future__ import annotations

import sys
from typing import TextIO

import orjson

from heliosdb_streaming.runtime.contracts import Batch


class PrintSinkWriter:
    """Writes ``<prefix><record as JSON>`` lines; ``flush`` flushes the stream."""

    def __init__(self, *, prefix: str = "", stream: TextIO | None = None) -> None:
        self.prefix = prefix
        self._stream = stream

    @property
    def stream(self) -> TextIO:
        # Looked up late, so a redirected sys.stdout (pytest's capture, a CLI) is honoured.
        return self._stream if self._stream is not None else sys.stdout

    async def open(self) -> None:
        return None

    async def write(self, task_id: str, records: Batch) -> None:
        if not records:
            return
        prefix = self.prefix
        dumps = orjson.dumps
        self.stream.write("".join([prefix + dumps(r).decode() + "\n" for r in records]))

    async def flush(self) -> None:
        self.stream.flush()

    async def close(self) -> None:
        self.stream.flush()
