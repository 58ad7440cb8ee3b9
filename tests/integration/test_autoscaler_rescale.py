"""The autoscaler on the embedded substrate, with real worker subprocesses: a saturated job scales up
and an idle one down (mode apply), each with a savepoint and a restart, and the keyed window results
read back from the SQLite sink equal those of the same pipeline run once at parallelism 1 (exactly
once across the rescale); in mode recommend the decision is only recorded.

Saturated: datagen at full speed through a python filter that takes about 0.1 ms a record (a sleep, so the
shared test machine's cores stay free), so the workers' processing loops are busy all the time.
Idle: datagen limited to a few records a second. Stabilization, cooldown and the metrics window are
a second or two, so each test finishes in well under a minute.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.api.prometheus import render_manager
from heliosdb_streaming.job import JobManager, JobStatus, LogOptions
from heliosdb_streaming.testing.waits import wait_until

pytestmark = pytest.mark.timeout(120)

USERPKG = Path(__file__).resolve().parents[1] / "userpkg"
WINDOW = {
    "type": "window",
    "config": {"size": "1s", "key": "card_id", "aggregates": {"n": "count(*)", "total": "sum(amount)"}},
}
# a python filter keeps the datagen's grouping by card_id (a map would not): no repartition needed
SLOW_STEP = {"type": "python", "config": {"function": "helios_userpkg.records:slow_keep", "kind": "filter"}}


def job(
    name: str,
    db: Path,
    *,
    parallelism: int,
    datagen: dict[str, Any],
    slow: bool = False,
    autoscaler: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """datagen -> (slow python filter) -> keyed 1 s tumbling window -> SQLite (exactly once)."""
    config: dict[str, Any] = {
        "parallelism": parallelism,
        "checkpoint_interval_ms": 400,
        "restart_strategy": "none",
    }
    if autoscaler is not None:
        config["autoscaler"] = {
            "enabled": True,
            "stabilization_ms": 1000,
            "cooldown_ms": 60_000,  # one rescale per test
            "metrics_window_ms": 2000,
            **autoscaler,
        }
    return {
        "name": name,
        "config": config,
        "sources": [{"type": "datagen", "config": {"seed": 7, "keys": 40, **datagen}}],
        "transformations": [*([SLOW_STEP] if slow else []), WINDOW],
        "sinks": [
            {"type": "database", "config": {"connection_string": f"sqlite:///{db}", "table": "windows"}}
        ],
    }


def rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute("SELECT key, window_start, window_end, n, total FROM windows"))


async def finished(jm: JobManager, job_id: str) -> bool:
    status = await jm.get_job_status(job_id)
    assert status != JobStatus.FAILED, (await jm.get_job_details(job_id)).message
    return status == JobStatus.FINISHED


async def reference(jm: JobManager, db: Path, datagen: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The same pipeline at parallelism 1, no autoscaler, datagen at full speed (same records)."""
    job_id = await jm.submit_job(job("reference", db, parallelism=1, datagen={**datagen, "rate_per_sec": 0}))
    await wait_until(lambda: finished(jm, job_id), what="the reference job to finish", within=30)
    return rows(db)


async def events_after_rescale(jm: JobManager, job_id: str, worker: int) -> int:
    """Events a worker that *finished* read (the runs before the rescale were stopped): proof that the
    run at the new parallelism did part of the work, not just the final checkpoint."""
    lines = [e.message for e in await jm.get_job_logs(job_id, LogOptions(limit=1000))]
    found = [re.match(rf"worker {worker} finished: (\d+) events in", m) for m in lines]
    return sum(int(m.group(1)) for m in found if m)


@pytest.fixture
def userpkg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(USERPKG))  # the control plane's submit check
    monkeypatch.setenv("PYTHONPATH", str(USERPKG))  # what its workers inherit


async def test_a_saturated_job_scales_up_with_exact_results(tmp_path: Path, userpkg: None) -> None:
    datagen = {"partitions": 4, "count": 60000}
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(
            job(
                "saturated",
                tmp_path / "scaled.db",
                parallelism=1,
                datagen=datagen,
                slow=True,
                autoscaler={"min_parallelism": 1, "max_parallelism": 2, "target_utilization": 0.4},
            )
        )

        async def scaled() -> Any:
            details = await jm.get_job_details(job_id)
            assert details.status != JobStatus.FAILED, details.message
            assert details.autoscaler is not None
            return details if details.config.parallelism == 2 and details.autoscaler.rescales else None

        details = await wait_until(scaled, what="the autoscaler to scale up", within=40)
        assert details.autoscaler is not None
        up = [d for d in details.autoscaler.history if d.action == "scale_up"]
        assert up and up[0].applied and up[0].current_parallelism == 1 and up[0].parallelism == 2, up
        assert up[0].utilization is not None and up[0].utilization > 0.6, up[0]
        assert up[0].limited_by == "max_parallelism", up[0]  # required ceil(1 * ~1 / 0.4) = 3
        assert up[0].inputs["split_count"] == 4 and up[0].inputs["parallelism"] == 1
        assert details.restarts == 1
        savepoints = await jm.list_savepoints(job_id)
        assert [s.description for s in savepoints] == ["autoscaler: parallelism 1 -> 2"]
        exposition = (await render_manager(jm)).decode()
        assert f'heliosdb_job_autoscaler_rescales_total{{job_id="{job_id}",job_name="saturated"}} 1.0' in (
            exposition
        )
        assert f'heliosdb_job_autoscaler_parallelism{{job_id="{job_id}",job_name="saturated"}} 2.0' in (
            exposition
        )
        log = [e.message for e in await jm.get_job_logs(job_id, LogOptions(limit=1000))]
        assert any("Autoscaler rescaling scale up 1 -> 2" in m and "utilization" in m for m in log), log

        await wait_until(lambda: finished(jm, job_id), what="the rescaled job to finish", within=40)
        assert (await jm.get_job_details(job_id)).config.parallelism == 2
        assert await events_after_rescale(jm, job_id, worker=1) > 0  # worker 1 exists only at P=2
        want = await reference(jm, tmp_path / "reference.db", datagen)
    got = rows(tmp_path / "scaled.db")
    assert len(want) > 100 and sum(r[3] for r in want) == 60000
    assert got == want  # nothing lost, nothing twice across the savepoint and the rescale


async def test_an_idle_job_scales_down_and_recommend_only_records(tmp_path: Path) -> None:
    datagen = {"partitions": 2, "count": 500, "rate_per_sec": 50}
    async with JobManager(4, home=tmp_path / "home") as jm:
        applied = await jm.submit_job(
            job(
                "idle",
                tmp_path / "scaled.db",
                parallelism=2,
                datagen=datagen,
                autoscaler={"min_parallelism": 1},
            )
        )
        recommended = await jm.submit_job(
            job(
                "idle-recommend",
                tmp_path / "recommend.db",
                parallelism=2,
                datagen={"partitions": 2, "rate_per_sec": 20},
                autoscaler={"mode": "recommend"},
            )
        )

        async def scaled_down() -> Any:
            details = await jm.get_job_details(applied)
            assert details.status != JobStatus.FAILED, details.message
            return details if details.config.parallelism == 1 else None

        details = await wait_until(scaled_down, what="the autoscaler to scale down", within=40)
        assert details.autoscaler is not None
        down = [d for d in details.autoscaler.history if d.action == "scale_down"]
        assert down and down[0].applied and down[0].parallelism == 1, details.autoscaler.history
        assert down[0].utilization is not None and down[0].utilization < 0.3, down[0]

        async def recommended_down() -> Any:
            d = await jm.get_job_details(recommended)
            last = d.autoscaler.last_decision if d.autoscaler else None
            return d if last is not None and last.action == "scale_down" else None

        rec = await wait_until(recommended_down, what="a recommendation to scale down", within=30)
        assert rec.autoscaler is not None and rec.autoscaler.mode == "recommend"
        assert rec.config.parallelism == 2 and rec.restarts == 0 and rec.autoscaler.rescales == 0
        assert rec.status == JobStatus.RUNNING
        assert [d.applied for d in rec.autoscaler.history if d.action == "scale_down"] == [False]
        assert await jm.list_savepoints(recommended) == []
        log = [e.message for e in await jm.get_job_logs(recommended, LogOptions(limit=1000))]
        assert any("Autoscaler recommends scale down 2 -> 1" in m for m in log), log
        await jm.cancel_job(recommended)

        await wait_until(lambda: finished(jm, applied), what="the rescaled job to finish", within=40)
        assert await events_after_rescale(jm, applied, worker=0) > 0  # at P=2 it was stopped, not finished
        want = await reference(jm, tmp_path / "reference.db", datagen)
    got = rows(tmp_path / "scaled.db")
    assert sum(r[3] for r in want) == 500
    assert got == want
