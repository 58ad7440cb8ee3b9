"""Worker log lines on stderr (the pod log) parse back into the job-log fields."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import orjson

from heliosdb_streaming.runtime.logformat import JsonLineFormatter


def test_a_record_becomes_one_json_line_with_the_job_log_fields() -> None:
    record = logging.LogRecord("heliosdb_streaming.x", logging.WARNING, __file__, 1, "lag %d ms", (12,), None)
    record.created = 1_767_225_600.25
    record.task_id = "task-2"
    line = JsonLineFormatter(worker_index=3).format(record)
    assert "\n" not in line
    assert orjson.loads(line) == {
        "timestamp": "2026-01-01T00:00:00.250000Z",
        "level": "warn",
        "message": "lag 12 ms",
        "task_id": "task-2",
        "worker": 3,
    }


def test_an_exception_stays_on_one_line() -> None:
    try:
        raise ValueError("bad record")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    parsed = orjson.loads(JsonLineFormatter(0).format(record))
    assert parsed["level"] == "error"
    assert parsed["message"].startswith("failed\nTraceback") and "ValueError: bad record" in parsed["message"]


def test_a_worker_in_a_pod_logs_json_lines_to_stderr() -> None:
    """With HELIOS_LOG_FORMAT=json (set in worker pods) the worker's logging writes JSON lines."""
    script = (
        "import logging\n"
        "from heliosdb_streaming.runtime.worker import configure_logging\n"
        "configure_logging(1)\n"
        "logging.getLogger('heliosdb_streaming.test').info('hello from a pod')\n"
    )
    env = {**os.environ, "HELIOS_LOG_FORMAT": "json"}
    command = [sys.executable, "-c", script]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    lines = [orjson.loads(x) for x in result.stderr.splitlines()]
    assert [(x["level"], x["message"], x["worker"]) for x in lines] == [("info", "hello from a pod", 1)]
