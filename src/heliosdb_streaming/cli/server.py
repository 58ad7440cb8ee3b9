"""``helios server``: the REST API, over the embedded control plane or over Kubernetes resources.

``--substrate embedded`` (the default) runs the control plane in this process. SIGTERM or SIGINT stops
it gracefully: the listener closes, requests in flight finish, then the JobManager stops every worker.
Jobs keep their status in the home directory, and the jobs that were active run again on the next
start over the same home.

``--substrate kubernetes`` maps the same routes onto StreamingJob and Savepoint resources in one
namespace (``kubernetes.restapi.apiserver``); the operator runs the jobs and answers the reads only its
control plane knows on its read API (``--operator-url``). Credentials: the in-cluster service account, else
the kubeconfig. Stopping it stops nothing but the listener.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from aiohttp import web

    from heliosdb_streaming.api.guard import RequestPolicy
    from heliosdb_streaming.job.manager import JobManager

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
DEFAULT_OPERATOR_URL = "http://127.0.0.1:8082"
SUBSTRATES = ("embedded", "kubernetes")
DEMO_JOB = "examples/demo_job.json"
SHUTDOWN_TIMEOUT_S = 5.0
DEFAULT_JOB_RETENTION = "7d"


def register(sub: Any) -> None:
    """Adds ``helios server`` to the ``helios`` subcommands (``sub`` is argparse's subparsers)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "server",
        help="run the REST API server (embedded control plane, or Kubernetes resources)",
        description="Serves /api/v1 (the job management API), /metrics and /healthz. "
        "Set HELIOS_API_TOKEN to require 'Authorization: Bearer <token>' on every route but /healthz.",
    )
    p.add_argument(
        "--substrate",
        choices=SUBSTRATES,
        default="embedded",
        help="embedded: run jobs in this process's control plane (default); kubernetes: map the API "
        "onto StreamingJob/Savepoint resources that the operator runs",
    )
    p.add_argument(
        "--namespace",
        help="kubernetes: namespace of the StreamingJobs (default $HELIOS_JOB_NAMESPACE, "
        "$POD_NAMESPACE or default)",
    )
    p.add_argument(
        "--operator-url",
        help=f"kubernetes: the operator's read API (default $HELIOS_OPERATOR_URL or {DEFAULT_OPERATOR_URL})",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks one)"
    )
    p.add_argument("--home", help="home directory of jobs and logs (default $HELIOS_HOME or ~/.helios)")
    p.add_argument("--max-parallelism", type=int, default=16, help="worker slots of this server (default 16)")
    p.add_argument(
        "--allowed-hosts",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name clients use to reach this server, besides its bind address (repeatable, "
        "added to $HELIOS_ALLOWED_HOSTS, comma-separated; '*' turns the Host check off); "
        "see docs/security.md",
    )
    p.add_argument(
        "--allowed-origins",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a browser Origin (http(s)://host[:port]) allowed besides those of the allowed hosts "
        "(repeatable, added to $HELIOS_ALLOWED_ORIGINS; '*' allows any)",
    )
    p.add_argument(
        "--allow-path",
        action="append",
        default=[],
        metavar="DIR",
        help="embedded: a directory jobs may read and write besides the home (repeatable, added to "
        "$HELIOS_ALLOW_PATHS, ':'-separated); file sources, sinks and checkpoints elsewhere are refused",
    )
    p.add_argument(
        "--job-retention",
        default=DEFAULT_JOB_RETENTION,
        metavar="DURATION",
        help=f"embedded: finished, failed and cancelled jobs are purged (record, logs, checkpoints, files) "
        f"this long after they ended, unless they hold savepoints (e.g. 7d, 12h, 30m; 0 keeps them; "
        f"default {DEFAULT_JOB_RETENTION})",
    )
    p.add_argument(
        "--python-modules",
        action="append",
        default=[],
        metavar="PATTERN",
        help="embedded: modules whose functions python steps may run: a package name (itself and its "
        "submodules) or an fnmatch pattern (repeatable or comma-separated, added to "
        "$HELIOS_PYTHON_MODULES); default none: a job naming any other module is refused with 400 "
        "python_not_allowed. See docs/python-functions.md",
    )
    p.add_argument("--demo", action="store_true", help="also run an endless demo job (unless one is active)")
    p.set_defaults(func=cmd_server)


def parse_retention(text: str) -> timedelta | None:
    """``--job-retention``: a duration (``7d``, ``12h``; a bare number is milliseconds), 0 = forever."""
    from heliosdb_streaming.model.durations import parse_duration_ms

    ms = parse_duration_ms(text)
    return timedelta(milliseconds=ms) if ms else None


def cmd_server(args: argparse.Namespace) -> int:
    if args.max_parallelism < 1:
        print("error: --max-parallelism must be at least 1", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print("error: --port must be from 0 to 65535", file=sys.stderr)
        return 2
    try:
        job_retention = parse_retention(args.job_retention)
    except ValueError as e:
        print(f"error: --job-retention: {e}", file=sys.stderr)
        return 2
    from heliosdb_streaming.runtime.logformat import masked_stderr_handler

    handler = masked_stderr_handler("%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    token = os.environ.get("HELIOS_API_TOKEN") or None
    home = Path(args.home) if args.home else None
    from heliosdb_streaming.api.guard import RequestPolicy

    policy = RequestPolicy.of(
        args.host,
        [*env_list("HELIOS_ALLOWED_HOSTS", ","), *args.allowed_hosts],
        [*env_list("HELIOS_ALLOWED_ORIGINS", ","), *args.allowed_origins],
    )
    if args.substrate == "kubernetes":
        if args.demo:
            print("error: --demo runs on the embedded substrate only", file=sys.stderr)
            return 2
        namespace = (
            args.namespace
            or os.environ.get("HELIOS_JOB_NAMESPACE")
            or os.environ.get("POD_NAMESPACE")
            or "default"
        )
        operator_url = args.operator_url or os.environ.get("HELIOS_OPERATOR_URL") or DEFAULT_OPERATOR_URL
        return asyncio.run(
            serve_kubernetes(args.host, args.port, namespace, operator_url, api_token=token, policy=policy)
        )
    return asyncio.run(
        serve(
            args.host,
            args.port,
            home,
            args.max_parallelism,
            demo=args.demo,
            api_token=token,
            policy=policy,
            allow_paths=list(allowed_paths(args.allow_path)),
            job_retention=job_retention,
            python_modules=python_modules(args.python_modules),
        )
    )


async def serve_kubernetes(
    host: str,
    port: int,
    namespace: str,
    operator_url: str,
    *,
    api_token: str | None,
    policy: RequestPolicy | None = None,
) -> int:
    """The API over the StreamingJobs of ``namespace``; the operator's read API at ``operator_url``."""
    import kopf

    from heliosdb_streaming.api.app import create_app
    from heliosdb_streaming.kubernetes import kube
    from heliosdb_streaming.kubernetes.restapi.apiserver import KubernetesJobService

    try:
        connection = kube.load_connection_info()
    except kopf.LoginError as e:
        print(f"error: no Kubernetes credentials: {e}", file=sys.stderr)
        return 1
    service = KubernetesJobService(connection, namespace, operator_url, api_token=api_token)
    app = create_app(service, api_token=api_token, owns_manager=True, request_policy=policy)
    where = f"namespace {namespace} on {connection.server}, operator {operator_url}"
    return await _run(app, host, port, where, api_token, _nothing)


async def _nothing() -> None:
    """No startup work (the kubernetes substrate has no demo job)."""


async def serve(
    host: str,
    port: int,
    home: Path | None,
    max_parallelism: int,
    *,
    demo: bool,
    api_token: str | None,
    policy: RequestPolicy | None = None,
    allow_paths: Sequence[Path] = (),
    job_retention: timedelta | None = None,
    python_modules: Sequence[str] = (),
) -> int:
    """The embedded server: jobs may use local files under the home and ``allow_paths`` only, and run
    user code of ``python_modules`` only; terminal jobs are purged ``job_retention`` after they ended
    (None: kept)."""
    from heliosdb_streaming.api.app import create_app
    from heliosdb_streaming.job.manager import JobManager

    manager = JobManager(
        max_parallelism,
        home=home,
        allowed_roots=list(allow_paths),
        job_retention=job_retention,
        python_modules=list(python_modules),
    )
    app = create_app(manager, api_token=api_token, owns_manager=True, request_policy=policy)
    assert manager.allowed_roots is not None
    kept = f"job retention {job_retention}" if job_retention else "job retention off"
    where = (
        f"home {manager.home}, max parallelism {max_parallelism}, "
        f"files under {manager.allowed_roots.describe()}, "
        f"python modules {', '.join(python_modules) or 'none'}, {kept}"
    )
    return await _run(
        app, host, port, where, api_token, lambda: _submit_demo(manager) if demo else _nothing()
    )


async def _run(
    app: web.Application,
    host: str,
    port: int,
    where: str,
    api_token: str | None,
    after_start: Callable[[], Awaitable[None]],
) -> int:
    """Serves ``app`` until SIGINT/SIGTERM; prints ``listening on http://...`` once it listens."""
    from aiohttp import web

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()  # starts the service (cleanup_ctx): embedded, the active jobs of its home resume
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as e:
            print(f"error: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
            return 1
        bound_host, bound_port = runner.addresses[0][:2]
        if not api_token and host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning(
                "listening on %s without HELIOS_API_TOKEN: anyone who reaches it controls jobs", host
            )
        print(
            f"helios server listening on http://{_url_host(bound_host)}:{bound_port} "
            f"({where}, auth {'bearer token' if api_token else 'off'})",
            flush=True,
        )
        await after_start()
        await stop.wait()
        print("helios server: shutting down", flush=True)
    finally:
        await runner.cleanup()  # stops the listener, waits for requests in flight, closes the service
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("helios server: stopped", flush=True)
    return 0


def env_list(name: str, separator: str) -> list[str]:
    """A list setting from the environment (how the chart passes them): ``a,b`` or ``/a:/b``."""
    return [item.strip() for item in os.environ.get(name, "").split(separator) if item.strip()]


def allowed_paths(flags: list[str]) -> tuple[Path, ...]:
    """Where a job's local files may be besides the home: ``HELIOS_ALLOW_PATHS`` and each ``--allow-path``."""
    return tuple(Path(d) for d in (*env_list("HELIOS_ALLOW_PATHS", os.pathsep), *flags))


def python_modules(flags: Sequence[str]) -> list[str]:
    """The allowed user-code modules: ``$HELIOS_PYTHON_MODULES`` then each ``--python-modules`` flag,
    each comma-separated."""
    return [
        m.strip()
        for item in (*env_list("HELIOS_PYTHON_MODULES", ","), *flags)
        for m in item.split(",")
        if m.strip()
    ]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def demo_job() -> dict[str, Any]:
    """The packaged demo job: endless datagen transactions through filter, key_by, CEP and map."""
    data = resources.files("heliosdb_streaming").joinpath(DEMO_JOB).read_bytes()
    body: dict[str, Any] = orjson.loads(data)
    return body


async def _submit_demo(manager: JobManager) -> None:
    from heliosdb_streaming.model.types import ListJobsOptions

    body = demo_job()
    for summary in await manager.list_jobs(ListJobsOptions(limit=10_000)):
        if summary.name == body["name"] and not summary.status.terminal:
            print(f"demo job already active: {summary.job_id}", flush=True)
            return
    job_id = await manager.submit_job(body)
    print(f"demo job submitted: {job_id}", flush=True)
