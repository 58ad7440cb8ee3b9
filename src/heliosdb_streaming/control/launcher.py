"""How the control plane starts workers: an interface with one implementation per substrate.

``Launcher`` starts a worker from a ``WorkerSpec`` and hands back a ``WorkerHandle``;
``StaleWorkerReaper`` stops the workers a previous control plane left running.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

WORKER_MODULE = "heliosdb_streaming.runtime.worker"


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker needs to start: which job, which slot, which run, where to report."""

    job_id: str
    job_dir: Path
    index: int
    attempt: int
    control_address: str
    token: str
    checkpoint_uri: str
    restore_from: str | None = None  # checkpoint/savepoint directory in that storage
    restore_storage: str | None = None  # the storage restore_from is in, when not checkpoint_uri

    def command(
        self, python: str, *, job_dir: str, control_address: str, config_file: str | None = None
    ) -> list[str]:
        """The worker's command line, the same on every substrate (``runtime.worker``'s arguments)."""
        args = [python, "-m", WORKER_MODULE, "--job-dir", job_dir]
        if config_file is not None:
            args += ["--config", config_file]
        args += ["--job-id", self.job_id, "--index", str(self.index), "--attempt", str(self.attempt)]
        args += ["--control", control_address, "--checkpoints", self.checkpoint_uri]
        if self.restore_from:
            args += ["--restore", self.restore_from]
        if self.restore_from and self.restore_storage:
            args += ["--restore-storage", self.restore_storage]
        return args


class WorkerHandle(Protocol):
    index: int
    pid: int

    async def wait(self) -> int:
        """Waits for the worker to exit and returns its exit code."""
        ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


def disruption_of(handle: WorkerHandle) -> str | None:
    """Why the substrate took the worker away (an eviction, a node drain, a preemption), if it did:
    such an exit is not the job's failure and does not count against its restart strategy. Only pods
    carry one (Kubernetes' ``DisruptionTarget`` condition); a local process never does."""
    reason = getattr(handle, "disruption", None)
    return str(reason) if reason else None


class Launcher(Protocol):
    async def launch(self, spec: WorkerSpec) -> WorkerHandle: ...


class StaleWorkerReaper(Protocol):
    """Stops the workers a control plane that died left behind (``JobRecord.worker_pids`` of ``job_id``)
    and returns how many it stopped. The embedded substrate kills local processes
    (``embedded.launcher.kill_stale_workers``); where workers are not local processes (pods, which the
    operator relaunches itself) the control plane takes ``no_stale_workers``."""

    def __call__(self, pids: list[int], job_id: str) -> int: ...


def no_stale_workers(pids: list[int], job_id: str) -> int:
    """The reaper of a substrate whose workers a new control plane need not stop: none stopped."""
    return 0
