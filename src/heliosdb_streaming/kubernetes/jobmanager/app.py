"""The job manager: the control plane of one StreamingJob, in a pod of its own (``helios jobmanager``).

As the Flink operator's per-job JobManager, this process (not the operator) runs the job: the control
plane (``control.controller.ControlPlane``, the code the embedded substrate runs in-process), the worker
channel its pods connect to, the checkpoint coordinator, the restart policy, the launcher of its worker
pods (watching that job's pods only), the status writer (it patches its StreamingJob's status itself),
the Savepoint resources it records, ``ttlSecondsAfterFinished`` (it deletes its StreamingJob), and the
read API the API server asks for details, metrics and logs.
The operator only reconciles resources and forwards spec changes to its HTTP API (``jobmanager.api``),
so an operator restart touches no job.

Durable state: the job store is in the pod's home (an emptyDir); on start ``recovery.rebuild`` writes
it back from the checkpoint storage and the resource's status when the pod is new, so a job manager
that died is replaced by one that recovers the job from its latest checkpoint. It then reconciles its
StreamingJob once on its own (a new job is submitted without waiting for the operator) and advertises
where it listens in ``status.jobManager``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from heliosdb_streaming.control.files import JobFiles
from heliosdb_streaming.control.store import JobStore
from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.jobmanager import api, recovery
from heliosdb_streaming.kubernetes.operator import mapping, pods, readapi
from heliosdb_streaming.kubernetes.operator.app import OperatorOptions, assemble_runtime
from heliosdb_streaming.kubernetes.operator.bindings import Bindings
from heliosdb_streaming.kubernetes.operator.expiry import JobExpiry
from heliosdb_streaming.kubernetes.operator.launcher import KubernetesLauncher
from heliosdb_streaming.model.errors import InvalidJobConfigError
from heliosdb_streaming.runtime.checkpoint.storage import storage_from_uri

logger = logging.getLogger(__name__)

DEFAULT_API_PORT = 8081
FIRST_RECONCILE_RETRY_S = 1.0
SHUTDOWN_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class JobManagerOptions:
    """``operator``: the pod, storage and policy settings the operator passed down (its own options);
    ``advertise_host``: how the operator and the workers reach this pod (its Service's DNS name in a
    cluster); ``api_port``: the HTTP API (0 picks one)."""

    operator: OperatorOptions
    namespace: str
    name: str
    advertise_host: str
    api_host: str = "0.0.0.0"
    api_port: int = DEFAULT_API_PORT


async def _resource(
    client: kube.KubeClient, namespace: str, name: str, stop: asyncio.Event
) -> dict[str, Any]:
    """The StreamingJob; waits while it is not readable yet (a watch cache behind the operator)."""
    while not stop.is_set():
        with contextlib.suppress(kube.NotFoundError, OSError, TimeoutError):
            return await client.get(kube.STREAMINGJOBS, namespace, name)
        await asyncio.sleep(FIRST_RECONCILE_RETRY_S)
    raise asyncio.CancelledError


async def run(
    options: JobManagerOptions,
    open_store: Callable[[], tuple[JobStore, JobFiles]],
    *,
    stop_flag: asyncio.Event | None = None,
) -> None:
    """Runs the job manager until ``stop_flag`` is set or SIGTERM arrives. On SIGTERM the runs stop with
    the process (the workers lose their channel and the next job manager recovers them); a cancel is
    only what the operator forwards."""
    op = options.operator
    stop = stop_flag or asyncio.Event()
    if stop_flag is None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    connection = kube.load_connection_info()
    async with kube.KubeClient(connection) as client:
        body = await _resource(client, options.namespace, options.name, stop)
        store, files = open_store()
        bindings = Bindings(op.home)
        bindings.load()
        uid = str(body["metadata"].get("uid") or "")
        job_id = mapping.job_id_for(uid) or f"job-{options.namespace}-{options.name}"
        spec: Mapping[str, Any] = body.get("spec") or {}
        try:
            config = await asyncio.to_thread(mapping.job_config, options.name, dict(spec))
        except InvalidJobConfigError:
            config = None  # nothing ran from it: the reconciler below rejects it and says why
        if config is not None:
            # no error is swallowed here: a storage that cannot be read now must not make the job start
            # afresh; the process exits and its container restarts
            storage = storage_from_uri(
                config.checkpoint_storage or op.checkpoint_storage or str(op.home / "checkpoints")
            )
            await recovery.rebuild(store, bindings, body, job_id, config, storage)
        await _serve(options, client, store, files, bindings, body, stop)


async def _serve(
    options: JobManagerOptions,
    client: kube.KubeClient,
    store: JobStore,
    files: JobFiles,
    bindings: Bindings,
    body: dict[str, Any],
    stop: asyncio.Event,
) -> None:
    op = options.operator
    control_address = op.control_address
    pod_settings = pods.PodSettings(
        image=op.image,
        control_address=control_address,
        env=op.worker_env,
        env_secret=op.env_secret,
        service_account=op.service_account,
        python_modules=op.python_modules,
    )
    launcher = KubernetesLauncher(client, pod_settings, bindings.target, [options.namespace], options.name)
    await launcher.start()
    runtime = assemble_runtime(client, bindings, launcher, store, files, op)
    plane, writer, savepoints, reconciler = (
        runtime.plane,
        runtime.status_writer,
        runtime.savepoints,
        runtime.reconciler,
    )
    roots, user_code = runtime.roots, runtime.user_code
    tasks: list[asyncio.Task[None]] = []
    runner: web.AppRunner | None = None
    try:
        await plane.start()
        if control_address is None:  # workers reach the plane where it listens, as advertised
            port = plane.control_address.rsplit(":", 1)[1]
            launcher.settings = dataclasses.replace(
                pod_settings, control_address=f"{options.advertise_host}:{port}"
            )
        app = readapi.create_read_app(plane, bindings, op.api_token, allowed_roots=roots, user_code=user_code)
        api.add_routes(app, reconciler, savepoints)
        runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        await web.TCPSite(runner, options.api_host, options.api_port).start()
        api_port = int(runner.addresses[0][1])
        url = f"http://{options.advertise_host}:{api_port}"
        logger.info(
            "job manager of %s/%s: API on %s, workers connect to %s",
            options.namespace,
            options.name,
            url,
            launcher.settings.control_address,
        )
        tasks.append(asyncio.create_task(writer.write_status_forever()))
        tasks.append(asyncio.create_task(JobExpiry(client, plane, bindings).expire_forever()))
        tasks.append(
            asyncio.create_task(
                _first_reconcile(app, body, client, options, url, launcher.settings.control_address or "")
            )
        )
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if runner is not None:
            await runner.cleanup()
        await plane.close()
        await launcher.close()


async def _first_reconcile(
    app: web.Application,
    body: dict[str, Any],
    client: kube.KubeClient,
    options: JobManagerOptions,
    url: str,
    control_address: str,
) -> None:
    """Advertises this job manager in ``status.jobManager``, then reconciles the StreamingJob as the
    operator would, until a pass ends without a retry (a new job is submitted at once)."""
    advert = {"status": {"jobManager": {"url": url, "controlAddress": control_address}}}
    while True:
        try:
            await client.patch(
                kube.STREAMINGJOBS, options.namespace, options.name, advert, subresource="status"
            )
            break
        except kube.NotFoundError:
            return
        except (kube.ApiError, OSError, TimeoutError) as e:
            logger.warning("could not advertise the job manager: %s", e)
            await asyncio.sleep(FIRST_RECONCILE_RETRY_S)
    while True:
        current = await client.get_or_none(kube.STREAMINGJOBS, options.namespace, options.name) or body
        if (current.get("metadata") or {}).get("deletionTimestamp"):
            return  # the operator forwards the finalizer
        async with app[api.LOCK]:
            status, answer = await api.outcome(functools.partial(app[api.RECONCILER].reconcile_job, current))
        if status != 503:
            if status == 422:
                logger.error("StreamingJob %s/%s: %s", options.namespace, options.name, answer["message"])
            return
        await asyncio.sleep(float(answer.get("retry_after") or FIRST_RECONCILE_RETRY_S))
