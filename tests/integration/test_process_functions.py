"""Keyed process functions in real workers: a control plane, worker subprocesses that import the user
class from ``PYTHONPATH`` (as a user's package), files in, files out. Each file is one split with its
own watermark; the output equals the independent reference of ``helios_userpkg.fraud``, including the
sessions that only end because bounded input fires every pending event-time timer."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from heliosdb_streaming.control.controller import ControlPlane
from heliosdb_streaming.embedded.launcher import SubprocessLauncher
from heliosdb_streaming.embedded.logs import LocalJobFiles
from heliosdb_streaming.embedded.sqlite_store import SqliteJobStore
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.types import JobStatus

pytestmark = pytest.mark.timeout(180)

USERPKG = Path(__file__).resolve().parents[1] / "userpkg"
FILES = 3


@pytest.fixture(autouse=True)
def userpkg_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(USERPKG))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(USERPKG), os.environ.get("PYTHONPATH")]))
    )


def write_inputs(directory: Path, seed: int) -> dict[str, list[dict[str, Any]]]:
    """One file per group of cards (the source is partitioned by card_id), events in time order."""
    rng = random.Random(seed)
    directory.mkdir()
    per_file: dict[str, list[dict[str, Any]]] = {}
    for f in range(FILES):
        ts = 1_700_000_000_000
        rows = []
        for _ in range(400):
            ts += rng.choice([1_000, 30_000, 61_000, 200_000])
            rows.append(
                {
                    "card_id": f"card-{f}-{rng.randrange(5)}",
                    "amount": rng.choice([10, 120, 480]),
                    "merchant": f"m{rng.randrange(3)}",
                    "timestamp": ts,
                }
            )
        name = f"part-{f}.jsonl"
        (directory / name).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        per_file[name] = rows
    return per_file


def job(inputs: Path, out: Path, backend: str) -> JobConfig:
    return JobConfig.from_dict(
        {
            "name": "fraud-sessions",
            "config": {"parallelism": 2, "state_backend": backend, "restart_strategy": "none"},
            "sources": [{"type": "file", "config": {"path": str(inputs), "partitioned_by": "card_id"}}],
            "transformations": [
                {"type": "key_by", "config": {"key": "card_id"}},
                {"type": "process", "config": {"function": "helios_userpkg.fraud:CardSessions"}},
            ],
            "sinks": [{"type": "file", "config": {"path": str(out / "{task}.jsonl")}}],
        }
    )


async def run_to_end(plane: ControlPlane, config: JobConfig) -> None:
    job_id = plane.submit(config).job_id
    deadline = asyncio.get_running_loop().time() + 120
    while not plane.get(job_id).record.status.terminal:
        assert asyncio.get_running_loop().time() < deadline, plane.get(job_id).record
        await asyncio.sleep(0.1)
    record = plane.get(job_id).record
    assert record.status == JobStatus.FINISHED, record.message


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_workers_run_a_user_process_function_to_the_reference_output(
    backend: str, tmp_path: Path
) -> None:
    from helios_userpkg.fraud import reference

    per_file = write_inputs(tmp_path / "in", seed=3)
    out = tmp_path / "out"
    home = tmp_path / "home"
    plane = ControlPlane(
        home=home,
        store=SqliteJobStore(tmp_path / "jobs.db"),
        launcher=SubprocessLauncher(),
        files=LocalJobFiles(home),
        max_parallelism=2,
    )
    await plane.start()
    try:
        await run_to_end(plane, job(tmp_path / "in", out, backend))
    finally:
        await plane.close()

    got = [orjson.loads(line) for p in sorted(out.glob("*.jsonl")) for line in p.read_bytes().splitlines()]
    expected = [r for rows in per_file.values() for r in reference(rows)]
    key = lambda r: (r["kind"], r["card_id"], r.get("at", r.get("ended")))  # noqa: E731
    assert sorted(got, key=key) == sorted(expected, key=key)
    sessions = [r for r in expected if r["kind"] == "session"]
    assert sum(r["count"] for r in sessions) == FILES * 400
    last_ts = {name: rows[-1]["timestamp"] for name, rows in per_file.items()}
    # the sessions still open when the input ended were closed by the end-of-input timers
    assert sum(1 for r in sessions if r["ended"] - 60_000 in set(last_ts.values())) == FILES
