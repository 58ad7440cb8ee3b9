"""File source (JSON lines or CSV; one split per file) and file sink (JSON lines, one file per task).

Source: ``path`` is a file, a directory (its regular files, not recursive, hidden files skipped) or
a glob; the matching files sorted by name are the splits ``s<source_index>-f<k>``, so a resumed job
must see the same set of files. Files are read in chunks, never whole. The position of a split is
``{"line": lines consumed, "offset": bytes consumed}``; resuming seeks to the byte offset (a plain
integer position is taken as a line count and skipped). A split is finished at end of file.

JSON lines: one object per line; blank lines are skipped; a line that is not a JSON object is left
out and reported in ``decode_errors`` as ``(split_id, line number, message)`` (line numbers start
at 1). CSV: the first row is the header; values stay strings except those that look like numbers
(``-12``, ``3.5``, ``1e3``; not ``007``), which become int or float; quoted fields may contain
newlines; a row whose field count differs from the header's is reported in ``decode_errors``.

Sink: JSON lines, one file per task. A ``{task}`` placeholder in ``path`` is replaced by the task id;
without one the file is ``<path>-<task id>.jsonl``. Files are appended to (a job restarted from a
checkpoint may write records again: at-least-once); ``flush`` writes and fsyncs.
"""

from __future__ import annotations

import asyncio
import csv
import glob
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Literal

import orjson

from heliosdb_streaming.runtime.contracts import Batch, Record, Split, SplitBatch

CHUNK_BYTES = 1 << 20
LAG_COUNT_MAX_BYTES = 1 << 30  # files up to this size are counted at open, for the source lag
FileFormat = Literal["json", "csv"]

_INT = re.compile(r"[+-]?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[+-]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_GLOB_CHARS = re.compile(r"[*?\[]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def match_files(path: str) -> list[Path]:
    """The files a source path names, sorted: a file, a directory's files, or a glob's files."""
    p = Path(path).expanduser()
    if _GLOB_CHARS.search(path) and not p.exists():
        found = [Path(f) for f in glob.glob(str(p)) if Path(f).is_file()]
    elif p.is_dir():
        found = [f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")]
    elif p.is_file():
        found = [p]
    else:
        found = []
    return sorted(f.resolve() for f in found)


def _number(value: str) -> Any:
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return value


class _FileSplit:
    __slots__ = (
        "at_eof",
        "file",
        "finished",
        "header",
        "line",
        "lines",
        "next_index",
        "offset",
        "path",
        "reported_finished",
        "split_id",
        "tail",
        "total_lines",
        "unterminated_last",
    )

    def __init__(self, split_id: str, path: Path) -> None:
        self.split_id = split_id
        self.path = path
        self.file: IO[bytes] | None = None
        self.line = 0  # lines consumed
        self.offset = 0  # bytes consumed
        self.lines: list[bytes] = []  # complete lines read but not consumed, from next_index on
        self.next_index = 0
        self.tail = b""  # bytes after the last newline read
        self.at_eof = False
        self.unterminated_last = False  # the file's last line has no newline
        self.finished = False
        self.reported_finished = False
        self.header: list[str] | None = None
        self.total_lines: int | None = None  # lines of the whole file, for ``lag`` (None: not counted)

    def pending(self) -> int:
        return len(self.lines) - self.next_index

    def position(self) -> dict[str, int]:
        return {"line": self.line, "offset": self.offset}


class FileSourceReader:
    """Reads files as splits; see the module docstring for paths, formats and positions."""

    def __init__(self, *, path: str, format: FileFormat = "json", source_index: int = 0) -> None:
        if format not in ("json", "csv"):
            raise ValueError(f"file format must be json or csv, not {format!r}")
        self.path = path
        self.format: FileFormat = format
        self.source_index = source_index
        self.decode_errors: list[tuple[str, int, str]] = []
        self._splits: list[_FileSplit] = []

    async def discover_splits(self) -> list[Split]:
        files = await asyncio.to_thread(match_files, self.path)
        if not files:
            raise FileNotFoundError(f"no file matches {self.path!r}")
        return [
            Split(f"s{self.source_index}-f{k}", self.source_index, {"file": str(f)})
            for k, f in enumerate(files)
        ]

    async def open(self, assigned: Sequence[Split], positions: dict[str, Any]) -> None:
        await self.close()
        for split in assigned:
            state = _FileSplit(split.split_id, Path(split.params["file"]))
            await asyncio.to_thread(self._open_split, state, positions.get(split.split_id))
            self._splits.append(state)

    def lag(self) -> int | None:
        """Lines of the assigned files not yet read (JSON lines: records, blank lines included; CSV:
        physical lines), over the files that were counted; None when none was. Read from the
        heartbeat thread: plain reads of ints."""
        known = [s.total_lines - s.line for s in list(self._splits) if s.total_lines is not None]
        return sum(max(n, 0) for n in known) if known else None

    def _open_split(self, state: _FileSplit, position: Any) -> None:
        state.total_lines = _count_lines(state.path)
        state.file = state.path.open("rb")
        if self.format == "csv":
            state.header = self._read_header(state)
        if isinstance(position, dict):
            state.line = int(position["line"])
            state.offset = int(position["offset"])
            state.file.seek(state.offset)
        elif position is not None:  # a line count: skip that many lines
            skip = int(position)
            while state.line < skip and not (state.at_eof and state.pending() == 0):
                if state.pending() == 0:
                    self._fill(state)
                self._consume(state, min(skip - state.line, state.pending()))
        if self.format == "csv" and state.line == 0:  # start after the header row
            n = None
            while n is None:
                self._fill(state)
                n = self._record_lines(state, state.next_index)
            self._consume(state, n)

    def _read_header(self, state: _FileSplit) -> list[str]:
        with state.path.open("rb") as f:
            probe = _FileSplit(state.split_id, state.path)
            probe.file = f
            n = None
            while n is None:
                self._fill(probe)
                n = self._record_lines(probe, 0)
            if not n:
                return []
            text = b"\n".join(probe.lines[:n]).decode("utf-8-sig", "replace").rstrip("\r")
            return next(csv.reader([text]), [])

    # ---------------------------------------------------------------------------------- reading

    def _fill(self, state: _FileSplit) -> None:
        """Reads the next chunk into ``state.lines`` (keeping unconsumed lines)."""
        if state.at_eof or state.file is None:
            return
        chunk = state.file.read(CHUNK_BYTES)
        remaining = state.lines[state.next_index :]
        if not chunk:
            state.at_eof = True
            if state.tail:
                remaining.append(state.tail)  # last line without a newline
                state.tail = b""
                state.unterminated_last = True
            state.lines, state.next_index = remaining, 0
            return
        parts = (state.tail + chunk).split(b"\n")
        state.tail = parts.pop()
        remaining.extend(parts)
        state.lines, state.next_index = remaining, 0

    def _consume(self, state: _FileSplit, n: int) -> list[bytes]:
        taken = state.lines[state.next_index : state.next_index + n]
        state.next_index += n
        newlines = len(taken)
        if taken and state.unterminated_last and state.next_index == len(state.lines):
            newlines -= 1
        state.offset += sum(map(len, taken)) + newlines
        state.line += len(taken)
        return taken

    def _record_lines(self, state: _FileSplit, start: int) -> int | None:
        """How many physical lines the CSV record at ``lines[start]`` spans (None: read more first).

        A record goes on while its double quotes are unbalanced (a quoted field with newlines).
        """
        lines = state.lines
        if start >= len(lines):
            return None if not state.at_eof else 0
        first = lines[start]
        if b'"' not in first:
            return 1
        quotes = first.count(b'"')
        i = start
        while quotes % 2:
            i += 1
            if i >= len(lines):
                return len(lines) - start if state.at_eof else None  # unterminated at EOF: csv reports it
            quotes += lines[i].count(b'"')
        return i - start + 1

    async def poll(self, max_records: int, timeout_s: float) -> list[SplitBatch]:
        active = [s for s in self._splits if not s.reported_finished]
        if not active:
            await asyncio.sleep(timeout_s)
            return []
        share = max(1, max_records // len(active))
        out: list[SplitBatch] = []
        for state in active:
            records = await asyncio.to_thread(self._read_records, state, share)
            ingest_ms = time.time() * 1000.0
            done = state.at_eof and state.pending() == 0
            if done:
                state.reported_finished = True
                state.finished = True
            if records or done:
                out.append(SplitBatch(state.split_id, records, state.position(), ingest_ms, done))
        return out

    def _read_records(self, state: _FileSplit, limit: int) -> Batch:
        if self.format == "csv":
            return self._read_csv(state, limit)
        return self._read_json(state, limit)

    def _read_json(self, state: _FileSplit, limit: int) -> Batch:
        if state.pending() == 0:
            self._fill(state)
        first_line = state.line
        lines = self._consume(state, min(limit, state.pending()))
        if not lines:
            return []
        loads = orjson.loads
        try:
            records = [loads(line) for line in lines]
            if all(type(r) is dict for r in records):
                return records
        except orjson.JSONDecodeError:
            pass
        out: Batch = []
        for number, line in enumerate(lines, start=first_line + 1):
            if not line.strip():
                continue
            try:
                record = loads(line)
            except orjson.JSONDecodeError as e:
                self.decode_errors.append((state.split_id, number, f"invalid JSON: {e}"))
                continue
            if type(record) is not dict:
                self.decode_errors.append(
                    (state.split_id, number, f"expected a JSON object, got {type(record).__name__}")
                )
                continue
            out.append(record)
        return out

    def _read_csv(self, state: _FileSplit, limit: int) -> Batch:
        header = state.header or []
        texts: list[str] = []
        numbers: list[int] = []
        while len(texts) < limit:
            if state.pending() == 0:
                if state.at_eof:
                    break
                self._fill(state)
                continue
            n = self._record_lines(state, state.next_index)
            if n is None:  # a quoted field continues in the next chunk
                self._fill(state)
                continue
            number = state.line + 1
            raw = b"\n".join(self._consume(state, n))
            if not raw.strip():
                continue
            try:
                texts.append(raw.decode("utf-8").rstrip("\r"))
            except UnicodeDecodeError as e:
                self.decode_errors.append((state.split_id, number, f"not UTF-8: {e}"))
                continue
            numbers.append(number)
        out: Batch = []
        width = len(header)
        try:
            rows = list(csv.reader(texts, strict=True))
        except csv.Error:
            rows = []
            for number, text in zip(numbers, texts, strict=True):
                try:
                    rows.append(next(csv.reader([text], strict=True)))
                except csv.Error as e:
                    self.decode_errors.append((state.split_id, number, f"invalid CSV: {e}"))
                    rows.append([])
        for number, row in zip(numbers, rows, strict=True):
            if not row:
                continue
            if len(row) != width:
                self.decode_errors.append(
                    (state.split_id, number, f"expected {width} fields (the header's), got {len(row)}")
                )
                continue
            out.append({name: _number(value) for name, value in zip(header, row, strict=True)})
        return out

    async def commit(self, positions: dict[str, Any]) -> None:
        return None

    async def close(self) -> None:
        for state in self._splits:
            if state.file is not None:
                state.file.close()
                state.file = None
        self._splits = []


# ------------------------------------------------------------------------------------------- sink


def _count_lines(path: Path) -> int | None:
    """Lines of a file (a last line without a newline counts), read in chunks; None for a file
    larger than ``LAG_COUNT_MAX_BYTES``, whose count would cost a second read of it."""
    size = path.stat().st_size
    if size > LAG_COUNT_MAX_BYTES:
        return None
    lines = 0
    last = b"\n"
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (1 if last != b"\n" else 0)


def sink_file_path(path: str, task_id: str) -> Path:
    safe_task = _UNSAFE.sub("_", task_id)
    if "{task}" in path:
        return Path(path.replace("{task}", safe_task))
    return Path(f"{path}-{safe_task}.jsonl")


class FileSinkWriter:
    """Appends records as JSON lines to one file per task (see the module docstring for names)."""

    def __init__(self, *, path: str) -> None:
        self.path = path
        self._files: dict[str, IO[bytes]] = {}

    def file_for(self, task_id: str) -> Path:
        return sink_file_path(self.path, task_id)

    async def open(self) -> None:
        return None

    def _file(self, task_id: str) -> IO[bytes]:
        f = self._files.get(task_id)
        if f is None:
            target = self.file_for(task_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            f = self._files[task_id] = target.open("ab", buffering=CHUNK_BYTES)
        return f

    async def write(self, task_id: str, records: Batch) -> None:
        if not records:
            return
        f = self._files.get(task_id)
        if f is None:
            f = await asyncio.to_thread(self._file, task_id)
        data = b"".join([_dumps_line(r) for r in records])
        if len(data) >= CHUNK_BYTES:
            await asyncio.to_thread(f.write, data)
        else:
            f.write(data)

    async def flush(self) -> None:
        if self._files:
            await asyncio.to_thread(self._sync_all)

    def _sync_all(self) -> None:
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())

    async def close(self) -> None:
        files, self._files = self._files, {}
        if files:
            await asyncio.to_thread(_close_all, list(files.values()))


def _dumps_line(record: Record) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


def _close_all(files: list[IO[bytes]]) -> None:
    for f in files:
        f.flush()
        os.fsync(f.fileno())
        f.close()
