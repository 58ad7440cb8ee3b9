"""``helios operator``: the Kubernetes operator (kopf) with the control plane inside.

Credentials: the pod's service account inside a cluster, else the kubeconfig (``KUBECONFIG`` or
~/.kube/config). The environment the Helm chart sets supplies the defaults: ``HELIOS_IMAGE`` (worker
image), ``HELIOS_CONTROL_ADDRESS`` (how worker pods reach this process, e.g.
``helios-operator.helios.svc:7070``), ``HELIOS_CHECKPOINT_STORAGE`` (``s3://bucket/prefix``),
``HELIOS_WORKER_ENV_SECRET`` (a Secret with the S3 credentials for the workers) and the S3 variables
of the checkpoint storage (``HELIOS_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ...). The internal read API
that ``helios server --substrate kubernetes`` reads job details and metrics from listens on
``--read-port`` (default 8082) and requires ``HELIOS_API_TOKEN`` as a bearer token when it is set.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from heliosdb_streaming.embedded import private
from heliosdb_streaming.embedded.logs import LocalJobFiles
from heliosdb_streaming.embedded.sqlite_store import SqliteJobStore
from heliosdb_streaming.kubernetes.operator.app import DEFAULT_CONTROL_PORT
from heliosdb_streaming.kubernetes.operator.leader import DEFAULT_LEASE_DURATION_S, DEFAULT_LEASE_NAME
from heliosdb_streaming.kubernetes.operator.opmetrics import DEFAULT_METRICS_PORT
from heliosdb_streaming.kubernetes.operator.readapi import DEFAULT_READ_PORT
from heliosdb_streaming.runtime import logformat


def register(sub: Any) -> None:
    """Adds ``helios operator`` to the ``helios`` subcommands (``sub`` is argparse's subparsers)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "operator",
        help="run the Kubernetes operator for StreamingJob and Savepoint resources",
        description="Reconciles StreamingJob and Savepoint resources into worker pods, savepoints and "
        "status. Uses the in-cluster service account, else the kubeconfig.",
    )
    scope = p.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="watch this namespace (repeatable)",
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)"
    )
    p.add_argument("--home", help="job store and logs (default $HELIOS_HOME or ~/.helios-operator)")
    p.add_argument("--control-host", default="0.0.0.0", help="address of the workers' control channel")
    p.add_argument(
        "--control-port",
        type=int,
        default=DEFAULT_CONTROL_PORT,
        help=f"port of the workers' control channel (default {DEFAULT_CONTROL_PORT}; 0 picks one)",
    )
    p.add_argument(
        "--control-address", help="host:port that worker pods connect to (default $HELIOS_CONTROL_ADDRESS)"
    )
    p.add_argument("--read-host", default="0.0.0.0", help="address of the internal read API")
    p.add_argument(
        "--read-port",
        type=int,
        default=os.environ.get("HELIOS_READ_PORT") or str(DEFAULT_READ_PORT),  # argparse applies type
        help=f"port of the internal read API for the API server ($HELIOS_READ_PORT or {DEFAULT_READ_PORT})",
    )
    p.add_argument("--max-parallelism", type=int, default=1024, help="worker slots in total (default 1024)")
    p.add_argument("--image", help="default worker image (default $HELIOS_IMAGE)")
    p.add_argument("--checkpoint-storage", help="default checkpoint storage URI ($HELIOS_CHECKPOINT_STORAGE)")
    p.add_argument(
        "--allow-path",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory (absolute, as the worker pods see it) whose files StreamingJobs may read and "
        "write, besides the home (repeatable, added to $HELIOS_ALLOW_PATHS, ':'-separated); file "
        "sources, sinks and file:// checkpoints elsewhere are an InvalidSpec",
    )
    p.add_argument(
        "--python-modules",
        action="append",
        default=[],
        metavar="PATTERN",
        help="modules whose functions python steps may run: a package name (itself and its submodules) or "
        "an fnmatch pattern (repeatable or comma-separated, added to $HELIOS_PYTHON_MODULES); default "
        "none: a StreamingJob naming any other module is an InvalidSpec (python_not_allowed)",
    )
    p.add_argument(
        "--metrics-host", default="0.0.0.0", help="address of the operator's /metrics and /healthz"
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=os.environ.get("HELIOS_METRICS_PORT") or str(DEFAULT_METRICS_PORT),
        help=f"port of the operator's own /metrics and /healthz, served by standby and leader alike, "
        f"without a token ($HELIOS_METRICS_PORT or {DEFAULT_METRICS_PORT}; 0 picks one)",
    )
    p.add_argument(
        "--leader-election",
        action="store_true",
        default=os.environ.get("HELIOS_LEADER_ELECTION", "").lower() in ("1", "true", "yes"),
        help="run only while holding a coordination.k8s.io Lease, for several replicas over one shared "
        "home ($HELIOS_LEADER_ELECTION); a standby waits and takes over when the leader dies",
    )
    p.add_argument(
        "--lease-name", default=DEFAULT_LEASE_NAME, help=f"the Lease (default {DEFAULT_LEASE_NAME})"
    )
    p.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE") or "",
        help="namespace of the Lease (default $POD_NAMESPACE, else the kubeconfig's namespace)",
    )
    p.add_argument(
        "--lease-duration",
        type=float,
        default=DEFAULT_LEASE_DURATION_S,
        help=f"seconds a standby waits for an unrenewed Lease before taking over (default "
        f"{DEFAULT_LEASE_DURATION_S:g}); the leader renews every duration/7.5 and gives up after 2/3 of it",
    )
    p.add_argument(
        "--job-managers",
        action="store_true",
        default=None,
        help="run each StreamingJob in a <name>-jobmanager pod of its own, as Flink's per-job "
        "JobManager, instead of in this process ($HELIOS_JOB_MANAGERS); the operator then only "
        "reconciles resources and can restart without touching a job",
    )
    p.add_argument(
        "--jobmanager-service-account",
        help="service account of the job manager pods ($HELIOS_JOBMANAGER_SERVICE_ACCOUNT)",
    )
    p.add_argument(
        "--jobmanager-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra `helios jobmanager` argument (repeatable, e.g. --jobmanager-arg=--api-port=0)",
    )
    p.add_argument(
        "--jobmanager-url-from-status",
        action="store_true",
        help="call a job manager at the address it writes in status.jobManager, not its Service "
        "(only where there is no cluster DNS: anyone who may write the status could redirect it)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_operator)


def _home(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    return Path(os.environ.get("HELIOS_HOME") or Path.home() / ".helios-operator")


def cmd_operator(args: argparse.Namespace) -> int:
    from heliosdb_streaming.cli.server import allowed_paths, python_modules
    from heliosdb_streaming.kubernetes.operator import app

    if args.max_parallelism < 1:
        print("error: --max-parallelism must be at least 1", file=sys.stderr)
        return 2
    if not 0 <= args.control_port <= 65535:
        print("error: --control-port must be from 0 to 65535", file=sys.stderr)
        return 2
    if not 0 <= args.read_port <= 65535:
        print("error: --read-port must be from 0 to 65535", file=sys.stderr)
        return 2
    if not 0 <= args.metrics_port <= 65535:
        print("error: --metrics-port must be from 0 to 65535", file=sys.stderr)
        return 2
    lease = None
    if args.leader_election:
        from heliosdb_streaming.kubernetes.operator.leader import LeaseSettings

        duration = args.lease_duration
        try:
            lease = LeaseSettings(
                args.lease_namespace, args.lease_name, duration, duration * 2 / 3, duration / 7.5
            )
        except ValueError as e:
            print(f"error: --lease-duration: {e}", file=sys.stderr)
            return 2
    logformat.configure_service_logging(args.verbose)
    options = app.OperatorOptions.from_env(
        _home(args.home),
        namespaces=tuple(args.namespaces or ()),
        control_host=args.control_host,
        control_port=args.control_port,
        control_address=args.control_address,
        read_host=args.read_host,
        read_port=args.read_port,
        max_parallelism=args.max_parallelism,
        image=args.image,
        checkpoint_storage=args.checkpoint_storage,
        allow_paths=allowed_paths(args.allow_path) or None,
        python_modules=python_modules(args.python_modules) or None,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        lease=lease,
        job_managers=args.job_managers,
        jobmanager_service_account=args.jobmanager_service_account,
        jobmanager_args=tuple(args.jobmanager_arg) or None,
        jobmanager_url_from_status=args.jobmanager_url_from_status or None,
    )
    try:
        private.private_dir(options.home)  # jobs.db and job.json hold connection strings
        home = options.home
        asyncio.run(app.run(options, lambda: (SqliteJobStore(home / "jobs.db"), LocalJobFiles(home))))
    except Exception as e:  # a login or startup failure: say it in one line
        logging.getLogger(__name__).error("operator stopped: %s: %s", type(e).__name__, e)
        return 1
    return 0
