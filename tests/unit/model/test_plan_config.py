"""The plan in the job model: validation refuses a plan that cannot run, and the plan in details."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.job import InvalidJobConfigError, JobConfig, JobConfigOverrides
from heliosdb_streaming.model.config import JobSubmitRequest, RepartitionSettings
from heliosdb_streaming.model.types import JobPlanInfo

ROOT = Path(__file__).parents[3]
EXAMPLE_JOBS = [
    *sorted((ROOT / "examples").glob("*.json")),
    ROOT / "src" / "heliosdb_streaming" / "examples" / "demo_job.json",
]


def merchant_job(*, parallelism: int, source: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
    """Datagen declares card_id (four partitions); counting per merchant needs a repartition."""
    return {
        "name": "per merchant",
        "config": {"parallelism": parallelism, **config},
        "sources": [source or {"type": "datagen", "config": {"partitions": 4, "count": 100}}],
        "transformations": [
            {"type": "filter", "config": {"condition": "amount > 0"}},
            {"type": "map", "config": {"fields": {"cents": "amount * 100"}}},
            {"type": "key_by", "config": {"key": "merchant"}},
            {"type": "window", "config": {"size": "1h", "aggregates": {"n": "count(*)"}}},
        ],
        "sinks": [{"type": "discard", "config": {}}],
    }


def refusal(body: Any) -> list[tuple[str, str]]:
    with pytest.raises(InvalidJobConfigError) as info:
        JobConfig.from_dict(body)
    assert info.value.code == "invalid_job_config"
    return [(e.path, e.message) for e in info.value.errors]


def test_a_repartition_across_processes_without_brokers_is_refused_naming_the_step() -> None:
    ((path, message),) = refusal(merchant_job(parallelism=2))
    assert path == "transformations[2]"
    assert message.startswith("this key_by step needs its records regrouped (key_by merchant: its input ")
    assert "grouped by card_id, not by merchant" in message
    assert "set config.repartition.bootstrap_servers" in message and "parallelism 1" in message


def test_the_same_job_runs_at_parallelism_1_or_with_brokers() -> None:
    assert JobConfig.from_dict(merchant_job(parallelism=1)).parallelism == 1
    brokers = JobConfig.from_dict(
        merchant_job(parallelism=2, repartition={"bootstrap_servers": "k1:9092,k2:9092"})
    )
    assert brokers.repartition_servers() == ["k1:9092", "k2:9092"]


def test_a_kafka_source_provides_the_brokers() -> None:
    kafka = {"type": "kafka", "config": {"bootstrap_servers": ["kafka:9092"], "topic": "t"}}
    config = JobConfig.from_dict(merchant_job(parallelism=4, source=kafka))
    assert config.repartition_servers() == ["kafka:9092"]


def test_a_global_step_over_several_splits_needs_brokers_too() -> None:
    body = merchant_job(parallelism=3)
    body["transformations"] = [{"type": "window", "config": {"size": "1m", "aggregates": {"n": "count(*)"}}}]
    ((path, message),) = refusal(body)
    assert path == "transformations[0]" and "an unkeyed window step sees every event" in message


def test_a_declared_partitioning_needs_no_repartition() -> None:
    files = {"type": "file", "config": {"path": "/data/*.jsonl", "partitioned_by": "merchant"}}
    JobConfig.from_dict(merchant_job(parallelism=2, source=files))
    undeclared = {"type": "file", "config": {"path": "/data/*.jsonl"}}
    ((path, message),) = refusal(merchant_job(parallelism=2, source=undeclared))
    assert path == "transformations[2]" and "the sources declare no partitioning" in message


def test_more_tasks_than_key_groups_is_refused() -> None:
    body = merchant_job(parallelism=4, max_parallelism=2, repartition={"bootstrap_servers": ["k:9092"]})
    assert refusal(body) == [
        (
            "config.parallelism",
            "parallelism 4 is above max_parallelism 2: a keyed stage cannot have more tasks than key groups",
        )
    ]


def test_other_problems_come_first_and_the_plan_is_not_checked_on_them() -> None:
    body = merchant_job(parallelism=2)
    body["transformations"][0]["config"]["condition"] = "amount >"
    assert [p for p, _ in refusal(body)] == ["transformations[0].config.condition"]


def test_the_native_form_refuses_it_too() -> None:
    request = JobSubmitRequest.model_validate(merchant_job(parallelism=1))
    fields = dict(JobConfig.from_request(request))
    with pytest.raises(InvalidJobConfigError) as info:
        JobConfig(**{**fields, "parallelism": 2})
    assert [e.path for e in info.value.errors] == ["transformations[2]"]
    JobConfig(**{**fields, "parallelism": 2, "repartition": RepartitionSettings(bootstrap_servers=["k:1"])})
    # a config that skipped validation (model_copy) is caught by the check every door calls
    copied = JobConfig(**fields).model_copy(update={"parallelism": 2})
    with pytest.raises(InvalidJobConfigError):
        copied.check_plan()


def test_stored_configs_are_not_refused_again() -> None:
    """A job accepted before the rule existed still loads (the server shows every job it has)."""
    config = JobConfig.from_dict(merchant_job(parallelism=1))
    stored = config.to_dict()
    stored["config"]["parallelism"] = 2
    assert JobConfig.from_stored(stored).parallelism == 2


def test_a_restart_override_that_makes_the_plan_impossible_is_refused_at_the_override() -> None:
    config = JobConfig.from_dict(merchant_job(parallelism=1))
    with pytest.raises(InvalidJobConfigError) as info:
        config.with_overrides(JobConfigOverrides(parallelism=2))
    ((error),) = info.value.errors
    assert error.path == "config_overrides.parallelism"
    assert error.message.startswith("transformations[2]: this key_by step needs its records regrouped")
    assert "config.repartition.bootstrap_servers" in error.message
    assert config.with_overrides(JobConfigOverrides(checkpoint_interval_ms=1000)).parallelism == 1


@pytest.mark.parametrize("path", EXAMPLE_JOBS, ids=lambda p: p.name)
def test_every_example_job_still_validates(path: Path) -> None:
    config = JobConfig.from_dict(json.loads(path.read_text()))
    if path.name == "fraud_pipeline.json":  # the spec's: a global CEP at parallelism 4 over Kafka
        plan = JobPlanInfo.of(config)
        assert [(s.input, s.tasks) for s in plan.stages] == [("splits", 4), ("global", 1)]
        assert config.repartition_servers() == ["localhost:9092"]


def test_plan_info_lists_stages_steps_tasks_and_why() -> None:
    config = JobConfig.from_dict(merchant_job(parallelism=2, repartition={"bootstrap_servers": ["k:9092"]}))
    plan = JobPlanInfo.of(config, source_tasks=2).to_json()
    assert plan == {
        "stages": [
            {
                "index": 0,
                "input": "splits",
                "key": None,
                "steps": [{"index": 0, "type": "filter"}, {"index": 1, "type": "map"}],
                "tasks": 2,
            },
            {
                "index": 1,
                "input": "key_groups",
                "key": "merchant",
                "steps": [{"index": 2, "type": "key_by"}, {"index": 3, "type": "window"}],
                "tasks": 2,
            },
        ],
        "boundaries": [
            {
                "stage": 1,
                "step": 2,
                "key": "merchant",
                "reason": "key_by merchant: its input is grouped by card_id, not by merchant",
            }
        ],
        "declared_key": "card_id",
    }
    one = JobPlanInfo.of(JobConfig.from_dict(merchant_job(parallelism=1)))
    assert [s.tasks for s in one.stages] == [1, 1]
