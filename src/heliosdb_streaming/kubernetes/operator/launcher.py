"""The kubernetes launcher: each worker is a pod; its handle waits on the pod's phase.

One watch over the operator's pods (per namespace, or cluster-wide) feeds every handle, instead of a
watch per pod. A handle resolves with the container's exit code when its pod ends, or with 137 when
the pod disappears first (deleted); the control plane then applies the job's restart strategy as it
does for a local process. A pod Kubernetes marked with ``DisruptionTarget`` (eviction, node drain,
preemption) carries that reason on its handle, and the control plane restarts the job without
counting it as a failure. Pods that cannot start (unschedulable, image pull errors) are kept per job
for the status writer (``pending_pods``). A launch replaces an older pod of the same name.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

import orjson

from heliosdb_streaming.control.launcher import WorkerSpec
from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.operator import pods
from heliosdb_streaming.kubernetes.operator.pods import PodSettings, Target

logger = logging.getLogger(__name__)

GONE_EXIT_CODE = 137  # the pod vanished before reporting an exit: as if killed
REPLACE_TIMEOUT_S = 60.0
WATCH_TIMEOUT_S = 60
WATCH_BACKOFF_S = 1.0


class PodWorker:
    """A worker pod, as the control plane sees a worker: wait for its exit, terminate, kill."""

    def __init__(self, launcher: KubernetesLauncher, namespace: str, name: str, uid: str, index: int) -> None:
        self.index = index
        self.disruption: str | None = None  # the pod's DisruptionTarget reason, once seen
        self.pid = 0  # not a local process (``kill_stale_workers`` skips it)
        self.namespace = namespace
        self.name = name
        self.uid = uid
        self.seq = 0  # registration order, to tell a vanished pod from one created after a list
        self._launcher = launcher
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def resolve(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)

    @property
    def done(self) -> bool:
        return self._exit.done()

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    def terminate(self) -> None:
        self._launcher.delete_pod(self, grace_period_s=30)

    def kill(self) -> None:
        self._launcher.delete_pod(self, grace_period_s=0)


class KubernetesLauncher:
    """Starts worker pods for the control plane. ``targets`` maps a job id to its StreamingJob."""

    def __init__(
        self,
        client: kube.KubeClient,
        settings: PodSettings,
        targets: Callable[[str], Target | None],
        namespaces: list[str] | None = None,
        job: str | None = None,
    ) -> None:
        """``job``: watch only that StreamingJob's pods (a job manager's launcher), else all of them."""
        self.client = client
        self.job = job
        self.settings = settings
        self.targets = targets
        self.namespaces: list[str | None] = list(namespaces) if namespaces else [None]
        self._handles: dict[tuple[str, str], PodWorker] = {}
        self._job_files: dict[tuple[str, str], str] = {}  # what each job's Secret holds now
        self._seq = itertools.count(1)
        self._watchers: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        # job id -> pod name -> (namespace, reason, message) of its pods that cannot start
        self._pending: dict[str, dict[str, tuple[str, str, str]]] = {}
        self.listeners: list[Callable[[str], None]] = []  # told the job id when its pending pods change
        self.watch_restarts = 0  # pod watches started again after the first (operator metrics)
        self.watch_failures = 0  # of them, after an error rather than the server's timeout

    def pending_pods(self, job_id: str) -> tuple[tuple[str, str, str], ...]:
        """``(pod, reason, message)`` of the job's worker pods that cannot start, by pod name."""
        pods_ = self._pending.get(job_id) or {}
        return tuple((name, reason, message) for name, (_, reason, message) in sorted(pods_.items()))

    def _set_pending(self, job_id: str, namespace: str, name: str, why: tuple[str, str] | None) -> None:
        pods_ = self._pending.setdefault(job_id, {})
        before = pods_.get(name)
        if why is None:
            pods_.pop(name, None)
        else:
            pods_[name] = (namespace, *why)
        if not pods_:
            self._pending.pop(job_id, None)
        if pods_.get(name) != before:
            for listener in self.listeners:
                listener(job_id)

    async def start(self) -> None:
        self._watchers = [asyncio.create_task(self._watch_forever(ns)) for ns in self.namespaces]

    async def close(self) -> None:
        for task in [*self._watchers, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._watchers, *self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------------------ launch

    async def launch(self, spec: WorkerSpec) -> PodWorker:
        target = self.targets(spec.job_id)
        if target is None:
            raise RuntimeError(f"no StreamingJob is bound to {spec.job_id}")
        job_json = (spec.job_dir / "job.json").read_text()
        await self.ensure_job_secret(target, job_json)
        if spec.index == 0:
            await self._delete_surplus_pods(target, int(orjson.loads(job_json)["parallelism"]))
        name = pods.pod_name(target.name, spec.index)
        await self._replace_old_pod(target.namespace, name)
        manifest = pods.worker_pod(target, spec, self.settings)
        created = await self.client.create(kube.PODS, target.namespace, manifest)
        uid = str((created.get("metadata") or {}).get("uid") or "")
        handle = PodWorker(self, target.namespace, name, uid, spec.index)
        handle.seq = next(self._seq)
        old = self._handles.get((target.namespace, name))
        if old is not None:
            old.resolve(GONE_EXIT_CODE)
        self._handles[(target.namespace, name)] = handle
        logger.info("started pod %s/%s (run %d of %s)", target.namespace, name, spec.attempt, spec.job_id)
        return handle

    async def ensure_job_secret(self, target: Target, job_json: str) -> None:
        """Creates or updates the Secret ``<job>-job`` so that new pods mount the config of this run."""
        key = (target.namespace, target.name)
        if self._job_files.get(key) == job_json:
            return
        manifest = pods.job_secret(target, job_json, pods.credentials(self.settings))
        try:
            await self.client.create(kube.SECRETS, target.namespace, manifest)
        except kube.ConflictError:
            await self.client.patch(
                kube.SECRETS,
                target.namespace,
                pods.job_secret_name(target.name),
                {"data": manifest["data"]},
            )
        self._job_files[key] = job_json

    def job_file(self, namespace: str, job: str) -> str | None:
        """What the job's Secret holds (None: no pod launched by this process yet), for ``resync``."""
        return self._job_files.get((namespace, job))

    async def _delete_surplus_pods(self, target: Target, parallelism: int) -> None:
        """After a rescale down, the old run's pods past the new parallelism would linger: delete them."""
        labels = {**pods.job_labels(target.name), pods.LABEL_COMPONENT: "worker"}
        for pod in await self.client.list(kube.PODS, target.namespace, labels):
            meta = pod.get("metadata") or {}
            index = str((meta.get("labels") or {}).get(pods.LABEL_INDEX, ""))
            if index.isdigit() and int(index) >= parallelism:
                await self.client.delete(kube.PODS, target.namespace, str(meta.get("name")), grace_period_s=0)

    def forget(self, namespace: str, job: str) -> None:
        """The StreamingJob is gone (its Secret with it): a new one of that name starts afresh."""
        self._job_files.pop((namespace, job), None)

    async def _replace_old_pod(self, namespace: str, name: str) -> None:
        """An older run's pod holds the stable name: delete it and wait until it is gone."""
        if await self.client.get_or_none(kube.PODS, namespace, name) is None:
            return
        await self.client.delete(kube.PODS, namespace, name, grace_period_s=0)
        deadline = asyncio.get_running_loop().time() + REPLACE_TIMEOUT_S
        while await self.client.get_or_none(kube.PODS, namespace, name) is not None:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"old pod {namespace}/{name} still exists after {REPLACE_TIMEOUT_S:g}s")
            await asyncio.sleep(0.1)

    def delete_pod(self, handle: PodWorker, grace_period_s: int) -> None:
        if handle.done:
            return
        task = asyncio.create_task(self._delete(handle, grace_period_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _delete(self, handle: PodWorker, grace_period_s: int) -> None:
        try:
            await self.client.delete(
                kube.PODS, handle.namespace, handle.name, grace_period_s=grace_period_s, uid=handle.uid
            )
        except kube.ConflictError:
            handle.resolve(GONE_EXIT_CODE)  # the name belongs to a newer pod: ours is gone
        except kube.ApiError as e:
            logger.error("could not delete pod %s/%s: %s", handle.namespace, handle.name, e)

    # ------------------------------------------------------------------------------ watch

    async def _watch_forever(self, namespace: str | None) -> None:
        labels = {pods.LABEL_APP: pods.APP, pods.LABEL_COMPONENT: "worker"}
        if self.job is not None:
            labels.update(pods.job_labels(self.job))
        first = True
        while True:
            if not first:
                self.watch_restarts += 1
            first = False
            try:
                listed_from = next(self._seq)
                items = await self.client.list(kube.PODS, namespace, labels)
                self._sync(namespace, items, listed_from)
                async for kind, pod in self.client.watch(
                    kube.PODS, namespace, labels, timeout_s=WATCH_TIMEOUT_S
                ):
                    self._on_pod(kind, pod)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.watch_failures += 1
                logger.warning("watching pods in %s failed: %s", namespace or "all namespaces", e)
                await asyncio.sleep(WATCH_BACKOFF_S)

    def _sync(self, namespace: str | None, items: list[dict[str, Any]], listed_from: int) -> None:
        listed = {
            (str((p.get("metadata") or {}).get("namespace")), str((p.get("metadata") or {}).get("name")))
            for p in items
        }
        for job_id, pods_ in list(self._pending.items()):  # pods deleted while the watch was down
            for name, (ns, _, _) in list(pods_.items()):
                if (namespace is None or ns == namespace) and (ns, name) not in listed:
                    self._set_pending(job_id, ns, name, None)
        present = set()
        for pod in items:
            meta = pod.get("metadata") or {}
            present.add((meta.get("namespace"), meta.get("name"), meta.get("uid")))
            self._on_pod("ADDED", pod)
        for (ns, name), handle in list(self._handles.items()):
            if namespace is not None and ns != namespace:
                continue
            if handle.seq < listed_from and (ns, name, handle.uid) not in present:
                handle.resolve(GONE_EXIT_CODE)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        job_id = (meta.get("annotations") or {}).get(pods.ANNOTATION_JOB_ID)
        if job_id:
            why = None if kind == "DELETED" or meta.get("deletionTimestamp") else pods.pending_reason(pod)
            self._set_pending(str(job_id), *key, why)
        handle = self._handles.get(key)
        if handle is None or (handle.uid and meta.get("uid") and meta.get("uid") != handle.uid):
            return
        disruption = pods.disruption(pod)
        if disruption and handle.disruption is None:
            handle.disruption = disruption
            logger.warning("pod %s/%s is disrupted: %s", *key, disruption)
        code = pods.pod_exit_code(pod)
        if code is None and kind == "DELETED":
            code = GONE_EXIT_CODE
        if code is not None:
            handle.resolve(code)
            if self._handles.get(key) is handle:
                del self._handles[key]
