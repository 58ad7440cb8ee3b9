"""The operator's composition root: API client, bindings, pod launcher, control plane, kopf.

The job store comes from the caller (``helios operator`` gives the SQLite store in the home), so that
this substrate does not import the embedded one.

Startup order matters: bindings are loaded and the pod watch runs before the control plane starts,
because the control plane recovers the jobs that were active and relaunches their pods at once.
On shutdown kopf stops first, then the control plane stops every run (the jobs keep their status and
run again, from their latest checkpoint, when an operator starts over the same ``home``).

With leader election (``--leader-election``, the chart's default with two replicas) all of that waits
until this replica holds the Lease (``operator.leader``): a standby serves only its health and
metrics port (``operator.opmetrics``) and has not even opened the job store. Taking over is an
operator start over the shared home: the control plane recovers the active jobs and relaunches their
pods from their latest checkpoints. A leader that cannot renew the Lease exits at once (status 3)
without touching the jobs, which the new leader owns by then (client-go's leaders die the same way).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf

from heliosdb_streaming.control import paths, usercode
from heliosdb_streaming.control.controller import ControlPlane
from heliosdb_streaming.control.files import JobFiles
from heliosdb_streaming.control.service import JobServiceCore
from heliosdb_streaming.control.store import JobStore
from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.operator import (
    bluegreen,
    events,
    handlers,
    opmetrics,
    pods,
    readapi,
    readproxy,
)
from heliosdb_streaming.kubernetes.operator.bindings import Bindings
from heliosdb_streaming.kubernetes.operator.expiry import JobExpiry
from heliosdb_streaming.kubernetes.operator.jmpods import JobManagerSettings
from heliosdb_streaming.kubernetes.operator.jobmanagers import JobManagers
from heliosdb_streaming.kubernetes.operator.launcher import KubernetesLauncher
from heliosdb_streaming.kubernetes.operator.leader import LeaderElector, LeaseSettings
from heliosdb_streaming.kubernetes.operator.reconciler import StreamingJobReconciler
from heliosdb_streaming.kubernetes.operator.resync import OwnedObjects, resync_interval
from heliosdb_streaming.kubernetes.operator.savepoints import SavepointController
from heliosdb_streaming.kubernetes.operator.statuswriter import StatusWriter
from heliosdb_streaming.runtime import logformat

logger = logging.getLogger(__name__)

DEFAULT_IMAGE = "heliosdb-streaming:latest"
DEFAULT_CONTROL_PORT = 7070
LOST_LEADERSHIP_EXIT = 3
LEADER_LABEL = "streaming.heliosdb.io/operator-leader"  # the chart's operator Service selects "true"


@dataclass(frozen=True, slots=True)
class OperatorOptions:
    """Everything ``helios operator`` takes; ``namespaces`` empty means all namespaces."""

    home: Path
    namespaces: tuple[str, ...] = ()
    control_host: str = "0.0.0.0"
    control_port: int = DEFAULT_CONTROL_PORT
    control_address: str | None = None  # what pods connect to; default: host:port as bound
    max_parallelism: int = 1024
    image: str = DEFAULT_IMAGE
    checkpoint_storage: str | None = None  # default for jobs without spec.checkpointStorage
    env_secret: str | None = None
    service_account: str | None = None
    worker_env: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    read_host: str = "0.0.0.0"
    read_port: int | None = readapi.DEFAULT_READ_PORT  # the internal read API; None: not served
    api_token: str | None = None  # bearer token the read API requires (HELIOS_API_TOKEN)
    allow_paths: tuple[Path, ...] = ()  # besides the home: where a spec's local files may be
    python_modules: tuple[str, ...] = ()  # the modules python steps may name (none by default)
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = opmetrics.DEFAULT_METRICS_PORT  # /metrics and /healthz; None: not served
    lease: LeaseSettings | None = None  # leader election over this Lease; None: always active
    # a job manager pod per StreamingJob runs its control plane (``jobmanagers``); else this process
    job_managers: bool = False
    jobmanager_service_account: str | None = None
    jobmanager_args: tuple[str, ...] = ()  # extra ``helios jobmanager`` arguments (tests: loopback ports)
    jobmanager_url_from_status: bool = False  # no cluster DNS (tests): call the address it advertised
    jobmanager_key: str | None = None  # the job managers' API tokens derive from it (every replica's)
    watch_timeout_s: float = handlers.WATCH_SERVER_TIMEOUT_S  # a watch stream's life, then kopf lists again

    @classmethod
    def from_env(cls, home: Path, **overrides: object) -> OperatorOptions:
        """Defaults from the environment the chart sets: image, control address, storage, secret."""
        env = os.environ
        values: dict[str, object] = {
            "home": home,
            "image": env.get("HELIOS_IMAGE") or DEFAULT_IMAGE,
            "control_address": env.get("HELIOS_CONTROL_ADDRESS") or None,
            "checkpoint_storage": env.get("HELIOS_CHECKPOINT_STORAGE") or None,
            "env_secret": env.get("HELIOS_WORKER_ENV_SECRET") or None,
            "service_account": env.get("HELIOS_WORKER_SERVICE_ACCOUNT") or None,
            "worker_env": tuple((k, env[k]) for k in pods.S3_ENV if env.get(k)),
            "api_token": env.get("HELIOS_API_TOKEN") or None,
            "job_managers": env.get("HELIOS_JOB_MANAGERS", "").lower() in ("1", "true", "yes"),
            "jobmanager_service_account": env.get("HELIOS_JOBMANAGER_SERVICE_ACCOUNT") or None,
            "jobmanager_key": env.get("HELIOS_JOBMANAGER_KEY") or None,
            "watch_timeout_s": float(env.get("HELIOS_WATCH_TIMEOUT_S") or handlers.WATCH_SERVER_TIMEOUT_S),
            "allow_paths": tuple(Path(p) for p in env.get("HELIOS_ALLOW_PATHS", "").split(os.pathsep) if p),
            "python_modules": tuple(
                m.strip() for m in env.get("HELIOS_PYTHON_MODULES", "").split(",") if m.strip()
            ),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def allowed_roots(options: OperatorOptions) -> paths.AllowedRoots:
    """The home, ``--allow-path`` dirs and a ``file://`` default checkpoint storage. No base: a relative
    path would resolve against a worker pod's working directory, which the operator cannot see."""
    dirs = [options.home, *options.allow_paths]
    default_storage = paths.local_location(options.checkpoint_storage or "s3://")
    if default_storage is not None:
        dirs.append(Path(default_storage))
    return paths.AllowedRoots.of(dirs, base=None)


async def run(
    options: OperatorOptions,
    open_store: Callable[[], tuple[JobStore, JobFiles]],
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Runs the operator until ``stop_flag`` is set or SIGINT/SIGTERM arrives. ``open_store`` gives the
    job store and files (job.json, read by the launcher, and the job logs), called once this replica
    leads.

    ``options.home`` must exist and be private (0700): jobs.db and job.json hold connection strings."""
    connection = kube.load_connection_info()
    metrics = opmetrics.OperatorMetrics()
    stop = stop_flag or asyncio.Event()
    loop = asyncio.get_running_loop()
    if stop_flag is None:  # kopf installs its own once it runs; these stop a standby
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    async with kube.KubeClient(connection) as client, contextlib.AsyncExitStack() as stack:
        if options.metrics_port is not None:
            await stack.enter_async_context(
                opmetrics.serve(metrics, options.metrics_host, options.metrics_port)
            )
        if options.lease is None:
            metrics.set_leading(True)
            await _lead(options, open_store, client, connection, metrics, stop, ready_flag)
            return
        lease = options.lease
        if not lease.namespace:  # the kubeconfig's (in a pod: its service account's) namespace
            lease = dataclasses.replace(lease, namespace=connection.default_namespace or "default")
        elector = LeaderElector(client, lease, on_change=metrics.set_leading)
        await _label_own_pod(client, leader=False)  # a restarted leader's pod must not keep "true"
        acquired = asyncio.create_task(elector.acquire())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({acquired, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not acquired.done():
            acquired.cancel()
            stopped.cancel()
            return
        stopped.cancel()
        await _label_own_pod(client, leader=True)
        hold = asyncio.create_task(elector.hold())
        lead = asyncio.create_task(_lead(options, open_store, client, connection, metrics, stop, ready_flag))
        await asyncio.wait({hold, lead}, return_when=asyncio.FIRST_COMPLETED)
        if hold.done() and not lead.done():
            logger.critical("lost the Lease: exiting without stopping the jobs the new leader runs")
            logging.shutdown()
            os._exit(LOST_LEADERSHIP_EXIT)
        hold.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hold
        await elector.release()
        await lead  # its exception, if any


async def _label_own_pod(client: kube.KubeClient, *, leader: bool) -> None:
    """Sets ``LEADER_LABEL`` on this replica's pod (``POD_NAME``/``POD_NAMESPACE``, the chart's
    downward API env), so that the operator Service reaches the leader only. Outside a pod: nothing."""
    name, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if not name or not namespace:
        return
    patch = {"metadata": {"labels": {LEADER_LABEL: "true" if leader else "false"}}}
    try:
        await client.patch(kube.PODS, namespace, name, patch)
    except (kube.ApiError, OSError, TimeoutError) as e:
        logger.warning("could not label pod %s/%s %s: %s", namespace, name, LEADER_LABEL, e)


@dataclass(frozen=True, slots=True)
class JobRuntime:
    """The control plane and the objects that bind it to the cluster: what runs jobs, in the operator
    (without job managers) or in a job manager pod (one job); both assemble it here."""

    plane: ControlPlane
    status_writer: StatusWriter
    savepoints: SavepointController
    reconciler: StreamingJobReconciler
    roots: paths.AllowedRoots
    user_code: usercode.UserCodePolicy


def assemble_runtime(
    client: kube.KubeClient,
    bindings: Bindings,
    launcher: KubernetesLauncher,
    store: JobStore,
    files: JobFiles,
    options: OperatorOptions,
) -> JobRuntime:
    """The control plane over ``launcher``'s pods, its status writer (fed by the pods and the plane),
    the Savepoint controller and the StreamingJob reconciler."""
    plane = ControlPlane(
        home=options.home,
        store=store,
        launcher=launcher,
        files=files,
        max_parallelism=options.max_parallelism,
        checkpoint_uri=options.checkpoint_storage,
        control_host=options.control_host,
        control_port=options.control_port,
    )
    status_writer = StatusWriter(client, plane, bindings, launcher.pending_pods)
    launcher.listeners.append(status_writer.mark)
    plane.status_listeners.append(status_writer.mark)
    savepoints = SavepointController(client, plane, bindings)
    roots = allowed_roots(options)
    user_code = usercode.UserCodePolicy.server(options.python_modules, import_check=False)
    reconciler = StreamingJobReconciler(
        client, plane, bindings, launcher, status_writer, savepoints, roots, user_code
    )
    return JobRuntime(plane, status_writer, savepoints, reconciler, roots, user_code)


async def _lead(
    options: OperatorOptions,
    open_store: Callable[[], tuple[JobStore, JobFiles]],
    client: kube.KubeClient,
    connection: kopf.ConnectionInfo,
    metrics: opmetrics.OperatorMetrics,
    stop_flag: asyncio.Event,
    ready_flag: asyncio.Event | None,
) -> None:
    """The active operator: control plane, read API, status writer, expiry and kopf."""
    if options.job_managers:
        await _lead_job_managers(options, open_store, client, connection, metrics, stop_flag, ready_flag)
        return
    namespaces = list(options.namespaces)
    store, files = open_store()
    bindings = Bindings(options.home)
    bindings.load()
    pod_settings = pods.PodSettings(
        image=options.image,
        control_address=options.control_address,
        env=options.worker_env,
        env_secret=options.env_secret,
        service_account=options.service_account,
        python_modules=options.python_modules,
    )
    launcher = KubernetesLauncher(client, pod_settings, bindings.target, namespaces or None)
    metrics.watch_source = lambda: (launcher.watch_restarts, launcher.watch_failures)
    await launcher.start()
    runtime = assemble_runtime(client, bindings, launcher, store, files, options)
    plane, status_writer, roots, user_code = (
        runtime.plane,
        runtime.status_writer,
        runtime.roots,
        runtime.user_code,
    )
    savepoint_controller, jobs_reconciler = runtime.savepoints, runtime.reconciler
    writer: asyncio.Task[None] | None = None
    expiry: asyncio.Task[None] | None = None
    read_api = contextlib.AsyncExitStack()
    try:
        await plane.start()
        logger.info(
            "control plane listening on %s:%d (workers connect to %s)",
            options.control_host,
            options.control_port,
            options.control_address or plane.control_address,
        )
        if options.read_port is not None:  # for `helios server --substrate kubernetes`
            await read_api.enter_async_context(
                readapi.serve(
                    plane,
                    bindings,
                    options.read_host,
                    options.read_port,
                    options.api_token,
                    allowed_roots=roots,
                    user_code=user_code,
                )
            )
        writer = asyncio.create_task(status_writer.write_status_forever())
        expiry = asyncio.create_task(JobExpiry(client, plane, bindings).expire_forever())
        # kopf posts its warnings about an object (a handler's error and traceback) as Events
        logging.getLogger("kopf.objects").addFilter(logformat.MASKING_FILTER)
        logging.getLogger("kopf.objects").addFilter(events.QUIET_WAITS)  # no Event per wait retry
        owned = OwnedObjects(client, bindings, launcher)

        async def recreate_owned(body: Mapping[str, Any]) -> None:
            meta = body.get("metadata") or {}
            await owned.resync(str(meta.get("namespace")), str(meta.get("name")))

        registry = handlers.build_registry(
            jobs_reconciler,
            savepoint_controller,
            connection,
            metrics,
            resync=recreate_owned,
            resync_interval_s=resync_interval(),
        )
        bluegreen.register(registry, bluegreen.BlueGreenController(client, plane_progress(plane, bindings)))
        await kopf.operator(
            registry=registry,
            settings=handlers.settings(namespaces, options.watch_timeout_s),
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=True,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        for task in (writer, expiry):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await read_api.aclose()
        await plane.close()
        await launcher.close()


def plane_progress(plane: ControlPlane, bindings: Bindings) -> bluegreen.Progress:
    """A StreamingJob's checkpoints and source lag from this operator's control plane."""

    async def progress(obj: Mapping[str, Any]) -> tuple[int, int | None] | None:
        meta = obj.get("metadata") or {}
        binding = bindings.for_object(str(meta.get("namespace")), str(meta.get("name")))
        entry = plane.jobs.get(binding.job_id) if binding else None
        return (entry.metrics.checkpoint_count, entry.metrics.source_lag()) if entry else None

    return progress


def jobmanager_settings(options: OperatorOptions) -> tuple[JobManagerSettings, dict[str, str]]:
    """What every job manager pod gets: the operator's image and defaults as plain env, and the
    storage credentials (for its Secret)."""
    env: list[tuple[str, str]] = [("HELIOS_IMAGE", options.image)]
    plain = {
        "HELIOS_CHECKPOINT_STORAGE": options.checkpoint_storage,
        "HELIOS_WORKER_ENV_SECRET": options.env_secret,
        "HELIOS_WORKER_SERVICE_ACCOUNT": options.service_account,
        "HELIOS_ALLOW_PATHS": os.pathsep.join(str(p) for p in options.allow_paths) or None,
        "HELIOS_PYTHON_MODULES": ",".join(options.python_modules) or None,
    }
    env += [(k, v) for k, v in plain.items() if v]
    env += [(k, v) for k, v in options.worker_env if k not in pods.CREDENTIAL_ENV]
    credentials = {k: v for k, v in options.worker_env if k in pods.CREDENTIAL_ENV}
    settings = JobManagerSettings(
        image=options.image,
        service_account=options.jobmanager_service_account,
        env=tuple(env),
        args=options.jobmanager_args,
    )
    return settings, credentials


async def _lead_job_managers(
    options: OperatorOptions,
    open_store: Callable[[], tuple[JobStore, JobFiles]],
    client: kube.KubeClient,
    connection: kopf.ConnectionInfo,
    metrics: opmetrics.OperatorMetrics,
    stop_flag: asyncio.Event,
    ready_flag: asyncio.Event | None,
) -> None:
    """The active operator with job managers: kopf only. Every job runs in its job manager's pod, so
    this process holds no job state: a restart, or a standby taking over, recovers nothing."""
    namespaces = list(options.namespaces)
    settings, credentials = jobmanager_settings(options)
    key = (options.jobmanager_key or options.api_token or "").encode()
    if not key:
        raise RuntimeError("job managers need HELIOS_JOBMANAGER_KEY (or HELIOS_API_TOKEN) for their tokens")
    managers = JobManagers(
        client,
        settings,
        credentials,
        key,
        url_from_status=options.jobmanager_url_from_status,
        namespaces=tuple(ns for ns in options.namespaces if not set(ns) & set("*?[!")),
    )
    logging.getLogger("kopf.objects").addFilter(logformat.MASKING_FILTER)
    logging.getLogger("kopf.objects").addFilter(events.QUIET_WAITS)
    read_api = contextlib.AsyncExitStack()
    try:
        if options.read_port is not None:  # for `helios server --substrate kubernetes`
            await read_api.enter_async_context(
                readproxy.serve(
                    managers,
                    _checking_core(options, open_store, client),
                    options.max_parallelism,
                    options.read_host,
                    options.read_port,
                    options.api_token,
                )
            )
        registry = handlers.build_registry(managers, managers, connection, metrics, resync=managers.ensure)
        bluegreen.register(registry, bluegreen.BlueGreenController(client, managers.progress))
        await kopf.operator(
            registry=registry,
            settings=handlers.settings(namespaces, options.watch_timeout_s),
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=True,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await read_api.aclose()
        await managers.close()


def _checking_core(
    options: OperatorOptions, open_store: Callable[[], tuple[JobStore, JobFiles]], client: kube.KubeClient
) -> JobServiceCore:
    """The submit dry run's checks over a control plane that never starts (its store stays empty)."""
    store, files = open_store()
    launcher = KubernetesLauncher(client, pods.PodSettings(image=options.image), lambda _job_id: None)
    plane = ControlPlane(
        home=options.home,
        store=store,
        launcher=launcher,
        files=files,
        max_parallelism=options.max_parallelism,
        checkpoint_uri=options.checkpoint_storage,
    )
    user_code = usercode.UserCodePolicy.server(options.python_modules, import_check=False)
    return JobServiceCore(plane, allowed_roots=allowed_roots(options), user_code=user_code)
