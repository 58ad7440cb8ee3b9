"""``helios jobmanager``: the control plane of one StreamingJob, in the pod the operator creates for it.

The operator starts it as ``helios jobmanager --namespace NS --name JOB`` in the ``<JOB>-jobmanager``
pod, with the environment it got itself (``HELIOS_IMAGE``, ``HELIOS_CHECKPOINT_STORAGE``, the S3
settings, ``HELIOS_API_TOKEN`` from the job manager's Secret). Credentials: the pod's service account,
else the kubeconfig. See ``kubernetes.jobmanager.app``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from heliosdb_streaming.embedded import private
from heliosdb_streaming.embedded.logs import LocalJobFiles
from heliosdb_streaming.embedded.sqlite_store import SqliteJobStore
from heliosdb_streaming.kubernetes.jobmanager.app import DEFAULT_API_PORT
from heliosdb_streaming.kubernetes.operator.app import DEFAULT_CONTROL_PORT
from heliosdb_streaming.runtime import logformat


def register(sub: Any) -> None:
    """Adds ``helios jobmanager`` to the ``helios`` subcommands."""
    p: argparse.ArgumentParser = sub.add_parser(
        "jobmanager",
        help="run the control plane of one StreamingJob (started by the operator in its own pod)",
        description="Runs one StreamingJob: its checkpoint coordinator, worker channel, restart policy, "
        "worker pods, status and read API; the operator forwards spec changes to its API.",
    )
    p.add_argument("--namespace", "-n", required=True, help="the StreamingJob's namespace")
    p.add_argument("--name", required=True, help="the StreamingJob's name")
    p.add_argument("--home", help="job store and logs (default $HELIOS_HOME or ./helios-jobmanager)")
    p.add_argument(
        "--advertise-host",
        default=os.environ.get("HELIOS_JOBMANAGER_HOST") or "",
        help="how the operator and the workers reach this pod (default $HELIOS_JOBMANAGER_HOST, "
        "else <name>-jobmanager.<namespace>.svc, its Service)",
    )
    p.add_argument("--api-host", default="0.0.0.0", help="address of the HTTP API")
    p.add_argument(
        "--api-port", type=int, default=DEFAULT_API_PORT, help=f"HTTP API port ({DEFAULT_API_PORT}; 0 picks)"
    )
    p.add_argument("--control-host", default="0.0.0.0", help="address of the workers' control channel")
    p.add_argument(
        "--control-port",
        type=int,
        default=DEFAULT_CONTROL_PORT,
        help=f"port of the workers' control channel ({DEFAULT_CONTROL_PORT}; 0 picks one)",
    )
    p.add_argument("--max-parallelism", type=int, default=1024, help="worker slots (default 1024)")
    p.add_argument("--image", help="default worker image (default $HELIOS_IMAGE)")
    p.add_argument("--checkpoint-storage", help="default checkpoint storage URI ($HELIOS_CHECKPOINT_STORAGE)")
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR", help="as helios operator's")
    p.add_argument(
        "--python-modules", action="append", default=[], metavar="PATTERN", help="as helios operator's"
    )
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    p.set_defaults(func=cmd_jobmanager)


def cmd_jobmanager(args: argparse.Namespace) -> int:
    from heliosdb_streaming.cli.server import allowed_paths, python_modules
    from heliosdb_streaming.kubernetes.jobmanager import app
    from heliosdb_streaming.kubernetes.operator.app import OperatorOptions

    logformat.configure_service_logging(args.verbose)
    home = Path(args.home or os.environ.get("HELIOS_HOME") or "helios-jobmanager").absolute()
    operator = OperatorOptions.from_env(
        home,
        control_host=args.control_host,
        control_port=args.control_port,
        max_parallelism=args.max_parallelism,
        image=args.image,
        checkpoint_storage=args.checkpoint_storage,
        allow_paths=allowed_paths(args.allow_path) or None,
        python_modules=python_modules(args.python_modules) or None,
    )
    advertise = args.advertise_host or f"{args.name}-jobmanager.{args.namespace}.svc"
    options = app.JobManagerOptions(
        operator, args.namespace, args.name, advertise, api_host=args.api_host, api_port=args.api_port
    )
    try:
        private.private_dir(home)  # jobs.db and job.json hold connection strings
        asyncio.run(app.run(options, lambda: (SqliteJobStore(home / "jobs.db"), LocalJobFiles(home))))
    except Exception as e:
        logging.getLogger(__name__).error("job manager stopped: %s: %s", type(e).__name__, e)
        return 1
    return 0
