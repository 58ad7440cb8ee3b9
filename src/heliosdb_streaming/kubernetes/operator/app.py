"""The operator's composition root: API client, bindings, pod launcher, control plane, kopf.

The job store comes from the caller (``helios operator`` gives the SQLite store in the home), so that
this substrate does not import the embedded one.

Startup order matters: bindings are loaded and the pod watch runs before the control plane starts,
because the control plane recovers the jobs that were active and relaunches their pods at once.
On shutdown kopf stops first, then the control plane stops every run (the jobs keep their status and
run again, from their latest checkpoint, when an operator starts over the same ``home``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import kopf

from heliosdb_streaming.control import paths, usercode
from heliosdb_streaming.control.controller import ControlPlane
from heliosdb_streaming.control.files import JobFiles
from heliosdb_streaming.control.store import JobStore
from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.operator import events, handlers, pods, readapi
from heliosdb_streaming.kubernetes.operator.bindings import Bindings
from heliosdb_streaming.kubernetes.operator.expiry import JobExpiry
from heliosdb_streaming.kubernetes.operator.launcher import KubernetesLauncher
from heliosdb_streaming.kubernetes.operator.reconciler import StreamingJobReconciler
from heliosdb_streaming.kubernetes.operator.savepoints import SavepointController
from heliosdb_streaming.kubernetes.operator.statuswriter import StatusWriter
from heliosdb_streaming.runtime import logformat

logger = logging.getLogger(__name__)

DEFAULT_IMAGE = "heliosdb-streaming:latest"
DEFAULT_CONTROL_PORT = 7070


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
    store: JobStore,
    files: JobFiles,
    *,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Runs the operator over ``store`` and ``files`` (job.json, read by the launcher, and the job
    logs) until ``stop_flag`` is set or SIGINT/SIGTERM arrives.

    ``options.home`` must exist and be private (0700): jobs.db and job.json hold connection strings."""
    connection = kube.load_connection_info()
    namespaces = list(options.namespaces)
    async with kube.KubeClient(connection) as client:
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
        await launcher.start()
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
        savepoint_controller = SavepointController(client, plane, bindings)
        roots = allowed_roots(options)
        user_code = usercode.UserCodePolicy.server(options.python_modules, import_check=False)
        jobs_reconciler = StreamingJobReconciler(
            client, plane, bindings, launcher, status_writer, savepoint_controller, roots, user_code
        )
        plane.status_listeners.append(status_writer.mark)
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
            await kopf.operator(
                registry=handlers.build_registry(jobs_reconciler, savepoint_controller, connection),
                settings=handlers.settings(namespaces),
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
