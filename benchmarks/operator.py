"""Operator reconcile latency and memory: ``python -m benchmarks.operator [--jobs 500] [--kubelet fake]``.

Starts kmock's Kubernetes emulator (``ClusterEmulator``, over HTTP on a free port) and ``helios
operator --all-namespaces`` as a subprocess against it, then measures the time from creating a
StreamingJob to its ``status.phase`` becoming ``running``:

1. one job on an idle operator (``single``), five times;
2. ``--jobs`` jobs created by 16 concurrent clients (``bulk``), each measured on its own: a burst,
   whose latency is mostly queueing (16 in flight over the throughput of operator *and* emulator);
3. one job at a time with those ``--jobs`` running (``loaded``), ten times: the reconcile latency of
   a cluster holding that many jobs, which is what the goal is about.

Pods are run by ``--kubelet fake`` (default): a pod is marked Running at once and a minimal in-process
worker connects to the operator's control channel (hello, acks to checkpoint barriers), so hundreds of
jobs cost no processes and the operator does all its real work (submit, job Secret, Service, pods,
run start, status, Events). ``--kubelet process`` runs the real worker as a local process per pod
(use few jobs). The operator's RSS is sampled every 0.5 s; the table shows it with all jobs running.
Goals: p99 latency < 2 s, RSS < 200 MiB with 500 jobs. On 2 cores the burst is bound by this process
as much as by the operator (the emulator and the fake kubelet here use ~90% of a core, the operator
~50%), so its latency is throughput over 16 in flight, not the operator's reconcile time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kopf
import psutil

from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.testing.kube_emulator import start_cluster
from heliosdb_streaming.testing.kubelet import FakeKubelet, ProcessKubelet
from heliosdb_streaming.testing.ports import free_port
from heliosdb_streaming.testing.server import operator_command, operator_env

NS = "default"
CONCURRENCY = 16
SINGLE_RUNS = 5
LOADED_RUNS = 10


def job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": crds.API_VERSION,
        "kind": crds.STREAMING_JOB_KIND,
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "config": {"parallelism": 1, "checkpointIntervalMs": 600_000, "restartStrategy": "none"},
            "sources": [{"type": "datagen", "config": {"ratePerSec": 10, "partitions": 1, "keys": 10}}],
            "transformations": [{"type": "filter", "config": {"condition": "amount > 100"}}],
            "sinks": [{"type": "discard", "config": {}}],
        },
    }


class RunningWatch:
    """One watch over all StreamingJobs; resolves a future per job when its phase becomes running."""

    def __init__(self, client: kube.KubeClient) -> None:
        self.client = client
        self.waiting: dict[str, asyncio.Future[float]] = {}
        self.task = asyncio.create_task(self._watch())

    def expect(self, name: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[name] = future
        return future

    async def _watch(self) -> None:
        while True:
            try:
                async for _kind, obj in self.client.watch(kube.STREAMINGJOBS, NS, timeout_s=300):
                    self._seen(obj)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a broken stream must not end the measurement: watch again
                print(f"watch failed ({type(e).__name__}: {e}); watching again", file=sys.stderr)
                for obj in await self.client.list(kube.STREAMINGJOBS, NS):
                    self._seen(obj)

    def _seen(self, obj: dict[str, Any]) -> None:
        future = self.waiting.get(obj["metadata"]["name"])
        if future is not None and not future.done() and (obj.get("status") or {}).get("phase") == "running":
            future.set_result(time.perf_counter())


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self.task = asyncio.create_task(self._sample())

    def now(self) -> int:
        return int(self.process.memory_info().rss)

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.now())
            await asyncio.sleep(0.5)


async def create_and_wait(client: kube.KubeClient, watch: RunningWatch, name: str, limit_s: float) -> float:
    future = watch.expect(name)
    started = time.perf_counter()
    await client.create(kube.STREAMINGJOBS, NS, job(name))
    try:
        return await asyncio.wait_for(future, limit_s) - started
    except TimeoutError:
        status = (await client.get(kube.STREAMINGJOBS, NS, name)).get("status")
        raise TimeoutError(f"{name} not running after {limit_s:g}s; its status: {status}") from None


def summary(latencies: list[float]) -> tuple[float, float, float, float]:
    ordered = sorted(latencies)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return statistics.median(ordered), p(0.95), p(0.99), ordered[-1]


async def main(jobs: int, kubelet_kind: str) -> int:
    with tempfile.TemporaryDirectory(prefix="helios-bench-operator-") as tmp:
        root = Path(tmp)
        async with start_cluster(root) as cluster:
            client = kube.KubeClient(kopf.ConnectionInfo(server=cluster.url))
            kubelet: FakeKubelet | ProcessKubelet = (
                FakeKubelet(client) if kubelet_kind == "fake" else ProcessKubelet(client, root / "node")
            )
            log = (root / "operator.log").open("wb")
            operator = subprocess.Popen(  # noqa: ASYNC220 (started once, before any measurement)
                operator_command(
                    root / "home",
                    free_port(),
                    "--all-namespaces",
                    "--max-parallelism",
                    str(max(jobs, 1) + SINGLE_RUNS + LOADED_RUNS),
                ),
                env=operator_env(cluster.kubeconfig),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                async with kubelet:
                    watch = RunningWatch(client)
                    rss = RssSampler(operator.pid)
                    idle_rss = 0
                    single = []
                    for i in range(SINGLE_RUNS):
                        # the first one also waits for the operator to come up: not counted
                        latency = await create_and_wait(client, watch, f"single-{i}", 120)
                        if i == 0:
                            idle_rss = rss.now()
                            continue
                        single.append(latency)
                        await asyncio.sleep(0.2)
                    semaphore = asyncio.Semaphore(CONCURRENCY)

                    async def one(i: int) -> float:
                        async with semaphore:
                            return await create_and_wait(client, watch, f"bulk-{i}", 300)

                    started = time.perf_counter()
                    bulk = await asyncio.gather(*(one(i) for i in range(jobs)))
                    wall = time.perf_counter() - started
                    await asyncio.sleep(3)  # a few status sweeps with every job running
                    running_rss = rss.now()
                    loaded = []
                    for i in range(LOADED_RUNS):
                        loaded.append(await create_and_wait(client, watch, f"loaded-{i}", 120))
                        await asyncio.sleep(0.2)
                    peak = max(rss.peak, running_rss)
                    watch.task.cancel()
                    rss.task.cancel()
            except BaseException:
                log.flush()
                print((root / "operator.log").read_text()[-5000:], file=sys.stderr)
                raise
            finally:
                operator.terminate()
                try:
                    operator.wait(60)
                except subprocess.TimeoutExpired:
                    operator.kill()
                log.close()
                await client.close()
    mib = 1024 * 1024
    s50, s95, s99, smax = summary(single)
    b50, b95, b99, bmax = summary(bulk)
    l50, l95, l99, lmax = summary(loaded)
    print(f"operator benchmark: kubelet={kubelet_kind}, {jobs} jobs (parallelism 1), {CONCURRENCY} clients")
    print(f"{'measure':<50}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}   goal")
    print(f"{'create -> running, idle operator (s)':<50}{s50:>9.3f}{s95:>9.3f}{s99:>9.3f}{smax:>9.3f}   < 2")
    loaded_label = f"create -> running, {jobs} jobs running (s)"
    print(f"{loaded_label:<50}{l50:>9.3f}{l95:>9.3f}{l99:>9.3f}{lmax:>9.3f}   < 2")
    burst = f"create -> running, burst of {jobs} ({CONCURRENCY} clients) (s)"
    print(f"{burst:<50}{b50:>9.3f}{b95:>9.3f}{b99:>9.3f}{bmax:>9.3f}")
    print(f"{'all jobs created and running (s)':<50}{wall:>9.1f}")
    print(f"{'operator RSS, idle (MiB)':<50}{idle_rss / mib:>9.1f}")
    label = f"operator RSS, {jobs + SINGLE_RUNS} jobs running (MiB)"  # before the loaded runs
    print(f"{label:<50}{running_rss / mib:>9.1f}{'':>27}   < 200")
    print(f"{'operator RSS, peak (MiB)':<50}{peak / mib:>9.1f}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--kubelet", choices=["fake", "process"], default="fake")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.jobs, args.kubelet)))
