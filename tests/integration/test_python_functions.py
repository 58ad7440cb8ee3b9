"""Python steps through a real ``helios server`` (subprocess, real HTTP, real worker subprocesses).

The user code is a real package, tests/userpkg, that the server and its workers import from the
``PYTHONPATH`` they inherit, as a user's installed package would be. The server runs user code only
from the modules of ``--python-modules``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rest_call import call

from heliosdb_streaming.job import (
    InvalidJobConfigError,
    JobConfig,
    JobManager,
    JobStatus,
    TransformationConfig,
)
from heliosdb_streaming.testing.server import HELIOS, HeliosServerProcess
from heliosdb_streaming.testing.waits import wait_until

pytestmark = pytest.mark.timeout(240)

USERPKG = Path(__file__).resolve().parents[1] / "userpkg"
REF = "helios_userpkg.records"
ORDERS = [
    {"id": i, "amount": amount, "items": [f"sku-{i}-{k}" for k in range(i % 3)]}
    for i, amount in enumerate([5, 120, 300, 99, 100, 42, 1000, 7, 250, 64], start=1)
]
ORDERS.insert(4, {"id": 0, "note": "no amount"})  # add_fee drops it (None)


def python_step(function: str, kind: str = "map") -> dict[str, Any]:
    return {"type": "python", "config": {"function": function, "kind": kind}}


def job(name: str, source: Path, sink: Path, *steps: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "config": {"parallelism": 1, "restart_strategy": "none", **settings},
        "sources": [{"type": "file", "config": {"path": str(source)}}],
        "transformations": list(steps),
        "sinks": [{"type": "file", "config": {"path": str(sink / "{task}.jsonl")}}],
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pyfn-data")
    (root / "orders.jsonl").write_text("".join(json.dumps(o) + "\n" for o in ORDERS))
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Iterator[HeliosServerProcess]:
    """A server that allows the test package; its workers inherit its PYTHONPATH."""
    home = tmp_path_factory.mktemp("pyfn") / "home"
    home.mkdir()
    process = HeliosServerProcess(
        home,
        "--allow-path",
        str(data),
        "--python-modules",
        "helios_userpkg",
        # relative to the server's working directory, not to its home where its workers run
        env={"PYTHONPATH": os.path.relpath(USERPKG)},
    )
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log_tail()


async def run_to_end(
    session: aiohttp.ClientSession, server: HeliosServerProcess, body: dict[str, Any]
) -> dict[str, Any]:
    """Submits ``body`` and waits for a terminal status; returns the job's details."""
    status, reply = await call(session, "POST", f"{server.url}/api/v1/jobs", json=body)
    assert status == 201, reply
    url = f"{server.url}/api/v1/jobs/{reply['job_id']}"
    deadline = time.monotonic() + 120
    while True:
        status, details = await call(session, "GET", url)
        assert status == 200, details
        if details["status"] in ("finished", "failed", "cancelled"):
            return details
        assert time.monotonic() < deadline, details
        await asyncio.sleep(0.1)


def written(sink: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted(sink.glob("*.jsonl")) for line in f.read_text().splitlines()]


async def test_map_filter_and_flat_map_results(
    server: HeliosServerProcess, session: aiohttp.ClientSession, data: Path
) -> None:
    source = data / "orders.jsonl"
    sink = data / "fees"
    details = await run_to_end(
        session,
        server,
        job("fees", source, sink, python_step(f"{REF}:add_fee"), python_step(f"{REF}:is_large", "filter")),
    )
    assert details["status"] == "finished", details
    expected = [
        {**o, "fee": round(o["amount"] * 0.01, 2)} for o in ORDERS if "amount" in o and o["amount"] >= 100
    ]
    assert written(sink) == expected
    assert details["metrics"]["errors"] == 0

    sink = data / "items"
    details = await run_to_end(
        session, server, job("items", source, sink, python_step(f"{REF}:split_items", "flat_map"))
    )
    assert details["status"] == "finished", details
    assert written(sink) == [{"order": o["id"], "item": item} for o in ORDERS for item in o.get("items", [])]


async def test_a_raising_function_under_on_error_skip_and_fail(
    server: HeliosServerProcess, session: aiohttp.ClientSession, data: Path
) -> None:
    source = data / "orders.jsonl"
    bad = [o["id"] for o in ORDERS if o["id"] % 3 == 0]  # fragile raises on these (0 among them)
    sink = data / "skip"
    details = await run_to_end(session, server, job("skip", source, sink, python_step(f"{REF}:fragile")))
    assert details["status"] == "finished", details
    assert written(sink) == [o for o in ORDERS if o["id"] not in bad]
    assert details["metrics"]["errors"] == len(bad)
    status, logs = await call(session, "GET", f"{server.url}/api/v1/jobs/{details['job_id']}/logs")
    assert status == 200, logs
    warning = next(e["message"] for e in logs["logs"] if "record(s) failed" in e["message"])
    assert f"function {REF}:fragile raised ValueError: cannot score order" in warning, warning
    assert "split" in warning and "position" in warning, warning

    details = await run_to_end(
        session, server, job("fail", source, data / "fail", python_step(f"{REF}:fragile"), on_error="fail")
    )
    assert details["status"] == "failed", details
    assert f"function {REF}:fragile raised ValueError: cannot score order" in details["message"], details


async def test_modules_not_allowed_and_code_that_does_not_import_are_400(
    server: HeliosServerProcess, session: aiohttp.ClientSession, data: Path
) -> None:
    jobs = f"{server.url}/api/v1/jobs"
    source = data / "orders.jsonl"
    _, listed = await call(session, "GET", jobs)
    body = job("evil", source, data / "evil", python_step(f"{REF}:add_fee"), python_step("os:system"))
    status, reply = await call(session, "POST", jobs, json=body)
    assert status == 400, reply
    error = reply["error"]
    assert error["code"] == "python_not_allowed"
    assert error["details"] == [
        {
            "path": "transformations[1].config.function",
            "message": "module 'os' is not allowed on this server (allowed: helios_userpkg); its "
            "administrator can allow it with --python-modules os",
        }
    ]
    # an allowed module, but no such function / not a function: the server imports it to check
    # an allowed module's name for code of another module (``from json import loads as reexported``)
    status, reply = await call(
        session, "POST", jobs, json=job("re", source, data / "r", python_step(f"{REF}:reexported"))
    )
    assert status == 400 and reply["error"]["code"] == "python_not_allowed", reply
    assert "is loads of module 'json', which is not allowed" in reply["error"]["details"][0]["message"]
    for function, why in (
        (f"{REF}:nope", "has no attribute 'nope'"),
        (f"{REF}:Scorer", "is a class"),
        (f"{REF}:json.loads", "'json' is a module"),
    ):
        status, reply = await call(
            session, "POST", jobs, json=job("typo", source, data / "t", python_step(function))
        )
        assert status == 400, reply
        assert reply["error"]["code"] == "invalid_job_config"
        assert [d["path"] for d in reply["error"]["details"]] == ["transformations[0].config.function"]
        assert why in reply["error"]["details"][0]["message"]
    _, after = await call(session, "GET", jobs)
    assert after["total"] == listed["total"]  # nothing was created


async def test_a_server_allows_no_user_code_by_default(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "in.jsonl").write_text('{"amount": 1}\n')
    server = HeliosServerProcess(home, env={"PYTHONPATH": str(USERPKG)})
    try:
        body = job("nope", Path("in.jsonl"), Path("out"), python_step(f"{REF}:add_fee"))
        status, reply = await call(session, "POST", f"{server.url}/api/v1/jobs", json=body)
        assert status == 400, reply
        assert reply["error"]["code"] == "python_not_allowed"
        assert reply["error"]["details"][0]["path"] == "transformations[0].config.function"
        assert "(allowed: none)" in reply["error"]["message"]
        assert "--python-modules helios_userpkg" in reply["error"]["message"]
    finally:
        assert server.stop() == 0, server.log_tail()


async def test_native_api_runs_a_function_object_and_refuses_what_does_not_import(
    tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The native API: any importable module (no allow-list), the function given as itself; the workers
    import it from the PYTHONPATH they inherit."""
    monkeypatch.syspath_prepend(str(USERPKG))
    monkeypatch.setenv("PYTHONPATH", str(USERPKG))
    from helios_userpkg import records

    config = JobConfig.from_dict(job("native", data / "orders.jsonl", tmp_path / "out"))
    config.transformations.append(TransformationConfig.python(records.split_items, kind="flat_map"))
    async with JobManager(2, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job(config)

        async def ended() -> JobStatus | None:
            status = await jm.get_job_status(job_id)
            return status if status.terminal else None

        assert await wait_until(ended, what="the job's end", within=120) == JobStatus.FINISHED
        with pytest.raises(InvalidJobConfigError) as info:
            await jm.submit_job(
                job("typo", data / "orders.jsonl", tmp_path / "t", python_step("helios_nowhere:f"))
            )
        assert info.value.code == "invalid_job_config"
        assert "no module named 'helios_nowhere'" in info.value.errors[0].message
    assert written(tmp_path / "out") == [
        {"order": o["id"], "item": item} for o in ORDERS for item in o.get("items", [])
    ]


def test_helios_run_imports_functions_of_its_working_directory(tmp_path: Path, data: Path) -> None:
    """``helios run`` in a project directory: its module is found by the submit check and by the
    workers (``python -m`` in that directory), with no PYTHONPATH; a typo is exit code 2 with the field."""
    (tmp_path / "helios_cwd_fns.py").write_text("def tag(r):\n    return {**r, 'tagged': True}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HELIOS_HOME")}

    def helios_run(function: str, name: str) -> subprocess.CompletedProcess[str]:
        body = job(name, data / "orders.jsonl", tmp_path / name, python_step(function))
        (tmp_path / f"{name}.json").write_text(json.dumps(body))
        command = [str(HELIOS), "run", f"{name}.json", "--home", str(tmp_path / "home")]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    done = helios_run("helios_cwd_fns:tag", "tagged")
    assert done.returncode == 0, done.stdout + done.stderr
    assert written(tmp_path / "tagged") == [{**o, "tagged": True} for o in ORDERS]
    typo = helios_run("helios_cwd_fns:tga", "typo")
    assert typo.returncode == 2, typo.stdout + typo.stderr
    assert typo.stderr.strip() == (
        "transformations[0].config.function: cannot resolve helios_cwd_fns:tga: module 'helios_cwd_fns' "
        "has no attribute 'tga'"
    )
