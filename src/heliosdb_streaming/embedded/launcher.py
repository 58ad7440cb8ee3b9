"""The embedded launcher: each worker is a local Python subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import psutil

from heliosdb_streaming.control.launcher import WORKER_MODULE, WorkerSpec
from heliosdb_streaming.embedded import private
from heliosdb_streaming.runtime import rotation

# What a worker may inherit from the server's environment; everything else (HELIOS_API_TOKEN, the
# server's own secrets, cloud credentials its storage does not use) stays out of the worker.
WORKER_ENV = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH",
        "VIRTUAL_ENV", "SSL_CERT_FILE", "SSL_CERT_DIR",
        # read by the worker itself (runtime.worker, runtime.checkpoint.storage)
        "HELIOS_LOG_FORMAT", "HELIOS_WORKER_METRICS", "HELIOS_S3_ENDPOINT", "HELIOS_S3_SECURE",
    }
)  # fmt: skip
# LC_*: the locale; PYTHON*: the interpreter (PYTHONPATH...); AWS_*, MINIO_*: the S3 checkpoint
# storage's credentials; PG*: libpq's variables, which the database sink's driver reads (PGPASSWORD...)
WORKER_ENV_PREFIXES = ("LC_", "PYTHON", "AWS_", "MINIO_", "PG")


def worker_environment(environ: Mapping[str, str], cwd: str | None = None) -> dict[str, str]:
    """The part of ``environ`` a worker gets: an allow-list, so a secret of the server's (its API token)
    never reaches job code. ``PYTHONPATH`` entries are made absolute against ``cwd`` (this process's
    directory), since a server's workers run in its home: they import user code from where it does."""
    env = {k: v for k, v in environ.items() if k in WORKER_ENV or k.startswith(WORKER_ENV_PREFIXES)}
    if env.get("PYTHONPATH"):
        base = cwd if cwd is not None else os.getcwd()
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.join(base, entry) for entry in env["PYTHONPATH"].split(os.pathsep)
        )  # an absolute entry stays as it is; an empty one (the directory) becomes ``base``
    return env


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
    ``env``: set in every worker besides what it inherits (a server's ``HELIOS_PYTHON_MODULES``).
    """

    def __init__(
        self,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        output_max_bytes: int = rotation.DEFAULT_MAX_BYTES,
        output_backups: int = rotation.DEFAULT_BACKUPS,
    ) -> None:
        self.cwd = cwd
        self.env = dict(env or {})
        # each worker output file (worker-N.out, worker-N.stderr) is rotated past output_max_bytes,
        # output_backups older files kept, as the job log
        self.output_max_bytes = output_max_bytes
        self.output_backups = output_backups

    async def launch(self, spec: WorkerSpec) -> SubprocessWorker:
        private.private_dir(spec.job_dir)
        stderr_path = spec.job_dir / f"worker-{spec.index}.stderr"
        stdout_path = spec.job_dir / f"worker-{spec.index}.out"  # where the print sink's lines go
        env = worker_environment(os.environ) | self.env
        env |= {"HELIOS_WORKER_TOKEN": spec.token, "PYTHONUNBUFFERED": "1"}
        with private.open_private(stderr_path) as stderr, private.open_private(stdout_path) as stdout:
            command = spec.command(
                sys.executable, job_dir=str(spec.job_dir), control_address=spec.control_address
            )
            command += self._bounded_output_args(str(stdout_path), str(stderr_path))
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

    def _bounded_output_args(self, stdout_path: str, stderr_path: str) -> list[str]:
        """The worker keeps its own stdout and stderr files bounded (it is their only writer)."""
        return [
            "--stdout-file",
            stdout_path,
            "--stderr-file",
            stderr_path,
            "--output-max-bytes",
            str(self.output_max_bytes),
            "--output-backups",
            str(self.output_backups),
        ]


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
