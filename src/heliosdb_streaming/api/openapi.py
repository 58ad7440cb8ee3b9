"""The OpenAPI 3.1 document of the REST API, generated from the pydantic models.

The request body schema is ``JobSubmitRequest`` (the same model that validates submissions) and the
response schemas are ``api.schemas`` and the native types they serve (``model.types``); nothing is
written by hand but the list of operations below. The native types keep the component names the
document has always given them (``_COMPONENT_NAMES``), so that generated clients do not change.
``docs/openapi.json`` is this module's output, kept in the repository:

    python -m heliosdb_streaming.api.openapi > docs/openapi.json
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from heliosdb_streaming import __version__
from heliosdb_streaming.api import schemas
from heliosdb_streaming.model.config import JobSubmitRequest, RestartStrategy
from heliosdb_streaming.model.types import JobStatus, LogLevel, RestartOptions, SavepointInfo

REF_TEMPLATE = "#/components/schemas/{model}"

_RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    schemas.ErrorResponse,
    schemas.SubmitJobResponse,
    schemas.JobValidationResponse,
    schemas.JobListResponse,
    schemas.JobDetailsResponse,
    schemas.CancelJobResponse,
    schemas.JobStatusResponse,
    SavepointInfo,
    schemas.SavepointListResponse,
    schemas.SavepointDeletedResponse,
    schemas.CheckpointListResponse,
    schemas.RestartJobResponse,
    schemas.JobMetricsResponse,
    schemas.JobLogsResponse,
    schemas.HealthResponse,
)

_REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    JobSubmitRequest,
    schemas.CreateSavepointRequest,
    RestartOptions,
)

# The 409 codes an operation can answer besides plain illegal_state_transition (model.errors), so that
# its 409 response names each of them and when it comes.
_ILLEGAL_STATE = "illegal_state_transition: details give the job's current status"
_JOB_RESTARTING = (
    "job_restarting: the job is between two runs (restart delay, a restart in progress) and no run was "
    "ready within 30 s, or its run ended before the savepoint could start; try again later"
)
_CONFLICTS = {
    "cancelJob": (
        _ILLEGAL_STATE,
        f"with savepoint=true, {_JOB_RESTARTING}",
        "with purge=true, job_not_terminal: the job is submitted, running or paused (cancel it first)",
        "with purge=true, job_has_savepoints: the job still has savepoints (details name them, path "
        "savepoint_id); delete them first",
    ),
    "createSavepoint": (_ILLEGAL_STATE, _JOB_RESTARTING),
    "deleteSavepoint": (
        "savepoint_in_use: a job restores from this savepoint and has no completed checkpoint or savepoint "
        "of its own yet; details name those jobs (path job_id)",
        "illegal_state_transition (Kubernetes substrate): the savepoint was taken on cancel and has no "
        "Savepoint resource to delete",
    ),
}

_ERROR_DESCRIPTIONS = {
    400: "Bad request: invalid_json, invalid_job_config or invalid_request (details name each field "
    "path), python_not_allowed (a python step names a module this server does not allow: "
    "--python-modules; details name each field), invalid_parameter",
    401: "unauthorized: a token is configured and the bearer token is missing or wrong",
    404: "job_not_found, or savepoint_not_found",
    409: _ILLEGAL_STATE,  # and, where an operation answers more: _CONFLICTS
    403: "forbidden: the Host or Origin header names no host this server allows (a browser's "
    "cross-site request or DNS rebinding; see docs/security.md)",
    413: "payload_too_large",
    415: "unsupported_media_type: a body that is not Content-Type application/json",
    503: "savepoint_failed: a worker failed the savepoint or it timed out; the job keeps running and the "
    "savepoint may be tried again",
}

# Operations that change jobs: a body other than JSON is 415 (api.guard).
_CHANGING_OPS = frozenset(
    {"submitJob", "cancelJob", "pauseJob", "resumeJob", "createSavepoint", "deleteSavepoint", "restartJob"}
)

# OpenAPI links: how the ids an answer carries feed the next operations (clients and stateful tests).
_JOB_LINKS = {
    name: ("$response.body#/job_id", op_id)
    for name, op_id in (
        ("GetJob", "getJob"),
        ("CancelJob", "cancelJob"),
        ("PauseJob", "pauseJob"),
        ("ResumeJob", "resumeJob"),
        ("GetJobMetrics", "getJobMetrics"),
        ("GetJobLogs", "getJobLogs"),
        ("CreateSavepoint", "createSavepoint"),
        ("ListSavepoints", "listSavepoints"),
        ("ListCheckpoints", "listCheckpoints"),
        ("RestartJob", "restartJob"),
    )
}


def _links(*, savepoint: bool = False) -> dict[str, Any]:
    links: dict[str, Any] = {
        name: {"operationId": op_id, "parameters": {"job_id": source}}
        for name, (source, op_id) in _JOB_LINKS.items()
    }
    if savepoint:
        for name, op_id in (("GetSavepoint", "getSavepoint"), ("DeleteSavepoint", "deleteSavepoint")):
            links[name] = {
                "operationId": op_id,
                "parameters": {
                    "job_id": "$response.body#/job_id",
                    "savepoint_id": "$response.body#/savepoint_id",
                },
            }
    return links


# The native types (job.types) the API serves (and reads) as they are, under the component names of
# the REST models that used to copy them: the document (and clients generated from it) stays as it was.
_COMPONENT_NAMES = {
    "JobSummary": "JobSummaryBody",
    "TaskInfo": "TaskBody",
    "CheckpointInfo": "CheckpointBody",
    "SavepointInfo": "SavepointResponse",
    "LatencyStats": "LatencyBody",
    "ThroughputPoint": "ThroughputPointBody",
    "LogEntry": "LogEntryBody",
    "RestartOptions": "RestartJobRequest",
}


def _renamed(node: Any) -> Any:
    """``node`` with every ``$ref`` to a native type's component pointing at its document name."""
    if isinstance(node, dict):
        return {k: _renamed(v) for k, v in node.items()} | (
            {"$ref": REF_TEMPLATE.format(model=_component_name(node["$ref"].rsplit("/", 1)[1]))}
            if isinstance(node.get("$ref"), str)
            else {}
        )
    if isinstance(node, list):
        return [_renamed(v) for v in node]
    return node


def _component_name(name: str) -> str:
    return _COMPONENT_NAMES.get(name, name)


def _schemas() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "validation") for m in _REQUEST_MODELS]
    models += [(m, "serialization") for m in _RESPONSE_MODELS]
    refs, top = models_json_schema(models, ref_template=REF_TEMPLATE)
    components: dict[str, Any] = {}
    for name, schema in top["$defs"].items():
        components[_component_name(name)] = _renamed(
            schema | ({"title": _component_name(name)} if schema.get("title") == name else {})
        )
    # RestartStrategy also takes its bare name (a before-validator the generated schema cannot see).
    strategy = components[RestartStrategy.__name__]
    names = list(RestartStrategy.model_fields["type"].annotation.__args__)  # type: ignore[union-attr]
    components[RestartStrategy.__name__] = {
        "anyOf": [{"type": "string", "enum": names}, strategy],
        "description": "A strategy name (with its documented defaults) or an object with parameters",
    }
    by_name = {_component_name(model.__name__): _renamed(ref) for (model, _mode), ref in refs.items()}
    return by_name, components


def _json_content(ref: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": ref}}


def _param(
    name: str, where: Literal["path", "query"], schema: dict[str, Any], description: str
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


_JOB_ID = _param("job_id", "path", {"type": "string"}, "The job's id, as returned by submit (job-<uuid>)")
_SAVEPOINT_ID = _param(
    "savepoint_id", "path", {"type": "string"}, "The savepoint's id, as returned by create (savepoint-<uuid>)"
)


def build() -> dict[str, Any]:
    """The document as a dict (see ``render`` for the canonical text)."""
    refs, components = _schemas()
    error_ref = refs["ErrorResponse"]

    def op(
        op_id: str,
        summary: str,
        status: int,
        model: str | None,
        *,
        params: tuple[dict[str, Any], ...] = (),
        errors: tuple[int, ...] = (),
        body: str | None = None,
        body_required: bool = True,
        tag: str = "jobs",
        description: str | None = None,
        links: dict[str, Any] | None = None,
        also: tuple[int, str, str] | None = None,
    ) -> dict[str, Any]:
        responses: dict[str, Any] = {
            str(status): {"description": summary}
            | ({"content": _json_content(refs[model])} if model is not None else {})
            | ({"links": links} if links else {}),
        }
        if also is not None:  # a second success answer (a query parameter changes what the call does)
            also_status, also_text, also_model = also
            also_content = _json_content(refs[also_model])
            responses[str(also_status)] = {"description": also_text, "content": also_content}
        changing = (415,) if op_id in _CHANGING_OPS else ()
        for code in (*errors, *changing, 401, 403):
            text = _ERROR_DESCRIPTIONS[code]
            if code == 409 and op_id in _CONFLICTS:
                text = "; or ".join(_CONFLICTS[op_id])
            responses[str(code)] = {"description": text, "content": _json_content(error_ref)}
        operation: dict[str, Any] = {
            "operationId": op_id,
            "summary": summary,
            "tags": [tag],
            "responses": responses,
        }
        if description:
            operation["description"] = description
        if params:
            operation["parameters"] = list(params)
        if body is not None:
            operation["requestBody"] = {"required": body_required, "content": _json_content(refs[body])}
        return operation

    status_enum = {"type": "string", "enum": [s.value for s in JobStatus]}
    paths: dict[str, Any] = {
        "/api/v1/jobs": {
            "post": op(
                "submitJob",
                "Submit a new job",
                201,
                "SubmitJobResponse",
                params=(
                    _param(
                        "from_savepoint",
                        "query",
                        {"type": "string", "minLength": 1},
                        "Start from this savepoint of any job (its location; an upgrade, as Flink's"
                        " --fromSavepoint); 400 at from_savepoint when no completed snapshot is there",
                    ),
                    _param(
                        "dry_run",
                        "query",
                        {"type": "boolean", "default": False},
                        "(addition) Validate only: run every check of a submit (model, plan, paths, python"
                        " allow-list, from_savepoint, the parallelism limit) and answer 200 with the plan, or"
                        " 400 with every error at its field path; nothing is created",
                    ),
                ),
                body="JobSubmitRequest",
                errors=(400, 413),
                links=_links(),
                description="With dry_run=true the job is only validated: 200 with a JobValidationResponse"
                " instead of 201, and no job exists afterwards.",
                also=(200, "Valid (dry_run=true): the plan; nothing was submitted", "JobValidationResponse"),
            ),
            "get": op(
                "listJobs",
                "List jobs, newest first",
                200,
                "JobListResponse",
                params=(
                    _param("status", "query", status_enum, "Only jobs in this status"),
                    _param(
                        "limit",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                        "",
                    ),
                    _param("offset", "query", {"type": "integer", "minimum": 0, "default": 0}, ""),
                ),
                errors=(400,),
            ),
        },
        "/api/v1/jobs/{job_id}": {
            "get": op(
                "getJob", "Get job details", 200, "JobDetailsResponse", params=(_JOB_ID,), errors=(404,)
            ),
            "delete": op(
                "cancelJob",
                "Cancel a job",
                200,
                "CancelJobResponse",
                params=(
                    _JOB_ID,
                    _param(
                        "savepoint",
                        "query",
                        {"type": "boolean", "default": False},
                        "Stop with a savepoint: take a savepoint, then stop; the answer has its savepoint_id",
                    ),
                    _param(
                        "purge",
                        "query",
                        {"type": "boolean", "default": False},
                        "(addition) Remove a finished, failed or cancelled job with its logs, checkpoints "
                        "and files; the answer has purged: true",
                    ),
                ),
                errors=(400, 404, 409, 503),
            ),
        },
        "/api/v1/jobs/{job_id}/savepoints": {
            "post": op(
                "createSavepoint",
                "Create a savepoint of a running or paused job",
                201,
                "SavepointResponse",
                params=(_JOB_ID,),
                body="CreateSavepointRequest",
                body_required=False,
                errors=(400, 404, 409, 413, 503),
                links=_links(savepoint=True),
            ),
            "get": op(
                "listSavepoints",
                "List the job's savepoints, oldest first",
                200,
                "SavepointListResponse",
                params=(_JOB_ID,),
                errors=(404,),
            ),
        },
        "/api/v1/jobs/{job_id}/savepoints/{savepoint_id}": {
            "get": op(
                "getSavepoint",
                "Get one savepoint",
                200,
                "SavepointResponse",
                params=(_JOB_ID, _SAVEPOINT_ID),
                errors=(404,),
            ),
            "delete": op(
                "deleteSavepoint",
                "Delete a savepoint and its files",
                200,
                "SavepointDeletedResponse",
                params=(_JOB_ID, _SAVEPOINT_ID),
                errors=(404, 409),
            ),
        },
        "/api/v1/jobs/{job_id}/checkpoints": {
            "get": op(
                "listCheckpoints",
                "List the job's checkpoints, oldest first",
                200,
                "CheckpointListResponse",
                params=(_JOB_ID,),
                errors=(404,),
            )
        },
        "/api/v1/jobs/{job_id}/restart": {
            "post": op(
                "restartJob",
                "Restart a job, from a savepoint or from its newest checkpoint",
                200,
                "RestartJobResponse",
                params=(_JOB_ID,),
                body="RestartJobRequest",
                body_required=False,
                errors=(400, 404, 409, 413),
                description="Allowed from running, failed, cancelled and finished (409 from submitted and "
                "paused). The answer comes once the restarted run is running, or after at most 30 s.",
            )
        },
        "/api/v1/jobs/{job_id}/pause": {
            "post": op(
                "pauseJob",
                "Pause a running job (sources stop, state is kept)",
                200,
                "JobStatusResponse",
                params=(_JOB_ID,),
                errors=(404, 409),
            )
        },
        "/api/v1/jobs/{job_id}/resume": {
            "post": op(
                "resumeJob",
                "Resume a paused job",
                200,
                "JobStatusResponse",
                params=(_JOB_ID,),
                errors=(404, 409),
            )
        },
        "/api/v1/jobs/{job_id}/metrics": {
            "get": op(
                "getJobMetrics",
                "Get job metrics over a window",
                200,
                "JobMetricsResponse",
                params=(
                    _JOB_ID,
                    _param(
                        "window",
                        "query",
                        {"type": "string", "enum": ["1m", "5m", "1h", "24h"], "default": "5m"},
                        "",
                    ),
                ),
                errors=(400, 404),
            )
        },
        "/api/v1/jobs/{job_id}/logs": {
            "get": op(
                "getJobLogs",
                "Get job logs, oldest first",
                200,
                "JobLogsResponse",
                params=(
                    _JOB_ID,
                    _param(
                        "level",
                        "query",
                        {"type": "string", "enum": [v.value for v in LogLevel]},
                        "Only lines at this level or above",
                    ),
                    _param(
                        "limit",
                        "query",
                        {"type": "integer", "minimum": 1, "maximum": 100000, "default": 1000},
                        "",
                    ),
                    _param(
                        "tail",
                        "query",
                        {"anyOf": [{"type": "boolean"}, {"type": "integer", "minimum": 0}], "default": False},
                        "true: the last `limit` lines instead of the first; a number N: the last N lines",
                    ),
                ),
                errors=(400, 404),
            )
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document",
                "tags": ["service"],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "401": {"description": _ERROR_DESCRIPTIONS[401], "content": _json_content(error_ref)},
                    "403": {"description": _ERROR_DESCRIPTIONS[403], "content": _json_content(error_ref)},
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness: always open, even when a token is configured",
                "tags": ["service"],
                "security": [],
                "responses": {
                    "200": {"description": "ok", "content": _json_content(refs["HealthResponse"])},
                    "403": {"description": _ERROR_DESCRIPTIONS[403], "content": _json_content(error_ref)},
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "prometheusMetrics",
                "summary": "Prometheus text exposition of the heliosdb_job_* metrics",
                "tags": ["service"],
                "responses": {
                    "200": {
                        "description": "text/plain; version=0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": {"description": _ERROR_DESCRIPTIONS[401], "content": _json_content(error_ref)},
                    "403": {"description": _ERROR_DESCRIPTIONS[403], "content": _json_content(error_ref)},
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "HeliosDB Streaming Job Management API",
            "version": __version__,
            "description": "Submit, watch, pause, resume, cancel and restart streaming jobs, and manage "
            "their savepoints. Every error is "
            '{"error": {"code", "message", "details"}}. When the server has a token (HELIOS_API_TOKEN), '
            "every route but /healthz needs 'Authorization: Bearer <token>'.",
        },
        "servers": [{"url": "http://127.0.0.1:8081"}],
        "security": [{"bearerAuth": []}],
        "tags": [{"name": "jobs"}, {"name": "service"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


@functools.cache
def render() -> str:
    """The canonical text: pretty-printed, keys sorted, so that it is byte-for-byte reproducible."""
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
