from __future__ import annotations

from pathlib import Path

from heliosdb_streaming.embedded.logs import JobLog, mask_secrets, read_logs
from heliosdb_streaming.model.types import LogLevel, LogOptions


def test_levels_limit_tail(tmp_path: Path) -> None:
    log = JobLog(tmp_path / "job.log")
    for i in range(10):
        log.write(
            "warn" if i % 3 == 0 else "info", f"m{i}", task_id="task-1" if i % 2 else None, ts=1000.0 + i
        )
    log.close()
    path = tmp_path / "job.log"
    assert [e.message for e in read_logs(path, LogOptions(level=LogLevel.WARN))] == ["m0", "m3", "m6", "m9"]
    assert [e.message for e in read_logs(path, LogOptions(limit=3))] == ["m0", "m1", "m2"]
    assert [e.message for e in read_logs(path, LogOptions(limit=3, tail=True))] == ["m7", "m8", "m9"]
    entries = read_logs(path, LogOptions(limit=2))
    assert entries[1].task_id == "task-1" and entries[0].task_id is None


def test_rotation_caps_size_and_keeps_order(tmp_path: Path) -> None:
    log = JobLog(tmp_path / "job.log", max_bytes=2000, backups=3)
    for i in range(200):
        log.write("info", f"line {i:04d}", ts=1000.0 + i)
    log.close()
    files = sorted(tmp_path.iterdir())
    assert len(files) == 4
    assert all(f.stat().st_size <= 2000 for f in files)
    messages = [e.message for e in read_logs(tmp_path / "job.log", LogOptions(limit=1000))]
    assert messages == sorted(messages)
    assert messages[-1] == "line 0199"


def test_secrets_are_masked(tmp_path: Path) -> None:
    assert mask_secrets("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_secrets("password=hunter2 host=x") == "password=*** host=x"
    log = JobLog(tmp_path / "job.log")
    log.write("error", "cannot connect to postgresql://bob:s3cret@db/x")
    log.close()
    assert "s3cret" not in (tmp_path / "job.log").read_text()


def test_lines_workers_shipped_carry_their_index_and_can_be_left_out(tmp_path: Path) -> None:
    """On Kubernetes the pod logs hold the workers' lines: the control plane's own are read alone."""
    log = JobLog(tmp_path / "job.log")
    log.write("info", "Job 'x' submitted", ts=1000.0)
    log.write("info", "worker 0 started", ts=1001.0, worker=0)
    log.write("warn", "late record", task_id="task-1", ts=1002.0, worker=1)
    log.write("warn", "Checkpoint 1 failed: timeout", ts=1003.0)
    path = tmp_path / "job.log"
    every = read_logs(path, LogOptions())
    assert [e.message for e in every] == [
        "Job 'x' submitted",
        "worker 0 started",
        "late record",
        "Checkpoint 1 failed: timeout",
    ]
    own = read_logs(path, LogOptions(), workers=False)
    assert [e.message for e in own] == ["Job 'x' submitted", "Checkpoint 1 failed: timeout"]
    assert [
        e.message for e in read_logs(path, LogOptions(limit=1, tail=True, level=LogLevel.INFO), workers=False)
    ] == ["Checkpoint 1 failed: timeout"]
    assert '"worker":1' in path.read_text().splitlines()[2]
