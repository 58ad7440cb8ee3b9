"""The ``process`` step's settings: its key (own or the key_by's, else refused), the class reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.job import InvalidJobConfigError, JobConfig, TransformationConfig
from heliosdb_streaming.model.usercode import UserCodeError

USERPKG = Path(__file__).resolve().parents[2] / "userpkg"
FN = "helios_userpkg.fraud:CardSessions"


def body(*steps: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "fraud",
        "sources": [{"type": "file", "config": {"path": "in.jsonl"}}],
        "transformations": list(steps),
        "sinks": [{"type": "print", "config": {}}],
    }


def process(**config: Any) -> dict[str, Any]:
    return {"type": "process", "config": {"function": FN, **config}}


def key_by(key: str) -> dict[str, Any]:
    return {"type": "key_by", "config": {"key": key}}


def errors_of(b: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidJobConfigError) as info:
        JobConfig.from_dict(b)
    return {e.path: e.message for e in info.value.errors}


def test_a_process_step_is_keyed_by_its_own_key_or_the_key_by_before_it() -> None:
    own = JobConfig.from_dict(body(process(key="card_id", max_out_of_orderness="5s")))
    assert own.transformations[0].config.key == "card_id"
    assert own.transformations[0].config.time_field == "timestamp"
    assert JobConfig.from_dict(own.to_dict()) == own
    inherited = JobConfig.from_dict(
        body(key_by("card_id"), {"type": "filter", "config": {"condition": "true"}}, process())
    )
    assert inherited.transformations[2].config.key is None


def test_a_process_step_without_a_key_is_refused_at_submit() -> None:
    errors = errors_of(body(process(), key_by("card_id"), process()))  # a key_by after it does not count
    assert errors == {
        "transformations[0].config.key": "a process step needs a key: set 'key' (e.g. \"card_id\") or put a "
        "key_by step before it"
    }


def test_bad_references_and_keys_name_their_field() -> None:
    errors = errors_of(body(process(function="fraud.CardSessions", key="card_id +")))
    assert set(errors) == {"transformations[0].config.function", "transformations[0].config.key"}
    assert "expected 'package.module:name'" in errors["transformations[0].config.function"]
    assert (
        "unknown field" in errors_of(body(process(key="k", window="1m")))["transformations[0].config.window"]
    )


def test_native_api_takes_the_class_or_its_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(USERPKG))
    from helios_userpkg.fraud import CardSessions

    step = TransformationConfig.process(CardSessions, key="card_id")
    assert step.model_dump(mode="json") == {
        "type": "process",
        "config": {"function": FN, "key": "card_id", "time_field": "timestamp", "max_out_of_orderness": 0},
    }
    assert TransformationConfig.process(FN, key="card_id") == step

    def local() -> type:
        class Nested(CardSessions):
            pass

        return Nested

    with pytest.raises(UserCodeError, match="defined inside a function"):
        TransformationConfig.process(local(), key="card_id")
