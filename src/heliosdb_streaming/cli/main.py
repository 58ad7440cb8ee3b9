"""The ``helios`` command: run a job in the foreground, validate job files."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from heliosdb_streaming import __version__

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _load_job_file(path: str) -> Any:
    try:
        return orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise SystemExit(_fail(f"no such file: {path}")) from None
    except orjson.JSONDecodeError as e:
        raise SystemExit(_fail(f"{path} is not valid JSON: {e}")) from None


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_validate(args: argparse.Namespace) -> int:
    from heliosdb_streaming.job import InvalidJobConfigError, JobConfig
    from heliosdb_streaming.model.plan import plan_job

    if args.server is not None:  # the server's dry run: its paths, python modules and limits too
        from heliosdb_streaming.cli.client import DEFAULT_URL, validate_on_server

        url = args.server or os.environ.get("HELIOS_URL") or DEFAULT_URL
        return validate_on_server(args.file, url, args.from_savepoint)
    body = _load_job_file(args.file)
    try:
        config = JobConfig.from_dict(body)
    except InvalidJobConfigError as e:
        for error in e.errors:
            print(f"{error.path}: {error.message}")
        return EXIT_USAGE
    print("ok")
    plan = plan_job(list(config.sources), list(config.transformations))
    for line in plan.describe([t.type for t in config.transformations]):
        print(line)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from heliosdb_streaming.job import InvalidJobConfigError, JobConfig

    body = _load_job_file(args.file)
    try:
        config = JobConfig.from_dict(body)
    except InvalidJobConfigError as e:
        for error in e.errors:
            print(f"{error.path}: {error.message}", file=sys.stderr)
        return EXIT_USAGE
    if args.parallelism:
        config = config.model_copy(update={"parallelism": args.parallelism})
        try:
            config.check_plan("--parallelism")
        except InvalidJobConfigError as e:
            for error in e.errors:
                print(f"{error.path}: {error.message}", file=sys.stderr)
            return EXIT_USAGE
    # the workers run ``python -m`` in this directory, which puts it on their sys.path: so that the
    # submit-time import check of python steps sees the modules they will see, this process looks there too
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return asyncio.run(_run(config, args))
    except InvalidJobConfigError as e:  # what only submit can tell (a python step that does not import)
        for error in e.errors:
            print(f"{error.path}: {error.message}", file=sys.stderr)
        return EXIT_USAGE


async def _run(config: Any, args: argparse.Namespace) -> int:
    from heliosdb_streaming.job import JobManager, JobStatus, MetricsWindow

    home = Path(args.home) if args.home else None
    max_parallelism = max(config.parallelism, os.cpu_count() or 1)
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    started = time.monotonic()
    async with JobManager(max_parallelism, home=home) as jm:
        job_id = await jm.submit_job(config)
        print(f"submitted {config.name} as {job_id} (parallelism {config.parallelism}, home {jm.home})")
        tty = sys.stdout.isatty()
        last_line = 0.0
        while True:
            status = await jm.get_job_status(job_id)
            if status.terminal:
                break
            if interrupted.is_set():
                print("\ncancelling...", flush=True)
                await jm.cancel_job(job_id)
                continue
            if args.max_seconds and time.monotonic() - started > args.max_seconds:
                print(f"\n--max-seconds {args.max_seconds} reached; cancelling", flush=True)
                await jm.cancel_job(job_id)
                continue
            now = time.monotonic()
            if now - last_line >= (0.5 if tty else 5.0):
                last_line = now
                m = await jm.get_job_metrics(job_id, MetricsWindow.minutes(1))
                line = (
                    f"[{now - started:6.1f}s] {status.value:<9} events {m.events_processed:>11,}  "
                    f"out {m.events_out:>9,}  {m.throughput_per_sec:>10,.0f} ev/s  "
                    f"p99 {m.latency_p99_ms:>7.1f} ms  errors {m.errors:,}"
                )
                print(("\r" + line) if tty else line, end="" if tty else "\n", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(interrupted.wait(), 0.2)
        details = await jm.get_job_details(job_id)
        m = details.metrics
        print()
        print(f"job {job_id}: {details.status.value}" + (f" ({details.message})" if details.message else ""))
        print(f"  events in      {m.events_processed:,}")
        print(f"  events out     {m.events_out:,}")
        print(
            f"  throughput     {m.average_throughput_per_sec:,.0f} events/s on average over "
            f"{m.running_ms / 1000:.3f}s of running time (uptime {details.uptime_ms / 1000:.3f}s)"
        )
        print(f"  latency        p50 {m.latency_p50_ms} ms, p99 {m.latency_p99_ms} ms")
        print(
            f"  errors         {m.errors:,}   late dropped {m.late_events_dropped:,}   restarts {m.restarts}"
        )
        print(f"  logs           {jm.home / 'jobs' / job_id / 'job.log'}")
        return EXIT_OK if details.status in (JobStatus.FINISHED, JobStatus.CANCELLED) else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helios", description="HeliosDB Streaming: run and manage streaming jobs"
    )
    parser.add_argument("--version", action="version", version=f"helios {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one job in the foreground with live progress (Ctrl-C cancels)")
    run.add_argument("file", help="job JSON file (the POST /api/v1/jobs body)")
    run.add_argument("--home", help="home directory (default $HELIOS_HOME or ~/.helios)")
    run.add_argument("--parallelism", type=int, help="override config.parallelism")
    run.add_argument("--max-seconds", type=float, help="cancel after this many seconds")
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a job file and print every problem, or ok")
    validate.add_argument("file")
    validate.add_argument(
        "--server",
        nargs="?",
        const="",
        metavar="URL",
        help="ask a helios server (a dry run: nothing is submitted), so that its allowed paths, python "
        "modules and parallelism limit are checked too (URL default: $HELIOS_URL or http://127.0.0.1:8081)",
    )
    validate.add_argument(
        "--from-savepoint", metavar="LOCATION", help="with --server: check this start savepoint too"
    )
    validate.set_defaults(func=cmd_validate)

    from heliosdb_streaming.cli import client, jobmanager, k8s, operator, server

    server.register(sub)
    client.register(sub)
    operator.register(sub)
    k8s.register(sub)
    jobmanager.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
