"""``helios server`` as a real subprocess, driven by ``helios jobs ...`` subprocesses over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from heliosdb_streaming.testing.server import HELIOS, HeliosServerProcess
from heliosdb_streaming.testing.tansu import free_port

pytestmark = pytest.mark.timeout(240)

JOB_ID = re.compile(r"job-[0-9a-f-]{36}")


def job_body(name: str, *, count: int | None, rate: float = 0) -> dict[str, Any]:
    source: dict[str, Any] = {"partitions": 2, "seed": 5, "keys": 50, "rate_per_sec": rate}
    if count is not None:
        source["count"] = count
    return {
        "name": name,
        "config": {"parallelism": 1, "restart_strategy": "none"},
        "sources": [{"type": "datagen", "config": source}],
        "transformations": [{"type": "filter", "config": {"condition": "amount > 100"}}],
        "sinks": [{"type": "discard", "config": {}}],
    }


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeliosServerProcess]:
    process = HeliosServerProcess(tmp_path_factory.mktemp("cli") / "home")
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log_tail()


def helios(
    *args: str, url: str, token: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HELIOS_API_TOKEN", "HELIOS_URL")}
    env["HELIOS_URL"] = url
    if token:
        env["HELIOS_API_TOKEN"] = token
    return subprocess.run([str(HELIOS), *args], env=env, capture_output=True, text=True, timeout=timeout)


def ok(*args: str, url: str, token: str | None = None) -> str:
    result = helios(*args, url=url, token=token)
    assert result.returncode == 0, (
        f"helios {' '.join(args)}: rc {result.returncode}\n{result.stdout}{result.stderr}"
    )
    return result.stdout


def as_json(*args: str, url: str, token: str | None = None) -> Any:
    return json.loads(ok(*args, "-o", "json", url=url, token=token))


def wait_status(
    url: str, job_id: str, wanted: set[str], token: str | None = None, timeout: float = 60
) -> None:
    def reached() -> bool:
        return as_json("jobs", "get", job_id, url=url, token=token)["status"] in wanted

    wait_for(reached, f"{job_id} to be {wanted}", timeout)


def test_jobs_commands(server: HeliosServerProcess, tmp_path: Path) -> None:
    url = server.url
    endless = tmp_path / "endless.json"
    endless.write_text(json.dumps(job_body("cli-endless", count=None, rate=1000)))
    bounded = tmp_path / "bounded.json"
    bounded.write_text(json.dumps(job_body("cli-bounded", count=1000)))

    out = ok("jobs", "submit", str(endless), url=url)
    m = JOB_ID.search(out)
    assert m and "submitted" in out, out
    job_id = m.group(0)
    submitted = as_json("jobs", "submit", str(bounded), url=url)
    assert (
        set(submitted) == {"job_id", "status", "submitted_at", "message"}
        and submitted["status"] == "submitted"
    )
    wait_status(url, job_id, {"running"})
    wait_status(url, submitted["job_id"], {"finished"})

    table = ok("jobs", "list", url=url)
    assert table.splitlines()[0].split() == [
        "JOB",
        "ID",
        "NAME",
        "STATUS",
        "SUBMITTED",
        "UPTIME",
        "PARALLELISM",
    ]
    assert job_id in table and "cli-endless" in table and "running" in table
    listing = as_json("jobs", "list", "--status", "running", url=url)
    assert [j["job_id"] for j in listing["jobs"]] == [job_id] and listing["total"] == 1
    assert as_json("jobs", "list", "--limit", "1", url=url)["limit"] == 1

    details = ok("jobs", "get", job_id, url=url)
    assert "TASK ID" in details and "datagen-source" in details and "discard-sink" in details
    assert re.search(r"^status\s+running$", details, re.M), details
    assert as_json("jobs", "get", job_id, url=url)["config"]["parallelism"] == 1

    def counted() -> bool:
        events: int = as_json("jobs", "metrics", job_id, url=url)["metrics"]["events_processed_total"]
        return events > 0

    wait_for(counted, "events")
    text = ok("jobs", "metrics", job_id, "--window", "1m", url=url)
    assert re.search(r"^window\s+1m$", text, re.M) and "events processed" in text
    assert as_json("jobs", "metrics", job_id, "--window", "1h", url=url)["window"] == "1h"

    logs = ok("jobs", "logs", job_id, url=url)
    assert "Job started successfully" in logs and "INFO" in logs
    assert as_json("jobs", "logs", job_id, "--level", "warn", url=url)["logs"] == []
    last = as_json("jobs", "logs", job_id, "--tail", "1", url=url)
    assert len(last["logs"]) == 1 and last["limit"] == 1

    assert ok("jobs", "pause", job_id, url=url).split() == [job_id, "paused"]
    assert as_json("jobs", "resume", job_id, url=url) == {"job_id": job_id, "status": "running"}
    cancelled = ok("jobs", "cancel", job_id, url=url)
    assert cancelled.split()[:2] == [job_id, "cancelled"]
    again = helios("jobs", "cancel", job_id, url=url)
    assert again.returncode == 1
    assert "illegal_state_transition" in again.stderr and "status: cancelled" in again.stderr
    error = helios("jobs", "resume", job_id, "-o", "json", url=url)
    assert error.returncode == 1 and json.loads(error.stdout)["error"]["code"] == "illegal_state_transition"
    final = as_json("jobs", "get", job_id, url=url)
    assert final["status"] == "cancelled"


def test_savepoint_checkpoint_and_restart_commands(server: HeliosServerProcess, tmp_path: Path) -> None:
    url = server.url
    body = job_body("cli-savepoints", count=None, rate=1000)
    body["config"]["checkpoint_interval_ms"] = 200
    job_file = tmp_path / "savepoints.json"
    job_file.write_text(json.dumps(body))
    job_id = as_json("jobs", "submit", str(job_file), url=url)["job_id"]
    wait_status(url, job_id, {"running"})

    text = ok("jobs", "savepoint", job_id, "-d", "before the upgrade", url=url)
    m = re.search(r"^savepoint_id\s+(savepoint-[0-9a-f-]{36})$", text, re.M)
    assert m, text
    first = m.group(1)
    assert re.search(r"^description\s+before the upgrade$", text, re.M) and "file:///" in text
    second = as_json("jobs", "savepoint", job_id, url=url)
    assert set(second) == {"savepoint_id", "job_id", "created_at", "size_bytes", "location", "description"}
    assert second["description"] is None

    table = ok("jobs", "savepoints", job_id, url=url)
    assert table.splitlines()[0].split() == [
        "SAVEPOINT",
        "ID",
        "CREATED",
        "SIZE",
        "BYTES",
        "LOCATION",
        "DESCRIPTION",
    ]
    assert first in table and second["savepoint_id"] in table and "before the upgrade" in table
    listing = as_json("jobs", "savepoints", job_id, url=url)
    assert [s["savepoint_id"] for s in listing["savepoints"]] == [first, second["savepoint_id"]]

    assert ok("jobs", "delete-savepoint", job_id, first, url=url).split() == [first, "deleted"]
    gone = helios("jobs", "delete-savepoint", job_id, first, url=url)
    assert gone.returncode == 1 and "savepoint_not_found" in gone.stderr

    def checkpointed() -> bool:
        checkpoints = as_json("jobs", "checkpoints", job_id, url=url)["checkpoints"]
        return any(c["status"] == "completed" for c in checkpoints)

    wait_for(checkpointed, "a completed checkpoint")
    table = ok("jobs", "checkpoints", job_id, url=url)
    assert table.splitlines()[0].split()[:2] == ["CHECKPOINT", "TIMESTAMP"] and "completed" in table

    cancelled = ok("jobs", "cancel", job_id, "--savepoint", url=url)
    m = re.search(r"savepoint (savepoint-[0-9a-f-]{36})", cancelled)
    assert m and cancelled.split()[:2] == [job_id, "cancelled"], cancelled
    final = m.group(1)

    bad = helios("jobs", "restart", job_id, "--parallelism", "0", url=url)
    assert bad.returncode == 2 and "--parallelism" in bad.stderr
    missing = helios("jobs", "restart", job_id, "--savepoint", "savepoint-nope", url=url)
    assert missing.returncode == 1 and "savepoint_not_found" in missing.stderr
    restarted = ok("jobs", "restart", job_id, "--savepoint", final, "--parallelism", "2", url=url)
    assert restarted.split()[:2] == [job_id, "running"] and f"from {final}" in restarted, restarted
    assert as_json("jobs", "get", job_id, url=url)["config"]["parallelism"] == 2
    ok("jobs", "pause", job_id, url=url)
    conflict = helios("jobs", "restart", job_id, "-o", "json", url=url)
    assert conflict.returncode == 1
    assert json.loads(conflict.stdout)["error"]["details"] == [{"path": "status", "message": "paused"}]
    again = as_json("jobs", "cancel", job_id, url=url)
    assert again["status"] == "cancelled" and "savepoint_id" not in again

    # an upgrade: a new job from that savepoint's location
    location = as_json("jobs", "savepoints", job_id, url=url)["savepoints"][-1]["location"]
    upgraded = as_json("jobs", "submit", str(job_file), "--from-savepoint", location, url=url)
    wait_status(url, upgraded["job_id"], {"running"})
    logs = as_json("jobs", "logs", upgraded["job_id"], url=url)["logs"]
    assert any(f"starting from savepoint {final}" in e["message"] for e in logs), logs
    ok("jobs", "cancel", upgraded["job_id"], url=url)
    nowhere = helios("jobs", "submit", str(job_file), "--from-savepoint", f"{location}-nope", url=url)
    assert nowhere.returncode == 1 and "from_savepoint" in nowhere.stderr, nowhere.stderr


def test_exit_codes(server: HeliosServerProcess, tmp_path: Path) -> None:
    url = server.url
    missing = helios("jobs", "get", "job-00000000-0000-0000-0000-000000000000", url=url)
    assert missing.returncode == 1 and "job_not_found" in missing.stderr

    assert helios("jobs", "submit", str(tmp_path / "nope.json"), url=url).returncode == 2
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    bad = helios("jobs", "submit", str(garbage), url=url)
    assert bad.returncode == 2 and "not valid JSON" in bad.stderr
    invalid = tmp_path / "invalid.json"
    body = job_body("invalid", count=1)
    body["transformations"][0]["config"]["condition"] = "amount >"
    invalid.write_text(json.dumps(body))
    rejected = helios("jobs", "submit", str(invalid), url=url)
    assert rejected.returncode == 1
    assert (
        "invalid_job_config" in rejected.stderr and "transformations[0].config.condition" in rejected.stderr
    )

    assert helios("jobs", "metrics", "job-x", "--window", "7m", url=url).returncode == 2
    assert helios("jobs", url=url).returncode == 2
    assert helios("jobs", "list", "--url", "ftp://example", url=url).returncode == 2

    dead = f"http://127.0.0.1:{free_port()}"
    unreachable = helios("jobs", "list", url=dead)
    assert unreachable.returncode == 3
    assert f"cannot reach the helios server at {dead}" in unreachable.stderr


def test_logs_follow(server: HeliosServerProcess, tmp_path: Path) -> None:
    url = server.url
    job_file = tmp_path / "follow.json"
    job_file.write_text(json.dumps(job_body("cli-follow", count=None, rate=200)))
    job_id = as_json("jobs", "submit", str(job_file), url=url)["job_id"]
    wait_status(url, job_id, {"running"})

    out = tmp_path / "follow.out"
    env = {k: v for k, v in os.environ.items() if k != "HELIOS_API_TOKEN"} | {"HELIOS_URL": url}
    with out.open("w") as sink:
        follower = subprocess.Popen([str(HELIOS), "jobs", "logs", job_id, "--follow"], stdout=sink, env=env)
    try:
        wait_for(lambda: "Job started successfully" in out.read_text(), "the first lines")
        ok("jobs", "pause", job_id, url=url)
        ok("jobs", "resume", job_id, url=url)
        wait_for(lambda: "Job resumed" in out.read_text(), "a new line while following")
        lines = out.read_text().splitlines()
        assert len(lines) == len(set(lines)), "a line was printed twice"
        assert follower.poll() is None
        follower.send_signal(signal.SIGINT)
        assert follower.wait(10) == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
        ok("jobs", "cancel", job_id, url=url)


def test_sigterm_stops_cleanly_and_jobs_resume_on_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    token = "cli-test-token"
    first = HeliosServerProcess(home, "--demo", env={"HELIOS_API_TOKEN": token})
    try:
        first.wait_output("demo job submitted")
        denied = helios("jobs", "list", url=first.url)
        assert denied.returncode == 1 and "unauthorized" in denied.stderr
        listing = as_json("jobs", "list", url=first.url, token=token)
        assert [j["name"] for j in listing["jobs"]] == ["demo_fraud_detection"]
        demo_id = listing["jobs"][0]["job_id"]
        wait_status(first.url, demo_id, {"running"}, token=token)
        workers = psutil.Process(first.process.pid).children(recursive=True)
        assert workers, "the demo job has no worker processes"
        started = time.monotonic()
        assert first.stop(signal.SIGTERM) == 0, first.log_tail()
        assert time.monotonic() - started < 10
        assert "helios server: stopped" in first.output()
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert alive == [], f"workers left running: {alive}"
    finally:
        first.stop(signal.SIGKILL)

    second = HeliosServerProcess(home, "--demo", env={"HELIOS_API_TOKEN": token})
    try:
        second.wait_output("demo job already active")
        wait_status(second.url, demo_id, {"running"}, token=token)
        assert as_json("jobs", "list", url=second.url, token=token)["total"] == 1
    finally:
        assert second.stop(signal.SIGINT) == 0, second.log_tail()


def merchant_body(name: str, *, parallelism: int) -> dict[str, Any]:
    """Counts per merchant over datagen, whose partitions hold whole cards: a repartition by merchant."""
    body = job_body(name, count=500)
    body["config"]["parallelism"] = parallelism
    body["sources"][0]["config"]["partitions"] = 4
    body["transformations"] += [
        {"type": "key_by", "config": {"key": "merchant"}},
        {"type": "window", "config": {"size": "1h", "aggregates": {"n": "count(*)"}}},
    ]
    return body


def test_validate_run_and_get_show_or_refuse_the_plan(server: HeliosServerProcess, tmp_path: Path) -> None:
    url = server.url
    narrow, wide = tmp_path / "narrow.json", tmp_path / "wide.json"
    narrow.write_text(json.dumps(merchant_body("cli-plan", parallelism=1)))
    wide.write_text(json.dumps(merchant_body("cli-plan-wide", parallelism=2)))

    assert ok("validate", str(narrow), url=url).splitlines() == [
        "ok",
        "stage 0: one task per source split: [0] filter",
        "  -> repartition before step [1]: key_by merchant: its input is grouped by card_id, not by merchant",
        "stage 1: key groups by merchant: [1] key_by, [2] window",
    ]
    refused = helios("validate", str(wide), url=url)
    assert refused.returncode == 2, refused.stdout
    assert refused.stdout.startswith("transformations[1]: this key_by step needs its records regrouped")
    assert "config.repartition.bootstrap_servers" in refused.stdout
    # helios run refuses it before it starts anything, from the file or from --parallelism
    run = helios("run", str(wide), "--home", str(tmp_path / "home"), url=url)
    assert run.returncode == 2 and "transformations[1]: this key_by step" in run.stderr, run.stderr
    run = helios("run", str(narrow), "--parallelism", "2", "--home", str(tmp_path / "home"), url=url)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stderr.startswith("--parallelism: transformations[1]: this key_by step needs"), run.stderr
    assert not (tmp_path / "home" / "jobs").exists()

    job_id = as_json("jobs", "submit", str(narrow), url=url)["job_id"]
    wait_status(url, job_id, {"finished"})
    details = ok("jobs", "get", job_id, url=url)
    lines = details.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("STAGE"))
    assert [re.split(r"\s{2,}", line) for line in lines[header : header + 3]] == [
        ["STAGE", "INPUT", "TASKS", "STEPS"],
        ["0", "source splits", "1", "[0] filter"],
        ["1", "key groups by merchant", "1", "[1] key_by, [2] window"],
    ], details
    assert lines[header + 3] == (
        "stage 1 starts at step [1]: key_by merchant: its input is grouped by card_id, not by merchant"
    )
