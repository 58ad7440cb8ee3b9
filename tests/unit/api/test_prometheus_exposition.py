"""The ``/metrics`` exposition from control-plane job entries: names, types, labels, histograms, grace
period, escaping, monotonic counters, promtool, and the time to render 100 jobs."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from heliosdb_streaming.api import prometheus
from heliosdb_streaming.control.controller import JobEntry, Run
from heliosdb_streaming.control.metrics import (
    CHECKPOINT_BUCKETS_S,
    LATENCY_BUCKETS_S,
    JobMetricsAggregator,
)
from heliosdb_streaming.control.store import JobRecord
from heliosdb_streaming.embedded.logs import JobLog
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.types import JobStatus
from heliosdb_streaming.runtime.histogram import bucket_of

NOW = 1_800_000_000.0

SPEC_FAMILIES = {
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
}
EXTRA_FAMILIES = {
    "heliosdb_job_cpu_usage_percent": "gauge",
    "heliosdb_job_memory_used_bytes": "gauge",
    "heliosdb_job_late_events_dropped_total": "counter",
    "heliosdb_job_backpressure_level": "gauge",
    "heliosdb_job_source_lag_records": "gauge",
}
HELP = {  # the exposition's HELP texts, as the hand-written exposition had them: dashboards show them
    "heliosdb_job_count": "Number of active jobs (submitted, running or paused).",
    "heliosdb_job_status": "Job status: 1 for the job's current status, 0 for the others.",
    "heliosdb_job_events_processed_total": "Total events processed (read by sources).",
    "heliosdb_job_throughput": "Current throughput (events/sec).",
    "heliosdb_job_latency_seconds": "Processing latency, source ingest to sink.",
    "heliosdb_job_checkpoint_duration_seconds": "Duration of completed checkpoints.",
    "heliosdb_job_checkpoint_failures_total": "Checkpoint failures.",
    "heliosdb_job_backpressure_events_total": "Backpressure events.",
    "heliosdb_job_restarts_total": "Job restarts (automatic and requested).",
    "heliosdb_job_errors_total": "Job errors (records that failed).",
    "heliosdb_job_cpu_usage_percent": "CPU usage of the job's workers (100 = one core).",
    "heliosdb_job_memory_used_bytes": "Resident memory of the job's workers.",
    "heliosdb_job_late_events_dropped_total": "Events behind the watermark that windows and CEP dropped.",
    "heliosdb_job_backpressure_level": (
        "Share of time the sources wait on downstream (0: nothing waits, 1: always)."
    ),
    "heliosdb_job_source_lag_records": (
        "Records the sources are behind their newest offset (jobs whose sources know it)."
    ),
}
SPEC_MANDATED_LINT = (
    'heliosdb_job_count non-histogram and non-summary metrics should not have "_count" suffix'
)

Series = dict[str, list[tuple[dict[str, str], float]]]
LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def parse(text: str) -> tuple[dict[str, str], Series]:
    """Families' types and the samples, checking the format strictly (grouping, TYPE before samples)."""
    types: dict[str, str] = {}
    series: Series = {}
    current = ""
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"family {name} appears twice"
            types[name] = kind
            current = name
            continue
        m = LINE.match(line)
        assert m, f"bad line {line!r}"
        name, raw_labels, value = m.groups()
        family = re.sub(r"_(bucket|sum|count)$", "", name) if types.get(current) == "histogram" else name
        assert family == current, f"{name} outside its family block ({current})"
        labels: dict[str, str] = {}
        if raw_labels:
            pos = 0
            for lm in LABEL.finditer(raw_labels):
                assert lm.start() == pos, f"bad labels {raw_labels!r}"
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
            assert pos == len(raw_labels), f"bad labels {raw_labels!r}"
        series.setdefault(name, []).append((labels, float(value)))
    return types, series


def by_job(series: Series, name: str) -> dict[str, float]:
    return {labels["job_id"]: value for labels, value in series.get(name, [])}


def make_entry(
    tmp_path: Path,
    job_id: str,
    name: str,
    status: JobStatus = JobStatus.RUNNING,
    clock: Clock | None = None,
    finished_at: float | None = None,
) -> JobEntry:
    config = JobConfig.from_dict(
        {
            "name": "synthetic",  # the record's name may be anything: escaping is tested on it
            "sources": [{"type": "datagen", "config": {}}],
            "sinks": [{"type": "discard", "config": {}}],
        }
    )
    record = JobRecord(
        job_id=job_id,
        name=name,
        status=status,
        config=config.to_dict(),
        submitted_at=datetime.fromtimestamp(NOW - 600, UTC),
        finished_at=datetime.fromtimestamp(finished_at, UTC) if finished_at is not None else None,
    )
    entry = JobEntry(
        record=record,
        config=config,
        metrics=JobMetricsAggregator(clock or Clock(NOW)),
        log=JobLog(tmp_path / job_id / "job.log"),
    )
    if status == JobStatus.RUNNING:
        entry.run = Run(job_id=job_id, attempt=1, token="t", parallelism=1)
    return entry


def beat(events: int, latency: dict[int, int] | None = None, **kw: float) -> dict[str, object]:
    return {
        "events_in": events,
        "events_out": events,
        "errors": kw.get("errors", 0),
        "backpressure_events": kw.get("backpressure", 0),
        "latency": latency or {},
        "cpu_percent": kw.get("cpu", 12.5),
        "rss_bytes": kw.get("rss", 50_000_000),
    }


def test_families_types_and_labels(tmp_path: Path) -> None:
    clock = Clock(NOW)
    running = make_entry(tmp_path, "job-a", "alpha", clock=clock)
    paused = make_entry(tmp_path, "job-b", "beta", JobStatus.PAUSED)
    done = make_entry(tmp_path, "job-c", "gamma", JobStatus.FINISHED, finished_at=NOW - 10)
    running.record.restarts = 2
    running.metrics.on_heartbeat(1, 0, beat(100, errors=3, backpressure=4))
    clock.t += 1
    running.metrics.on_heartbeat(1, 0, beat(300, errors=5, backpressure=4))
    running.metrics.checkpoint_failures = 1
    types, series = parse(prometheus.render_entries([done, paused, running], now=NOW).decode())

    assert types == {**SPEC_FAMILIES, **EXTRA_FAMILIES}
    assert series["heliosdb_job_count"] == [({}, 2.0)]
    for name, samples in series.items():
        if name == "heliosdb_job_count":
            continue
        for labels, _ in samples:
            extra = {"heliosdb_job_status": {"status"}}.get(
                name, {"le"} if name.endswith("_bucket") else set()
            )
            assert set(labels) == {"job_id", "job_name"} | extra, (name, labels)
    assert {labels["job_name"] for labels, _ in series["heliosdb_job_status"]} == {"alpha", "beta", "gamma"}
    assert by_job(series, "heliosdb_job_events_processed_total") == {"job-a": 300, "job-b": 0, "job-c": 0}
    assert by_job(series, "heliosdb_job_errors_total")["job-a"] == 5
    assert by_job(series, "heliosdb_job_backpressure_events_total")["job-a"] == 4
    assert by_job(series, "heliosdb_job_restarts_total")["job-a"] == 2
    assert by_job(series, "heliosdb_job_checkpoint_failures_total")["job-a"] == 1
    assert by_job(series, "heliosdb_job_throughput") == {"job-a": 200.0, "job-b": 0.0, "job-c": 0.0}
    assert by_job(series, "heliosdb_job_cpu_usage_percent") == {"job-a": 12.5, "job-b": 0.0, "job-c": 0.0}
    assert by_job(series, "heliosdb_job_memory_used_bytes")["job-a"] == 50_000_000


def test_help_and_type_lines_in_the_families_order(tmp_path: Path) -> None:
    """prometheus_client strips a counter's ``_total`` and writes it back: the names stay the spec's."""
    for entries in ([], [make_entry(tmp_path, "job-a", "alpha")]):
        text = prometheus.render_entries(entries, now=NOW).decode()
        headers = [line for line in text.splitlines() if line.startswith("#")]
        kinds = {**SPEC_FAMILIES, **EXTRA_FAMILIES}
        assert headers == [
            line
            for name, help_ in HELP.items()
            for line in (f"# HELP {name} {help_}", f"# TYPE {name} {kinds[name]}")
        ]
        samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
        assert not any(name.endswith(("_created", "_total_total")) for name in samples), samples


def test_collector_in_a_registry(tmp_path: Path) -> None:
    """``JobsCollector`` describes its families: a registry refuses a second one over the same names."""
    registry = CollectorRegistry()
    entries = [make_entry(tmp_path, "job-a", "alpha")]
    registry.register(prometheus.JobsCollector(entries, now=NOW))
    assert generate_latest(registry) == prometheus.render_entries(entries, now=NOW)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(prometheus.JobsCollector([], now=NOW))


async def test_render_entries_async_formats_the_same_text(tmp_path: Path) -> None:
    """What the request handlers serve: collected on the loop, formatted in a thread."""
    clock = Clock(NOW)
    entries = [make_entry(tmp_path, f"job-{s.value}", s.value, s, clock) for s in JobStatus if not s.terminal]
    for e in entries:
        e.metrics.on_heartbeat(1, 0, beat(50, latency={bucket_of(2.0): 50}))
    assert await prometheus.render_entries_async(entries) == prometheus.render_entries(entries, now=NOW)


def test_status_is_a_state_set(tmp_path: Path) -> None:
    entries = [make_entry(tmp_path, f"job-{s.value}", s.value, s, finished_at=NOW) for s in JobStatus]
    _, series = parse(prometheus.render_entries(entries, now=NOW).decode())
    for s in JobStatus:
        mine = {
            labels["status"]: value
            for labels, value in series["heliosdb_job_status"]
            if labels["job_id"] == f"job-{s.value}"
        }
        assert mine == {other.value: 1.0 if other == s else 0.0 for other in JobStatus}
    assert series["heliosdb_job_count"] == [({}, 3.0)]  # submitted, running, paused


def test_terminal_jobs_disappear_after_the_grace_period(tmp_path: Path) -> None:
    fresh = make_entry(tmp_path, "job-fresh", "f", JobStatus.CANCELLED, finished_at=NOW - 299)
    old = make_entry(tmp_path, "job-old", "o", JobStatus.FAILED, finished_at=NOW - 301)
    live = make_entry(tmp_path, "job-live", "l", JobStatus.RUNNING)
    _, series = parse(prometheus.render_entries([fresh, old, live], now=NOW).decode())
    for name, samples in series.items():
        if name != "heliosdb_job_count":
            assert {labels["job_id"] for labels, _ in samples} == {"job-fresh", "job-live"}, name
    _, series = parse(prometheus.render_entries([fresh, old, live], now=NOW, grace_s=10).decode())
    assert set(by_job(series, "heliosdb_job_status")) == {"job-live"}
    assert prometheus.TERMINAL_SERIES_GRACE_S == 300


def test_job_name_is_escaped(tmp_path: Path) -> None:
    nasty = 'quo"te \\ back\nslash }{,=x'
    _, series = parse(prometheus.render_entries([make_entry(tmp_path, "job-x", nasty)], now=NOW).decode())
    labels = series["heliosdb_job_status"][0][0]
    assert labels["job_name"] == 'quo\\"te \\\\ back\\nslash }{,=x'


def test_latency_histogram_from_the_fine_buckets(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "job-l", "l")
    observed = {0.2: 10, 0.9: 20, 3.0: 30, 40.0: 40, 700.0: 50, 2_000.0: 60, 30_000.0: 70}  # ms: count
    fine = {bucket_of(ms): n for ms, n in observed.items()}
    entry.metrics.on_heartbeat(1, 0, beat(280, latency=fine))
    _, series = parse(prometheus.render_entries([entry], now=NOW).decode())
    buckets = {labels["le"]: v for labels, v in series["heliosdb_job_latency_seconds_bucket"]}
    assert list(buckets) == [f"{b:g}" for b in LATENCY_BUCKETS_S] + ["+Inf"]
    for le, got in buckets.items():
        bound = float(le)
        want = sum(n for ms, n in observed.items() if ms / 1000 <= bound)
        assert got == want, (le, got, want)
    count = series["heliosdb_job_latency_seconds_count"][0][1]
    assert count == sum(observed.values()) == buckets["+Inf"]
    exact_sum = sum(ms / 1000 * n for ms, n in observed.items())
    approx = series["heliosdb_job_latency_seconds_sum"][0][1]
    assert abs(approx - exact_sum) / exact_sum < 0.03


def test_latency_histogram_survives_state_round_trip_and_restarts(tmp_path: Path) -> None:
    agg = JobMetricsAggregator(Clock(NOW))
    agg.on_heartbeat(1, 0, beat(10, latency={bucket_of(3.0): 10}))
    again = JobMetricsAggregator.from_state(agg.to_state(), Clock(NOW))
    assert again.latency_coarse == agg.latency_coarse
    agg.forget_workers()
    agg.on_heartbeat(2, 0, beat(5, latency={bucket_of(3.0): 5}))  # a new run counts from zero
    assert agg.latency_coarse.count == 15


def test_checkpoint_duration_histogram(tmp_path: Path) -> None:
    entry = make_entry(tmp_path, "job-c", "c")
    for ms in (3, 7, 40, 40, 900, 400_000):
        entry.metrics.record_checkpoint_duration(ms)
    assert list(entry.metrics.checkpoint_durations) == [3, 7, 40, 40, 900, 400_000]
    _, series = parse(prometheus.render_entries([entry], now=NOW).decode())
    buckets = {labels["le"]: v for labels, v in series["heliosdb_job_checkpoint_duration_seconds_bucket"]}
    assert list(buckets) == [f"{b:g}" for b in CHECKPOINT_BUCKETS_S] + ["+Inf"]
    assert buckets["0.005"] == 1 and buckets["0.01"] == 2 and buckets["0.05"] == 4 and buckets["1"] == 5
    assert buckets["300"] == 5 and buckets["+Inf"] == 6
    assert series["heliosdb_job_checkpoint_duration_seconds_count"][0][1] == 6
    assert series["heliosdb_job_checkpoint_duration_seconds_sum"][0][1] == pytest.approx(400.99)
    restored = JobMetricsAggregator.from_state(entry.metrics.to_state())
    assert restored.checkpoint_histogram == entry.metrics.checkpoint_histogram
    assert JobMetricsAggregator.from_state({}).checkpoint_histogram.count == 0  # state from before


def test_counters_never_go_backwards_across_restarts(tmp_path: Path) -> None:
    clock = Clock(NOW)
    entry = make_entry(tmp_path, "job-r", "r", clock=clock)
    agg = entry.metrics
    counters = [n for n, kind in SPEC_FAMILIES.items() if kind == "counter"]
    previous: dict[str, float] = {}

    def scrape() -> None:
        _, series = parse(prometheus.render_entries([entry], now=clock.t).decode())
        current = {n: by_job(series, n)["job-r"] for n in counters}
        current["latency_count"] = series["heliosdb_job_latency_seconds_count"][0][1]
        for name, value in previous.items():
            assert current[name] >= value, (name, value, current[name])
        previous.update(current)

    lat = bucket_of(5.0)
    for attempt in (1, 2, 3):
        for n in (100, 400, 900):  # workers count from zero in every run
            clock.t += 1
            agg.on_heartbeat(attempt, 0, beat(n, latency={lat: n}, errors=n // 100, backpressure=n // 50))
            scrape()
        agg.forget_workers()
        entry.record.restarts += 1
        scrape()
    assert previous["heliosdb_job_events_processed_total"] == 2700
    assert previous["heliosdb_job_errors_total"] == 3 * 9
    assert previous["latency_count"] == 2700
    agg = JobMetricsAggregator.from_state(agg.to_state(), clock)  # a control plane restart
    entry.metrics = agg
    scrape()


@pytest.mark.promtool
def test_promtool_accepts_the_exposition(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not on PATH: install it (apt-get install -y prometheus)"
    clock = Clock(NOW)
    entries = [make_entry(tmp_path, f"job-{i}", f'n"{i}\\\n', s, clock, NOW) for i, s in enumerate(JobStatus)]
    for e in entries:
        e.metrics.on_heartbeat(1, 0, beat(50, latency={bucket_of(2.0): 50}))
        e.metrics.record_checkpoint_duration(25)
    text = prometheus.render_entries(entries, now=NOW)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    findings = [line for line in (result.stdout + result.stderr).decode().splitlines() if line.strip()]
    assert result.returncode in (0, 3), findings  # 1 would be a parse error
    assert findings == [SPEC_MANDATED_LINT]


def test_render_100_running_jobs_is_fast(tmp_path: Path) -> None:
    clock = Clock(NOW)
    entries = []
    for i in range(100):
        e = make_entry(tmp_path, f"job-{i:03d}", f"job number {i}", clock=clock)
        for k in range(1, 11):
            clock.t += 1
            fine = {bucket_of(0.5 + j * 3.7): k * (j + 1) for j in range(150)}
            e.metrics.on_heartbeat(1, 0, beat(k * 1000, latency=fine))
            e.metrics.record_checkpoint_duration(20 * k)
        entries.append(e)
    times = []
    for _ in range(30):
        t0 = time.thread_time()  # CPU time: what other processes take of the machine does not count
        text = prometheus.render_entries(entries, now=clock.t)
        times.append(time.thread_time() - t0)
    _, series = parse(text.decode())
    assert len(series["heliosdb_job_status"]) == 600
    # 4,800 samples: prometheus_client's generate_latest formats each (~5 us of CPU), ~25 ms in all
    # (the hand-written text took ~3 ms)
    assert statistics.median(times) < 0.080, times
