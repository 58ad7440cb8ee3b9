"""Pod logs as a job log: JSON lines parsed, pods merged by time, level/limit/tail as ``read_logs``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson

from heliosdb_streaming.embedded.logs import JobLog, read_logs
from heliosdb_streaming.kubernetes.restapi.podlogs import job_log, parse_pod_log
from heliosdb_streaming.model.types import LogEntry, LogLevel, LogOptions


def line(second: float, level: str, message: str, task_id: str | None = None, worker: int = 0) -> str:
    when = datetime.fromtimestamp(1_767_225_600 + second, UTC).isoformat().replace("+00:00", "Z")
    record = {"timestamp": when, "level": level, "message": message, "task_id": task_id, "worker": worker}
    return orjson.dumps(record).decode()


def test_parse_keeps_fields_and_maps_other_lines_to_info() -> None:
    text = "\n".join(
        [
            "starting up",  # before any JSON line: dated at the pod's start
            line(1.25, "info", "worker 0 started", worker=0),
            line(2, "warn", "backpressure", task_id="task-2"),
            "Traceback (most recent call last):",
            '  File "x.py", line 1',
            line(3, "verbose", "odd level"),
            "",
            '{"not": "a log record"}',
        ]
    )
    started = datetime(2026, 1, 1, tzinfo=UTC)
    entries = parse_pod_log(text, started)
    assert [(e.level.value, e.message, e.task_id) for e in entries] == [
        ("info", "starting up", None),
        ("info", "worker 0 started", None),
        ("warn", "backpressure", "task-2"),
        ("info", "Traceback (most recent call last):", None),
        ("info", '  File "x.py", line 1', None),
        ("info", "odd level", None),
        ("info", '{"not": "a log record"}', None),
    ]
    assert entries[0].timestamp == started
    assert entries[1].timestamp == datetime(2026, 1, 1, 0, 0, 1, 250000, tzinfo=UTC)
    assert entries[3].timestamp == entries[4].timestamp == entries[2].timestamp  # next to their context


def test_merge_filter_limit_tail_like_read_logs(tmp_path: Path) -> None:
    """The same records through the embedded job log and through pod logs give the same answers."""
    records = [
        (0, 0.5, "info", "w0 a"),
        (1, 0.7, "info", "w1 a"),
        (0, 1.1, "warn", "w0 b"),
        (1, 1.3, "error", "w1 b"),
        (0, 2.0, "debug", "w0 c"),
        (1, 2.2, "info", "w1 c"),
    ]
    pods = [
        parse_pod_log("\n".join(line(s, lvl, m, worker=w) for w, s, lvl, m in records if w == i))
        for i in (0, 1)
    ]
    log = JobLog(tmp_path / "job.log")
    for _, second, level, message in records:
        log.write(level, message, None, 1_767_225_600 + second)
    for options in (
        LogOptions(),
        LogOptions(limit=2),
        LogOptions(limit=2, tail=True),
        LogOptions(level=LogLevel.WARN),
        LogOptions(level=LogLevel.INFO, limit=3, tail=True),
    ):
        merged = job_log(pods, options)
        expected = read_logs(log.path, options)
        assert [(e.message, e.level) for e in merged] == [(e.message, e.level) for e in expected], options
    assert [e.message for e in job_log(pods, LogOptions())] == [m for _, _, _, m in records]


def test_ties_keep_each_pods_order() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    first = [LogEntry(timestamp=when, level=LogLevel.INFO, message=f"a{i}") for i in range(3)]
    second = [LogEntry(timestamp=when, level=LogLevel.INFO, message="b0")]
    assert [e.message for e in job_log([first, second], LogOptions())] == ["a0", "a1", "a2", "b0"]


def test_control_plane_lines_and_pod_lines_give_the_embedded_job_log(tmp_path: Path) -> None:
    """The embedded job log holds the control plane's lines and the ones its workers shipped; on
    Kubernetes the operator serves its own lines (already cut by the options) and the pods the rest:
    merged, every level/limit/tail answer is the embedded one."""
    control = [(0.1, "info", "Job 'x' submitted"), (0.6, "info", "Run 1: started 2 worker(s)")]
    control += [(1.2, "warn", "Checkpoint 1 failed: timeout"), (2.5, "info", "Job cancelled")]
    workers = [
        (0, 0.5, "info", "w0 a"),
        (1, 0.7, "info", "w1 a"),
        (0, 1.1, "warn", "w0 b"),
        (1, 1.3, "error", "w1 b"),
        (1, 2.2, "info", "w1 c"),
    ]
    log = JobLog(tmp_path / "job.log")
    for second, level, message in control:
        log.write(level, message, None, 1_767_225_600 + second)
    for worker, second, level, message in workers:
        log.write(level, message, None, 1_767_225_600 + second, worker=worker)
    pods = [
        parse_pod_log("\n".join(line(s, lvl, m, worker=w) for w, s, lvl, m in workers if w == i))
        for i in (0, 1)
    ]
    for options in (
        LogOptions(),
        LogOptions(limit=3),
        LogOptions(limit=3, tail=True),
        LogOptions(level=LogLevel.WARN),
        LogOptions(level=LogLevel.WARN, limit=2, tail=True),
    ):
        own = read_logs(log.path, options, workers=False)  # what the operator's read API answers
        merged = job_log([own, *pods], options)
        expected = read_logs(log.path, options)
        assert [(e.message, e.level) for e in merged] == [(e.message, e.level) for e in expected], options
