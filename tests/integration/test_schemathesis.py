"""Property-based tests of the REST API with schemathesis, from the server's own ``/api/v1/openapi.json``.

A ``helios server`` subprocess (free port, temporary home, 2 worker slots) is fuzzed with generated
requests: valid ones (positive), schema-violating ones (negative) and stateful sequences that follow the
document's OpenAPI links (submit -> get/cancel/savepoint/restart..., savepoint -> get/delete). Every
answer must be below 500, conform to the documented status codes, content type and response schema,
and (negative cases) reject what the schema forbids.

The server requires a bearer token (so negative cases without it must be 401). Only the submit body is
narrowed, in the test's copy of the document, to jobs that need no external
service and stay small: one bounded datagen source, discard or print sinks. Jobs the fuzzer creates are
cancelled right away, so the run stays short and light.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from openapi_spec_validator import validate as validate_openapi
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from heliosdb_streaming.testing.server import HeliosServerProcess

pytestmark = pytest.mark.timeout(240)

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REF = "#/components/schemas/"

POSITIVE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
NEGATIVE_CHECKS = [*POSITIVE_CHECKS, negative_data_rejection]

# A submit body that needs no external service and finishes fast: what the fuzzer may create.
# Numbers are enums: JSON Schema counts 28.0 as an "integer", the job model does not (a number of a
# job config is an int, never a float, a bool or a string), and the generator would send 28.0.
SAFE_DATAGEN = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "config"],
    "properties": {
        "type": {"const": "datagen"},
        "config": {
            "type": "object",
            "additionalProperties": False,
            "required": ["count"],
            "properties": {
                "count": {"enum": [0, 1, 50, 299, 300]},
                "rate_per_sec": {"const": 0},
                "partitions": {"enum": [1, 2]},
                "keys": {"enum": [2, 3, 50]},
                "seed": {"enum": [0, 7, 1000]},
            },
        },
    },
}
SAFE_SETTINGS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "parallelism": {"enum": [1, 2]},
        "checkpoint_interval_ms": {"enum": [100, 1000, 86_400_000]},
        "state_backend": {"$ref": f"{REF}StateBackendType"},
        "restart_strategy": {"const": "none"},
        "on_error": {"$ref": f"{REF}OnErrorPolicy"},
        "checkpoints_retained": {"enum": [1, 3, 100]},
    },
}


def safe_document(document: dict[str, Any]) -> dict[str, Any]:
    """The document with the submit body narrowed to small datagen jobs (see the module docstring)."""
    doc = copy.deepcopy(document)
    schemas = doc["components"]["schemas"]
    original = schemas["JobSubmitRequest"]
    schemas["JobSubmitRequest"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "sources", "sinks"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 40, "pattern": "^[A-Za-z0-9_-]+$"},
            "config": SAFE_SETTINGS,
            "sources": {"type": "array", "minItems": 1, "maxItems": 1, "items": SAFE_DATAGEN},
            "transformations": original["properties"]["transformations"] | {"maxItems": 2},
            "sinks": {
                "type": "array",
                "minItems": 1,
                "maxItems": 2,
                "items": {"oneOf": [{"$ref": f"{REF}DiscardSink"}, {"$ref": f"{REF}PrintSink"}]},
            },
        },
    }
    return doc


# ----------------------------------------------------------------------------------------- server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeliosServerProcess]:
    process = HeliosServerProcess(
        tmp_path_factory.mktemp("schemathesis") / "home", max_parallelism=2, env={"HELIOS_API_TOKEN": TOKEN}
    )
    try:
        yield process
    finally:
        assert process.stop() == 0, process.log_tail()
        assert "Traceback" not in process.err.read_text(), process.log_tail()


@pytest.fixture(scope="module")
def document(server: HeliosServerProcess) -> dict[str, Any]:
    response = requests.get(f"{server.url}/api/v1/openapi.json", headers=AUTH, timeout=10)
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    validate_openapi(doc)
    safe = safe_document(doc)
    validate_openapi(safe)
    return safe


def load(document: dict[str, Any], url: str, modes: list[GenerationMode]) -> Any:
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=url, request_timeout=60, headers=AUTH)
    schema.config.generation.update(modes=modes, allow_x00=False, max_examples=10)
    return schema


class Recorder:
    """Statuses seen per operation; cancels the jobs the fuzzer creates so that they stay few."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers.update(AUTH)
        self.seen: Counter[tuple[str, int]] = Counter()

    def after(self, label: str, response: Any, mode: GenerationMode = GenerationMode.POSITIVE) -> None:
        status = response.status_code
        self.seen[(label, status)] += 1
        if label == "POST /api/v1/jobs" and status == 201 and mode == GenerationMode.NEGATIVE:
            # a body outside the narrowed schema may be an endless job: stop it once it runs (a cancel
            # while its workers are still being spawned would leak them, see the report)
            job_id = response.json()["job_id"]
            status_now = wait_status(
                self.url, job_id, {"running", "finished", "failed", "cancelled"}, session=self.session
            )
            if status_now == "running":
                reply = self.session.delete(f"{self.url}/api/v1/jobs/{job_id}", timeout=60)
                assert reply.status_code in (200, 409), reply.text

    def server_errors(self) -> list[tuple[str, int]]:
        return [key for key in self.seen if key[1] >= 500]


def fuzz(
    operation: Any,
    mode: GenerationMode,
    recorder: Recorder,
    checks: list[Any],
    max_examples: int,
    **strategy_kw: Any,
) -> None:
    strategy = operation.as_strategy(generation_mode=mode, **strategy_kw)

    @hypothesis.given(case=strategy)
    @hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    def run(case: Any) -> None:
        response = case.call(session=recorder.session)
        recorder.after(operation.label, response, mode)
        case.validate_response(response, checks=checks)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        raise AssertionError(f"{operation.label}: no {mode.value} case could be generated") from None


def operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def submit(url: str, body: dict[str, Any]) -> str:
    reply = requests.post(f"{url}/api/v1/jobs", json=body, headers=AUTH, timeout=30)
    assert reply.status_code == 201, reply.text
    job_id: str = reply.json()["job_id"]
    return job_id


def wait_status(
    url: str, job_id: str, wanted: set[str], within: float = 60, session: requests.Session | None = None
) -> str:
    get = (session or requests).get
    deadline = time.monotonic() + within
    while True:
        detail = get(f"{url}/api/v1/jobs/{job_id}", headers=AUTH, timeout=10).json()
        if detail["status"] in wanted:
            status: str = detail["status"]
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id} is {detail['status']}, not {wanted}: {detail['message']}")
        time.sleep(0.05)


def endless_job(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "config": {"parallelism": 1, "checkpoint_interval_ms": 300, "restart_strategy": "none"},
        "sources": [{"type": "datagen", "config": {"rate_per_sec": 50, "partitions": 1, "keys": 5}}],
        "sinks": [{"type": "discard", "config": {}}],
    }


# -------------------------------------------------------------------------------------------- tests


def test_positive_and_negative_cases(server: HeliosServerProcess, document: dict[str, Any]) -> None:
    """Every operation with valid and with schema-violating requests, on unknown and on real jobs."""
    recorder = Recorder(server.url)
    schema = load(document, server.url, [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    ops = operations(schema)
    assert len(ops) == 17
    for operation in ops:
        fuzz(operation, GenerationMode.POSITIVE, recorder, POSITIVE_CHECKS, 12)
        raw = operation.definition.raw
        if "requestBody" in raw or any(p["in"] == "query" for p in raw.get("parameters", [])):
            # (a path string takes any value: no negative case.) The submit body is narrowed here, so a
            # "negative" body may well be a valid job: no rejection check for it.
            negative_checks = POSITIVE_CHECKS if operation.label == "POST /api/v1/jobs" else NEGATIVE_CHECKS
            fuzz(operation, GenerationMode.NEGATIVE, recorder, negative_checks, 12)

    # the same operations on a real, running job (and its savepoint), where they do real work
    live = submit(server.url, endless_job("fuzzed-live"))
    wait_status(server.url, live, {"running"})
    savepoint = recorder.session.post(f"{server.url}/api/v1/jobs/{live}/savepoints", timeout=60).json()
    by_label = {op.label: op for op in ops}
    on_job = [
        ("GET /api/v1/jobs/{job_id}", 3),
        ("GET /api/v1/jobs/{job_id}/metrics", 6),
        ("GET /api/v1/jobs/{job_id}/logs", 8),
        ("GET /api/v1/jobs/{job_id}/checkpoints", 2),
        ("GET /api/v1/jobs/{job_id}/savepoints", 2),
        ("POST /api/v1/jobs/{job_id}/savepoints", 4),
        # one request per call (schemathesis drops a repeated identical case): the second pause and the
        # second resume are illegal transitions, so the 409 path is always reached
        ("POST /api/v1/jobs/{job_id}/pause", 1),
        ("POST /api/v1/jobs/{job_id}/pause", 1),
        ("POST /api/v1/jobs/{job_id}/resume", 1),
        ("POST /api/v1/jobs/{job_id}/resume", 1),
        ("POST /api/v1/jobs/{job_id}/restart", 4),
        ("GET /api/v1/jobs/{job_id}/savepoints/{savepoint_id}", 2),
        ("DELETE /api/v1/jobs/{job_id}", 2),
    ]
    for label, n in on_job:
        params = {"job_id": live}
        if "{savepoint_id}" in label:
            params["savepoint_id"] = savepoint["savepoint_id"]
        fuzz(by_label[label], GenerationMode.POSITIVE, recorder, POSITIVE_CHECKS, n, path_parameters=params)
    for label in ("POST /api/v1/jobs/{job_id}/savepoints", "POST /api/v1/jobs/{job_id}/restart"):
        fuzz(
            by_label[label],
            GenerationMode.NEGATIVE,
            recorder,
            NEGATIVE_CHECKS,
            6,
            path_parameters={"job_id": live},
        )
    fuzz(
        by_label["DELETE /api/v1/jobs/{job_id}/savepoints/{savepoint_id}"],
        GenerationMode.POSITIVE,
        recorder,
        POSITIVE_CHECKS,
        1,
        path_parameters={"job_id": live, "savepoint_id": savepoint["savepoint_id"]},
    )
    recorder.session.delete(f"{server.url}/api/v1/jobs/{live}", timeout=60)

    assert recorder.server_errors() == [], recorder.seen
    statuses = {status for _, status in recorder.seen}
    assert {200, 201, 400, 404, 409} <= statuses, recorder.seen  # the fuzzer reached real work too
    done = {label for (label, status) in recorder.seen if status < 300}
    assert "POST /api/v1/jobs/{job_id}/savepoints" in done and "POST /api/v1/jobs/{job_id}/restart" in done


def test_stateful_sequences(server: HeliosServerProcess, document: dict[str, Any]) -> None:
    """Sequences along the OpenAPI links: a submitted job is got, paused, savepointed, restarted..."""
    schema = load(document, server.url, [GenerationMode.POSITIVE])
    recorder = Recorder(server.url)
    base: Any = schema.as_state_machine()
    checks = POSITIVE_CHECKS

    class Machine(base):  # type: ignore[misc]
        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            self.record(case, response)
            case.validate_response(response, checks=checks)

        def record(self, case: Any, response: Any) -> None:
            self.seen.append(case.operation.label)
            recorder.seen[(case.operation.label, response.status_code)] += 1

        def setup(self) -> None:
            self.seen: list[str] = []

    Machine.run(
        settings=hypothesis.settings(
            max_examples=30,
            stateful_step_count=8,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            verbosity=hypothesis.Verbosity.quiet,
        )
    )
    seen = recorder.seen
    assert recorder.server_errors() == [], seen
    linked = {label for (label, _) in seen if "{job_id}" in label}
    assert len(linked) >= 4, seen  # the links led from submitted jobs to their operations
    assert any(label == "POST /api/v1/jobs" and status == 201 for (label, status) in seen), seen
