"""The job list, fast: each job's JSON summary is kept serialized until the job changes.

``GET /api/v1/jobs?limit=1000`` built through pydantic models costs ~40 ms for 1,000 jobs (two models
per job and a Python timestamp formatter per field); most jobs of a big list are finished and never
change again. This cache keeps one serialized fragment per job, keyed by everything the fragment shows
(status, times, uptime, parallelism), and joins the fragments of the requested page. The output is
byte for byte what ``schemas.JobListResponse`` gives (the API tests compare them), with keys in the
same order and timestamps in the same form (``2025-10-29T10:00:00Z``).

On top, whole pages are kept for up to a second: a page is rendered again when a job is added or
purged, when any job changes status (the control plane's status listeners: every change of what the
list shows, times and parallelism included, comes with one) or when the second changes (uptimes move).

It reads the control plane's job entries directly, as ``JobServiceCore.list_jobs`` does, and lives
in the control plane beside it so that the REST API gets the page through ``JobService`` alone.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from heliosdb_streaming.control.controller import ControlPlane
from heliosdb_streaming.control.entry import JobEntry
from heliosdb_streaming.model.types import JobStatus

# whole seconds with a Z, naive datetimes taken as UTC: as schemas.format_timestamp writes them
_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_OMIT_MICROSECONDS | orjson.OPT_NAIVE_UTC


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is None or value.utcoffset() == timedelta(0):
        return value
    return value.astimezone(UTC)


MAX_PAGES = 64


class JobListCache:
    """Serialized job summaries, newest first. One per app; not thread-safe (the event loop's)."""

    def __init__(self) -> None:
        self._plane: ControlPlane | None = None
        self._order: list[JobEntry] = []
        self._shape: tuple[int, int] = (0, 0)
        self._fragments: dict[str, tuple[tuple[Any, ...], bytes]] = {}
        self._version = 0
        self._listening: ControlPlane | None = None
        self._pages: dict[tuple[Any, ...], tuple[tuple[Any, ...], bytes]] = {}

    def _changed(self, job_id: str, status: JobStatus) -> None:
        self._version += 1

    def _newest_first(self, plane: ControlPlane) -> list[JobEntry]:
        # a job's submitted_at never changes: re-sort when one is added or purged
        shape = (len(plane.jobs), plane.table.removed)
        if plane is not self._plane or shape != self._shape:
            self._plane, self._shape = plane, shape
            self._order = sorted(
                plane.jobs.values(), key=lambda e: (e.record.submitted_at, e.record.job_id), reverse=True
            )
            for gone in set(self._fragments) - set(plane.jobs):
                del self._fragments[gone]
        return self._order

    def _fragment(self, plane: ControlPlane, entry: JobEntry) -> bytes:
        r = entry.record
        uptime = plane.uptime_seconds(r)
        parallelism = entry.config.parallelism
        key = (r.status, r.started_at, r.finished_at, uptime, parallelism, r.name)
        cached = self._fragments.get(r.job_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        fragment = orjson.dumps(
            {
                "job_id": r.job_id,
                "name": r.name,
                "status": r.status.value,
                "submitted_at": _utc(r.submitted_at),
                "started_at": _utc(r.started_at),
                "finished_at": _utc(r.finished_at),
                "uptime_seconds": uptime,
                "parallelism": parallelism,
            },
            option=_OPTIONS,
        )
        self._fragments[r.job_id] = (key, fragment)
        return fragment

    def render(self, plane: ControlPlane, status: JobStatus | None, limit: int, offset: int) -> bytes:
        """The ``JobListResponse`` body for one page."""
        if self._listening is not plane:
            plane.status_listeners.append(self._changed)
            self._listening = plane
            self._pages.clear()
        query = (status, limit, offset)
        state = (id(plane), len(plane.jobs), plane.table.removed, self._version, int(time.time()))
        cached = self._pages.get(query)
        if cached is not None and cached[0] == state:
            return cached[1]
        body = self._render(plane, status, limit, offset)
        if len(self._pages) >= MAX_PAGES:
            self._pages.clear()
        self._pages[query] = (state, body)
        return body

    def _render(self, plane: ControlPlane, status: JobStatus | None, limit: int, offset: int) -> bytes:
        entries = self._newest_first(plane)
        matching = entries if status is None else [e for e in entries if e.record.status == status]
        page = b",".join([self._fragment(plane, e) for e in matching[offset : offset + limit]])
        tail = f'],"total":{len(matching)},"limit":{limit},"offset":{offset}}}'.encode()
        return b'{"jobs":[' + page + tail
