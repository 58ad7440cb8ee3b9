"""The StreamingJob and Savepoint CRDs: structural, in step with the pydantic models, as strict as the API.

Tests ``kubernetes/crds.py`` and ``kubernetes/structural.py``. A resource is checked the way the API server
would check it (``crd_validation``); every job the CRD accepts or rejects here is also given to
``JobSubmitRequest``, so the CRD and the REST API agree on it.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from crd_validation import admission, crd_schema, structural_violations, validate, version_of
from pydantic import BaseModel, ValidationError

from heliosdb_streaming.kubernetes import crds, deployment_crd, structural
from heliosdb_streaming.model.config import JobSubmitRequest
from heliosdb_streaming.model.types import JobStatus

ROOT = Path(__file__).resolve().parents[2]
CRD_DIRS = (ROOT / "crds", ROOT / "helm" / "heliosdb-streaming" / "crds")
KUBE_VERSION = "1.30"

JOB_CRD = crds.streaming_job_crd()
SAVEPOINT_CRD = crds.savepoint_crd()
DEPLOYMENT_CRD = deployment_crd.crd()
ALL_CRDS = pytest.mark.parametrize(
    "crd",
    [JOB_CRD, SAVEPOINT_CRD, DEPLOYMENT_CRD],
    ids=["StreamingJob", "Savepoint", "StreamingJobDeployment"],
)


def streaming_job(spec: dict[str, Any], name: str = "fraud-detection") -> dict[str, Any]:
    """A v1alpha2 StreamingJob of ``spec`` written as the REST body has it (renamed to camelCase)."""
    return {
        "apiVersion": crds.API_VERSION,
        "kind": "StreamingJob",
        "metadata": {"name": name},
        "spec": crds.to_camel(spec),
    }


def legacy_job(spec: dict[str, Any], name: str = "fraud-detection") -> dict[str, Any]:
    """The same as a v1alpha1 StreamingJob: the REST body's snake_case names as they are."""
    return {
        "apiVersion": crds.LEGACY_API_VERSION,
        "kind": "StreamingJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def spec_of(body: dict[str, Any]) -> dict[str, Any]:
    """A REST submit body as a StreamingJob spec (the same keys; ``name`` may stay)."""
    return copy.deepcopy(body)


def api_accepts(spec: dict[str, Any]) -> bool:
    job = {k: v for k, v in spec.items() if k in JobSubmitRequest.model_fields}
    job.setdefault("name", "job")
    try:
        JobSubmitRequest.model_validate(job)
    except ValidationError:
        return False
    return True


SPEC_FRAUD_PIPELINE = json.loads((ROOT / "examples" / "fraud_pipeline.json").read_text())
EXAMPLE_JOBS = [
    *sorted((ROOT / "examples").glob("*.json")),
    ROOT / "src" / "heliosdb_streaming" / "examples" / "demo_job.json",
]

# ------------------------------------------------------------------------------ files and structure


@pytest.mark.parametrize("directory", CRD_DIRS, ids=lambda d: str(d.relative_to(ROOT)))
def test_generated_files_are_in_step_with_the_models(directory: Path) -> None:
    for name, crd in crds.all_crds().items():
        on_disk = (directory / name).read_text(encoding="utf-8")
        assert on_disk == crds.render(crd), f"{directory / name} is stale: run `make crds`"
    assert sorted(p.name for p in directory.glob("*.yaml")) == sorted(crds.all_crds())


def test_cli_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crds.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    for d in ("a", "b"):
        assert (tmp_path / d / "streamingjob.yaml").read_text() == crds.render(JOB_CRD)
        assert yaml.safe_load((tmp_path / d / "savepoint.yaml").read_text()) == SAVEPOINT_CRD
    assert crds.main([]) == 2


@ALL_CRDS
def test_crd_is_a_valid_kubernetes_object_with_a_structural_schema(crd: dict[str, Any]) -> None:
    kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)
    assert structural_violations(crd_schema(crd)) == []
    text = json.dumps(crd)
    for banned in ('"$ref"', '"$defs"', '"const"', '"discriminator"', '"title"'):
        assert banned not in text


def test_the_structural_checker_catches_what_kubernetes_refuses() -> None:
    bad = {
        "type": "object",
        "properties": {
            "a": {"$ref": "#/$defs/A"},
            "b": {"description": "no type"},
            "c": {"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": True},
            "d": {"type": "string", "anyOf": [{"type": "string", "minLength": 1}]},
            "e": {"type": "object", "oneOf": [{"properties": {"undeclared": {"minimum": 1}}}]},
            "f": {"type": "integer", "default": "one"},
            "g": {"type": "array"},
        },
    }
    found = "\n".join(structural_violations(bad))
    for expected in (
        ".a: '$ref' is not allowed",
        ".b: type must not be empty",
        ".c: properties and additionalProperties are mutually exclusive",
        ".d.anyOf[0]: 'type' must not be set inside a logical junctor",
        ".e.oneOf[0].undeclared: not declared outside the junctor",
        ".f: default does not validate",
        ".g: an array needs items",
    ):
        assert expected in found


def test_names_group_and_subresources() -> None:
    for crd, kind, plural, short in (
        (JOB_CRD, "StreamingJob", "streamingjobs", "sj"),
        (SAVEPOINT_CRD, "Savepoint", "savepoints", "sp"),
        (DEPLOYMENT_CRD, "StreamingJobDeployment", "streamingjobdeployments", "sjd"),
    ):
        spec = crd["spec"]
        assert crd["metadata"]["name"] == f"{plural}.streaming.heliosdb.io"
        assert (spec["group"], spec["scope"]) == ("streaming.heliosdb.io", "Namespaced")
        assert (spec["names"]["kind"], spec["names"]["plural"], spec["names"]["shortNames"]) == (
            kind,
            plural,
            [short],
        )
        versions = [
            (v["name"], v["served"], v["storage"], v.get("deprecated", False)) for v in spec["versions"]
        ]
        if kind == "StreamingJobDeployment":  # new in v1alpha2: no v1alpha1 object ever existed
            assert versions == [("v1alpha2", True, True, False)]
        else:
            assert versions == [("v1alpha2", True, True, False), ("v1alpha1", True, False, True)]
            assert "v1alpha2" in spec["versions"][1]["deprecationWarning"]
        scale = {"scale": crds.SCALE} if kind == "StreamingJob" else {}
        assert all(v["subresources"] == {"status": {}, **scale} for v in spec["versions"])
    # only the StreamingJob's versions differ: its conversion is the operator's webhook
    assert JOB_CRD["spec"]["conversion"]["strategy"] == "Webhook"
    service = JOB_CRD["spec"]["conversion"]["webhook"]["clientConfig"]["service"]
    assert (service["path"], service["port"]) == ("/convert", crds.WEBHOOK_PORT)
    assert SAVEPOINT_CRD["spec"]["conversion"] == {"strategy": "None"}
    assert DEPLOYMENT_CRD["spec"]["conversion"] == {"strategy": "None"}  # one version: no webhook
    assert "annotations" not in DEPLOYMENT_CRD["metadata"]  # nor a CA to inject
    assert crd_schema(SAVEPOINT_CRD, "v1alpha1") == crd_schema(SAVEPOINT_CRD, "v1alpha2")


def test_scale_subresource_points_at_the_parallelism() -> None:
    """What the API server checks of ``subresources.scale`` (spec replicas under .spec, status ones
    and the selector under .status), and that each path is a field of the right type."""
    scale = version_of(JOB_CRD)["subresources"]["scale"]
    assert scale["specReplicasPath"].startswith(".spec.")
    assert scale["statusReplicasPath"].startswith(".status.")
    assert scale["labelSelectorPath"].startswith(".status.")
    schema = crd_schema(JOB_CRD)
    replicas = _field(schema, scale["specReplicasPath"])
    assert (replicas["type"], replicas["minimum"], replicas["default"]) == ("integer", 1, 1)
    assert _field(schema, scale["statusReplicasPath"])["type"] == "integer"
    assert _field(schema, scale["labelSelectorPath"])["type"] == "string"


def _field(schema: dict[str, Any], json_path: str) -> dict[str, Any]:
    node = schema
    for part in json_path.lstrip(".").split("."):
        if part in ("metadata",) and node is schema:
            return {"type": "string", "format": "date-time"}  # metadata is the API server's
        node = node["properties"][part]
    return node


@ALL_CRDS
def test_printer_columns_point_at_fields_of_their_type(crd: dict[str, Any]) -> None:
    columns = version_of(crd)["additionalPrinterColumns"]
    for column in columns:
        field = _field(crd_schema(crd), column["jsonPath"])
        expected = {"date": "string", "integer": "integer", "string": "string"}[column["type"]]
        assert field["type"] == expected, column
    names = [c["name"] for c in columns if not c.get("priority")]
    if crd is JOB_CRD:
        assert names == ["Phase", "Parallelism", "Restarts", "Last Checkpoint", "Age"]
    elif crd is DEPLOYMENT_CRD:
        assert names == ["Phase", "Active", "Job", "Age"]
    else:
        assert names == ["Job", "State", "Size", "Age"]


def _preserving(node: Any, path: str = "") -> list[str]:
    """Where a schema keeps unknown fields."""
    if isinstance(node, list):
        return [p for i, n in enumerate(node) for p in _preserving(n, f"{path}[{i}]")]
    if not isinstance(node, dict):
        return []
    here = [path] if node.get(structural.PRESERVE) else []
    return here + [p for k, v in node.items() for p in _preserving(v, f"{path}.{k}")]


def test_status_is_structural_and_kopf_progress_is_not_kept_there() -> None:
    """kopf keeps its progress in annotations (``handlers.settings``): the status schema declares
    every field and keeps nothing else, so a ``status.kopf`` is pruned as a real API server would."""
    status = crd_schema(JOB_CRD)["properties"]["status"]
    assert status["properties"]["phase"]["enum"] == [s.value for s in JobStatus]
    for crd in (JOB_CRD, SAVEPOINT_CRD):
        assert _preserving(crd_schema(crd)["properties"]["status"]) == []
    job = streaming_job(spec_of(SPEC_FRAUD_PIPELINE))
    job["status"] = {
        "phase": "running",
        "jobId": "job-123e4567-e89b-12d3-a456-426614174000",
        "submittedAt": "2025-10-29T10:00:00Z",
        "restarts": 0,
        "lastCheckpoint": "checkpoint-7",
        "lastSavepoint": {
            "savepointId": "savepoint-1",
            "location": "s3://b/p",
            "createdAt": "2025-10-29T11:00:00Z",
        },
        "parallelism": 4,
        "observedRestartNonce": 0,
        "observedGeneration": 3,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Running", "message": "4 tasks"}],
    }
    assert validate(JOB_CRD, job) == []
    kopf_progress = {"progress": {"reconcile": {"started": "2025-10-29T10:00:00Z", "retries": 0}}}
    stored, problems = admission(JOB_CRD)(
        copy.deepcopy(job) | {"status": job["status"] | {"kopf": kopf_progress}}, strict=False
    )
    assert problems == [] and stored["status"] == job["status"]  # pruned
    job["status"]["phase"] = "exploded"
    assert any("status.phase" in p for p in validate(JOB_CRD, job))


# ----------------------------------------------------------------------------------------- examples


def _yaml(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


def test_k8s_examples_are_valid_and_refer_to_each_other() -> None:
    job = _yaml(ROOT / "examples" / "k8s" / "fraud-pipeline.yaml")
    savepoint = _yaml(ROOT / "examples" / "k8s" / "savepoint.yaml")
    assert job["apiVersion"] == savepoint["apiVersion"] == crds.API_VERSION
    assert validate(JOB_CRD, job) == []
    assert validate(SAVEPOINT_CRD, savepoint) == []
    assert savepoint["spec"]["jobRef"] == job["metadata"]["name"]
    assert api_accepts(crds.to_snake(job["spec"]))
    # The spec's fraud pipeline, unchanged but for where the services are (and camelCase).
    spec = {k: v for k, v in crds.to_snake(job["spec"]).items() if k in JobSubmitRequest.model_fields}
    assert spec["config"] == SPEC_FRAUD_PIPELINE["config"]
    assert (
        job["spec"]["config"]["checkpointIntervalMs"]
        == SPEC_FRAUD_PIPELINE["config"]["checkpoint_interval_ms"]
    )
    assert spec["transformations"] == SPEC_FRAUD_PIPELINE["transformations"]
    assert [s["type"] for s in spec["sources"] + spec["sinks"]] == ["kafka", "database"]


@pytest.mark.parametrize("path", EXAMPLE_JOBS, ids=lambda p: p.name)
def test_every_example_job_of_the_repository_is_a_valid_spec(path: Path) -> None:
    body = json.loads(path.read_text())
    assert api_accepts(body)
    assert validate(JOB_CRD, streaming_job(spec_of(body))) == []
    assert validate(JOB_CRD, legacy_job(spec_of(body))) == []  # the deprecated version still takes it


def test_minimal_and_bare_name_forms() -> None:
    spec = {
        "sources": [{"type": "datagen"}],
        "sinks": [{"type": "discard"}],
        "config": {"restart_strategy": {"type": "exponential_backoff", "max_attempts": 5}},
    }
    assert api_accepts(spec)
    assert validate(JOB_CRD, streaming_job(spec)) == []
    spec["config"] = {"restart_strategy": "none", "checkpoint_storage": None}
    spec["transformations"] = [{"type": "window", "config": {"size": 5000, "aggregates": {"n": "count(*)"}}}]
    assert api_accepts(spec)
    assert validate(JOB_CRD, streaming_job(spec)) == []


def test_kafka_servers_as_a_list_or_a_comma_string_as_the_api_accepts_them() -> None:
    """The REST API takes ``bootstrap_servers`` as a list or ``"a:9092,b:9092"``; so must the CRD (it
    used to say array only, and a real API server refused the comma string with 422)."""
    for servers in (["a:9092", "b:9092"], "a:9092,b:9092"):
        kafka = {"bootstrap_servers": servers, "topic": "t"}
        spec = {
            "sources": [{"type": "kafka", "config": kafka}],
            "sinks": [{"type": "kafka", "config": kafka}],
        }
        assert api_accepts(spec), servers
        assert validate(JOB_CRD, streaming_job(spec)) == [], servers


# ------------------------------------------------------------------------------------------ invalid


def _with(path: str, value: Any, *, delete: bool = False) -> dict[str, Any]:
    """The spec's fraud pipeline with one value replaced (``a.b[0].c`` paths)."""
    spec = spec_of(SPEC_FRAUD_PIPELINE)
    keys: list[str | int] = []
    for part in path.replace("]", "").split("."):
        name, _, index = part.partition("[")
        keys.append(name)
        if index:
            keys.append(int(index))
    node: Any = spec
    for key in keys[:-1]:
        node = node[key]
    if delete:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return spec


INVALID_JOBS = {
    "unknown source type": (_with("sources[0].type", "rabbitmq"), "sources.0"),
    "negative parallelism": (_with("config.parallelism", -1), "config.parallelism"),
    "parallelism over the limit": (_with("config.parallelism", 4096), "config.parallelism"),
    "unknown key in a source": (_with("sources[0].config.topics", ["a"]), "sources.0"),
    "key of another source type": (_with("sources[0].config.path", "/data"), "sources.0"),
    "missing required key": (_with("sinks[0].config.table", None, delete=True), "sinks.0"),
    "unknown restart strategy": (_with("config.restart_strategy", "forever"), "config.restartStrategy"),
    "bad restart strategy object": (
        _with("config.restart_strategy", {"type": "fixed_delay", "attempts": -3}),
        "config.restartStrategy",
    ),
    "bad enum in a transformation": (
        _with("transformations[1].config.contiguity", "loose"),
        "transformations.1",
    ),
    "duration of the wrong type": (_with("transformations[1].config.window", ["1h"]), "transformations"),
    "no sinks": (_with("sinks", []), "sinks"),
    "no sources": (_with("sources", None, delete=True), "spec"),
    "unknown config key": (_with("config.paralelism", 2), "config"),
    "checkpoint interval too short": (_with("config.checkpoint_interval_ms", 5), "checkpointIntervalMs"),
}


@pytest.mark.parametrize("case", list(INVALID_JOBS), ids=str)
def test_invalid_job_is_rejected_by_the_crd_and_by_the_api(case: str) -> None:
    spec, where = INVALID_JOBS[case]
    problems = validate(JOB_CRD, streaming_job(spec))
    assert problems, f"the CRD accepted {case}"
    assert any(where in p for p in problems), problems
    assert validate(JOB_CRD, legacy_job(spec)), f"v1alpha1 accepted {case}"
    assert not api_accepts(spec), f"the API accepts {case} but the CRD does not"


INVALID_OPERATOR_FIELDS = {
    "state": "stopped",
    "restartNonce": -1,
    "checkpointStorage": "file:///tmp/checkpoints",
    "savepointOnCancel": "yes",
    "resources": "lots",
    "image": "",
    "upgradeMode": "blue-green",
}


@pytest.mark.parametrize("field", list(INVALID_OPERATOR_FIELDS), ids=str)
def test_invalid_operator_field_is_rejected(field: str) -> None:
    spec = spec_of(SPEC_FRAUD_PIPELINE) | {field: INVALID_OPERATOR_FIELDS[field]}
    assert any(f"spec.{field}" in p for p in validate(JOB_CRD, streaming_job(spec)))


def test_operator_fields_and_defaults() -> None:
    spec = crd_schema(JOB_CRD)["properties"]["spec"]
    props = spec["properties"]
    assert props["state"]["enum"] == ["running", "paused", "cancelled"]
    assert (props["state"]["default"], props["restartNonce"]["default"]) == ("running", 0)
    assert props["config"]["default"] == {}
    assert props["upgradeMode"]["enum"] == ["stateless", "savepoint", "last-state"]
    assert props["upgradeMode"]["default"] == "savepoint"
    assert props["config"]["properties"]["parallelism"]["default"] == 1
    assert "name" not in spec["required"] and set(spec["required"]) == {"sources", "sinks"}
    good = spec_of(SPEC_FRAUD_PIPELINE) | {
        "state": "paused",
        "restartNonce": 3,
        "restoreFrom": "fraud-detection-before-upgrade",
        "savepointOnCancel": True,
        "image": "registry.example/helios:1.2",
        "resources": {"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}},
        "checkpointStorage": "s3://checkpoints/fraud",
        "upgradeMode": "last-state",
    }
    good.pop("name")
    assert validate(JOB_CRD, streaming_job(good)) == []


def test_resources_and_pod_template_are_schemed() -> None:
    """``resources`` is a core ResourceRequirements (quantities), ``podTemplate`` the subset of a pod the
    operator merges: the API server refuses bad values and prunes fields the operator would ignore,
    but keeps a volume's source (its schema is core/v1's, checked when the pod is created)."""
    base = spec_of(SPEC_FRAUD_PIPELINE)
    template = {
        "metadata": {"labels": {"team": "a"}},
        "spec": {
            "nodeSelector": {"pool": "streaming"},
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
            "volumes": [{"name": "certs", "secret": {"secretName": "kafka-certs"}}],
            "containers": [
                {
                    "name": "worker",
                    "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "pw"}}}],
                    "volumeMounts": [{"name": "certs", "mountPath": "/etc/certs"}],
                }
            ],
        },
    }
    good = base | {"resources": {"requests": {"cpu": "500m", "memory": 1073741824}}, "podTemplate": template}
    assert validate(JOB_CRD, streaming_job(good)) == []
    for bad, where in (
        ({"resources": {"limits": {"memory": "lots"}}}, "spec.resources.limits"),
        ({"resources": {"limits": ["1Gi"]}}, "spec.resources.limits"),
        (
            {"podTemplate": {"spec": {"containers": [{"name": "sidecar"}]}}},
            "spec.podTemplate.spec.containers",
        ),
        (
            {"podTemplate": {"spec": {"tolerations": [{"effect": "Sometimes"}]}}},
            "spec.podTemplate.spec.tolerations",
        ),
        ({"podTemplate": {"spec": {"volumes": [{"secret": {}}]}}}, "spec.podTemplate.spec.volumes"),
    ):
        assert any(where in p for p in validate(JOB_CRD, streaming_job(base | bad))), bad
    admit = admission(JOB_CRD)
    sneaky = copy.deepcopy(template)
    sneaky["spec"]["hostNetwork"] = True  # not a podTemplate field: pruned, as the API server does
    admitted, _ = admit(streaming_job(base | {"podTemplate": sneaky}), strict=False)
    assert "hostNetwork" not in admitted["spec"]["podTemplate"]["spec"]
    assert admitted["spec"]["podTemplate"]["spec"]["volumes"] == template["spec"]["volumes"]  # type: ignore[index]


def test_savepoint_needs_a_job_and_a_known_state() -> None:
    sp = {"apiVersion": crds.API_VERSION, "kind": "Savepoint", "metadata": {"name": "sp1"}, "spec": {}}
    assert any("jobRef" in p for p in validate(SAVEPOINT_CRD, sp))
    sp["spec"] = {"jobRef": "Fraud_Detection"}
    assert any("spec.jobRef" in p for p in validate(SAVEPOINT_CRD, sp))  # not a resource name
    sp["spec"] = {"jobRef": "fraud-detection"}
    sp["status"] = {"state": "completed", "sizeBytes": 1024, "createdAt": "2025-10-29T10:00:00Z"}
    assert validate(SAVEPOINT_CRD, sp) == []
    sp["status"]["state"] = "done"
    assert any("status.state" in p for p in validate(SAVEPOINT_CRD, sp))
    assert any("apiVersion" in p for p in validate(SAVEPOINT_CRD, sp | {"apiVersion": "v1"}))


# -------------------------------------------------------------------------------- CEL: immutable


IMMUTABLE = {  # REST-body path -> a new value, and how the v1alpha2 field is named in the refusal
    "name": ("other_name", "spec.name"),
    "config.max_parallelism": (256, "spec.config.maxParallelism"),
    "config.state_backend": ("memory", "spec.config.stateBackend"),
    "config.checkpoint_storage": ("s3://other/prefix", "spec.config.checkpointStorage"),
}


@pytest.mark.parametrize("path", list(IMMUTABLE), ids=str)
def test_immutable_fields_cannot_change_after_creation(path: str) -> None:
    """``self == oldSelf`` rules, evaluated by a CEL implementation on an update (``old``): the edit
    is refused in both versions, an update that leaves them alone is not, a create is never ruled."""
    value, field = IMMUTABLE[path]
    admit = admission(JOB_CRD)
    before = _with("config.checkpoint_storage", "s3://checkpoints/fraud")
    after = _with(path, value)
    after["config"].setdefault("checkpoint_storage", "s3://checkpoints/fraud")
    old, _ = admit(streaming_job(before), strict=True)
    _, problems = admit(streaming_job(after), strict=True, old=old)
    assert any(field in p and "immutable" in p for p in problems), problems
    assert admit(streaming_job(after), strict=True)[1] == []  # creating it so is fine
    _, legacy = admit(legacy_job(after), strict=True, old=admit(legacy_job(before), strict=True)[0])
    assert legacy, "v1alpha1 is no way around the rule"
    rescaled = copy.deepcopy(before)
    rescaled["config"]["parallelism"] = 8  # mutable: a savepoint restart applies it
    assert admit(streaming_job(rescaled), strict=True, old=old)[1] == []


def test_optional_immutable_fields_cannot_be_set_or_unset_later() -> None:
    admit = admission(JOB_CRD)
    plain = spec_of(SPEC_FRAUD_PIPELINE)
    plain["config"].pop("checkpoint_storage", None)
    old = streaming_job(plain)
    with_storage = streaming_job(plain) | {"spec": crds.to_camel(plain) | {"checkpointStorage": "s3://b/p"}}
    problems = admit(with_storage, strict=True, old=old)[1]
    assert any("cannot be set or unset" in p for p in problems), problems
    status = {"phase": "running", "jobId": "job-1"}
    running = old | {"status": status}
    _, problems = admit(running | {"status": status | {"jobId": "job-2"}}, strict=True, old=running)
    assert any("jobId is immutable" in p for p in problems), problems


# --------------------------------------------------------------------------------------- conversion


def test_unsupported_constructs_fail_the_generator_not_the_cluster() -> None:
    class IntOrList(BaseModel):
        value: int | list[int]

    with pytest.raises(structural.StructuralSchemaError, match="anyOf"):
        structural.from_json_schema(IntOrList.model_json_schema())


def test_nullable_and_int_or_string() -> None:
    class Model(BaseModel):
        size: str | int | None = None
        label: str | None = None
        count: int = 3

    schema = structural.from_json_schema(Model.model_json_schema())
    props = schema["properties"]
    assert props["size"] == {structural.INT_OR_STRING: True, "nullable": True}
    assert props["label"] == {"type": "string", "nullable": True}
    assert props["count"] == {"type": "integer", "default": 3}


def test_a_deployment_template_is_checked_as_a_streaming_job() -> None:
    """The template's spec is the StreamingJob schema: what a StreamingJob may not hold, it may not."""
    good = spec_of(SPEC_FRAUD_PIPELINE)
    deployment = {
        "apiVersion": crds.API_VERSION,
        "kind": deployment_crd.KIND,
        "metadata": {"name": "fraud"},
        "spec": {"template": {"spec": crds.to_camel(good)}, "caughtUpTimeoutMs": 60000},
    }
    assert validate(DEPLOYMENT_CRD, deployment) == []
    assert validate(DEPLOYMENT_CRD, _yaml(ROOT / "examples" / "k8s" / "payments-bluegreen.yaml")) == []
    snake = copy.deepcopy(deployment)  # the template is a v1alpha2 spec: the REST body's names are not
    snake["spec"]["template"]["spec"] = good
    assert any("checkpoint_interval_ms" in p for p in validate(DEPLOYMENT_CRD, snake))
    legacy = deployment | {"apiVersion": crds.LEGACY_API_VERSION}
    assert any("is not streaming.heliosdb.io/v1alpha2" in p for p in validate(DEPLOYMENT_CRD, legacy))
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["config"]["parallelism"] = "many"
    assert any("spec.template.spec.config.parallelism" in p for p in validate(DEPLOYMENT_CRD, bad))
    assert any("'template' is a required" in p for p in validate(DEPLOYMENT_CRD, {**deployment, "spec": {}}))
    bad = copy.deepcopy(deployment)
    bad["spec"]["maxSourceLag"] = -1
    assert any("spec.maxSourceLag" in p for p in validate(DEPLOYMENT_CRD, bad))


def test_a_template_may_change_what_a_new_streaming_job_may() -> None:
    """Each template runs as a new StreamingJob, so its name and checkpoint storage may change (the
    StreamingJob refuses that edit); its key groups and state backend may not, as the new color
    restores a savepoint of the active one."""
    admit = admission(DEPLOYMENT_CRD)
    before = _with("config.checkpoint_storage", "s3://checkpoints/fraud")
    moved = copy.deepcopy(before)
    moved["config"]["checkpoint_storage"] = "s3://checkpoints/fraud-v2"
    moved["name"] = "fraud-v2"

    def deployment(spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": crds.API_VERSION,
            "kind": deployment_crd.KIND,
            "metadata": {"name": "fraud"},
            "spec": {"template": {"spec": crds.to_camel(spec)}},
        }

    old, problems = admit(deployment(before), strict=True)
    assert problems == []
    assert admit(deployment(moved), strict=True, old=old)[1] == []
    job_admit = admission(JOB_CRD)
    job_old, _ = job_admit(streaming_job(before), strict=True)
    assert job_admit(streaming_job(moved), strict=True, old=job_old)[1] != []  # what the template relaxes
    for path, value in (("config.max_parallelism", 256), ("config.state_backend", "memory")):
        changed = copy.deepcopy(before)
        changed["config"][path.split(".")[1]] = value
        problems = admit(deployment(changed), strict=True, old=old)[1]
        field = "spec.template.spec." + crds.camel_path(path)
        assert any(field in p and "immutable" in p for p in problems), problems
