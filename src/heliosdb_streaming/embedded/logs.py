"""Per-job structured log files: JSON lines, rotated by size, read back with level/limit/tail filters.

The control plane is the only writer of a job's log (workers ship their records over the control
channel), so rotation needs no cross-process locking. A line a worker shipped carries its ``worker``
index, as the workers' own JSON lines in pods do: on Kubernetes the pod logs already hold those
lines, so the operator serves only the control plane's own lines (``read_logs(workers=False)``).
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from heliosdb_streaming.embedded import private
from heliosdb_streaming.model.types import LogEntry, LogLevel, LogOptions
from heliosdb_streaming.runtime import rotation
from heliosdb_streaming.runtime.connectors.secrets import mask_secrets

# mask_secrets: the one masking function, re-exported
__all__ = ["JobLog", "LocalJobFiles", "mask_secrets", "read_logs"]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_BACKUPS = 3


class JobLog:
    """Appends entries to ``path`` and rotates to ``path.1`` .. ``path.N`` past ``max_bytes``."""

    def __init__(
        self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        private.private_dir(path.parent)
        private.private_file(path)
        self._size = path.stat().st_size

    def write(
        self,
        level: str,
        message: str,
        task_id: str | None = None,
        ts: float | None = None,
        worker: int | None = None,
    ) -> None:
        """Appends one entry; ``worker`` is the index of the worker that logged it (None: the control
        plane itself)."""
        entry: dict[str, Any] = {
            "timestamp": _iso(ts if ts is not None else time.time()),
            "level": level if level in _LEVELS else "info",
            "message": mask_secrets(message),
            "task_id": task_id,
        }
        if worker is not None:
            entry["worker"] = worker
        line = orjson.dumps(entry) + b"\n"
        if self._size + len(line) > self.max_bytes and self._size > 0:
            self._rotate()
        # opened per write: a control plane with thousands of jobs must not hold a descriptor each
        with private.open_private(self.path) as f:
            f.write(line)
        self._size += len(line)

    def read(self, options: LogOptions, *, workers: bool = True) -> list[LogEntry]:
        """This log's entries (``read_logs``); blocking file I/O."""
        return read_logs(self.path, options, workers=workers)

    def _rotate(self) -> None:
        rotation.rotate_files(self.path, self.backups)  # the one rotation, shared with worker output
        self._size = 0

    def close(self) -> None:
        """Nothing to release (kept so owners can close logs uniformly)."""


class LocalJobFiles:
    """The control plane's ``JobFiles`` on a local disk: ``HOME/jobs/<job_id>/`` holds ``job.json`` and
    ``job.log``, both private to the server's user (``embedded.private``)."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def job_dir(self, job_id: str) -> Path:
        return self.home / "jobs" / job_id

    def write_config(self, job_id: str, data: bytes) -> None:
        job_dir = self.job_dir(job_id)
        private.private_dir(job_dir)
        private.write_private(job_dir / "job.json", data)

    def open_log(self, job_id: str) -> JobLog:
        return JobLog(self.job_dir(job_id) / "job.log")

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)


_LEVELS = {level.value: level.rank for level in LogLevel}


def read_logs(path: Path, options: LogOptions, *, workers: bool = True) -> list[LogEntry]:
    """Entries in time order, at or above ``options.level``; the first ``limit``, or the last with tail.

    ``workers=False`` leaves out the lines workers shipped: only the control plane's own remain.
    """
    floor = options.level.rank if options.level else 0
    files = [path.with_name(f"{path.name}.{i}") for i in range(DEFAULT_BACKUPS + 5, 0, -1)] + [path]
    entries: list[dict[str, Any]] = []
    for f in files:
        if not f.exists():
            continue
        for line in f.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if not workers and entry.get("worker") is not None:
                continue
            if _LEVELS.get(entry.get("level", "info"), 20) >= floor:
                entries.append(entry)
    entries.sort(key=lambda e: e["timestamp"])
    chosen = entries[-options.limit :] if options.tail else entries[: options.limit]
    return [LogEntry.model_validate({k: v for k, v in e.items() if k != "worker"}) for e in chosen]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
