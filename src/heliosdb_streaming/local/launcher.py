"""The embedded launcher: each worker is a local Python subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import psutil

from heliosdb_streaming.control.launcher import WORKER_MODULE, WorkerSpec


class SubprocessWorker:
    def __init__(self, index: int, process: asyncio.subprocess.Process) -> None:
        self.index = index
        self.process = process
        self.pid = process.pid

    async def wait(self) -> int:
        return await self.process.wait()

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


class SubprocessLauncher:
    """Starts ``python -m heliosdb_streaming.runtime.worker``; stdout and stderr go to the job directory.

    ``cwd``: the workers' working directory (relative job paths resolve there); None: this process's.
    """

    def __init__(self, cwd: Path | None = None) -> None:
        self.cwd = cwd

    async def launch(self, spec: WorkerSpec) -> SubprocessWorker:
        spec.job_dir.mkdir(parents=True, exist_ok=True)
        stderr_path = spec.job_dir / f"worker-{spec.index}.stderr"
        stdout_path = spec.job_dir / f"worker-{spec.index}.out"  # where the print sink's lines go
        env = {**os.environ, "HELIOS_WORKER_TOKEN": spec.token, "PYTHONUNBUFFERED": "1"}
        with stderr_path.open("ab") as stderr, stdout_path.open("ab") as stdout:
            command = spec.command(
                sys.executable, job_dir=str(spec.job_dir), control_address=spec.control_address
            )
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return SubprocessWorker(spec.index, process)


def kill_stale_workers(pids: list[int], job_id: str) -> int:
    """Kills workers left by a control plane that died, if those pids still run our worker for the job."""
    killed = 0
    for pid in pids:
        if pid <= 0:  # workers of another substrate (pods) have no local pid
            continue
        try:
            proc = psutil.Process(pid)
            cmdline = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if WORKER_MODULE in cmdline and job_id in cmdline:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
                killed += 1
    return killed


def worker_processes(job_id: str) -> list[psutil.Process]:
    """The live worker processes of one job on this machine, found by their command line."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if WORKER_MODULE in cmdline and job_id in cmdline:
            found.append(proc)
    return found
