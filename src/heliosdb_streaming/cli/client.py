"""``helios jobs ...``: the REST API from the command line.

The server is ``$HELIOS_URL`` (default ``http://127.0.0.1:8081``, or ``--url``), the token
``$HELIOS_API_TOKEN``. Output is a readable table, or with ``-o json`` the server's JSON as is.

Exit codes: 0 ok, 1 the server answered an error (its code and message are printed), 2 usage or bad
input (e.g. a job file that is missing or not JSON), 3 the server cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DEFAULT_URL = "http://127.0.0.1:8081"
REQUEST_TIMEOUT_S = 30.0
FOLLOW_INTERVAL_S = 1.0
FOLLOW_BATCH = 1000

JOB_STATUSES = ("submitted", "running", "paused", "finished", "failed", "cancelled")
LOG_LEVELS = ("debug", "info", "warn", "error")
WINDOWS = ("1m", "5m", "1h", "24h")


class ServerError(Exception):
    """The server answered with an error body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        raw = body.get("error")
        error: dict[str, Any] = raw if isinstance(raw, dict) else {}
        self.status = status
        self.body = body
        self.code = str(error.get("code", f"http_{status}"))
        self.message = str(error.get("message", ""))
        details = error.get("details")
        self.details = [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []
        super().__init__(f"{self.code}: {self.message}")


class Unreachable(Exception):
    """No answer from the server, or an answer that is not from a helios server."""


class UsageError(Exception):
    pass


# ------------------------------------------------------------------------------------------ parser


def register(sub: Any) -> None:
    """Adds ``helios jobs ...`` to the ``helios`` subcommands (``sub`` is argparse's subparsers)."""
    jobs: argparse.ArgumentParser = sub.add_parser(
        "jobs",
        help="manage the jobs of a running helios server ($HELIOS_URL)",
        description="Talks to the REST API of 'helios server'. Exit codes: 0 ok, 1 the server answered "
        "an error, 2 usage or bad input, 3 the server cannot be reached.",
    )
    commands = jobs.add_subparsers(dest="jobs_command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-o", "--output", choices=("table", "json"), default="table", help="table (default) or json"
    )
    common.add_argument("--url", help=f"server URL (default $HELIOS_URL or {DEFAULT_URL})")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = commands.add_parser(name, help=help_text, parents=[common])
        p.set_defaults(func=cmd_jobs)
        return p

    p = add("submit", "submit a job file (the POST /api/v1/jobs body; '-' reads stdin)")
    p.add_argument("file")
    p.add_argument(
        "--from-savepoint", metavar="LOCATION", help="start from this savepoint of any job (an upgrade)"
    )
    p = add("list", "list jobs, newest first")
    p.add_argument("--status", choices=JOB_STATUSES)
    p.add_argument("--limit", type=int, default=100, help="1..1000 (default 100)")
    p.add_argument("--offset", type=int, default=0)
    add("get", "show a job's details").add_argument("job_id")
    p = add("cancel", "cancel a job")
    p.add_argument("job_id")
    p.add_argument("--savepoint", action="store_true", help="take a savepoint first")
    add(
        "purge", "remove a finished, failed or cancelled job with its logs, checkpoints and files"
    ).add_argument("job_id")
    p = add("metrics", "show a job's metrics")
    p.add_argument("job_id")
    p.add_argument("--window", choices=WINDOWS, default="5m")
    p = add("logs", "show a job's log lines")
    p.add_argument("job_id")
    p.add_argument("--level", choices=LOG_LEVELS, help="only lines at this level or above")
    p.add_argument(
        "--tail", type=int, metavar="N", help="the last N lines (default: the first --limit lines)"
    )
    p.add_argument("--limit", type=int, help="at most this many lines (default 1000)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    add("pause", "pause a running job").add_argument("job_id")
    add("resume", "resume a paused job").add_argument("job_id")
    p = add("savepoint", "create a savepoint of a running or paused job")
    p.add_argument("job_id")
    p.add_argument("-d", "--description", help="free text kept with the savepoint")
    add("savepoints", "list a job's savepoints").add_argument("job_id")
    p = add("delete-savepoint", "delete a savepoint and its files")
    p.add_argument("job_id")
    p.add_argument("savepoint_id")
    add("checkpoints", "list a job's checkpoints").add_argument("job_id")
    p = add("restart", "restart a job, from a savepoint or from its newest checkpoint")
    p.add_argument("job_id")
    p.add_argument("--savepoint", metavar="SAVEPOINT_ID", help="restore this savepoint")
    p.add_argument("--parallelism", type=int, help="run with this parallelism from now on")


def cmd_jobs(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return EXIT_OK if getattr(args, "follow", False) else 130


async def run(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("HELIOS_URL") or DEFAULT_URL
    try:
        async with ApiClient(url, os.environ.get("HELIOS_API_TOKEN") or None) as client:
            return await COMMANDS[args.jobs_command](client, args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as e:
        if args.output == "json":
            print(orjson.dumps(e.body, option=orjson.OPT_INDENT_2).decode())
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        for d in e.details:
            print(f"  {d.get('path', '')}: {d.get('message', '')}", file=sys.stderr)
        if e.code == "unauthorized":
            print("  (set HELIOS_API_TOKEN to the server's token)", file=sys.stderr)
        return EXIT_SERVER_ERROR
    except Unreachable as e:
        print(f"error: cannot reach the helios server at {url}: {e}", file=sys.stderr)
        print("  (start it with 'helios server', or set HELIOS_URL or --url)", file=sys.stderr)
        return EXIT_UNREACHABLE


# ------------------------------------------------------------------------------------------- HTTP


class ApiClient:
    """A small aiohttp client of ``/api/v1``: returns the JSON body, raises ServerError/Unreachable."""

    def __init__(self, base_url: str, token: str | None, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        base_url = base_url.rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise UsageError(f"server URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url
        self.token = token
        self.timeout_s = timeout_s
        self._session: Any = None

    async def __aenter__(self) -> ApiClient:
        import aiohttp

        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()

    async def call(
        self, method: str, path: str, *, params: dict[str, str] | None = None, body: bytes | None = None
    ) -> dict[str, Any]:
        import aiohttp

        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            async with self._session.request(
                method, self.base_url + path, params=params, data=body, headers=headers
            ) as response:
                raw = await response.read()
                status = response.status
        except aiohttp.InvalidURL as e:
            raise UsageError(f"invalid server URL {self.base_url!r}: {e}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise Unreachable(_reason(e)) from None
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Unreachable(f"HTTP {status} with a body that is not JSON: is it a helios server?") from None
        if not isinstance(data, dict):
            raise Unreachable(f"HTTP {status} with an unexpected body: is it a helios server?")
        if status >= 400:
            raise ServerError(status, data)
        return data


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "no answer in time"
    text = str(e) or type(e).__name__
    return text


def _job_path(job_id: str, suffix: str = "") -> str:
    return f"/api/v1/jobs/{quote(job_id, safe='')}{suffix}"


# --------------------------------------------------------------------------------------- commands


def _emit_json(data: Any) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _read_job_file(path: str) -> bytes:
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise UsageError(f"{path} is not valid JSON: {e}") from None
    return data


async def submit(client: ApiClient, args: argparse.Namespace) -> int:
    body = _read_job_file(args.file)
    params = {"from_savepoint": args.from_savepoint} if args.from_savepoint is not None else None
    data = await client.call("POST", "/api/v1/jobs", params=params, body=body)
    if args.output == "json":
        _emit_json(data)
    else:
        print(f"{data['job_id']}  {data['status']}  {data['submitted_at']}  {data.get('message', '')}")
    return EXIT_OK


def validate_on_server(path: str, url: str, from_savepoint: str | None) -> int:
    """``helios validate FILE --server URL``: the server's dry run (``POST /api/v1/jobs?dry_run=true``),
    which adds what only the server knows to the file's own checks (its allowed paths and python
    modules, its parallelism limit, the start savepoint). Prints ``ok`` and the plan, or every problem
    at its path (exit 2, as the local check); 1 for another server error, 3 when unreachable."""

    async def check() -> int:
        body = _read_job_file(path)
        params = {"dry_run": "true"} | ({"from_savepoint": from_savepoint} if from_savepoint else {})
        async with ApiClient(url, os.environ.get("HELIOS_API_TOKEN") or None) as client:
            data = await client.call("POST", "/api/v1/jobs", params=params, body=body)
        print("ok")
        print(plan_text(data["plan"]))
        return EXIT_OK

    try:
        return asyncio.run(check())
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as e:
        if e.code in ("invalid_job_config", "python_not_allowed"):
            for d in e.details:
                print(f"{d.get('path', '')}: {d.get('message', '')}")
            return EXIT_USAGE
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_SERVER_ERROR
    except Unreachable as e:
        print(f"error: cannot reach the helios server at {url}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE


async def list_jobs(client: ApiClient, args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit), "offset": str(args.offset)}
    if args.status:
        params["status"] = args.status
    data = await client.call("GET", "/api/v1/jobs", params=params)
    if args.output == "json":
        _emit_json(data)
        return EXIT_OK
    rows = [
        [
            j["job_id"],
            j["name"],
            j["status"],
            j["submitted_at"],
            _uptime(j.get("uptime_seconds")),
            str(j["parallelism"]),
        ]
        for j in data["jobs"]
    ]
    print(table(["JOB ID", "NAME", "STATUS", "SUBMITTED", "UPTIME", "PARALLELISM"], rows))
    shown = len(data["jobs"])
    first = data["offset"] + 1 if shown else data["offset"]
    print(f"{shown} shown ({first}-{data['offset'] + shown}) of {data['total']}")
    return EXIT_OK


async def get_job(client: ApiClient, args: argparse.Namespace) -> int:
    data = await client.call("GET", _job_path(args.job_id))
    if args.output == "json":
        _emit_json(data)
        return EXIT_OK
    m = data["metrics"]
    config = "  ".join(f"{k}={_compact(v)}" for k, v in data["config"].items())
    print(
        keyvalues(
            [
                ("job_id", data["job_id"]),
                ("name", data["name"]),
                ("status", data["status"] + (" (recovering)" if data.get("recovering") else "")),
                ("message", data.get("message") or "-"),
                ("submitted_at", data["submitted_at"]),
                ("started_at", data.get("started_at") or "-"),
                ("finished_at", data.get("finished_at") or "-"),
                ("uptime", _uptime(data.get("uptime_seconds"))),
                ("config", config),
                ("events", f"{m['events_processed']:,} in, {m.get('events_out', 0):,} out"),
                (
                    "throughput",
                    f"{m['throughput_per_sec']:,.0f} events/s now, "
                    f"{m.get('average_throughput_per_sec', 0):,.0f} events/s on average over "
                    f"{m.get('running_ms', 0) / 1000:.3f}s running",
                ),
                ("latency", f"p50 {m['latency_p50_ms']} ms, p99 {m['latency_p99_ms']} ms"),
                ("checkpoints", f"{m['checkpoint_count']} (last {m['last_checkpoint_duration_ms']} ms)"),
                ("backpressure", f"{m['backpressure_events']:,} events"),
                ("restarts", str(m["restarts"])),
            ]
        )
    )
    print()
    tasks = [[t["task_id"], t["name"], t["status"], str(t["parallelism"])] for t in data["tasks"]]
    print(table(["TASK ID", "NAME", "STATUS", "PARALLELISM"], tasks))
    if data.get("plan"):  # a server older than the plan has none
        print()
        print(plan_text(data["plan"]))
    if data["checkpoints"]:
        print()
        rows = [
            [c["checkpoint_id"], c["timestamp"], str(c["duration_ms"]), str(c["size_bytes"]), c["status"]]
            for c in data["checkpoints"]
        ]
        print(table(["CHECKPOINT", "TIMESTAMP", "DURATION MS", "SIZE BYTES", "STATUS"], rows))
    return EXIT_OK


async def cancel(client: ApiClient, args: argparse.Namespace) -> int:
    params = {"savepoint": "true"} if args.savepoint else None
    data = await client.call("DELETE", _job_path(args.job_id), params=params)
    if args.output == "json":
        _emit_json(data)
    else:
        savepoint = f"  savepoint {data['savepoint_id']}" if data.get("savepoint_id") else ""
        print(f"{data['job_id']}  {data['status']}  {data['cancelled_at']}{savepoint}")
    return EXIT_OK


async def purge(client: ApiClient, args: argparse.Namespace) -> int:
    data = await client.call("DELETE", _job_path(args.job_id), params={"purge": "true"})
    if args.output == "json":
        _emit_json(data)
    else:
        print(f"{data['job_id']}  purged (was {data['status']})")
    return EXIT_OK


async def metrics(client: ApiClient, args: argparse.Namespace) -> int:
    data = await client.call("GET", _job_path(args.job_id, "/metrics"), params={"window": args.window})
    if args.output == "json":
        _emit_json(data)
        return EXIT_OK
    m = data["metrics"]
    lat, cp, bp, res, err = m["latency"], m["checkpoint"], m["backpressure"], m["resources"], m["errors"]
    print(
        keyvalues(
            [
                ("job_id", data["job_id"]),
                ("timestamp", data["timestamp"]),
                ("window", data.get("window", args.window)),
                ("events processed", f"{m['events_processed_total']:,}"),
                ("throughput", f"{m['throughput_per_sec']:,.1f} events/s"),
                (
                    "latency",
                    f"p50 {lat['p50_ms']} ms  p95 {lat['p95_ms']} ms  p99 {lat['p99_ms']} ms  "
                    f"p999 {lat['p999_ms']} ms",
                ),
                ("checkpoints", f"{cp['count']} (last {cp['last_duration_ms']} ms, {cp['failures']} failed)"),
                ("backpressure", f"{bp['events_total']:,} events, level {bp['current_level']}"),
                (
                    "resources",
                    f"cpu {res['cpu_usage_percent']}%  memory {res['memory_used_mb']} MB "
                    f"of {res['memory_total_mb']} MB",
                ),
                ("errors", f"{err['count']:,} ({err['rate_per_min']}/min)"),
            ]
        )
    )
    if data["history"]:
        print()
        rows = [[p["timestamp"], f"{p['throughput_per_sec']:,.1f}"] for p in data["history"]]
        print(table(["MINUTE", "EVENTS/S"], rows))
    return EXIT_OK


async def logs(client: ApiClient, args: argparse.Namespace) -> int:
    params: dict[str, str] = {}
    if args.level:
        params["level"] = args.level
    if args.tail is not None:
        if args.tail < 1:
            raise UsageError("--tail must be at least 1")
        params["tail"] = "true"
        params["limit"] = str(args.tail)
    elif args.limit is not None:
        params["limit"] = str(args.limit)
    elif args.follow:
        params.update(tail="true", limit="20")
    data = await client.call("GET", _job_path(args.job_id, "/logs"), params=params)
    entries: list[dict[str, Any]] = data["logs"]
    if args.output == "json" and not args.follow:
        _emit_json(data)
        return EXIT_OK
    for entry in entries:
        _print_log(entry, args.output)
    if not args.follow:
        return EXIT_OK
    cursor = LogCursor(entries)
    params.update(tail="true", limit=str(FOLLOW_BATCH))
    while True:
        await asyncio.sleep(FOLLOW_INTERVAL_S)
        data = await client.call("GET", _job_path(args.job_id, "/logs"), params=params)
        for entry in cursor.new(data["logs"]):
            _print_log(entry, args.output)


class LogCursor:
    """Remembers the newest line printed, so that a poll of the last lines prints only new ones.

    Log timestamps share one format (milliseconds, ``Z``), so comparing them as text orders them.
    """

    def __init__(self, printed: Sequence[dict[str, Any]]) -> None:
        self.last = ""
        self.at_last: set[bytes] = set()
        self.new(printed)

    def new(self, entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        fresh = []
        for entry in entries:
            ts = str(entry.get("timestamp", ""))
            key = orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)
            if ts > self.last:
                self.last, self.at_last = ts, {key}
                fresh.append(entry)
            elif ts == self.last and key not in self.at_last:
                self.at_last.add(key)
                fresh.append(entry)
        return fresh


def _print_log(entry: dict[str, Any], output: str) -> None:
    if output == "json":
        print(orjson.dumps(entry).decode(), flush=True)
        return
    task = entry.get("task_id") or "-"
    print(f"{entry['timestamp']}  {entry['level'].upper():<5}  {task:<8}  {entry['message']}", flush=True)


async def pause(client: ApiClient, args: argparse.Namespace) -> int:
    return await _command(client, args, "/pause")


async def resume(client: ApiClient, args: argparse.Namespace) -> int:
    return await _command(client, args, "/resume")


async def _command(client: ApiClient, args: argparse.Namespace, suffix: str) -> int:
    data = await client.call("POST", _job_path(args.job_id, suffix))
    if args.output == "json":
        _emit_json(data)
    else:
        print(f"{data['job_id']}  {data['status']}")
    return EXIT_OK


async def savepoint(client: ApiClient, args: argparse.Namespace) -> int:
    body = {"description": args.description} if args.description is not None else {}
    data = await client.call("POST", _job_path(args.job_id, "/savepoints"), body=orjson.dumps(body))
    if args.output == "json":
        _emit_json(data)
        return EXIT_OK
    print(keyvalues([(k, _text(data.get(k))) for k in SAVEPOINT_KEYS]))
    return EXIT_OK


SAVEPOINT_KEYS = ("savepoint_id", "job_id", "created_at", "size_bytes", "location", "description")


async def savepoints(client: ApiClient, args: argparse.Namespace) -> int:
    data = await client.call("GET", _job_path(args.job_id, "/savepoints"))
    if args.output == "json":
        _emit_json(data)
        return EXIT_OK
    rows = [
        [s["savepoint_id"], s["created_at"], str(s["size_bytes"]), s["location"], _text(s.get("description"))]
        for s in data["savepoints"]
    ]
    print(table(["SAVEPOINT ID", "CREATED", "SIZE BYTES", "LOCATION", "DESCRIPTION"], rows))
    return EXIT_OK


async def delete_savepoint(client: ApiClient, args: argparse.Namespace) -> int:
    path = _job_path(args.job_id, f"/savepoints/{quote(args.savepoint_id, safe='')}")
    data = await client.call("DELETE", path)
    if args.output == "json":
        _emit_json(data)
    else:
        print(f"{data['savepoint_id']}  deleted")
    return EXIT_OK


async def checkpoints(client: ApiClient, args: argparse.Namespace) -> int:
    data = await client.call("GET", _job_path(args.job_id, "/checkpoints"))
    if args.output == "json":
        _emit_json(data)
        return EXIT_OK
    rows = [
        [c["checkpoint_id"], c["timestamp"], str(c["duration_ms"]), str(c["size_bytes"]), c["status"]]
        for c in data["checkpoints"]
    ]
    print(table(["CHECKPOINT", "TIMESTAMP", "DURATION MS", "SIZE BYTES", "STATUS"], rows))
    return EXIT_OK


async def restart(client: ApiClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.savepoint:
        body["savepoint_id"] = args.savepoint
    if args.parallelism is not None:
        if args.parallelism < 1:
            raise UsageError("--parallelism must be at least 1")
        body["config_overrides"] = {"parallelism": args.parallelism}
    data = await client.call("POST", _job_path(args.job_id, "/restart"), body=orjson.dumps(body))
    if args.output == "json":
        _emit_json(data)
    else:
        restored = data.get("restored_from_savepoint")
        origin = f"  from {restored}" if restored else ""
        print(
            f"{data['job_id']}  {data['status']}  {data['restarted_at']}{origin}  {data.get('message', '')}"
        )
    return EXIT_OK


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


COMMANDS = {
    "submit": submit,
    "list": list_jobs,
    "get": get_job,
    "cancel": cancel,
    "purge": purge,
    "metrics": metrics,
    "logs": logs,
    "pause": pause,
    "resume": resume,
    "savepoint": savepoint,
    "savepoints": savepoints,
    "delete-savepoint": delete_savepoint,
    "checkpoints": checkpoints,
    "restart": restart,
}


# --------------------------------------------------------------------------------------- printing


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [headers, *rows]
    ]
    return "\n".join(lines)


def plan_text(plan: dict[str, Any]) -> str:
    """The stages of a job and why each boundary exists (``plan`` of the job's details)."""
    inputs = {"splits": "source splits", "global": "one global task"}
    rows = [
        [
            str(stage["index"]),
            inputs.get(stage["input"]) or f"key groups by {stage['key']}",
            str(stage["tasks"]),
            ", ".join(f"[{step['index']}] {step['type']}" for step in stage["steps"]) or "-",
        ]
        for stage in plan["stages"]
    ]
    lines = [table(["STAGE", "INPUT", "TASKS", "STEPS"], rows)]
    lines += [f"stage {b['stage']} starts at step [{b['step']}]: {b['reason']}" for b in plan["boundaries"]]
    return "\n".join(lines)


def keyvalues(pairs: Sequence[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in pairs)


def _uptime(seconds: Any) -> str:
    if not isinstance(seconds, int):
        return "-"
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _compact(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()
