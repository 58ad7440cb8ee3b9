"""``JobManager``: the native async API of the spec, on the embedded substrate.

    async with JobManager(16) as jm:
        job_id = await jm.submit_job(JobConfig.from_dict(body))
        details = await jm.get_job_details(job_id)

The constructor is cheap and synchronous; the control plane (job store, worker channel, recovery of
jobs that were running) starts on first use or on ``async with``.

This module is the embedded substrate's composition root: the spec's methods are
``control.service.JobServiceCore``'s (the same on every substrate); ``JobManager`` adds the local
parts it wires into its ``ControlPlane``: the SQLite job store, the subprocess launcher, job files
and logs under the home, and the reaper of workers a previous process left running.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType

from heliosdb_streaming.control import paths, usercode
from heliosdb_streaming.control.controller import ControlPlane
from heliosdb_streaming.control.service import JobServiceCore
from heliosdb_streaming.embedded import private
from heliosdb_streaming.embedded.launcher import SubprocessLauncher, kill_stale_workers
from heliosdb_streaming.embedded.logs import LocalJobFiles
from heliosdb_streaming.embedded.sqlite_store import SqliteJobStore


def default_home() -> Path:
    return Path(os.environ.get("HELIOS_HOME") or Path.home() / ".helios")


class JobManager(JobServiceCore):
    """Submits, runs, watches and cancels jobs. ``max_parallelism`` caps the worker slots in use."""

    def __init__(
        self,
        max_parallelism: int = 16,
        *,
        home: str | Path | None = None,
        allowed_roots: Sequence[str | Path] | None = None,
        job_retention: timedelta | None = None,
        python_modules: Sequence[str] | None = None,
    ) -> None:
        """``allowed_roots``: None (the native API, ``helios run``) lets jobs use any local path; a
        server for network clients passes its roots (the home is always one): then every file a job
        names must resolve inside them (``control.paths``), relative paths are taken relative to the
        home and workers run in the home. ``job_retention``: finished, failed and cancelled jobs are
        purged that long after they ended, unless they hold savepoints (None: kept until purged).
        ``python_modules``: None runs any importable user code; a server passes the modules its
        administrator allowed (``--python-modules``; empty: none)."""
        if max_parallelism < 1:
            raise ValueError("max_parallelism must be at least 1")
        self.max_parallelism = max_parallelism
        self.home = Path(home) if home is not None else default_home()
        self.job_retention = job_retention
        super().__init__(
            None,
            allowed_roots=None
            if allowed_roots is None
            else paths.AllowedRoots.of([self.home, *allowed_roots], base=self.home),
            user_code=usercode.UserCodePolicy()
            if python_modules is None
            else usercode.UserCodePolicy.server(python_modules),
        )
        self._starting: asyncio.Lock | None = None

    async def __aenter__(self) -> JobManager:
        await self._control()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stops every worker this manager started; active jobs resume when a manager opens this home."""
        if self._plane is not None:
            await self._plane.close()
            self._plane = None

    async def _control(self) -> ControlPlane:
        if self._plane is not None:
            return self._plane
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._plane is None:
                private.private_dir(self.home)  # jobs.db and job.json hold connection strings
                plane = ControlPlane(
                    home=self.home,
                    store=SqliteJobStore(self.home / "jobs.db"),
                    launcher=SubprocessLauncher(
                        cwd=self.home if self.allowed_roots is not None else None,
                        env=usercode.worker_env(self.user_code),
                    ),
                    files=LocalJobFiles(self.home),
                    max_parallelism=self.max_parallelism,
                    reap_stale_workers=kill_stale_workers,
                )
                await plane.start(self.job_retention)
                self._plane = plane
        return self._plane
