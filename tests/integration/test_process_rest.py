"""Process steps through real ``helios server``s over REST: refused without ``--python-modules``
(400 python_not_allowed), then accepted by a server that allows the package, whose workers import the
class from the PYTHONPATH they inherit; a step with no key and a class that is not a process function
are 400s naming their field."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from rest_call import call

from heliosdb_streaming.testing.server import HeliosServerProcess

pytestmark = pytest.mark.timeout(240)

USERPKG = Path(__file__).resolve().parents[1] / "userpkg"
CLASS = "helios_userpkg.fraud:CardSessions"
EVENTS = [
    {"card_id": card, "amount": amount, "merchant": merchant, "timestamp": ts}
    for card, amount, merchant, ts in [
        ("a", 600, "m1", 0),
        ("b", 10, "m1", 1_000),
        ("a", 500, "m2", 2_000),  # a passes the limit: alert
        ("b", 20, "m2", 100_000),  # a was quiet for 60 s: its session ends
        ("a", 1, "m1", 100_001),
    ]
]


def body(source: Path, sink: Path, *steps: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "card-sessions",
        "config": {"parallelism": 1, "restart_strategy": "none"},
        "sources": [{"type": "file", "config": {"path": str(source)}}],
        "transformations": list(steps),
        "sinks": [{"type": "file", "config": {"path": str(sink / "{task}.jsonl")}}],
    }


def process(function: str = CLASS, **config: Any) -> dict[str, Any]:
    return {"type": "process", "config": {"function": function, **config}}


@pytest.fixture(autouse=True)
def userpkg_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(USERPKG))


def server(home: Path, *args: str) -> HeliosServerProcess:
    home.mkdir(parents=True, exist_ok=True)
    (home / "in.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    return HeliosServerProcess(home, *args, env={"PYTHONPATH": str(USERPKG)})


async def test_a_server_refuses_then_with_python_modules_runs_a_process_job(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    from helios_userpkg.fraud import reference

    job = body(Path("in.jsonl"), Path("out"), {"type": "key_by", "config": {"key": "card_id"}}, process())
    strict = server(tmp_path / "strict")
    try:
        status, reply = await call(session, "POST", f"{strict.url}/api/v1/jobs", json=job)
    finally:
        assert strict.stop() == 0, strict.log_tail()
    assert status == 400, reply
    assert reply["error"]["code"] == "python_not_allowed"
    assert reply["error"]["details"][0]["path"] == "transformations[1].config.function"
    assert "--python-modules helios_userpkg" in reply["error"]["message"]

    home = tmp_path / "allowing"
    allowing = server(home, "--python-modules", "helios_userpkg")
    try:
        jobs = f"{allowing.url}/api/v1/jobs"
        for bad, path, why in [
            (process(), "transformations[0].config.key", "a process step needs a key"),
            (
                process("helios_userpkg.fraud:NotAProcessFunction", key="card_id"),
                "transformations[0].config.function",
                "does not subclass heliosdb_streaming.functions",
            ),
        ]:
            status, reply = await call(session, "POST", jobs, json=body(Path("in.jsonl"), Path("x"), bad))
            assert status == 400, reply
            assert reply["error"]["code"] == "invalid_job_config"
            assert [(d["path"], why in d["message"]) for d in reply["error"]["details"]] == [(path, True)]
        status, reply = await call(session, "POST", jobs, json=job)
        assert status == 201, reply
        url = f"{jobs}/{reply['job_id']}"
        deadline = time.monotonic() + 120
        while True:
            status, details = await call(session, "GET", url)
            if details["status"] in ("finished", "failed", "cancelled"):
                break
            assert time.monotonic() < deadline, details
            await asyncio.sleep(0.1)
        assert details["status"] == "finished", details
    finally:
        assert allowing.stop() == 0, allowing.log_tail()
    got = [
        json.loads(line)
        for f in sorted((home / "out").glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    key = lambda r: (r["kind"], r["card_id"], r.get("at", r.get("ended")))  # noqa: E731
    assert sorted(got, key=key) == reference(EVENTS)
    assert [r["kind"] for r in sorted(got, key=key)] == ["alert", "session", "session", "session"]
