"""Stand-ins for the node side of a cluster, for tests and benchmarks against the emulated API server.

``ProcessKubelet`` plays the kubelet: it watches pods, runs each pod's container command as a local
process with the pod's environment (ConfigMap and Secret volumes become directories holding their data,
emptyDirs become empty directories, and command arguments under a mount path are rewritten to them),
and reports the phase back: Pending -> Running -> Succeeded/Failed with the container's exit code.
A deleted pod's process is terminated. ``kill`` crashes a pod's process on purpose (SIGKILL).
It plays the scheduler's and the image puller's refusals too: a pod whose ``nodeSelector`` the node's
``node_labels`` do not satisfy stays Pending with ``PodScheduled`` False (``Unschedulable``), and a pod
whose image is in ``missing_images`` stays Pending with its container waiting in ``ErrImagePull``.
``evict`` does what the Eviction API (and a node drain) does to a pod.

``GarbageCollector`` plays the controller-manager's garbage collector: when an owner is deleted, the
objects whose ``ownerReferences`` name its uid are deleted too (kmock does not do it).

``FakeKubelet`` is for load: a pod becomes Running at once and a minimal in-process worker connects to
the control channel (hello, acks to checkpoints, stops when told), so hundreds of jobs cost no processes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.runtime.protocol import Channel

logger = logging.getLogger(__name__)

BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")
TERMINATE_GRACE_S = 3.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(pod: dict[str, Any]) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return str(meta.get("namespace")), str(meta.get("name"))


async def _patch_pod_status(client: kube.KubeClient, pod: dict[str, Any], status: dict[str, Any]) -> None:
    namespace, name = _key(pod)
    current = await client.get_or_none(kube.PODS, namespace, name)
    if current is None or (current.get("metadata") or {}).get("uid") != (pod.get("metadata") or {}).get(
        "uid"
    ):
        return  # deleted, or replaced by a newer pod of the same name
    with contextlib.suppress(kube.NotFoundError):
        await client.patch(kube.PODS, namespace, name, {"status": status}, subresource="status")


def _running_status(container: str) -> dict[str, Any]:
    return {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "startTime": _now(),
        "containerStatuses": [
            {"name": container, "ready": True, "restartCount": 0, "state": {"running": {"startedAt": _now()}}}
        ],
    }


def _ended_status(container: str, code: int) -> dict[str, Any]:
    return {
        "phase": "Succeeded" if code == 0 else "Failed",
        "containerStatuses": [
            {
                "name": container,
                "ready": False,
                "restartCount": 0,
                "state": {
                    "running": None,
                    "terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"},
                },
            }
        ],
    }


@dataclass(slots=True)
class PodProcess:
    uid: str
    process: asyncio.subprocess.Process
    log: Path
    deleted: bool = False


@dataclass(slots=True)
class ProcessKubelet:
    """Runs pods as local processes. ``async with ProcessKubelet(client, root)``; ``root`` holds pod dirs."""

    client: kube.KubeClient
    root: Path
    node_labels: dict[str, str] = field(default_factory=dict)
    missing_images: set[str] = field(default_factory=set)
    # service account name -> kubeconfig of its token: a pod that runs as it (and mounts its token) gets
    # KUBECONFIG, as a real pod gets the in-cluster config (the job manager calls the API)
    kubeconfigs: dict[str, Path] = field(default_factory=dict)
    running: dict[tuple[str, str], PodProcess] = field(default_factory=dict)
    started: int = 0
    _task: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    async def __aenter__(self) -> ProcessKubelet:
        self._task = asyncio.create_task(self._watch_forever())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await _cancel([self._task])
        for proc in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                proc.process.kill()
        await asyncio.gather(*(p.process.wait() for p in self.running.values()), return_exceptions=True)
        await _cancel(self._tasks)

    def kill(self, namespace: str, name: str) -> int:
        """Crashes the pod's process (SIGKILL); returns its pid."""
        proc = self.running[(namespace, name)]
        os.kill(proc.process.pid, signal.SIGKILL)
        return proc.process.pid

    def log_of(self, namespace: str, name: str) -> str:
        proc = self.running.get((namespace, name))
        return proc.log.read_text(errors="replace") if proc else ""

    def pod_log(self, namespace: str, name: str) -> str | None:
        """What the pod log API answers (``ClusterEmulator.pod_logs``): None until the pod has run."""
        return self.log_of(namespace, name) if (namespace, name) in self.running else None

    async def _watch_forever(self) -> None:
        while True:
            try:
                async for kind, pod in self.client.watch(kube.PODS, None, timeout_s=60):
                    if kind == "DELETED":
                        self._on_deleted(pod)
                    elif kind in ("ADDED", "MODIFIED"):
                        await self._maybe_start(pod)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning("kubelet watch failed: %s", e)
            await asyncio.sleep(0.2)

    def _on_deleted(self, pod: dict[str, Any]) -> None:
        proc = self.running.get(_key(pod))
        if proc is None or proc.uid != (pod.get("metadata") or {}).get("uid") or proc.deleted:
            return
        proc.deleted = True
        self._spawn(self._terminate(proc))

    async def _terminate(self, proc: PodProcess) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.process.terminate()
        try:
            await asyncio.wait_for(proc.process.wait(), TERMINATE_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.process.kill()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _maybe_start(self, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        key, uid = _key(pod), str(meta.get("uid"))
        if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase"):
            return
        current = self.running.get(key)
        if current is not None and current.uid == uid:
            return
        refused = self._refusal(pod)
        if refused is not None:
            await _patch_pod_status(self.client, pod, refused)
            return
        directory = self.root / key[0] / f"{key[1]}-{uid[:8]}"
        try:
            argv, env, cwd = await self._prepare(pod, directory)
        except kube.ApiError as e:
            logger.warning("pod %s/%s cannot start: %s", *key, e)
            return
        log = directory / "container.log"
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        self.running[key] = PodProcess(uid, process, log)
        self.started += 1
        container = pod["spec"]["containers"][0]["name"]
        await _patch_pod_status(self.client, pod, _running_status(container))
        self._spawn(self._reap(pod, container, process))

    def _refusal(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        """The Pending status of a pod this node cannot schedule or whose image it cannot pull."""
        spec = pod.get("spec") or {}
        wanted = spec.get("nodeSelector") or {}
        if not wanted.items() <= self.node_labels.items():
            message = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
            condition = {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
            }
            return {"phase": "Pending", "conditions": [condition]}
        container = spec["containers"][0]
        if container.get("image") in self.missing_images:
            waiting = {"reason": "ErrImagePull", "message": f"pull access denied for {container['image']}"}
            statuses = [
                {"name": container["name"], "ready": False, "restartCount": 0, "state": {"waiting": waiting}}
            ]
            scheduled = {"type": "PodScheduled", "status": "True"}
            return {"phase": "Pending", "conditions": [scheduled], "containerStatuses": statuses}
        return None

    async def _reap(self, pod: dict[str, Any], container: str, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        code = 128 - code if code < 0 else code  # killed by a signal: 128 + signal, as a container runtime
        await _patch_pod_status(self.client, pod, _ended_status(container, code))

    async def _prepare(self, pod: dict[str, Any], directory: Path) -> tuple[list[str], dict[str, str], str]:
        namespace = _key(pod)[0]
        spec = pod["spec"]
        container = spec["containers"][0]
        volumes: dict[str, Path] = {}
        for volume in spec.get("volumes") or []:
            path = directory / "volumes" / volume["name"]
            path.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                cm = await self.client.get(kube.CONFIGMAPS, namespace, volume["configMap"]["name"])
                for file, content in (cm.get("data") or {}).items():
                    (path / file).write_text(content)
            elif "secret" in volume:
                files = await self._secret(namespace, volume["secret"]["secretName"])
                items = volume["secret"].get("items")  # only these keys, under these paths
                chosen = {i["path"]: files[i["key"]] for i in items} if items else files
                for file, content in chosen.items():
                    (path / file).write_text(content)
            volumes[volume["name"]] = path
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts") or []}
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        argv = [_rewrite(arg, mounts) for arg in argv]
        if argv and argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
        account = spec.get("serviceAccountName")
        if account in self.kubeconfigs and spec.get("automountServiceAccountToken") is not False:
            env["KUBECONFIG"] = str(self.kubeconfigs[account])
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                env.update(await self._secret(namespace, source["secretRef"]["name"]))
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = str(var["value"])
            elif "secretKeyRef" in (var.get("valueFrom") or {}):
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = (await self._secret(namespace, ref["name"]))[ref["key"]]
        return argv, env, str(directory)

    async def _secret(self, namespace: str, name: str) -> dict[str, str]:
        secret = await self.client.get(kube.SECRETS, namespace, name)
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        data.update(secret.get("stringData") or {})
        return data


async def evict(client: kube.KubeClient, namespace: str, name: str) -> None:
    """What the Eviction API does to a pod (``kubectl drain`` evicts each pod of the node): it marks the
    pod with the ``DisruptionTarget`` condition (reason ``EvictionByEvictionAPI``), then deletes it
    gracefully. (kmock serves no ``pods/eviction`` subresource, so the two steps are done here.)"""
    pod = await client.get(kube.PODS, namespace, name)
    conditions = [
        c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") != "DisruptionTarget"
    ]
    conditions.append(
        {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "EvictionByEvictionAPI",
            "message": "Eviction API: evicting",
            "lastTransitionTime": _now(),
        }
    )
    await client.patch(
        kube.PODS, namespace, name, {"status": {"conditions": conditions}}, subresource="status"
    )
    await client.delete(kube.PODS, namespace, name, grace_period_s=30)


async def _cancel(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancels background tasks and waits until they have ended."""
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    await asyncio.gather(*live, return_exceptions=True)


def _rewrite(arg: str, mounts: dict[str, Path]) -> str:
    for mount, local in mounts.items():
        if arg == mount or arg.startswith(mount.rstrip("/") + "/"):
            return str(local) + arg[len(mount.rstrip("/")) :]
    return arg


# owner -> what it may own: a StreamingJob its pods, Secret, Service (and the Savepoints the operator
# records for it); a StreamingJobDeployment its StreamingJobs
OWNED = {
    kube.STREAMINGJOBS: (kube.PODS, kube.CONFIGMAPS, kube.SECRETS, kube.SERVICES, kube.SAVEPOINTS),
    kube.STREAMINGJOBDEPLOYMENTS: (kube.STREAMINGJOBS,),
}


@dataclass(slots=True)
class GarbageCollector:
    """Deletes what a deleted StreamingJob or StreamingJobDeployment owns (``OWNED``), as the cluster's
    garbage collector does through ownerReferences."""

    client: kube.KubeClient
    collected: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def __aenter__(self) -> GarbageCollector:
        self._tasks = [asyncio.create_task(self._watch_forever(owner)) for owner in OWNED]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await _cancel(self._tasks)

    async def _watch_forever(self, resource: kube.Resource) -> None:
        while True:
            try:
                async for kind, owner in self.client.watch(resource, None, timeout_s=60):
                    if kind == "DELETED":
                        await self._collect(owner, OWNED[resource])
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning("garbage collector watch failed: %s", e)
            await asyncio.sleep(0.2)

    async def _collect(self, owner: dict[str, Any], dependents: tuple[kube.Resource, ...]) -> None:
        namespace, uid = (
            (owner.get("metadata") or {}).get("namespace"),
            (owner.get("metadata") or {}).get("uid"),
        )
        for resource in dependents:
            for obj in await self.client.list(resource, namespace):
                meta = obj.get("metadata") or {}
                if any(ref.get("uid") == uid for ref in meta.get("ownerReferences") or []):
                    await self.client.delete(resource, namespace, meta["name"])
                    self.collected += 1


@dataclass(slots=True)
class FakeKubelet:
    """Marks pods Running and connects a minimal worker per pod to the control channel (no processes)."""

    client: kube.KubeClient
    connected: int = 0
    _task: asyncio.Task[None] | None = None
    _workers: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)

    async def __aenter__(self) -> FakeKubelet:
        self._task = asyncio.create_task(self._watch_forever())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await _cancel([self._task, *self._workers.values()])

    async def _watch_forever(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                async for kind, pod in self.client.watch(kube.PODS, None, timeout_s=60):
                    phase = (pod.get("status") or {}).get("phase")
                    key = _key(pod)
                    if kind == "ADDED" and not phase and key not in self._workers:
                        self._workers[key] = asyncio.create_task(self._run(pod))
                    elif kind == "DELETED" and key in self._workers:
                        self._workers.pop(key).cancel()
            await asyncio.sleep(0.2)

    async def _run(self, pod: dict[str, Any]) -> None:
        container = pod["spec"]["containers"][0]
        args = container["command"]
        env = {v["name"]: v.get("value", "") for v in container.get("env") or []}
        host, _, port = args[args.index("--control") + 1].rpartition(":")
        job_id = args[args.index("--job-id") + 1]
        index = int(args[args.index("--index") + 1])
        await _patch_pod_status(self.client, pod, _running_status(container["name"]))
        reader, writer = await asyncio.open_connection(host, int(port))
        channel = Channel(reader, writer)
        hello = {"type": "hello", "job_id": job_id, "index": index, "pid": 0}
        await channel.send({**hello, "attempt": 0, "token": env.get("HELIOS_WORKER_TOKEN", "")})
        self.connected += 1
        code = 0
        try:
            while (message := await channel.receive()) is not None:
                if message.get("type") == "checkpoint":
                    ack = {
                        "type": "ack",
                        "checkpoint_id": message["checkpoint_id"],
                        "tasks": {},
                        "shared": [],
                    }
                    await channel.send({**ack, "bytes": 0, "duration_ms": 0.0})
                elif message.get("type") == "stop":
                    await channel.send({"type": "stopped", "error": None})
                    break
        except (ConnectionError, OSError):
            code = 3
        finally:
            await channel.close()
        await _patch_pod_status(self.client, pod, _ended_status(container["name"], code))
