"""A job's log on Kubernetes: worker pods' JSON lines parsed, merged by time with the control plane's
lines, filtered. Pure: no I/O.

Workers in pods write one JSON object per line to stderr (``runtime.logformat``: ``timestamp``,
``level``, ``message``, ``task_id``, ``worker``), and the pod log API is where those lines live; the
control plane's own lines (submitted, runs, restarts, checkpoints, savepoints) come from the
operator's read API. ``job_log`` gives what ``embedded.logs.read_logs`` gives for the embedded
substrate's log file, which holds both: entries at or above a level, in time order, the first
``limit`` or (``tail``) the last ``limit``.

A line that is not such an object (a crash's traceback printed by Python itself, say) is kept as an
``info`` entry at the time of the line before it in the same pod, so it stays next to its context.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from heliosdb_streaming.kubernetes.restapi.jobviews import parse_time
from heliosdb_streaming.model.types import LogEntry, LogLevel, LogOptions
from heliosdb_streaming.runtime.connectors.secrets import mask_secrets

_RANK = {level.value: level.rank for level in LogLevel}
_EPOCH = datetime.fromtimestamp(0, UTC)


def parse_pod_log(text: str, started_at: datetime | None = None) -> list[LogEntry]:
    """The entries of one pod's log, in the order written. ``started_at`` dates leading non-JSON lines."""
    out: list[LogEntry] = []
    previous = started_at or _EPOCH
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        record: Any = None
        if line.startswith("{"):
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                record = None
        when = parse_time(record.get("timestamp")) if isinstance(record, dict) else None
        if not isinstance(record, dict) or when is None or "message" not in record:
            out.append(LogEntry(timestamp=previous, level=LogLevel.INFO, message=mask_secrets(raw.rstrip())))
            continue
        level = record.get("level")
        task_id = record.get("task_id")
        out.append(
            LogEntry(
                timestamp=when,
                level=LogLevel(level) if level in _RANK else LogLevel.INFO,
                message=mask_secrets(str(record["message"])),
                task_id=str(task_id) if task_id is not None else None,
            )
        )
        previous = when
    return out


def job_log(sources: Iterable[list[LogEntry]], options: LogOptions) -> list[LogEntry]:
    """The sources' entries (the control plane's, each pod's) merged by time, filtered and cut.

    The merge is stable: on equal timestamps an earlier source's entries come first and each source
    keeps its own order. Each source may be cut to its own first (last with ``tail``) ``limit``
    entries at the level beforehand: the answer is among those."""
    floor = options.level.rank if options.level else 0
    entries = [e for entries in sources for e in entries if e.level.rank >= floor]
    entries.sort(key=lambda e: e.timestamp)
    return entries[-options.limit :] if options.tail else entries[: options.limit]
