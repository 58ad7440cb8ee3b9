"""The job model: the spec's submit body in, every problem reported with its path, nothing else."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.job import (
    InvalidJobConfigError,
    JobConfig,
    JobConfigOverrides,
    RestartStrategy,
    SinkConfig,
    SourceConfig,
    StateBackendType,
    TransformationConfig,
)

EXAMPLES = Path(__file__).parents[3] / "examples"


def spec_body() -> dict[str, Any]:
    return json.loads((EXAMPLES / "fraud_pipeline.json").read_text())


def paths_of(body: Any) -> dict[str, str]:
    with pytest.raises(InvalidJobConfigError) as info:
        JobConfig.from_dict(body)
    return {e.path: e.message for e in info.value.errors}


def test_spec_body_is_accepted_as_written() -> None:
    config = JobConfig.from_dict(spec_body())
    assert config.name == "fraud_detection_pipeline"
    assert config.parallelism == 4
    assert config.checkpoint_interval == timedelta(seconds=60)
    assert config.state_backend is StateBackendType.ROCKSDB
    assert config.restart_strategy == RestartStrategy.fixed_delay(3, timedelta(seconds=10))
    assert [s.type for s in config.sources] == ["kafka"]
    assert [t.type for t in config.transformations] == ["filter", "cep"]
    assert config.sources[0].config.bootstrap_servers == ["localhost:9092"]


def test_round_trip_through_to_dict() -> None:
    config = JobConfig.from_dict(spec_body())
    again = JobConfig.from_dict(config.to_dict())
    assert again == config
    assert config.to_dict()["config"]["restart_strategy"] == "fixed_delay"


def test_every_example_validates() -> None:
    for path in EXAMPLES.glob("*.json"):
        JobConfig.from_dict(json.loads(path.read_text()))


def test_all_problems_are_reported_at_once_with_paths() -> None:
    body = spec_body()
    body["config"]["parallelism"] = 0
    body["config"]["state_backend"] = "leveldb"
    body["transformations"][0]["config"]["condition"] = "amount >"
    body["transformations"][1]["config"]["pattern"] = "A{3,1}"
    body["sinks"][0]["config"]["table"] = "drop table; --"
    errors = paths_of(body)
    assert set(errors) == {
        "config.parallelism",
        "config.state_backend",
        "transformations[0].config.condition",
        "transformations[1].config.pattern",
        "sinks[0].config.table",
    }
    assert "invalid pattern" in errors["transformations[1].config.pattern"]


def test_unknown_fields_and_types_are_rejected() -> None:
    body = spec_body()
    body["surprise"] = 1
    body["sources"][0]["config"]["topik"] = "x"
    body["transformations"][0]["type"] = "flatmap"
    errors = paths_of(body)
    assert errors["surprise"] == "unknown field"
    assert errors["sources[0].config.topik"] == "unknown field"
    assert "unknown type 'flatmap'" in errors["transformations[0]"]


def test_missing_required_parts() -> None:
    errors = paths_of({"name": "x", "sources": [], "sinks": [{"type": "print"}]})
    assert "sources" in errors
    errors = paths_of({"sources": [{"type": "datagen"}], "sinks": [{"type": "print"}]})
    assert errors["name"] == "Field required"


def test_bootstrap_servers_as_comma_string() -> None:
    body = spec_body()
    body["sources"][0]["config"]["bootstrap_servers"] = "a:9092, b:9093"
    config = JobConfig.from_dict(body)
    assert config.sources[0].config.bootstrap_servers == ["a:9092", "b:9093"]
    body["sources"][0]["config"]["bootstrap_servers"] = "nohost"
    assert "sources[0].config.bootstrap_servers" in paths_of(body)


def test_window_shape_rules() -> None:
    def window(**cfg: Any) -> dict[str, Any]:
        return {
            "name": "w",
            "sources": [{"type": "datagen"}],
            "transformations": [{"type": "window", "config": cfg}],
            "sinks": [{"type": "print"}],
        }

    assert "transformations[0].config" in paths_of(window(kind="tumbling", aggregates={"n": "count(*)"}))
    errors = paths_of(window(kind="sliding", size="1m", slide="2m", aggregates={"n": "count(*)"}))
    assert "larger" in errors["transformations[0].config"]
    assert "transformations[0].config.aggregates" in paths_of(
        window(size="1m", aggregates={"n": "median(x)"})
    )
    assert "transformations[0].config.size" in paths_of(window(size="fast", aggregates={"n": "count(*)"}))
    JobConfig.from_dict(window(kind="session", gap="30s", aggregates={"n": "count(*)", "s": "sum(amount)"}))


def test_cep_define_must_name_pattern_variables() -> None:
    body = spec_body()
    body["transformations"][1]["config"]["define"] = {"A": "amount > 1", "Z": "true"}
    assert "Z" in paths_of(body)["transformations[1].config"]


def test_restart_strategy_object_form() -> None:
    body = spec_body()
    body["config"]["restart_strategy"] = {
        "type": "exponential_backoff",
        "max_attempts": 4,
        "initial_delay_ms": 100,
        "max_delay_ms": 1000,
    }
    strategy = JobConfig.from_dict(body).restart_strategy
    assert strategy == RestartStrategy.exponential_backoff(
        4, timedelta(milliseconds=100), timedelta(seconds=1)
    )
    assert [strategy.delay_for(n) for n in (1, 2, 3, 4, 5)] == [0.1, 0.2, 0.4, 0.8, 1.0]
    body["config"]["restart_strategy"] = "sometimes"
    assert "config.restart_strategy.type" in paths_of(body)


def test_builders_match_the_wire_form() -> None:
    built = JobConfig(
        name="fraud_detection_pipeline",
        parallelism=4,
        checkpoint_interval=timedelta(seconds=60),
        state_backend=StateBackendType.ROCKSDB,
        restart_strategy=RestartStrategy.fixed_delay(3, timedelta(seconds=10)),
        sources=[SourceConfig.kafka(["localhost:9092"], "transactions", "fraud_detector")],
        transformations=[
            TransformationConfig.filter("amount > 10000"),
            TransformationConfig.cep("A B+ C", window="1h"),
        ],
        sinks=[SinkConfig.database("postgresql://postgres@127.0.0.1:5432/test", "fraud_alerts")],
    )
    assert built == JobConfig.from_dict(spec_body())


def test_overrides_apply_and_validate() -> None:
    config = JobConfig.from_dict(spec_body())
    assert config.with_overrides(JobConfigOverrides(parallelism=8)).parallelism == 8
    assert config.with_overrides(None) is config
    with pytest.raises(ValueError):
        JobConfigOverrides(parallelism=0)


def test_input_is_not_mutated() -> None:
    body = spec_body()
    before = copy.deepcopy(body)
    JobConfig.from_dict(body)
    assert body == before


@pytest.mark.parametrize(
    "table",
    [
        "heliosdb_sink_markers",
        "HELIOSDB_SINK_MARKERS",
        "public.heliosdb_sink_markers",
        "public.HELIOSDB_SINK_MARKERS",
        "main.Heliosdb_Sink_Markers",
        "alerts_id_helios_key",
    ],
)
def test_a_sink_table_cannot_be_a_name_the_engine_owns(table: str) -> None:
    body = spec_body()
    body["sinks"][0]["config"]["table"] = table
    errors = paths_of(body)
    assert set(errors) == {"sinks[0].config.table"}
    assert "reserved" in errors["sinks[0].config.table"]


@pytest.mark.parametrize("table", ['"heliosdb_sink_markers"', '"public"."HELIOSDB_SINK_MARKERS"'])
def test_quoted_sink_table_names_are_refused(table: str) -> None:
    body = spec_body()
    body["sinks"][0]["config"]["table"] = table
    assert set(paths_of(body)) == {"sinks[0].config.table"}


def test_names_like_the_engines_are_still_accepted() -> None:
    for table in ("heliosdb_sink_markers2", "my_heliosdb_sink_markers", "public.alerts", "helios_key"):
        body = spec_body()
        body["sinks"][0]["config"]["table"] = table
        assert JobConfig.from_dict(body).sinks[0].config.table == table


@pytest.mark.parametrize(
    ("connection_string", "accepted"),
    [
        ("postgresql://u:p%40ss%2Fw%3Fx%23y@h:5432/db", True),
        ("postgresql://u:p:w@h/db?options=a@b", True),
        ("postgresql://u:p@h1:5432,h2:5433/db", True),
        ("postgresql://h/db?user=u&password=p/s@s", True),
        ("postgresql:///db?host=/tmp", True),
        ("postgresql://u:pa/ss@h/db", False),
        ("postgresql://u:pa?ss@h/db", False),
        ("postgresql://u:pa#ss@h/db", False),
        ("postgresql://u:p@ss@h/db", False),
        ("postgres://u:12/34@h/db", False),
    ],
)
def test_a_postgresql_url_must_percent_encode_its_password(connection_string: str, accepted: bool) -> None:
    body = spec_body()
    body["sinks"][0]["config"]["connection_string"] = connection_string
    if accepted:
        assert JobConfig.from_dict(body).sinks[0].config.connection_string == connection_string
    else:
        errors = paths_of(body)
        assert set(errors) == {"sinks[0].config.connection_string"}
        assert "percent-encode" in errors["sinks[0].config.connection_string"]
        password = connection_string.split(":")[2].rsplit("@", 1)[0]
        assert password not in errors["sinks[0].config.connection_string"]


# --------------------------------------------------------------------------- strict types and bounds


def job(**config: Any) -> dict[str, Any]:
    return {"name": "j", "config": config, "sources": [{"type": "datagen"}], "sinks": [{"type": "print"}]}


@pytest.mark.parametrize("value", [True, "4", 2.0, False, None, [4]])
def test_numbers_are_numbers(value: Any) -> None:
    errors = paths_of(job(parallelism=value))
    assert list(errors) == ["config.parallelism"]
    errors = paths_of(
        job(checkpoint_interval_ms=value, restart_strategy={"type": "fixed_delay", "attempts": value})
    )
    assert set(errors) == {"config.checkpoint_interval_ms", "config.restart_strategy.attempts"}


def test_numbers_inside_steps_are_strict_too() -> None:
    body = job()
    body["sources"] = [{"type": "datagen", "config": {"count": "10", "keys": True, "rate_per_sec": "5"}}]
    body["sinks"] = [
        {
            "type": "database",
            "config": {"connection_string": "sqlite:///x.db", "table": "t", "batch_size": 1.0},
        }
    ]
    body["transformations"] = [{"type": "window", "config": {"size": True, "aggregates": {"n": "count(*)"}}}]
    assert set(paths_of(body)) == {
        "sources[0].config.count",
        "sources[0].config.keys",
        "sources[0].config.rate_per_sec",
        "sinks[0].config.batch_size",
        "transformations[0].config.size",
    }
    body = job()
    body["sources"] = [{"type": "datagen", "config": {"rate_per_sec": 5, "count": 10}}]  # an int is a float
    assert JobConfig.from_dict(body).sources[0].config.rate_per_sec == 5


def window_job(**cfg: Any) -> dict[str, Any]:
    return {
        "name": "w",
        "sources": [{"type": "datagen"}],
        "transformations": [{"type": "window", "config": {"aggregates": {"n": "count(*)"}, **cfg}}],
        "sinks": [{"type": "print"}],
    }


def test_durations_are_bounded() -> None:
    for size in (2**70, "99999999d", "9" * 400 + "d", "367d"):
        errors = paths_of(window_job(size=size))
        assert "transformations[0].config.size" in errors, size
    assert "at most 366d" in paths_of(window_job(size=2**70))["transformations[0].config.size"]
    errors = paths_of(window_job(size="1m", allowed_lateness="400d"))
    assert "transformations[0].config.allowed_lateness" in errors
    JobConfig.from_dict(window_job(size="366d"))


def numeric_leaves(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every integer or number schema in ``node`` with its JSON path."""
    found = []
    if isinstance(node, dict):
        if node.get("type") in ("integer", "number"):
            found.append((path, node))
        for key, value in node.items():
            found += numeric_leaves(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += numeric_leaves(value, f"{path}[{i}]")
    return found


DURATION_FIELDS = ("size", "slide", "gap", "allowed_lateness", "max_out_of_orderness", "window")


def test_every_number_of_a_job_has_an_upper_bound() -> None:
    """A size or count without a maximum is a way to exhaust a worker (issue 15); durations, which may
    be written as text, are bounded by their parser instead (next test)."""
    unbounded = [
        path
        for path, schema in numeric_leaves(JobConfig.model_json_schema())
        if "maximum" not in schema and "exclusiveMaximum" not in schema
    ]
    assert unbounded and all(
        p.split("/properties/")[-1].split("/")[0] in DURATION_FIELDS for p in unbounded
    ), unbounded


@pytest.mark.parametrize("value", [2**70, "9999999d"])
def test_every_duration_of_a_step_is_bounded(value: Any) -> None:
    for field in DURATION_FIELDS[:-1]:
        if field == "gap":
            config: dict[str, Any] = {"kind": "session", "gap": value}
        else:
            config = {"kind": "sliding" if field == "slide" else "tumbling", "size": "1m", field: value}
        errors = paths_of(window_job(**config))
        assert f"transformations[0].config.{field}" in errors, (field, errors)
    errors = paths_of(cep_job_with_window(value))
    assert "transformations[0].config.window" in errors


def cep_job_with_window(window: Any) -> dict[str, Any]:
    body = cep_job("A B")
    body["transformations"][0]["config"].update({"define": {"A": "x > 1", "B": "x > 2"}, "window": window})
    return body


def test_sliding_windows_per_event_are_bounded() -> None:
    errors = paths_of(window_job(kind="sliding", size="1d", slide="1ms"))
    assert "more than 1000 windows" in errors["transformations[0].config"]
    JobConfig.from_dict(window_job(kind="sliding", size="1000s", slide="1s"))
    assert "transformations[0].config" in paths_of(window_job(kind="sliding", size=1001, slide=1))


def cep_job(pattern: str) -> dict[str, Any]:
    return {
        "name": "c",
        "sources": [{"type": "datagen"}],
        "transformations": [{"type": "cep", "config": {"pattern": pattern}}],
        "sinks": [{"type": "print"}],
    }


def test_cep_pattern_size_is_bounded() -> None:
    errors = paths_of(cep_job("A{1,10000} B{1,10000}"))
    assert "above 100" in errors["transformations[0].config.pattern"]
    errors = paths_of(cep_job(" ".join(["A{1,100}"] * 11)))
    assert "1100 automaton states" in errors["transformations[0].config.pattern"]
    errors = paths_of(cep_job(" ".join(["A"] * 51)))
    assert "more than 50 elements" in errors["transformations[0].config.pattern"]
    JobConfig.from_dict(cep_job(" ".join(["A{1,100}"] * 10)))


def test_expression_limits_name_the_field() -> None:
    body = job()
    body["transformations"] = [{"type": "filter", "config": {"condition": "a" + ".c" * 450_000}}]
    errors = paths_of(body)
    assert "too long" in errors["transformations[0].config.condition"]


def test_work_per_record_of_a_job_is_bounded() -> None:
    big = "x in (" + ",".join(["a.b.c"] * 6_000) + ")"  # 18002 nodes: allowed alone
    body = job()
    body["transformations"] = [{"type": "filter", "config": {"condition": big}} for _ in range(6)]
    errors = paths_of(body)
    assert list(errors) == ["transformations[5].config.condition"]
    assert "work per record" in errors["transformations[5].config.condition"]
    body["transformations"] = body["transformations"][:5]
    JobConfig.from_dict(body)


def test_max_state_mb_setting() -> None:
    assert JobConfig.from_dict(job()).max_state_mb == 1024
    config = JobConfig.from_dict(job(max_state_mb=64))
    assert config.max_state_mb == 64 and config.to_dict()["config"]["max_state_mb"] == 64
    assert "config.max_state_mb" in paths_of(job(max_state_mb=0))
    assert "config.max_state_mb" in paths_of(job(max_state_mb="64"))


def test_stored_configs_load_without_compiling_expressions() -> None:
    from heliosdb_streaming.model import expr

    body = job()
    body["transformations"] = [{"type": "filter", "config": {"condition": "a" + ".c" * 450_000}}]
    before = expr._compile_text.cache_info().misses
    config = JobConfig.from_stored(body)  # as an older version stored it: beyond today's limits
    assert expr._compile_text.cache_info().misses == before
    assert config.transformations[0].config.condition.startswith("a.c.c")
    with pytest.raises(InvalidJobConfigError):
        JobConfig.from_stored({"name": "j"})  # structure is still checked
