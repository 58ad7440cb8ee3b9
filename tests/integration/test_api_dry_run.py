"""``POST /api/v1/jobs?dry_run=true`` against a real ``helios server``: every check of a submit (model,
plan, allowed paths, python allow-list, start savepoint, the server's parallelism limit) answers as a
submit would, a valid job answers 200 with its plan, and nothing is ever created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import test_api as rest  # the REST client, job bodies and schema check of the contract tests
from rest_call import call
from test_api import api, jm

from heliosdb_streaming.testing.server import HeliosServerProcess

__all__ = ["api", "jm"]  # fixtures of test_api used by the scenario's embedded run

pytestmark = pytest.mark.timeout(180)

SLOTS = 8  # the scenario's servers: test_api's JobManager(8), tests/k8s' operator --max-parallelism 8
USERPKG = Path(__file__).resolve().parents[1] / "userpkg"


def keyed_job(
    source: Path, sink: Path, *, function: str = "helios_userpkg.fraud:CardSessions"
) -> dict[str, Any]:
    return {
        "name": "dry-run-sessions",
        "config": {"parallelism": 1, "restart_strategy": "none"},
        "sources": [{"type": "file", "config": {"path": str(source)}}],
        "transformations": [
            {"type": "filter", "config": {"condition": "amount > 0"}},
            {"type": "key_by", "config": {"key": "card_id"}},
            {"type": "process", "config": {"function": function}},
        ],
        "sinks": [{"type": "file", "config": {"path": str(sink / "{task}.jsonl")}}],
    }


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dry-run")
    (root / "home").mkdir()
    (root / "home" / "in.jsonl").write_text(json.dumps({"card_id": "a", "amount": 1}) + "\n")
    (root / "outside").mkdir()
    return root


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[HeliosServerProcess]:
    process = HeliosServerProcess(
        home / "home",
        "--python-modules",
        "helios_userpkg",
        "--max-parallelism",
        "4",
        env={"PYTHONPATH": str(USERPKG)},
    )
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log_tail()


async def job_count(session: aiohttp.ClientSession, server: HeliosServerProcess) -> int:
    status, body = await call(session, "GET", f"{server.url}/api/v1/jobs")
    assert status == 200, body
    return int(body["total"])


async def test_a_valid_job_answers_its_plan_and_creates_nothing(
    server: HeliosServerProcess, home: Path, session: aiohttp.ClientSession
) -> None:
    job = keyed_job(Path("in.jsonl"), Path("out"))
    status, body = await call(session, "POST", f"{server.url}/api/v1/jobs?dry_run=true", json=job)
    assert status == 200, body
    assert body["valid"] is True
    assert (body["name"], body["parallelism"]) == ("dry-run-sessions", 1)
    stages = body["plan"]["stages"]
    assert [(s["input"], [step["type"] for step in s["steps"]]) for s in stages] == [
        ("splits", ["filter"]),
        ("key_groups", ["key_by", "process"]),
    ]
    [boundary] = body["plan"]["boundaries"]
    assert (boundary["stage"], boundary["step"], boundary["key"]) == (1, 1, "card_id")
    assert "declare no partitioning" in boundary["reason"]
    assert await job_count(session, server) == 0
    assert not (home / "home" / "out").exists()
    # the same body, submitted for real, is accepted: the dry run said what submit does
    status, body = await call(session, "POST", f"{server.url}/api/v1/jobs", json=job)
    assert status == 201, body
    assert await job_count(session, server) == 1
    status, _ = await call(session, "DELETE", f"{server.url}/api/v1/jobs/{body['job_id']}")
    assert status in (200, 409)


@pytest.mark.parametrize(
    ("change", "code", "paths"),
    [
        (  # model: every problem at once, each at its path
            lambda j: (
                j["config"].update(parallelism=0)
                or j["transformations"][0]["config"].update(condition="amount >")
            ),
            "invalid_job_config",
            ["config.parallelism", "transformations[0].config.condition"],
        ),
        (  # the server's limit (the control plane's check), on a job that needs no exchange
            lambda j: j.update(transformations=j["transformations"][:1], config={"parallelism": 5}),
            "invalid_job_config",
            ["config.parallelism"],
        ),
        (  # a path outside the server's home
            lambda j: j["sources"][0]["config"].update(path="../outside/x.jsonl"),
            "invalid_job_config",
            ["sources[0].config.path"],
        ),
        (  # the python allow-list
            lambda j: j["transformations"][2]["config"].update(function="os.path:join"),
            "python_not_allowed",
            ["transformations[2].config.function"],
        ),
        (  # allowed module, but the class does not exist (the import check of a submit)
            lambda j: j["transformations"][2]["config"].update(function="helios_userpkg.fraud:Nope"),
            "invalid_job_config",
            ["transformations[2].config.function"],
        ),
    ],
    ids=["model", "max-parallelism", "path", "allow-list", "import"],
)
async def test_an_invalid_job_is_400_at_its_paths_as_submit(
    server: HeliosServerProcess, session: aiohttp.ClientSession, change: Any, code: str, paths: list[str]
) -> None:
    job = keyed_job(Path("in.jsonl"), Path("out"))
    change(job)
    answers = []
    for query in ("?dry_run=true", ""):
        status, body = await call(session, "POST", f"{server.url}/api/v1/jobs{query}", json=job)
        answers.append((status, body["error"]["code"], sorted(d["path"] for d in body["error"]["details"])))
    assert answers[0] == (400, code, sorted(paths))
    assert answers[1] == answers[0]  # exactly what submit answers
    assert await job_count(session, server) <= 1  # only the valid test's job, if it ran first


async def test_a_missing_start_savepoint_and_a_bad_flag_are_400(
    server: HeliosServerProcess, home: Path, session: aiohttp.ClientSession
) -> None:
    job = keyed_job(Path("in.jsonl"), Path("out"))
    before = await job_count(session, server)
    missing = (home / "home" / "no-such-savepoint").as_uri()
    url = f"{server.url}/api/v1/jobs?dry_run=true&from_savepoint={missing}"
    status, body = await call(session, "POST", url, json=job)
    assert status == 400, body
    assert [d["path"] for d in body["error"]["details"]] == ["from_savepoint"]
    status, body = await call(session, "POST", f"{server.url}/api/v1/jobs?dry_run=maybe", json=job)
    assert status == 400, body
    assert body["error"]["code"] == "invalid_parameter"
    assert body["error"]["details"][0]["path"] == "dry_run"
    assert await job_count(session, server) == before


# ------------------------------------------------ the scenario both substrates run (tests/k8s too)


async def dry_run_scenario(api: rest.Api) -> None:
    """A keyed job's dry run answers its plan (the same plan its details show once submitted) and
    conforms to the document; a plan that cannot run and a parallelism over the limit are 400 at their
    paths; the job list is empty afterwards."""
    url = "/api/v1/jobs?dry_run=true"
    body = await api.ok("POST", url, 200, json=rest.merchant_job("narrow", parallelism=1))
    rest.conforms(body, "JobValidationResponse")
    assert (body["valid"], body["name"], body["parallelism"]) == (True, "narrow", 1)
    assert [(s["input"], s["key"], [t["type"] for t in s["steps"]]) for s in body["plan"]["stages"]] == [
        ("splits", None, ["filter"]),
        ("key_groups", "merchant", ["key_by", "window"]),
    ]
    assert body["plan"]["boundaries"] == [
        {
            "stage": 1,
            "step": 1,
            "key": "merchant",
            "reason": "key_by merchant: its input is grouped by card_id, not by merchant",
        }
    ]
    details = rest.assert_error(
        await api.call("POST", url, json=rest.merchant_job("wide", parallelism=2)), 400, "invalid_job_config"
    )
    assert [d["path"] for d in details] == ["transformations[1]"]
    over = rest.datagen_job("over", count=10, parallelism=SLOTS + 1)
    details = rest.assert_error(await api.call("POST", url, json=over), 400, "invalid_job_config")
    assert [d["path"] for d in details] == ["config.parallelism"]
    assert "max_parallelism" in details[0]["message"]
    assert (await api.ok("GET", "/api/v1/jobs"))["total"] == 0  # nothing created


async def test_dry_run_scenario_embedded(api: rest.Api) -> None:
    await dry_run_scenario(api)
    assert not [s for s in api.statuses if s >= 500]


def test_helios_validate_asks_the_server(server: HeliosServerProcess, tmp_path: Path) -> None:
    """``helios validate FILE --server URL``: what the file alone cannot tell (the server's python
    allow-list) is refused with its path, exit 2; the valid job prints ok and the plan, exit 0."""
    helios = Path(sys.executable).with_name("helios")
    env = {k: v for k, v in os.environ.items() if k not in ("HELIOS_API_TOKEN", "HELIOS_URL")}
    job = keyed_job(Path("in.jsonl"), Path("out"))
    job["transformations"][2] = {"type": "python", "config": {"function": "json:loads"}}
    refused = tmp_path / "refused.json"
    refused.write_text(json.dumps(job))
    local = subprocess.run([str(helios), "validate", str(refused)], env=env, capture_output=True, text=True)
    assert local.returncode == 0, local.stdout + local.stderr  # the file itself is a valid job
    remote = subprocess.run(
        [str(helios), "validate", str(refused), "--server", server.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert remote.returncode == 2, remote.stdout + remote.stderr
    assert remote.stdout.startswith("transformations[2].config.function: ")
    valid = tmp_path / "valid.json"
    valid.write_text(json.dumps(keyed_job(Path("in.jsonl"), Path("out"))))
    env["HELIOS_URL"] = server.url
    remote = subprocess.run(
        [str(helios), "validate", str(valid), "--server"], env=env, capture_output=True, text=True, timeout=60
    )
    assert remote.returncode == 0, remote.stdout + remote.stderr
    lines = remote.stdout.splitlines()
    assert lines[0] == "ok" and lines[1].split() == ["STAGE", "INPUT", "TASKS", "STEPS"]
    assert any(line.startswith("stage 1 starts at step [1]: key_by card_id") for line in lines)
