"""Secrets against real parts: a REST server with real workers on a temporary home.

What a job's connection string holds never comes back in clear (details, logs, errors), the home that
stores it is private to its user, and workers do not get the server's environment.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import test_api as rest  # the REST client and helpers of the API tests (found through sys.path)

from heliosdb_streaming.api.app import create_app
from heliosdb_streaming.embedded.launcher import worker_processes
from heliosdb_streaming.job import JobManager

pytestmark = pytest.mark.timeout(240)

PASSWORD = "p%40ss:w0rd%2F"  # 'p@ss:w0rd/' as a URL holds it: ':' as is, '@' and '/' percent-encoded


@pytest.fixture
async def jm(tmp_path: Path) -> AsyncIterator[JobManager]:
    async with JobManager(4, home=tmp_path / "home") as manager:
        yield manager


@pytest.fixture
async def api(jm: JobManager) -> AsyncIterator[rest.Api]:
    async with rest.serve(create_app(jm)) as client:
        yield client


def database_job(connection_string: str) -> dict[str, Any]:
    job = rest.datagen_job("masked", count=100)
    job["sinks"] = [
        {
            "type": "database",
            "config": {
                "connection_string": connection_string,
                "table": "alerts",
                "delivery": "at_least_once",
            },
        }
    ]
    return job


async def test_a_password_with_url_delimiters_never_comes_back_in_clear(api: rest.Api) -> None:
    """The sink cannot connect (nothing listens on port 1); the failure quotes the connection string.

    No user name (the driver's default) and an ``sslpassword``: forms the two maskings this replaced
    each missed.
    """
    dsn = f"postgresql://:{PASSWORD}@127.0.0.1:1/test?sslpassword=k3y-s3cret"
    job_id = (await api.ok("POST", "/api/v1/jobs", 201, json=database_job(dsn)))["job_id"]
    details = await api.wait_status(job_id, {"failed"}, within=120)
    assert "postgresql://:***@127.0.0.1:1/test" in details["message"], details["message"]
    logs = await api.call("GET", f"/api/v1/jobs/{job_id}/logs", params={"limit": "1000"})
    assert "postgresql://:***@127.0.0.1:1/test" in logs.text
    for text in (
        details["message"],
        (await api.call("GET", f"/api/v1/jobs/{job_id}")).text,
        logs.text,
        (await api.call("GET", "/api/v1/jobs")).text,
    ):
        for secret in (PASSWORD, "p@ss:w0rd/", "w0rd", "k3y-s3cret"):
            assert secret not in text, text


@pytest.mark.parametrize("password", ["pa/ss", "p@ss:w0rd", "pa?ss", "pa#ss", "p@/?#"])
async def test_a_password_that_ends_the_url_early_is_refused_without_quoting_it(
    api: rest.Api, password: str
) -> None:
    """``pa/ss`` would hand 'pa' to the driver as a port (and to its error messages): 400 up front."""
    reply = await api.call(
        "POST", "/api/v1/jobs", json=database_job(f"postgresql://helios:{password}@127.0.0.1:5432/test")
    )
    details = rest.assert_error(reply, 400, "invalid_job_config")
    assert [d["path"] for d in details] == ["sinks[0].config.connection_string"]
    assert "percent-encode" in details[0]["message"]
    assert password not in reply.text


# ------------------------------------------------------------------------------ home and workers


def modes(root: Path) -> dict[str, int]:
    """The permission bits of ``root`` and of everything under it, by path relative to ``root``."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


async def test_the_home_and_everything_the_server_writes_there_are_private(tmp_path: Path) -> None:
    """A home made by an older version (0755) is tightened; jobs.db (and its WAL), job.json, the logs,
    the workers' output and the checkpoints under the home are the user's alone."""
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    async with JobManager(2, home=home) as jm, rest.serve(create_app(jm)) as api:
        job = rest.checkpointed_job("private", rate=200)
        job["sinks"] = [{"type": "print", "config": {}}]
        job_id = (await api.ok("POST", "/api/v1/jobs", 201, json=job))["job_id"]
        await api.wait_status(job_id, {"running"})
        await rest.wait_checkpoint(api, job_id)
        found = modes(home)
        await api.ok("DELETE", f"/api/v1/jobs/{job_id}")
    job_dir = f"jobs/{job_id}"
    for name in (
        "jobs.db",
        "jobs.db-wal",
        f"{job_dir}/job.json",
        f"{job_dir}/job.log",
        f"{job_dir}/worker-0.out",
    ):
        assert found.get(name) == 0o600, (name, found)
    assert found["."] == 0o700
    manifest = f"checkpoints/{job_id}/chk-1/_manifest.json"
    assert found.get(manifest) == 0o600 and found[f"checkpoints/{job_id}/chk-1"] == 0o700, found
    loose = {p: oct(m) for p, m in found.items() if m & 0o077}
    assert loose == {}, loose  # nothing under the home is readable by group or others


async def test_workers_get_only_the_environment_they_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read from /proc/<pid>/environ of the real worker processes."""
    monkeypatch.setenv("HELIOS_API_TOKEN", "the-servers-api-token")
    monkeypatch.setenv("DATABASE_URL", "postgresql://admin:hunter22@db/prod")
    monkeypatch.setenv("HELIOS_URL", "http://127.0.0.1:8080")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("PGPASSWORD", "for-the-database-sink")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("HELIOS_WORKER_METRICS", "1")
    async with JobManager(2, home=tmp_path / "home") as jm, rest.serve(create_app(jm)) as api:
        job = rest.checkpointed_job("env", rate=100)
        job["config"]["parallelism"] = 2
        job_id = (await api.ok("POST", "/api/v1/jobs", 201, json=job))["job_id"]
        await api.wait_status(job_id, {"running"})
        environments = []
        for process in worker_processes(job_id):
            raw = Path(f"/proc/{process.pid}/environ").read_bytes()
            environments.append(dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item))
        await api.ok("DELETE", f"/api/v1/jobs/{job_id}")
    assert len(environments) == 2
    for env in environments:
        assert "HELIOS_API_TOKEN" not in env and "DATABASE_URL" not in env and "HELIOS_URL" not in env
        assert "the-servers-api-token" not in str(env) and "hunter22" not in str(env)
        assert env["AWS_REGION"] == "eu-west-1"
        assert env["PGPASSWORD"] == "for-the-database-sink"
        assert env["LC_ALL"] == "C.UTF-8"
        assert env["HELIOS_WORKER_METRICS"] == "1"
        assert env["PATH"] == os.environ["PATH"]
        assert env["HELIOS_WORKER_TOKEN"]  # the run's own token, to join the control channel
