"""snake_case <-> camelCase of the StreamingJob spec (``kubernetes/casing.py``, ``crds.to_camel`` and
``to_snake``), the conversion webhook's review (``kubernetes/conversion.py``), ``helios k8s convert``."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from heliosdb_streaming.cli import k8s
from heliosdb_streaming.kubernetes import casing, conversion, crds
from heliosdb_streaming.kubernetes.operator import mapping
from heliosdb_streaming.model.config import JobConfig
from heliosdb_streaming.model.errors import InvalidJobConfigError

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.json"))


def test_camel_names() -> None:
    assert casing.camel("checkpoint_interval_ms") == "checkpointIntervalMs"
    assert casing.camel("restartNonce") == "restartNonce" and casing.camel("topic") == "topic"
    with pytest.raises(casing.CasingError, match="both become"):
        casing.camel_schema({"type": "object", "properties": {"a_b": {}, "aB": {}}})


def every_field(schema: dict[str, Any], depth: int = 0) -> Any:
    """An instance with every field the schema declares, at every depth (values by type; map and
    open keys get a snake_case user key that must survive the renaming)."""
    if "properties" in schema:
        out = {k: every_field(v, depth + 1) for k, v in schema["properties"].items()}
        if schema.get(casing_preserve()):
            out["user_extra_key"] = {"nested_user_key": 1}
        return out
    if isinstance(schema.get("additionalProperties"), dict):
        return {"user_field_name": every_field(schema["additionalProperties"], depth + 1)}
    if "items" in schema:
        return [every_field(schema["items"], depth + 1)]
    return {"string": "snake_value_kept", "integer": 1, "number": 1.5, "boolean": True}.get(
        schema.get("type", ""), {"open_key": "open_value"}
    )


def casing_preserve() -> str:
    return "x-kubernetes-preserve-unknown-fields"


def keys_at(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Every key of ``value`` that ``schema`` (camelCase) declares, with its path: what was renamed."""
    found = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, item in value.items():
            if key in props:
                found.append(f"{path}.{key}")
                found += keys_at(item, props[key], f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                found += keys_at(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            found += keys_at(item, schema["items"], f"{path}[]")
    return found


def test_round_trip_over_every_field_of_the_spec() -> None:
    snake = crds.legacy_spec_schema()
    spec = every_field(snake)
    assert "checkpoint_interval_ms" in spec["config"] and "rate_per_sec" in spec["sources"][0]["config"]
    camel = crds.to_camel(spec)
    assert crds.to_snake(camel) == spec
    camel_schema = crds.streaming_job_spec_schema()
    renamed = keys_at(camel, camel_schema)
    assert len(renamed) == len(keys_at(spec, snake)) > 150  # every declared field, none lost
    assert all("_" not in key.rsplit(".", 1)[1] for key in renamed), [k for k in renamed if "_" in k]
    assert camel["config"]["restartStrategy"]["maxFailuresPerInterval"] == 1
    assert camel["sources"][0]["config"]["ratePerSec"] == 1.5
    # user data: map keys, open objects' own keys and every value stay as written
    transformation = camel["transformations"][0]["config"]
    assert set(transformation["fields"]) == {"user_field_name"}
    assert set(transformation["aggregates"]) == {"user_field_name"}
    assert camel["config"]["restartStrategy"]["user_extra_key"] == {"nested_user_key": 1}
    assert camel["sources"][0]["config"]["bootstrapServers"] == {"open_key": "open_value"}
    assert "snake_value_kept" in json.dumps(camel) and "user_field_name" in json.dumps(camel)


def test_user_names_in_maps_and_values_are_not_renamed() -> None:
    body = {
        "name": "spend_per_card",
        "config": {"checkpoint_interval_ms": 500, "restart_strategy": "fixed_delay"},
        "sources": [{"type": "datagen", "config": {"rate_per_sec": 10, "count": 5}}],
        "transformations": [
            {"type": "map", "config": {"fields": {"card_id": "card_id", "amount_cents": "amount * 100"}}},
            {"type": "window", "config": {"size": 1000, "aggregates": {"total_amount": "sum(amount_cents)"}}},
        ],
        "sinks": [
            {
                "type": "database",
                "config": {"connection_string": "sqlite:///x.db", "table": "t", "key": ["card_id"]},
            }
        ],
    }
    spec = crds.to_camel(body)
    assert spec["name"] == "spend_per_card"
    assert spec["config"] == {"checkpointIntervalMs": 500, "restartStrategy": "fixed_delay"}
    assert spec["transformations"][0]["config"]["fields"] == {
        "card_id": "card_id",
        "amount_cents": "amount * 100",
    }
    assert spec["transformations"][1]["config"]["aggregates"] == {"total_amount": "sum(amount_cents)"}
    assert spec["sinks"][0]["config"] == {
        "connectionString": "sqlite:///x.db",
        "table": "t",
        "key": ["card_id"],
    }
    assert crds.to_snake(spec) == body
    assert mapping.job_config("x", spec) == JobConfig.from_dict(body)  # the operator reads v1alpha2


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_job_converts_both_ways_to_the_same_job(path: Path) -> None:
    body = json.loads(path.read_text())
    camel = crds.to_camel(body)
    assert crds.to_snake(camel) == body
    assert mapping.job_config("x", camel) == JobConfig.from_dict(body)


def review(objects: list[dict[str, Any]], desired: str) -> dict[str, Any]:
    return conversion.review(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "ConversionReview",
            "request": {"uid": "705ab4f5", "desiredAPIVersion": desired, "objects": objects},
        }
    )


def test_conversion_review_both_ways() -> None:
    body = json.loads(EXAMPLES[-1].read_text())
    status = {"phase": "running", "jobId": "job-1", "observedGeneration": 2}
    old = {
        "apiVersion": crds.LEGACY_API_VERSION,
        "kind": "StreamingJob",
        "metadata": {"name": "fraud", "namespace": "a", "uid": "u", "generation": 2},
        "spec": {**body, "restartNonce": 1, "upgradeMode": "savepoint"},
        "status": status,
    }
    sp = {
        "apiVersion": crds.LEGACY_API_VERSION,
        "kind": "Savepoint",
        "metadata": {"name": "s"},
        "spec": {"jobRef": "fraud"},
    }
    answer = review([old, sp], crds.API_VERSION)
    assert answer["kind"] == "ConversionReview" and answer["response"]["uid"] == "705ab4f5"
    assert answer["response"]["result"] == {"status": "Success"}
    new, new_sp = answer["response"]["convertedObjects"]
    assert new["apiVersion"] == new_sp["apiVersion"] == crds.API_VERSION
    assert new["metadata"] == old["metadata"] and new["status"] == status  # only the spec changes
    assert new["spec"] == crds.to_camel(old["spec"]) and new["spec"]["restartNonce"] == 1
    assert new_sp["spec"] == sp["spec"]
    back = review([new], crds.LEGACY_API_VERSION)["response"]["convertedObjects"]
    assert back == [old]
    assert review([new], crds.API_VERSION)["response"]["convertedObjects"] == [new]  # no-op
    failed = review([copy.deepcopy(new)], "streaming.heliosdb.io/v9")["response"]
    assert failed["result"]["status"] == "Failure" and failed["convertedObjects"] == []


def test_helios_k8s_convert_rewrites_a_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = json.loads(EXAMPLES[-1].read_text())
    job = {
        "apiVersion": crds.LEGACY_API_VERSION,
        "kind": "StreamingJob",
        "metadata": {"name": "j"},
        "spec": body,
    }
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a_b": "1"}}
    path = tmp_path / "jobs.yaml"
    path.write_text(yaml.safe_dump_all([job, other]))
    from heliosdb_streaming.cli.main import build_parser

    args = build_parser().parse_args(["k8s", "convert", str(path)])
    assert args.func(args) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert printed == [{**job, "apiVersion": crds.API_VERSION, "spec": crds.to_camel(body)}, other]
    assert k8s.convert_documents(path.read_text()) == k8s.convert_documents(
        k8s.convert_documents(path.read_text())
    )
    args = build_parser().parse_args(["k8s", "convert", "-i", str(path)])
    assert args.func(args) == 0 and list(yaml.safe_load_all(path.read_text())) == printed


def test_error_paths_name_the_spec_fields_in_camel_case() -> None:
    assert crds.camel_path("sources[0].config.rate_per_sec") == "sources[0].config.ratePerSec"
    assert crds.camel_path("config.restart_strategy.delay_ms") == "config.restartStrategy.delayMs"
    # a map's key is the user's: kept, and the walk goes on below it
    assert crds.camel_path("transformations[1].config.aggregates.total_amount") == (
        "transformations[1].config.aggregates.total_amount"
    )
    assert crds.camel_path("no_such_field.x_y") == "no_such_field.x_y"
    with pytest.raises(InvalidJobConfigError) as invalid:
        mapping.job_config(
            "x",
            {
                "config": {"checkpointIntervalMs": 1},
                "sources": [{"type": "datagen"}],
                "sinks": [{"type": "discard"}],
            },
        )
    assert [e.path for e in invalid.value.errors] == ["spec.config.checkpointIntervalMs"]
