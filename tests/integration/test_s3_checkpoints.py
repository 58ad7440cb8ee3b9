"""Checkpoints and savepoints on S3 (a real S3-protocol server, moto, in its own process): a job with
RocksDB state checkpoints to s3://, survives kill -9 of a worker by restoring from S3, and its
savepoints live and die on S3."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest
from test_savepoints import (
    expected_windows,
    table_rows,
    wait_for_checkpoint,
    wait_for_progress,
    wait_for_status,
    window_job,
)

from heliosdb_streaming.job import JobManager, JobStatus
from heliosdb_streaming.runtime.checkpoint.storage import storage_from_uri

pytestmark = pytest.mark.timeout(180)


async def test_rocksdb_job_checkpoints_and_recovers_on_s3(
    tmp_path: Path, s3_options: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # workers inherit the environment: this is how credentials reach them without being in the job
    monkeypatch.setenv("HELIOS_S3_ENDPOINT", s3_options["endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_options["access_key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_options["secret_key"])
    monkeypatch.setenv("AWS_REGION", s3_options["region"])
    uri = f"s3://helios-checkpoints/{uuid.uuid4().hex[:8]}"
    db = tmp_path / "out.db"
    body = window_job(db, parallelism=2, rate=6000, backend="rocksdb", checkpoint_storage=uri)
    async with JobManager(4, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(body)
        await wait_for_status(jm, job_id, {JobStatus.RUNNING})
        await wait_for_checkpoint(jm, job_id)
        savepoint_id = await jm.create_savepoint(job_id, "on s3")
        [info] = await jm.list_savepoints(job_id)
        assert info.location == f"{uri}/{job_id}/savepoints/{savepoint_id}"
        storage = storage_from_uri(uri)
        saved = await storage.list(f"{job_id}/savepoints/{savepoint_id}")
        assert f"{job_id}/savepoints/{savepoint_id}/_manifest.json" in saved
        assert any(p.endswith(".sst") for p in saved)  # rocksdb files went to S3 too

        # records processed after the savepoint: the kill loses work the restore from S3 must replay
        await wait_for_progress(jm, job_id, "records processed after the savepoint")
        os.kill(jm.control_plane.get(job_id).record.worker_pids[0], signal.SIGKILL)
        assert await wait_for_status(jm, job_id, {JobStatus.FINISHED, JobStatus.FAILED}) == JobStatus.FINISHED
        assert (await jm.get_job_details(job_id)).restarts == 1
        assert table_rows(db) == await expected_windows()
        logs = [e.message for e in await jm.get_job_logs(job_id)]
        assert any("restored from checkpoint" in m for m in logs)

        await jm.delete_savepoint(job_id, savepoint_id)
        assert await storage.list(f"{job_id}/savepoints/{savepoint_id}") == []
        retained = {p.split("/")[1] for p in await storage.list(job_id) if "/chk-" in p}
        assert 1 <= len(retained) <= 3  # checkpoints_retained defaults to 3; older ones are deleted
