"""A control plane in its own process, for tests that kill it with SIGKILL.

    python control_plane_process.py HOME [JOB.json ...]

Opens a JobManager on HOME (which recovers the jobs that were running), submits the given job
files, prints their ids as one JSON line, then runs until killed.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson

from heliosdb_streaming.job import JobManager


async def main(home: str, job_files: list[str]) -> None:
    async with JobManager(16, home=home) as jm:
        ids = [await jm.submit_job(orjson.loads(Path(f).read_bytes())) for f in job_files]
        print(orjson.dumps(ids).decode(), flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
