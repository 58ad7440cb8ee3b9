"""The files of a Savepoint whose job is gone: deleted by the operator only when the manifest at the
status's location is of that very savepoint (real files, the file:// checkpoint storage)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from heliosdb_streaming.kubernetes.operator.jobmanagers import delete_orphan_savepoint_files
from heliosdb_streaming.runtime.checkpoint.tasks import MANIFEST, snapshot_directory


def written_savepoint(root: Path, job_id: str, savepoint_id: str) -> Path:
    directory = root / snapshot_directory(job_id, 7, savepoint_id)
    (directory / "task-0").mkdir(parents=True)
    (directory / "task-0" / "state.sst").write_bytes(b"state")
    manifest = {"job_id": job_id, "checkpoint_id": 7, "savepoint_id": savepoint_id}
    (directory / MANIFEST).write_bytes(orjson.dumps(manifest))
    return directory


def status_of(directory: Path, job_id: str, savepoint_id: str) -> dict[str, str]:
    return {"location": f"file://{directory}", "jobId": job_id, "savepointId": savepoint_id}


async def test_the_files_of_that_savepoint_are_deleted(tmp_path: Path) -> None:
    directory = written_savepoint(tmp_path, "job-a", "savepoint-1")
    other = written_savepoint(tmp_path, "job-a", "savepoint-2")
    await delete_orphan_savepoint_files("ns/sp", status_of(directory, "job-a", "savepoint-1"))
    assert not directory.exists() and (other / MANIFEST).is_file()


@pytest.mark.parametrize(("job_id", "savepoint_id"), [("job-b", "savepoint-1"), ("job-a", "savepoint-9")])
async def test_a_status_naming_another_snapshot_deletes_nothing(
    tmp_path: Path, job_id: str, savepoint_id: str
) -> None:
    directory = written_savepoint(tmp_path, "job-a", "savepoint-1")
    await delete_orphan_savepoint_files("ns/sp", status_of(directory, job_id, savepoint_id))
    assert (directory / "task-0" / "state.sst").read_bytes() == b"state"


async def test_no_files_or_no_completed_status_is_nothing_to_do(tmp_path: Path) -> None:
    await delete_orphan_savepoint_files("ns/sp", status_of(tmp_path / "gone", "job-a", "savepoint-1"))
    await delete_orphan_savepoint_files("ns/sp", {"state": "failed"})
    assert list(tmp_path.iterdir()) == []
