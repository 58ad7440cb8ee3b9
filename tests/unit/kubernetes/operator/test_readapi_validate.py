"""The operator's ``POST /internal/v1/validate`` (a submit's dry run with the reconciler's checks) over
real HTTP, through ``OperatorClient.validate``: the plan of a valid job, the reconciler's errors at the
REST body's paths (allowed paths, python allow-list, ``--max-parallelism``), the token, and no job."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from test_readapi import JOB_A, TOKEN, ReadApi, read_api

from heliosdb_streaming.control import paths, usercode
from heliosdb_streaming.kubernetes.operator.bindings import Bindings
from heliosdb_streaming.kubernetes.operator.readapi import create_read_app
from heliosdb_streaming.kubernetes.restapi.readclient import OperatorClient, OperatorUnavailableError
from heliosdb_streaming.model.errors import InvalidJobConfigError, PythonNotAllowedError

__all__ = ["read_api"]  # its control plane (max_parallelism 7, two jobs) is reused here


def job(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "checked",
        "config": {"parallelism": 1},
        "sources": [{"type": "datagen", "config": {"partitions": 2}}],
        "transformations": [{"type": "filter", "config": {"condition": "amount > 1"}}],
        "sinks": [{"type": "discard", "config": {}}],
    }
    body.update(changes)
    return body


@pytest.fixture
async def client(read_api: ReadApi, tmp_path: Path) -> AsyncIterator[OperatorClient]:
    """A read API as the operator serves it: its allowed roots and an allow-list without user code."""
    app = create_read_app(
        read_api.plane,
        Bindings(tmp_path / "bindings"),
        TOKEN,
        allowed_roots=paths.AllowedRoots.of([tmp_path], base=tmp_path),
        user_code=usercode.UserCodePolicy.server([], import_check=False),
    )
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    operator = OperatorClient(str(server.make_url("")).rstrip("/"), "team-a", TOKEN)
    try:
        yield operator
    finally:
        await operator.close()
        await server.close()


async def test_a_valid_job_gives_its_plan_and_no_job(client: OperatorClient, read_api: ReadApi) -> None:
    before = set(read_api.plane.jobs)
    plan = await client.validate(job(), None)
    assert [(s.input, [p.type for p in s.steps]) for s in plan.stages] == [("splits", ["filter"])]
    assert plan.boundaries == [] and plan.declared_key == "card_id"
    assert set(read_api.plane.jobs) == before


@pytest.mark.parametrize(
    ("body", "error", "path"),
    [
        (job(config={"parallelism": 8}), InvalidJobConfigError, "config.parallelism"),  # over its 7
        (
            job(sinks=[{"type": "file", "config": {"path": "/etc/helios-x/{task}.jsonl"}}]),
            InvalidJobConfigError,
            "sinks[0].config.path",
        ),
        (
            job(transformations=[{"type": "python", "config": {"function": "json:loads"}}]),
            PythonNotAllowedError,
            "transformations[0].config.function",
        ),
    ],
    ids=["max-parallelism", "path", "allow-list"],
)
async def test_the_reconcilers_checks_come_back_as_their_errors(
    client: OperatorClient, body: dict[str, Any], error: type[InvalidJobConfigError], path: str
) -> None:
    with pytest.raises(error) as raised:
        await client.validate(body, None)
    assert type(raised.value) is error
    assert [e.path for e in raised.value.errors] == [path]


async def test_a_missing_start_savepoint_is_400_at_from_savepoint(
    client: OperatorClient, tmp_path: Path
) -> None:
    with pytest.raises(InvalidJobConfigError) as raised:
        await client.validate(job(), (tmp_path / "nothing-here").as_uri())
    assert [e.path for e in raised.value.errors] == ["from_savepoint"]


async def test_validate_takes_the_token(read_api: ReadApi) -> None:
    anonymous = OperatorClient(read_api.url, "team-a")
    try:
        with pytest.raises(OperatorUnavailableError, match="401"):
            await anonymous.validate(job(), None)
    finally:
        await anonymous.close()


async def test_the_dry_run_never_imports_user_code(read_api: ReadApi, tmp_path: Path) -> None:
    """Even a read API given an importing policy: a module that does not exist is not imported (the
    embedded server would answer 400 at the function's path), so the job passes the operator's checks."""
    app = create_read_app(
        read_api.plane, Bindings(tmp_path / "b"), TOKEN, user_code=usercode.UserCodePolicy(None, True)
    )
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    operator = OperatorClient(str(server.make_url("")).rstrip("/"), "team-a", TOKEN)
    try:
        body = job(transformations=[{"type": "python", "config": {"function": "no_such_module_x:f"}}])
        plan = await operator.validate(body, None)
        assert [p.type for p in plan.stages[0].steps] == ["python"]
    finally:
        await operator.close()
        await server.close()


async def test_a_bare_start_location_must_be_a_savepoint_of_the_namespace(
    read_api: ReadApi, tmp_path: Path
) -> None:
    """A retained checkpoint of team-a's job, named by its location alone (no Savepoint resource): a
    start for team-a, refused for team-b at from_savepoint as the reconciler refuses spec.restoreFrom."""
    directory = tmp_path / "store" / JOB_A / "chk-3"
    directory.mkdir(parents=True)
    (directory / "_manifest.json").write_text(json.dumps({"job_id": JOB_A, "checkpoint_id": 3}))
    location = directory.as_uri()
    team_a = OperatorClient(read_api.url, "team-a", TOKEN)
    team_b = OperatorClient(read_api.url, "team-b", TOKEN)
    try:
        plan = await team_a.validate(job(), location, bare_location=True)
        assert len(plan.stages) == 1
        with pytest.raises(InvalidJobConfigError) as raised:
            await team_b.validate(job(), location, bare_location=True)
        assert [(e.path, e.message) for e in raised.value.errors] == [
            ("from_savepoint", "not a savepoint of a StreamingJob in namespace team-b; name its Savepoint")
        ]
        assert len((await team_b.validate(job(), location)).stages) == 1  # a Savepoint resource's location
    finally:
        await team_a.close()
        await team_b.close()
