"""``GET /metrics`` through a real Prometheus server, and the Grafana dashboards' queries against it.

The API app runs in-process on a real port over a real JobManager with three rate-limited datagen jobs
(one whose filter fails on about half of the records, all checkpointing every 500 ms). A real
``prometheus`` (Debian package ``prometheus``) scrapes it every second; every metric family is then
queried through Prometheus' HTTP API, values must move, counters must never reset (also across a
restart of a job), and every panel query of every dashboard in ``dashboards/`` must return data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from heliosdb_streaming.api.app import create_app
from heliosdb_streaming.job import JobManager
from heliosdb_streaming.testing.ports import free_port
from heliosdb_streaming.testing.waits import wait_until

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "dashboards").glob("*.json"))
FAMILIES = {
    "heliosdb_job_count": "gauge",
    "heliosdb_job_status": "gauge",
    "heliosdb_job_events_processed_total": "counter",
    "heliosdb_job_throughput": "gauge",
    "heliosdb_job_latency_seconds": "histogram",
    "heliosdb_job_checkpoint_duration_seconds": "histogram",
    "heliosdb_job_checkpoint_failures_total": "counter",
    "heliosdb_job_backpressure_events_total": "counter",
    "heliosdb_job_restarts_total": "counter",
    "heliosdb_job_errors_total": "counter",
    "heliosdb_job_cpu_usage_percent": "gauge",
    "heliosdb_job_memory_used_bytes": "gauge",
    "heliosdb_job_late_events_dropped_total": "counter",
    "heliosdb_job_backpressure_level": "gauge",
    "heliosdb_job_source_lag_records": "gauge",
}
COUNTERS = [name for name, kind in FAMILIES.items() if kind == "counter"]
HISTOGRAMS = [name for name, kind in FAMILIES.items() if kind == "histogram"]
STATUSES = ("submitted", "running", "paused", "finished", "failed", "cancelled")


def job_body(name: str, condition: str, rate: float) -> dict[str, Any]:
    return {
        "name": name,
        "config": {"parallelism": 1, "checkpoint_interval_ms": 500, "restart_strategy": "none"},
        "sources": [
            {"type": "datagen", "config": {"partitions": 2, "keys": 50, "seed": 7, "rate_per_sec": rate}}
        ],
        "transformations": [{"type": "filter", "config": {"condition": condition}}],
        "sinks": [{"type": "discard", "config": {}}],
    }


@dataclass
class Stack:
    jm: JobManager
    session: aiohttp.ClientSession
    app_url: str
    prom_url: str
    steady: str  # a plain filter
    erroring: str  # a filter failing on about half of the records (division by zero)
    quoted: str  # a job name that needs escaping

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector result (``[{"metric": {...}, "value": [ts, "v"]}]``)."""
        async with self.session.get(f"{self.prom_url}/api/v1/query", params={"query": expr}) as r:
            body = await r.json()
        assert r.status == 200 and body["status"] == "success", f"{expr}: {body}"
        assert body["data"]["resultType"] == "vector", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def values(self, expr: str, by: str = "job_id") -> dict[str, float]:
        return {s["metric"].get(by, ""): float(s["value"][1]) for s in await self.query(expr)}

    async def eventually(self, expr: str, check: Any, what: str, within: float = 30.0) -> dict[str, float]:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            got = await self.values(expr)
            if check(got):
                return got
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {expr} = {got}")
            await asyncio.sleep(0.5)


async def wait_running(jm: JobManager, job_ids: list[str], within: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    for job_id in job_ids:
        while (status := await jm.get_job_status(job_id)).value != "running":
            assert status.value == "submitted", f"{job_id} is {status.value}"
            assert asyncio.get_running_loop().time() < deadline, f"{job_id} did not start"
            await asyncio.sleep(0.1)


@contextlib.contextmanager
def prometheus_server(tmp: Path, target: str) -> Any:
    binary = shutil.which("prometheus")
    assert binary, "the prometheus server is not on PATH: install it (apt-get install -y prometheus)"
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        "  - job_name: heliosdb\n"
        "    scrape_interval: 1s\n"
        "    scrape_timeout: 900ms\n"
        "    metrics_path: /metrics\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    port = free_port()
    log_path = tmp / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield f"http://127.0.0.1:{port}", process, log_path
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("prometheus")
    async with JobManager(8, home=tmp / "home") as jm:
        server = TestServer(create_app(jm), host="127.0.0.1", port=0)
        await server.start_server()
        try:
            app_url = str(server.make_url("")).rstrip("/")
            steady = await jm.submit_job(job_body("steady", "amount > 100", 600))
            erroring = await jm.submit_job(job_body("erroring", "amount / floor(amount % 2) > 1", 600))
            quoted = await jm.submit_job(job_body('quoted "name" \\ here', "amount > 5000", 300))
            await wait_running(jm, [steady, erroring, quoted])
            async with aiohttp.ClientSession() as session:
                text = await (await session.get(f"{app_url}/metrics")).text()
                missing = [f for f in FAMILIES if f"# TYPE {f} " not in text]
                assert not missing, (
                    f"GET /metrics lacks {missing}: views.prometheus_metrics must serve "
                    "prometheus.render_manager(jm) (see docs/observability.md)"
                )
                with prometheus_server(tmp, app_url.removeprefix("http://")) as (prom_url, process, log):
                    s = Stack(jm, session, app_url, prom_url, steady, erroring, quoted)
                    deadline = asyncio.get_running_loop().time() + 30
                    while True:  # ready and scraped at least twice
                        assert process.poll() is None, f"prometheus exited:\n{log.read_text()[-3000:]}"
                        with contextlib.suppress(aiohttp.ClientError, AssertionError):
                            up = await s.values('count_over_time(up{job="heliosdb"}[1m])', by="job")
                            if up.get("heliosdb", 0) >= 2:
                                break
                        assert asyncio.get_running_loop().time() < deadline, (
                            f"prometheus did not scrape {app_url}:\n{log.read_text()[-3000:]}"
                        )
                        await asyncio.sleep(0.3)
                    yield s
        finally:
            await server.close()


async def test_every_family_through_prometheus(stack: Stack) -> None:
    s = stack
    ids = {s.steady, s.erroring, s.quoted}
    up = await s.values('up{job="heliosdb"}', by="job")
    assert up == {"heliosdb": 1.0}
    meta_url = f"{s.prom_url}/api/v1/metadata"
    async with s.session.get(meta_url) as r:
        metadata = (await r.json())["data"]
    assert {name: metadata[name][0]["type"] for name in FAMILIES if name in metadata} == FAMILIES

    assert await s.values("heliosdb_job_count", by="job") == {"heliosdb": 3.0}
    status = await s.query("heliosdb_job_status")
    per_job: dict[str, dict[str, float]] = {}
    for sample in status:
        per_job.setdefault(sample["metric"]["job_id"], {})[sample["metric"]["status"]] = float(
            sample["value"][1]
        )
    assert per_job == {j: {st: float(st == "running") for st in STATUSES} for j in ids}
    names = await s.values("heliosdb_job_status", by="job_name")
    assert set(names) == {"steady", "erroring", 'quoted "name" \\ here'}  # unescaped by Prometheus

    gauges = [
        "heliosdb_job_throughput",
        "heliosdb_job_cpu_usage_percent",
        "heliosdb_job_memory_used_bytes",
        "heliosdb_job_backpressure_level",
        "heliosdb_job_source_lag_records",  # datagen with a rate: records due and not yet read
    ]
    for name in [*COUNTERS, *gauges]:
        got = await s.values(name)
        assert set(got) == ids, name
        assert all(math.isfinite(v) and v >= 0 for v in got.values()), (name, got)
    for name in HISTOGRAMS:
        buckets = await s.query(f'{name}_bucket{{job_id="{s.erroring}"}}')
        les = {b["metric"]["le"] for b in buckets}
        assert "+Inf" in les and len(les) >= 14, (name, les)
        assert set(await s.values(f"{name}_sum")) == ids
        assert set(await s.values(f"{name}_count")) == ids

    memory = await s.values("heliosdb_job_memory_used_bytes")
    assert all(v > 10_000_000 for v in memory.values()), memory  # live workers' resident memory
    await s.eventually("heliosdb_job_throughput > 0", lambda got: set(got) == ids, "throughput gauges")


async def test_values_move(stack: Stack) -> None:
    s = stack
    ids = {s.steady, s.erroring, s.quoted}
    await s.eventually(
        "rate(heliosdb_job_events_processed_total[1m]) > 0", lambda g: set(g) == ids, "event rates"
    )
    await s.eventually(
        "rate(heliosdb_job_errors_total[1m]) > 0", lambda g: set(g) == {s.erroring}, "error rate"
    )
    p99 = await s.eventually(
        "histogram_quantile(0.99, rate(heliosdb_job_latency_seconds_bucket[1m]))",
        lambda g: set(g) == ids and all(math.isfinite(v) for v in g.values()),
        "a latency p99 for every job",
    )
    assert all(0 < v <= 10 for v in p99.values()), p99
    await s.eventually(
        "histogram_quantile(0.9, rate(heliosdb_job_checkpoint_duration_seconds_bucket[1m]))",
        lambda g: set(g) == ids and all(math.isfinite(v) and v > 0 for v in g.values()),
        "a checkpoint duration quantile for every job",
    )

    events, errors = "heliosdb_job_events_processed_total", "heliosdb_job_errors_total"
    before = {n: await s.values(n) for n in (events, errors)}
    hist_before = {n: await s.values(f"{n}_count") for n in HISTOGRAMS}

    async def moved_on() -> bool:  # a few more scrapes later
        after = {n: await s.values(n) for n in before}
        hist_after = {n: await s.values(f"{n}_count") for n in HISTOGRAMS}
        return after[errors].get(s.erroring, 0) > before[errors][s.erroring] and all(
            after[events].get(j, 0) > before[events][j]
            and all(hist_after[n].get(j, 0) > hist_before[n][j] for n in HISTOGRAMS)
            for j in ids
        )

    await wait_until(moved_on, what="every job's counters and histogram counts to grow", interval=0.5)
    after = {n: await s.values(n) for n in before}
    hist_after = {n: await s.values(f"{n}_count") for n in HISTOGRAMS}
    for job_id in ids:
        assert after[events][job_id] > before[events][job_id]
        for n in HISTOGRAMS:
            assert hist_after[n][job_id] > hist_before[n][job_id], (n, job_id)
    assert after[errors][s.erroring] > before[errors][s.erroring]
    assert after[errors][s.steady] == 0


async def test_counters_never_reset_across_a_job_restart(stack: Stack) -> None:
    s = stack
    events_before = (await s.values("heliosdb_job_events_processed_total"))[s.steady]
    await s.jm.restart_job(s.steady)  # stop the workers, start new ones (counting from zero)
    await s.eventually(
        f'heliosdb_job_restarts_total{{job_id="{s.steady}"}}', lambda g: g.get(s.steady) == 1, "restart"
    )
    await wait_running(s.jm, [s.steady])
    await s.eventually(
        f'heliosdb_job_events_processed_total{{job_id="{s.steady}"}}',
        lambda g: g.get(s.steady, 0) > events_before + 100,
        "events after the restart",
    )
    for name in [*COUNTERS, *(f"{h}_count" for h in HISTOGRAMS), *(f"{h}_bucket" for h in HISTOGRAMS)]:
        resets = await s.query(f"resets({name}[5m]) > 0")
        assert resets == [], (name, resets)


# --------------------------------------------------------------------------------------- dashboards


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return out


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_current_grafana_json(path: Path) -> None:
    d = json.loads(path.read_text())
    assert d["schemaVersion"] >= 39 and d["uid"] and d["title"]
    assert d.get("id") is None  # provisioned dashboards get their id from Grafana
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    job = variables["job_id"]
    assert job["type"] == "query"
    assert job["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert job["definition"] == "label_values(heliosdb_job_status, job_id)"
    ids = [p["id"] for p in panels_of(d)]
    assert len(ids) == len(set(ids))
    for panel in panels_of(d):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["refId"] and target["expr"]
    assert path.name in {"heliosdb-overview.json", "heliosdb-job.json"}
    assert {p.name for p in DASHBOARDS} == {"heliosdb-overview.json", "heliosdb-job.json"}


def test_provisioning_files() -> None:
    import yaml  # type: ignore[import-untyped]

    datasource = yaml.safe_load((REPO / "dashboards/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["apiVersion"] == 1
    assert [d["type"] for d in datasource["datasources"]] == ["prometheus"]
    provider = yaml.safe_load((REPO / "dashboards/provisioning/dashboards/heliosdb.yaml").read_text())
    assert provider["apiVersion"] == 1
    assert provider["providers"][0]["type"] == "file" and provider["providers"][0]["options"]["path"]


async def test_every_dashboard_query_returns_data(stack: Stack) -> None:
    s = stack
    exported = set(FAMILIES) | {f"{h}_{suffix}" for h in HISTOGRAMS for suffix in ("bucket", "sum", "count")}
    label_values = f"{s.prom_url}/api/v1/label/job_id/values"
    async with s.session.get(label_values, params={"match[]": "heliosdb_job_status"}) as r:
        assert {s.steady, s.erroring, s.quoted} <= set((await r.json())["data"])
    await s.eventually(
        f'rate(heliosdb_job_errors_total{{job_id="{s.erroring}"}}[1m]) > 0', bool, "errors to rate"
    )
    checked = 0
    for path in DASHBOARDS:
        for panel in panels_of(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                expr = target["expr"]
                for name in re.findall(r"\bheliosdb_[a-z_]+", expr):
                    assert name in exported, f"{path.name} / {panel['title']}: {name} is not exported"
                query = (
                    expr.replace("$job_id", s.erroring)
                    .replace("${job_id}", s.erroring)
                    .replace("$__rate_interval", "1m")
                    .replace("$__interval", "1m")
                )
                assert "$" not in query, f"{path.name} / {panel['title']}: unknown variable in {expr}"
                result = await s.query(query)
                finite = [x for x in result if math.isfinite(float(x["value"][1]))]
                assert finite, f"{path.name} / {panel['title']} / {target['refId']}: no data for {query}"
                checked += 1
    assert checked >= 20
