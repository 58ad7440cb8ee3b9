"""Worker log lines on stderr (the pod log) parse back into the job-log fields."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from heliosdb_streaming.runtime import logformat
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


@pytest.mark.parametrize("log_format", ["json", "plain"])
def test_an_uncaught_exception_reaches_stderr_masked(tmp_path: Path, log_format: str) -> None:
    """Python's default hooks print a traceback raw: a driver's error quoting its connection string
    would be in the worker's stderr file (or the pod log) in clear, in the main thread or another."""
    stderr_file = tmp_path / "worker-0.stderr"
    script = (
        "import threading\n"
        "from heliosdb_streaming.runtime.worker import bound_output, configure_logging\n"
        f"bound_output(None, {str(stderr_file)!r}, 1 << 20, 2)\n"
        "configure_logging(0)\n"
        "def fail():\n"
        "    raise ConnectionError('cannot reach postgresql://bob:pa/ss%40w0rd@db/x')\n"
        "t = threading.Thread(target=fail, name='sink-flush')\n"
        "t.start(); t.join()\n"
        "fail()\n"
    )
    env = {**os.environ, "HELIOS_LOG_FORMAT": log_format}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 1
    written = stderr_file.read_text()
    assert "pa/ss" not in written and "w0rd" not in written, written
    assert written.count("postgresql://bob:***@db/x") == 2, written
    assert "sink-flush" in written and "ConnectionError" in written


class Collected(logging.Handler):
    """Formats as kopf's K8sPoster does (the handler's default formatter): message and traceback."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))


def test_the_masking_filter_masks_a_record_before_any_handler_formats_it() -> None:
    """On ``kopf.objects`` (the operator adds it): kopf posts these records as Kubernetes Events."""
    logger = logging.getLogger("heliosdb_streaming.test.kopf_objects")
    collected = Collected()
    logger.addHandler(collected)
    logger.addFilter(logformat.MASKING_FILTER)
    logger.addFilter(logformat.MASKING_FILTER)  # the operator may start twice in one process
    logger.propagate = False
    try:
        try:
            raise ConnectionError("cannot reach postgresql://bob:pa/ss@db/x")
        except ConnectionError:
            logger.exception("Handler 'create' failed: %s", "dsn host=db password=s3cr/et")
    finally:
        logger.removeHandler(collected)
    [text] = collected.texts
    assert "pa/ss" not in text and "s3cr/et" not in text, text
    assert "postgresql://bob:***@db/x" in text and "password=***" in text and "Traceback" in text
    assert logger.filters == [logformat.MASKING_FILTER]


def test_the_servers_own_log_lines_are_masked(capsys: pytest.CaptureFixture[str]) -> None:
    handler = logformat.masked_stderr_handler("%(levelname)s %(message)s")
    record = logging.LogRecord(
        "x", logging.ERROR, __file__, 1, "sink of %s failed", ("postgresql://u:p/w@h/db",), None
    )
    handler.emit(record)
    assert capsys.readouterr().err == "ERROR sink of postgresql://u:***@h/db failed\n"
