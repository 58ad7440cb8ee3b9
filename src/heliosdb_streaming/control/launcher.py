"""How the control plane starts workers: an interface with one implementation per substrate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


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


class WorkerHandle(Protocol):
    index: int
    pid: int

    async def wait(self) -> int:
        """Waits for the worker to exit and returns its exit code."""
        ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class Launcher(Protocol):
    async def launch(self, spec: WorkerSpec) -> WorkerHandle: ...
