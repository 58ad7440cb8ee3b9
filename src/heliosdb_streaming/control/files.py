"""What the control plane keeps per job besides its record: a directory and a log, behind protocols.

The control plane writes each job's ``job.json`` (the config the launcher hands to workers) into the
job's directory and appends its own lines, and the lines workers ship over the channel, to the job's
log. How and where is the substrate's business: the embedded one keeps private files under its home
(``embedded.logs.LocalJobFiles``); the operator does the same under its own home. The control plane
only sees these protocols, so it imports no substrate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from heliosdb_streaming.model.types import LogEntry, LogOptions


class JobLog(Protocol):
    """One job's structured log: the control plane is its only writer."""

    def write(
        self,
        level: str,
        message: str,
        task_id: str | None = None,
        ts: float | None = None,
        worker: int | None = None,
    ) -> None:
        """Appends one entry; ``worker`` is the index of the worker that shipped it (None: the control
        plane's own line). Secrets in ``message`` are masked by the log."""
        ...

    def read(self, options: LogOptions, *, workers: bool = True) -> list[LogEntry]:
        """Entries in time order, filtered as ``options`` says; ``workers=False`` leaves out the lines
        workers shipped. Blocking I/O: callers on the event loop run it in a thread."""
        ...

    def close(self) -> None: ...


class JobFiles(Protocol):
    """Where each job's directory and log are."""

    def job_dir(self, job_id: str) -> Path:
        """The job's directory (``WorkerSpec.job_dir``): the launcher reads ``job.json`` there."""
        ...

    def write_config(self, job_id: str, data: bytes) -> None:
        """Writes the job's ``job.json`` (it holds connection strings: private to the server's user)."""
        ...

    def open_log(self, job_id: str) -> JobLog: ...

    def remove(self, job_id: str) -> None:
        """Deletes the job's directory with its ``job.json`` and logs (a purge). Blocking I/O."""
        ...
