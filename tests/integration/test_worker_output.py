"""A worker's output files (``worker-N.out``, the ``print`` sink's lines, and ``worker-N.stderr``) stay
size-bounded: a real control plane and worker subprocess, with the launcher's bound set small."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from heliosdb_streaming.control.controller import ControlPlane
from heliosdb_streaming.embedded.launcher import SubprocessLauncher
from heliosdb_streaming.embedded.logs import LocalJobFiles
from heliosdb_streaming.embedded.sqlite_store import SqliteJobStore
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.types import JobStatus

pytestmark = pytest.mark.timeout(180)

MAX_BYTES = 4096
BACKUPS = 2
COUNT = 60_000  # 15 batches: 15 warnings of ~370 bytes, more than one stderr file holds


def chatty_job() -> JobConfig:
    """Prints every record above 100 and fails (a logged warning) on the others: both files grow."""
    return JobConfig.from_dict(
        {
            "name": "chatty",
            "config": {"parallelism": 1, "restart_strategy": "none", "on_error": "skip"},
            "sources": [
                {"type": "datagen", "config": {"partitions": 1, "keys": 10, "count": COUNT, "seed": 5}}
            ],
            # 'merchant > 5' compares a string with a number: an error for every record it sees
            "transformations": [{"type": "filter", "config": {"condition": "amount > 100 or merchant > 5"}}],
            "sinks": [{"type": "print", "config": {}}],
        }
    )


def rotated(job_dir: Path, name: str) -> list[Path]:
    """``name``, ``name.1``, ... newest first; fails if a file beyond the bound is there."""
    found = sorted(job_dir.glob(f"{name}*"))
    allowed = [job_dir / name] + [job_dir / f"{name}.{i}" for i in range(1, BACKUPS + 1)]
    assert set(found) <= set(allowed), found
    return [p for p in allowed if p.exists()]


async def test_print_sink_and_stderr_files_are_rotated_and_keep_the_newest_lines(tmp_path: Path) -> None:
    home = tmp_path / "home"
    plane = ControlPlane(
        home=home,
        store=SqliteJobStore(tmp_path / "jobs.db"),
        launcher=SubprocessLauncher(output_max_bytes=MAX_BYTES, output_backups=BACKUPS),
        files=LocalJobFiles(home),
        max_parallelism=2,
    )
    await plane.start()
    try:
        job_id = plane.submit(chatty_job()).job_id
        deadline = asyncio.get_running_loop().time() + 120
        while not plane.get(job_id).record.status.terminal:
            assert asyncio.get_running_loop().time() < deadline, plane.get(job_id).record
            await asyncio.sleep(0.1)
        record = plane.get(job_id).record
        assert record.status == JobStatus.FINISHED, record.message
        job_dir = plane.job_dir(job_id)
    finally:
        await plane.close()

    outs = rotated(job_dir, "worker-0.out")
    assert [p.name for p in outs] == ["worker-0.out", "worker-0.out.1", "worker-0.out.2"]
    assert all(p.stat().st_size <= MAX_BYTES for p in outs), [p.stat().st_size for p in outs]
    # whole lines only, and the newest are in worker-0.out: the last record of the source is there
    seqs = [
        [int(orjson.loads(line)["transaction_id"].rpartition("-")[2]) for line in p.read_text().splitlines()]
        for p in outs
    ]
    assert all(seqs), "an empty output file"
    assert max(seqs[0]) == max(r for s in seqs for r in s) >= COUNT - 50
    assert min(seqs[0]) > max(seqs[1]) and min(seqs[1]) > max(seqs[2])

    errs = rotated(job_dir, "worker-0.stderr")
    assert [p.name for p in errs][:2] == ["worker-0.stderr", "worker-0.stderr.1"], errs
    assert all(p.stat().st_size <= MAX_BYTES for p in errs), [p.stat().st_size for p in errs]
    assert "failed in split" in errs[0].read_text()
