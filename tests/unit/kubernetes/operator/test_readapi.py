"""The operator's ``/internal/v1`` read routes over real HTTP, and ``OperatorClient`` against them.

A control plane that is not started holds two synthetic jobs bound to StreamingJobs in namespaces
``team-a`` and ``team-b``: what a namespace asks for must never show the other's job, the control
log must leave out the lines workers shipped (the pod logs hold those), and everything takes the
token.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from subprocess import PIPE, STDOUT

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from heliosdb_streaming.control.controller import ControlPlane, JobEntry, Run
from heliosdb_streaming.control.metrics import JobMetricsAggregator
from heliosdb_streaming.control.store import JobRecord
from heliosdb_streaming.embedded.launcher import SubprocessLauncher
from heliosdb_streaming.embedded.logs import JobLog, LocalJobFiles
from heliosdb_streaming.embedded.sqlite_store import SqliteJobStore
from heliosdb_streaming.kubernetes.operator.bindings import Binding, Bindings
from heliosdb_streaming.kubernetes.operator.readapi import create_read_app
from heliosdb_streaming.kubernetes.restapi.readclient import OperatorClient, OperatorUnavailableError
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.types import JobStatus, LogLevel, LogOptions

TOKEN = "read-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JOB_A = "job-00000000-0000-0000-0000-00000000000a"
JOB_B = "job-00000000-0000-0000-0000-00000000000b"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
SPEC_MANDATED_LINT = (
    'heliosdb_job_count non-histogram and non-summary metrics should not have "_count" suffix'
)


@dataclass
class ReadApi:
    url: str
    plane: ControlPlane
    session: aiohttp.ClientSession

    async def get(
        self, path: str, headers: dict[str, str] | None = None, **params: str
    ) -> aiohttp.ClientResponse:
        response = await self.session.get(
            self.url + path, params=params, headers=AUTH if headers is None else headers
        )
        await response.read()
        return response


def entry(home: Path, job_id: str, name: str, status: JobStatus) -> JobEntry:
    config = JobConfig.from_dict(
        {
            "name": name,
            "sources": [{"type": "datagen", "config": {}}],
            "sinks": [{"type": "discard", "config": {}}],
        }
    )
    record = JobRecord(
        job_id=job_id, name=name, status=status, config=config.to_dict(), submitted_at=datetime.now(UTC)
    )
    job = JobEntry(
        record=record, config=config, metrics=JobMetricsAggregator(), log=JobLog(home / job_id / "job.log")
    )
    if status == JobStatus.RUNNING:
        job.run = Run(job_id=job_id, attempt=1, token="t", parallelism=1)
    return job


@pytest.fixture
async def read_api(tmp_path: Path) -> AsyncIterator[ReadApi]:
    plane = ControlPlane(
        home=tmp_path,
        store=SqliteJobStore(tmp_path / "jobs.db"),
        launcher=SubprocessLauncher(),
        files=LocalJobFiles(tmp_path),
        max_parallelism=7,
    )
    bindings = Bindings(tmp_path)
    for job_id, namespace, status in (
        (JOB_A, "team-a", JobStatus.RUNNING),
        (JOB_B, "team-b", JobStatus.RUNNING),
    ):
        plane.jobs[job_id] = entry(tmp_path, job_id, f"{namespace} job", status)
        bindings.save(
            Binding(job_id=job_id, namespace=namespace, name="job", uid=job_id.removeprefix("job-"))
        )
    log = plane.jobs[JOB_A].log  # the control plane's lines, and two a worker shipped in between
    log.write("info", "Job 'team-a job' submitted (parallelism 1)", ts=T0)
    log.write("info", "worker 0 started", ts=T0 + 1, worker=0)
    log.write("info", "Run 1: started 1 worker(s)", ts=T0 + 2)
    log.write("warn", "checkpoint 3 failed: disk full", task_id="task-0", ts=T0 + 3, worker=0)
    log.write("warn", "Checkpoint 3 failed: disk full", ts=T0 + 4)
    log.write("info", "Job cancelled", ts=T0 + 5)
    plane.jobs[JOB_B].log.write("info", "Job 'team-b job' submitted (parallelism 1)", ts=T0)
    server = TestServer(create_read_app(plane, bindings, TOKEN), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield ReadApi(str(server.make_url("")).rstrip("/"), plane, session)
    finally:
        await server.close()
        plane.store.close()


def messages(body: dict[str, object]) -> list[str]:
    logs = body["logs"]
    assert isinstance(logs, list)
    return [str(e["message"]) for e in logs]


async def test_internal_routes_take_the_token(read_api: ReadApi) -> None:
    for path in ("/internal/v1/info", f"/internal/v1/jobs/{JOB_A}/control-log", "/internal/v1/metrics"):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = await read_api.get(path, headers, namespace="team-a")
            assert response.status == 401, path
            assert (await response.json())["error"]["code"] == "unauthorized"
    assert (await read_api.get("/healthz", {})).status == 200


async def test_info_gives_the_max_parallelism(read_api: ReadApi) -> None:
    response = await read_api.get("/internal/v1/info")
    assert response.status == 200 and await response.json() == {"max_parallelism": 7}


async def test_control_log_is_the_control_planes_own_lines_of_that_namespace(read_api: ReadApi) -> None:
    url = f"/internal/v1/jobs/{JOB_A}/control-log"
    response = await read_api.get(url, namespace="team-a")
    assert response.status == 200
    body = await response.json()
    assert messages(body) == [
        "Job 'team-a job' submitted (parallelism 1)",
        "Run 1: started 1 worker(s)",
        "Checkpoint 3 failed: disk full",
        "Job cancelled",
    ]
    assert body["logs"][0] == {
        "timestamp": "2026-01-01T00:00:00.000Z",
        "level": "info",
        "message": "Job 'team-a job' submitted (parallelism 1)",
        "task_id": None,
    }
    assert (body["job_id"], body["total"], body["limit"]) == (JOB_A, 4, 1000)
    warn = await (await read_api.get(url, namespace="team-a", level="warn")).json()
    assert messages(warn) == ["Checkpoint 3 failed: disk full"]
    first = await (await read_api.get(url, namespace="team-a", limit="2")).json()
    assert messages(first) == messages(body)[:2]
    last = await (await read_api.get(url, namespace="team-a", tail="3")).json()
    assert messages(last) == messages(body)[-3:] and last["limit"] == 3

    for namespace in ("team-b", "default"):  # another namespace's job is not found, as if absent
        response = await read_api.get(url, namespace=namespace)
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "job_not_found"
    response = await read_api.get(url)
    assert response.status == 400
    assert (await response.json())["error"]["details"][0]["path"] == "namespace"
    response = await read_api.get("/internal/v1/jobs/job-unknown/control-log", namespace="team-a")
    assert response.status == 404


@pytest.mark.promtool
async def test_metrics_of_one_namespace(read_api: ReadApi) -> None:
    read_api.plane.jobs[JOB_A].record.status = JobStatus.FINISHED  # inactive, within the grace period
    read_api.plane.jobs[JOB_A].record.finished_at = datetime.now(UTC)
    read_api.plane.jobs[JOB_A].run = None
    texts = {}
    for namespace in ("team-a", "team-b", "nobody"):
        response = await read_api.get("/internal/v1/metrics", namespace=namespace)
        assert response.status == 200 and response.headers["Content-Type"].startswith(
            "text/plain; version=0.0.4"
        )
        texts[namespace] = await response.text()
    job_ids = {ns: set(re.findall(r'job_id="([^"]+)"', text)) for ns, text in texts.items()}
    assert job_ids == {"team-a": {JOB_A}, "team-b": {JOB_B}, "nobody": set()}
    count = re.compile(r"^heliosdb_job_count (\S+)$", re.M)
    counts = {ns: [float(v) for v in count.findall(text)] for ns, text in texts.items()}
    assert counts == {"team-a": [0], "team-b": [1], "nobody": [0]}  # the namespace's active jobs
    headers = {ns: [line for line in text.splitlines() if line.startswith("#")] for ns, text in texts.items()}
    assert headers["team-a"] == headers["nobody"]  # every family keeps its HELP and TYPE
    response = await read_api.get("/internal/v1/metrics")
    assert response.status == 400

    promtool = shutil.which("promtool")
    assert promtool, "promtool is not on PATH: install it (apt-get install -y prometheus)"
    for text in texts.values():
        process = await asyncio.create_subprocess_exec(
            promtool, "check", "metrics", stdin=PIPE, stdout=PIPE, stderr=STDOUT
        )
        output, _ = await asyncio.wait_for(process.communicate(text.encode()), 30)
        assert [line for line in output.decode().splitlines() if line.strip()] == [SPEC_MANDATED_LINT]


async def test_job_routes_asked_for_a_namespace_answer_only_for_its_jobs(read_api: ReadApi) -> None:
    for path in ("", "/checkpoints", "/savepoints", "/metrics", "/logs"):
        url = f"/api/v1/jobs/{JOB_A}{path}"
        assert (await read_api.get(url, namespace="team-a")).status == 200, url
        response = await read_api.get(url, namespace="team-b")
        assert response.status == 404, url
        assert (await response.json())["error"]["code"] == "job_not_found"
        assert (await read_api.get(url)).status == 200, url  # without one: the operator's whole view
    response = await read_api.get(f"/api/v1/jobs/{JOB_A}", namespace="")
    assert response.status == 400


async def test_operator_client_round_trip(read_api: ReadApi) -> None:
    client = OperatorClient(read_api.url, "team-a", TOKEN)
    other = OperatorClient(read_api.url, "team-b", TOKEN)
    try:
        assert (await client.info()).max_parallelism == 7
        entries = await client.control_log(JOB_A, LogOptions(level=LogLevel.WARN))
        assert entries is not None
        assert [(e.level, e.message, e.timestamp) for e in entries] == [
            (LogLevel.WARN, "Checkpoint 3 failed: disk full", datetime.fromtimestamp(T0 + 4, UTC))
        ]
        last = await client.control_log(JOB_A, LogOptions(limit=1, tail=True))
        assert [e.message for e in last or []] == ["Job cancelled"]
        assert await client.checkpoints(JOB_A) == []
        for missing in (
            other.control_log(JOB_A, LogOptions()),
            other.details(JOB_A),
            other.checkpoints(JOB_A),
            other.savepoints(JOB_A),
            other.savepoint(JOB_A, "savepoint-x"),
        ):
            assert await missing is None  # team-b's server: team-a's job does not exist
        text = (await other.prometheus()).decode()
        assert JOB_B in text and JOB_A not in text
    finally:
        await client.close()
        await other.close()
    anonymous = OperatorClient(read_api.url, "team-a")
    try:
        with pytest.raises(OperatorUnavailableError, match="401"):
            await anonymous.control_log(JOB_A, LogOptions())
        with pytest.raises(OperatorUnavailableError):
            await anonymous.info()
    finally:
        await anonymous.close()
