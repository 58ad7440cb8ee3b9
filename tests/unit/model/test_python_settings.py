"""The ``python`` step in the job model: its config keys, checked at submit, and the native builder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.job import InvalidJobConfigError, JobConfig, TransformationConfig
from heliosdb_streaming.model.usercode import UserCodeError

USERPKG = Path(__file__).resolve().parents[2] / "userpkg"


def body(*steps: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "py",
        "sources": [{"type": "datagen", "config": {"count": 5}}],
        "transformations": list(steps),
        "sinks": [{"type": "discard"}],
    }


def errors_of(b: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(InvalidJobConfigError) as info:
        JobConfig.from_dict(b)
    return {e.path: e.message for e in info.value.errors}


def test_python_steps_validate_and_round_trip() -> None:
    config = JobConfig.from_dict(
        body(
            {"type": "python", "config": {"function": "acme.fraud:score"}},
            {"type": "python", "config": {"function": "acme.fraud:keep", "kind": "filter"}},
            {"type": "python", "config": {"function": "acme.fraud:Split.items", "kind": "flat_map"}},
        )
    )
    assert [(t.config.function, t.config.kind) for t in config.transformations] == [
        ("acme.fraud:score", "map"),
        ("acme.fraud:keep", "filter"),
        ("acme.fraud:Split.items", "flat_map"),
    ]
    assert JobConfig.from_dict(config.to_dict()) == config


def test_bad_python_steps_name_their_field() -> None:
    found = errors_of(
        body(
            {"type": "python", "config": {"function": "acme.fraud.score"}},
            {"type": "python", "config": {"function": "acme:f", "kind": "reduce"}},
            {"type": "python", "config": {"function": "acme:f", "args": [1]}},
            {"type": "python", "config": {}},
        )
    )
    assert "expected 'package.module:name'" in found["transformations[0].config.function"]
    assert "transformations[1].config.kind" in found
    assert "transformations[2].config.args" in found
    assert "transformations[3].config.function" in found


def test_native_builder_takes_the_function_or_its_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(USERPKG))
    from helios_userpkg import records

    step = TransformationConfig.python(records.split_items, kind="flat_map")
    assert (step.type, step.config.function, step.config.kind) == (
        "python",
        "helios_userpkg.records:split_items",
        "flat_map",
    )
    assert TransformationConfig.python("helios_userpkg.records:add_fee").config.kind == "map"
    with pytest.raises(UserCodeError, match="a lambda"):
        TransformationConfig.python(lambda r: r)
    with pytest.raises(UserCodeError, match="inside a function"):
        TransformationConfig.python(records.make_closure())
