from __future__ import annotations

from pathlib import Path

from heliosdb_streaming.job.types import LogLevel, LogOptions
from heliosdb_streaming.local.logs import JobLog, mask_secrets, read_logs


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
