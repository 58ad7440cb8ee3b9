"""The spec's integration tests 3 (savepoint), 4 (restart from savepoint) and 8 (failure and automatic
restart), through the native API with real worker processes and real kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
import pytest

from heliosdb_streaming.job import (
    IllegalStateTransitionError,
    InvalidJobConfigError,
    JobConfigOverrides,
    JobManager,
    JobStatus,
    LogLevel,
    LogOptions,
    RestartOptions,
    SavepointNotFoundError,
)
from heliosdb_streaming.testing.expected import datagen_tumbling_windows, tumbling_window_per_card
from heliosdb_streaming.testing.waits import wait_until

pytestmark = pytest.mark.timeout(240)

COUNT = 40_000
PARTITIONS = 8


def window_job(
    db: Path, *, parallelism: int, rate: float, backend: str = "memory", **config: Any
) -> dict[str, Any]:
    return {
        "name": "spend_per_card",
        "config": {
            "parallelism": parallelism,
            "state_backend": backend,
            "checkpoint_interval_ms": 500,
            "restart_strategy": {"type": "fixed_delay", "attempts": 5, "delay_ms": 200},
            **config,
        },
        "sources": [
            {
                "type": "datagen",
                "config": {
                    "count": COUNT,
                    "partitions": PARTITIONS,
                    "seed": 5,
                    "keys": 64,
                    "rate_per_sec": rate,
                },
            }
        ],
        "transformations": [tumbling_window_per_card()],
        "sinks": [{"type": "database", "config": {"connection_string": f"sqlite:///{db}", "table": "spend"}}],
    }


async def expected_windows() -> list[tuple[Any, ...]]:
    """The windows computed straight from the generated records, without the engine."""
    return await datagen_tumbling_windows(count=COUNT, partitions=PARTITIONS, seed=5, keys=64)


def table_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT key, window_start, window_end, n, total FROM spend").fetchall()
    return sorted((k, s, e, n, round(t, 6)) for k, s, e, n, t in rows)


async def wait_for_status(
    jm: JobManager, job_id: str, wanted: set[JobStatus], timeout: float = 90
) -> JobStatus:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await jm.get_job_status(job_id)
        if status in wanted:
            return status
        if asyncio.get_running_loop().time() > deadline:
            details = await jm.get_job_details(job_id)
            raise AssertionError(f"{job_id} stayed {status.value}: {details.message}")
        await asyncio.sleep(0.05)


async def wait_for_checkpoint(jm: JobManager, job_id: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not any(c.status == "completed" for c in await jm.list_checkpoints(job_id)):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("no checkpoint completed")
        await asyncio.sleep(0.05)


async def wait_for_progress(jm: JobManager, job_id: str, what: str, within: float = 30) -> None:
    """Waits until the job's workers report more records processed than now (heartbeats carry the
    counts, so this is also proof that the current run is up and reading)."""
    mark = (await jm.get_job_metrics(job_id)).events_processed

    async def more() -> bool:
        return (await jm.get_job_metrics(job_id)).events_processed > mark

    await wait_until(more, what=what, within=within, interval=0.05)


def worker_pids(jm: JobManager, job_id: str) -> list[int]:
    return list(jm.control_plane.get(job_id).record.worker_pids)


@pytest.fixture
async def jm(tmp_path: Path) -> AsyncIterator[JobManager]:
    async with JobManager(8, home=tmp_path / "home") as manager:
        yield manager


# 3. Create savepoint
async def test_create_list_delete_savepoint(jm: JobManager, tmp_path: Path) -> None:
    job_id = await jm.submit_job(window_job(tmp_path / "out.db", parallelism=2, rate=4000))
    await wait_for_status(jm, job_id, {JobStatus.RUNNING})
    savepoint_id = await jm.create_savepoint(job_id, "Pre-upgrade savepoint")
    assert savepoint_id.startswith("savepoint-")
    [info] = await jm.list_savepoints(job_id)
    assert info.savepoint_id == savepoint_id and info.job_id == job_id
    assert info.description == "Pre-upgrade savepoint"
    assert info.location.startswith("file://") and info.size_bytes > 0
    directory = Path(urlparse(info.location).path)
    assert (directory / "_manifest.json").is_file()
    assert sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) >= info.size_bytes // 2

    await jm.pause_job(job_id)  # a paused job takes savepoints too
    second = await jm.create_savepoint(job_id, None)
    assert {s.savepoint_id for s in await jm.list_savepoints(job_id)} == {savepoint_id, second}
    await jm.delete_savepoint(job_id, savepoint_id)
    assert not directory.exists()
    with pytest.raises(SavepointNotFoundError):
        await jm.delete_savepoint(job_id, savepoint_id)
    await jm.cancel_job(job_id)
    with pytest.raises(IllegalStateTransitionError):
        await jm.create_savepoint(job_id, "too late")
    assert [s.savepoint_id for s in await jm.list_savepoints(job_id)] == [second]  # survives cancel


# 4. Restart from savepoint (with rescaling 4 -> 2 -> 8): the result equals an uninterrupted run
@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_stop_with_savepoint_and_rescale_gives_exact_result(
    jm: JobManager, tmp_path: Path, backend: str
) -> None:
    db = tmp_path / "out.db"
    job_id = await jm.submit_job(window_job(db, parallelism=4, rate=8000, backend=backend))
    await wait_for_status(jm, job_id, {JobStatus.RUNNING})
    await wait_for_checkpoint(jm, job_id)
    first = await jm.cancel_job_with_savepoint(job_id)
    assert await jm.get_job_status(job_id) == JobStatus.CANCELLED

    await jm.restart_job(
        job_id, RestartOptions(savepoint_id=first, config_overrides=JobConfigOverrides(parallelism=2))
    )
    await wait_for_status(jm, job_id, {JobStatus.RUNNING})
    assert (await jm.get_job_details(job_id)).config.parallelism == 2
    await wait_for_progress(jm, job_id, "records processed by the run at parallelism 2")
    second = await jm.cancel_job_with_savepoint(job_id)

    await jm.restart_job(
        job_id, RestartOptions(savepoint_id=second, config_overrides=JobConfigOverrides(parallelism=8))
    )
    assert await wait_for_status(jm, job_id, {JobStatus.FINISHED, JobStatus.FAILED}) == JobStatus.FINISHED
    assert table_rows(db) == await expected_windows()
    logs = [e.message for e in await jm.get_job_logs(job_id)]
    assert any(f"restarting from savepoint {first}" in m for m in logs)
    assert any("restored from checkpoint" in m for m in logs)


# An upgrade as in Flink (--fromSavepoint): a new job, with a changed pipeline and parallelism and its own
# checkpoint storage, starts from the old job's savepoint and ends with the uninterrupted result
@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
async def test_new_job_from_another_jobs_savepoint_continues_exactly(
    jm: JobManager, tmp_path: Path, backend: str
) -> None:
    db = tmp_path / "out.db"
    old = await jm.submit_job(window_job(db, parallelism=2, rate=8000, backend=backend))
    await wait_for_status(jm, old, {JobStatus.RUNNING})
    await wait_for_checkpoint(jm, old)
    savepoint_id = await jm.cancel_job_with_savepoint(old)
    location = (await jm.get_savepoint(old, savepoint_id)).location

    upgraded = window_job(
        db, parallelism=3, rate=0, backend=backend, checkpoint_storage=(tmp_path / "v2").as_uri()
    )
    upgraded["name"] = "spend_per_card_v2"
    # a step after the window: the window keeps its position, so its state is found again
    upgraded["transformations"].append({"type": "map", "config": {"fields": {"total": "total"}}})
    new = await jm.submit_job(upgraded, from_savepoint=location)
    assert await wait_for_status(jm, new, {JobStatus.FINISHED, JobStatus.FAILED}) == JobStatus.FINISHED
    assert table_rows(db) == await expected_windows()
    logs = [e.message for e in await jm.get_job_logs(new)]
    assert any(f"starting from savepoint {savepoint_id} of job {old}" in m for m in logs), logs
    assert any("restored from checkpoint" in m for m in logs)
    assert not any("not restored" in m for m in logs)
    assert (tmp_path / "v2" / new).is_dir() and not (tmp_path / "v2" / old).exists()
    assert [s.savepoint_id for s in await jm.list_savepoints(old)] == [savepoint_id]  # still the old job's

    # a step inserted before the window moves it: its state is not found, and the log says so
    moved = window_job(tmp_path / "moved.db", parallelism=1, rate=0, backend=backend)
    moved["transformations"].insert(0, {"type": "filter", "config": {"condition": "amount >= 0"}})
    third = await jm.submit_job(moved, from_savepoint=location)
    assert await wait_for_status(jm, third, {JobStatus.FINISHED, JobStatus.FAILED}) == JobStatus.FINISHED
    warnings = [e.message for e in await jm.get_job_logs(third, LogOptions(level=LogLevel.WARN))]
    assert any("state of step(s) 0-window" in m and "not restored" in m for m in warnings), warnings

    for nowhere in ((tmp_path / "nowhere").as_uri(), f"{location}/..", "s3:/"):
        with pytest.raises(InvalidJobConfigError) as info:
            await jm.submit_job(upgraded, from_savepoint=nowhere)
        assert info.value.errors[0].path == "from_savepoint", nowhere
    assert len(await jm.list_jobs()) == 3


async def test_the_start_point_survives_a_control_plane_restart(tmp_path: Path) -> None:
    """Until a job started from a savepoint has a checkpoint of its own, a restart (here: of the
    control plane) restores that savepoint again, not nothing."""
    db, home = tmp_path / "out.db", tmp_path / "home"
    async with JobManager(8, home=home) as jm:
        old = await jm.submit_job(window_job(db, parallelism=2, rate=8000))
        await wait_for_status(jm, old, {JobStatus.RUNNING})
        await wait_for_checkpoint(jm, old)
        savepoint_id = await jm.cancel_job_with_savepoint(old)
        location = (await jm.get_savepoint(old, savepoint_id)).location
        body = window_job(db, parallelism=2, rate=4000, checkpoint_interval_ms=600_000)  # none of its own
        new = await jm.submit_job(body, from_savepoint=location)
        await wait_for_status(jm, new, {JobStatus.RUNNING})
        await wait_for_progress(jm, new, "records processed by the job started from the savepoint")
    async with JobManager(8, home=home) as jm:
        assert await wait_for_status(jm, new, {JobStatus.FINISHED, JobStatus.FAILED}) == JobStatus.FINISHED
        assert table_rows(db) == await expected_windows()
        runs = [e.message for e in await jm.get_job_logs(new) if ": started " in e.message]
        assert len(runs) == 2 and all(
            f"restoring {old}/savepoints/{savepoint_id} of file://" in m for m in runs
        )


async def test_restart_without_options_uses_latest_checkpoint(jm: JobManager, tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    job_id = await jm.submit_job(window_job(db, parallelism=2, rate=8000))
    await wait_for_status(jm, job_id, {JobStatus.RUNNING})
    await wait_for_checkpoint(jm, job_id)
    await jm.restart_job(job_id)  # from running: stop, then restore the newest checkpoint
    assert await wait_for_status(jm, job_id, {JobStatus.FINISHED, JobStatus.FAILED}) == JobStatus.FINISHED
    assert table_rows(db) == await expected_windows()
    with pytest.raises(SavepointNotFoundError):
        await jm.restart_job(job_id, RestartOptions(savepoint_id="savepoint-nope"))


# 8. Job failure and automatic restart
async def test_worker_killed_restarts_from_checkpoint_exactly_once(jm: JobManager, tmp_path: Path) -> None:
    db = tmp_path / "out.db"
    job_id = await jm.submit_job(window_job(db, parallelism=2, rate=6000))
    await wait_for_status(jm, job_id, {JobStatus.RUNNING})
    for round_ in range(2):
        await wait_for_checkpoint(jm, job_id)
        # records processed after that checkpoint: the kill loses work the restore must replay
        await wait_for_progress(jm, job_id, "records processed after a checkpoint")
        pids = worker_pids(jm, job_id)
        os.kill(pids[round_ % len(pids)], signal.SIGKILL)

        async def restarted(expected: int = round_ + 1) -> bool:
            details = await jm.get_job_details(job_id)
            return details.restarts == expected and details.status == JobStatus.RUNNING

        deadline = asyncio.get_running_loop().time() + 30
        while not await restarted():
            assert asyncio.get_running_loop().time() < deadline, "job did not restart"
            await asyncio.sleep(0.05)
    assert await wait_for_status(jm, job_id, {JobStatus.FINISHED, JobStatus.FAILED}) == JobStatus.FINISHED
    assert table_rows(db) == await expected_windows()
    details = await jm.get_job_details(job_id)
    assert details.restarts == 2 and details.metrics.restarts == 2
    checkpoint_dirs = list((jm.home / "checkpoints" / job_id).glob("chk-*"))
    assert 1 <= len(checkpoint_dirs) <= 3  # retained ones only: failed and aborted ones are cleaned too
    warnings = [e.message for e in await jm.get_job_logs(job_id, LogOptions(level=LogLevel.WARN))]
    assert sum("restart" in m and "fixed_delay" in m for m in warnings) == 2


async def test_restart_strategy_exhausted_fails_the_job(jm: JobManager, tmp_path: Path) -> None:
    body = window_job(tmp_path / "out.db", parallelism=1, rate=2000)
    body["config"]["restart_strategy"] = {"type": "fixed_delay", "attempts": 1, "delay_ms": 100}
    job_id = await jm.submit_job(body)
    killed: list[int] = []
    for expected_restarts in (1, None):
        await wait_for_status(jm, job_id, {JobStatus.RUNNING})

        async def new_run_launched() -> bool:  # not the run (and worker) killed in the round before
            pids = worker_pids(jm, job_id)
            return bool(pids) and not set(pids) & set(killed) and jm.control_plane.get(job_id).run is not None

        await wait_until(new_run_launched, what="a run with a new worker", within=20, interval=0.05)
        await wait_for_progress(jm, job_id, "records processed by the new worker")
        [pid] = worker_pids(jm, job_id)
        killed.append(pid)
        os.kill(pid, signal.SIGKILL)
        if expected_restarts is not None:

            async def restarted(expected: int = expected_restarts) -> bool:
                return (await jm.get_job_details(job_id)).restarts == expected

            await wait_until(restarted, what=f"restart {expected_restarts}", within=20, interval=0.05)
    assert await wait_for_status(jm, job_id, {JobStatus.FAILED}) == JobStatus.FAILED
    details = await jm.get_job_details(job_id)
    assert details.message is not None and "exhausted after 1 restart" in details.message
    errors = await jm.get_job_logs(job_id, LogOptions(level=LogLevel.ERROR))
    assert any("exhausted" in e.message for e in errors)
    assert not any(psutil.pid_exists(p) for p in worker_pids(jm, job_id))


# A savepoint a run is about to restore, or is restoring, is not the user's to delete until the job no
# longer needs it (a completed snapshot of its own); a terminal job holds nothing.
async def test_savepoint_a_restart_restores_cannot_be_deleted(jm: JobManager, tmp_path: Path) -> None:
    body = window_job(tmp_path / "out.db", parallelism=2, rate=1000, checkpoint_interval_ms=600_000)
    job_id = await jm.submit_job(body)
    await wait_for_status(jm, job_id, {JobStatus.RUNNING})
    savepoint_id = await jm.cancel_job_with_savepoint(job_id)
    await jm.restart_job(job_id, RestartOptions(savepoint_id=savepoint_id))

    with pytest.raises(IllegalStateTransitionError) as info:
        await jm.delete_savepoint(job_id, savepoint_id)
    assert info.value.code == "savepoint_in_use"
    assert job_id in info.value.message and "restor" in info.value.message
    await wait_for_status(jm, job_id, {JobStatus.RUNNING})
    with pytest.raises(IllegalStateTransitionError):  # still: the new run has no snapshot of its own yet
        await jm.delete_savepoint(job_id, savepoint_id)
    location = Path(urlparse((await jm.get_savepoint(job_id, savepoint_id)).location).path)
    assert (location / "_manifest.json").is_file()

    await jm.create_savepoint(job_id, "its own")  # from now on the job restores this one
    await jm.delete_savepoint(job_id, savepoint_id)
    assert not location.exists()
    logs = [e.message for e in await jm.get_job_logs(job_id, LogOptions(limit=1000))]
    assert any(f"restoring {job_id}/savepoints/{savepoint_id}" in m for m in logs)
    deadline = asyncio.get_running_loop().time() + 10  # worker lines reach the job log asynchronously
    while sum("restored from checkpoint" in m for m in logs) < 2:  # one line per worker
        assert asyncio.get_running_loop().time() < deadline, logs
        await asyncio.sleep(0.05)
        logs = [e.message for e in await jm.get_job_logs(job_id, LogOptions(limit=1000))]
    assert not any("exited with code" in m for m in logs), logs  # its workers found every file
    await jm.cancel_job(job_id)


async def test_savepoint_a_new_job_starts_from_cannot_be_deleted(jm: JobManager, tmp_path: Path) -> None:
    old = await jm.submit_job(window_job(tmp_path / "old.db", parallelism=1, rate=2000))
    await wait_for_status(jm, old, {JobStatus.RUNNING})
    savepoint_id = await jm.cancel_job_with_savepoint(old)
    location = (await jm.get_savepoint(old, savepoint_id)).location
    body = window_job(tmp_path / "new.db", parallelism=1, rate=2000, checkpoint_interval_ms=600_000)
    new = await jm.submit_job(body, from_savepoint=location)

    with pytest.raises(IllegalStateTransitionError) as info:
        await jm.delete_savepoint(old, savepoint_id)
    assert info.value.code == "savepoint_in_use" and new in info.value.message
    await wait_for_status(jm, new, {JobStatus.RUNNING})
    await jm.cancel_job(new)  # a cancelled job holds nothing: restarting it is the user's decision
    await jm.delete_savepoint(old, savepoint_id)
    assert not Path(urlparse(location).path).exists()


async def wait_between_runs(jm: JobManager, job_id: str) -> None:
    """Until the run whose worker was killed has ended and the automatic restart is pending."""
    deadline = asyncio.get_running_loop().time() + 30
    entry = jm.control_plane.get(job_id)
    while entry.run is not None:
        assert asyncio.get_running_loop().time() < deadline, "the run did not end"
        await asyncio.sleep(0.02)
    assert entry.record.status == JobStatus.RUNNING


async def test_savepoint_between_runs_waits_for_the_new_run(jm: JobManager, tmp_path: Path) -> None:
    body = window_job(tmp_path / "out.db", parallelism=2, rate=2000)
    body["config"]["restart_strategy"] = {"type": "fixed_delay", "attempts": 5, "delay_ms": 1500}
    job_id = await jm.submit_job(body)
    await wait_for_status(jm, job_id, {JobStatus.RUNNING})
    await wait_for_checkpoint(jm, job_id)
    first = worker_pids(jm, job_id)
    os.kill(first[0], signal.SIGKILL)
    await wait_between_runs(jm, job_id)

    jm.control_plane.restart_wait_s = 0.2  # shorter than the restart delay: the caller is told why
    with pytest.raises(IllegalStateTransitionError) as info:
        await jm.create_savepoint(job_id, "too early")
    assert info.value.code == "job_restarting" and "restart" in info.value.message

    jm.control_plane.restart_wait_s = 30
    savepoint_id = await jm.create_savepoint(job_id, "after the restart")
    assert [s.savepoint_id for s in await jm.list_savepoints(job_id)] == [savepoint_id]
    assert not set(worker_pids(jm, job_id)) & set(first)
    await jm.cancel_job(job_id)


async def test_queued_savepoint_fails_fast_when_its_run_ends(jm: JobManager, tmp_path: Path) -> None:
    body = window_job(tmp_path / "out.db", parallelism=2, rate=2000, restart_strategy="none")
    job_id = await jm.submit_job(body)
    await wait_for_status(jm, job_id, {JobStatus.RUNNING})
    await wait_for_checkpoint(jm, job_id)
    pids = worker_pids(jm, job_id)
    os.kill(pids[0], signal.SIGSTOP)  # a stopped worker never acks: the first savepoint stays in flight
    try:
        first = asyncio.create_task(jm.create_savepoint(job_id, "in flight"))
        coordinator = jm.control_plane.get(job_id).run.coordinator  # type: ignore[union-attr]
        assert coordinator is not None
        deadline = asyncio.get_running_loop().time() + 30
        while coordinator.pending is None or coordinator.pending.record.kind != "savepoint":
            assert asyncio.get_running_loop().time() < deadline, "the savepoint did not start"
            await asyncio.sleep(0.02)
        second = asyncio.create_task(jm.create_savepoint(job_id, "queued"))
        for _ in range(20):  # no timer: lets the second request run up to the coordinator's queue
            await asyncio.sleep(0)
        assert not second.done()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    started = asyncio.get_running_loop().time()
    with pytest.raises(IllegalStateTransitionError):
        await asyncio.wait_for(second, 30)
    assert asyncio.get_running_loop().time() - started < 15
    with pytest.raises(Exception, match="the run ended"):
        await first
    assert await wait_for_status(jm, job_id, {JobStatus.FAILED}) == JobStatus.FAILED
    assert await jm.list_savepoints(job_id) == []
