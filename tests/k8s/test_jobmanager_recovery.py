"""A new job manager's store, rebuilt from the checkpoint storage and the status; the merged exposition."""

from __future__ import annotations

from pathlib import Path

import orjson
from k8s_helpers import window_spec

from heliosdb_streaming.embedded.sqlite_store import SqliteJobStore
from heliosdb_streaming.kubernetes.jobmanager import recovery
from heliosdb_streaming.kubernetes.operator import mapping
from heliosdb_streaming.kubernetes.operator.bindings import Bindings
from heliosdb_streaming.kubernetes.operator.readproxy import merge_expositions
from heliosdb_streaming.model.types import JobStatus
from heliosdb_streaming.runtime.checkpoint.storage import storage_from_uri
from heliosdb_streaming.runtime.checkpoint.tasks import MANIFEST

JOB = "job-uid-1"


def body(phase: str | None) -> dict[str, object]:
    status = {"phase": phase, "jobId": JOB, "restarts": 2, "observedRestartNonce": 3} if phase else {}
    return {
        "metadata": {"namespace": "ns", "name": "spend", "uid": "uid-1"},
        "spec": {"restartNonce": 3},
        "status": status,
    }


async def write_snapshots(root: Path) -> None:
    storage = storage_from_uri(f"file://{root}")
    for directory, checkpoint_id, savepoint_id, parallelism in (
        (f"{JOB}/chk-4", 4, None, 2),
        (f"{JOB}/savepoints/sp-1", 5, "sp-1", 2),
        (f"{JOB}/chk-6", 6, None, 3),
    ):
        manifest = {
            "checkpoint_id": checkpoint_id,
            "job_id": JOB,
            "kind": "savepoint" if savepoint_id else "checkpoint",
            "savepoint_id": savepoint_id,
            "timestamp": "2026-01-01T00:00:00+00:00",
            "parallelism": parallelism,
            "tasks": {},
            "shared_files": ["shared/a.sst"] if checkpoint_id == 6 else [],
        }
        await storage.write(f"{directory}/{MANIFEST}", orjson.dumps(manifest))
    await storage.write(f"{JOB}/chk-7/s0-p0.snap", b"cut short: no manifest")
    await storage.write(f"job-other/chk-9/{MANIFEST}", b"{}")


async def test_an_active_job_is_rebuilt_from_its_snapshots(tmp_path: Path) -> None:
    await write_snapshots(tmp_path / "ckpt")
    storage = storage_from_uri(f"file://{tmp_path / 'ckpt'}")
    store, bindings = SqliteJobStore(tmp_path / "jobs.db"), Bindings(tmp_path)
    config = mapping.job_config("spend", window_spec(tmp_path / "out.db", parallelism=1, rate=0))
    assert await recovery.rebuild(store, bindings, body("running"), JOB, config, storage)
    (record,) = store.load_all()
    assert (record.job_id, record.status, record.last_checkpoint_id, record.restarts) == (
        JOB,
        JobStatus.RUNNING,
        6,
        2,
    )
    assert record.config["config"]["parallelism"] == 3  # what its newest snapshot ran with
    snapshots = sorted(store.load_snapshots(), key=lambda s: s.checkpoint_id)
    assert [(s.checkpoint_id, s.kind, s.savepoint_id) for s in snapshots] == [
        (4, "checkpoint", None),
        (5, "savepoint", "sp-1"),
        (6, "checkpoint", None),
    ]
    assert snapshots[-1].shared_files == ["shared/a.sst"]
    assert snapshots[-1].location == storage.uri(f"{JOB}/chk-6")
    binding = bindings.get(JOB)
    assert binding is not None and binding.applied_nonce == 3 and binding.name == "spend"
    # a second start over the same store (a container restart in place) changes nothing
    assert not await recovery.rebuild(store, bindings, body("running"), JOB, config, storage)


async def test_a_new_or_stopped_job_is_left_to_the_reconciler(tmp_path: Path) -> None:
    await write_snapshots(tmp_path / "ckpt")
    storage = storage_from_uri(f"file://{tmp_path / 'ckpt'}")
    config = mapping.job_config("spend", window_spec(tmp_path / "out.db", parallelism=1, rate=0))
    for phase in (None, "cancelled", "finished", "failed"):
        store = SqliteJobStore(tmp_path / f"{phase}.db")
        assert not await recovery.rebuild(
            store, Bindings(tmp_path / str(phase)), body(phase), JOB, config, storage
        )
        assert store.load_all() == []


def test_merged_expositions_keep_one_family_header_and_sum_shared_series() -> None:
    one = "# HELP heliosdb_job_count Jobs\n# TYPE heliosdb_job_count gauge\n"
    one += 'heliosdb_job_count{status="running"} 1\n'
    one += '# HELP heliosdb_rate Rate\n# TYPE heliosdb_rate gauge\nheliosdb_rate{job_id="a"} 2.5\n'
    two = one.replace('job_id="a"', 'job_id="b"').replace("2.5", "4")
    merged = merge_expositions([one, two]).splitlines()
    assert merged.count("# TYPE heliosdb_job_count gauge") == 1
    assert 'heliosdb_job_count{status="running"} 2' in merged
    assert 'heliosdb_rate{job_id="a"} 2.5' in merged and 'heliosdb_rate{job_id="b"} 4' in merged
    assert merged.index("# TYPE heliosdb_rate gauge") < merged.index('heliosdb_rate{job_id="a"} 2.5')
