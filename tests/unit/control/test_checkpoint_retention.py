"""Checkpoint retention on real file storage: what a run leaves behind is cleaned, kept ones stay."""

from datetime import UTC, datetime
from pathlib import Path

from heliosdb_streaming.control.checkpoint_coordinator import CheckpointCoordinator
from heliosdb_streaming.control.store import SnapshotRecord
from heliosdb_streaming.runtime.checkpoint.storage import FileCheckpointStorage


def _record(checkpoint_id: int, status: str = "completed", kind: str = "checkpoint") -> SnapshotRecord:
    return SnapshotRecord(
        job_id="job-1",
        checkpoint_id=checkpoint_id,
        kind=kind,
        status=status,
        timestamp=datetime.now(UTC),
        directory=f"job-1/chk-{checkpoint_id}",
    )


async def test_failed_checkpoints_between_kept_ones_are_deleted(tmp_path: Path) -> None:
    storage = FileCheckpointStorage(tmp_path)
    for checkpoint_id in range(1, 9):
        await storage.write(f"job-1/chk-{checkpoint_id}/part", b"x")
    # 3 and 5 failed (a worker killed mid-checkpoint), 7 a savepoint's id, 8 in flight
    records = [_record(i) for i in (1, 2, 4, 6)] + [_record(7, kind="savepoint")]
    forgotten: list[int] = []

    def forget(record: SnapshotRecord) -> None:
        forgotten.append(record.checkpoint_id)
        records.remove(record)

    coordinator = CheckpointCoordinator(
        job_id="job-1",
        parallelism=1,
        storage=storage,
        next_id=lambda: 9,
        send=lambda message: None,
        on_complete=lambda record: None,
        on_failed=lambda record, reason: None,
        retained=2,
        retained_snapshots=lambda: list(records),
        forget=forget,
    )
    await coordinator._retain()
    left = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "job-1").glob("chk-*"))
    assert left == [4, 6, 7, 8]
    assert forgotten == [1, 2]
