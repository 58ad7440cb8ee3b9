"""Which user code a job may run (``control/usercode.py``): the allow-list, then the submit-time import."""

from __future__ import annotations

from pathlib import Path

import pytest

from heliosdb_streaming.cli.server import python_modules
from heliosdb_streaming.control.usercode import UserCodePolicy, import_errors, not_allowed_errors, worker_env
from heliosdb_streaming.model.config import JobConfig

USERPKG = Path(__file__).resolve().parents[2] / "userpkg"


def job(*functions: tuple[str, str]) -> JobConfig:
    return JobConfig.from_dict(
        {
            "name": "py",
            "sources": [{"type": "datagen", "config": {"count": 1}}],
            "transformations": [
                {"type": "filter", "config": {"condition": "amount > 0"}},
                *({"type": "python", "config": {"function": f, "kind": k}} for f, k in functions),
            ],
            "sinks": [{"type": "discard"}],
        }
    )


def test_server_policy_allows_only_its_modules() -> None:
    config = job(("helios_userpkg.records:add_fee", "map"), ("os:system", "map"), ("acme.x.y:f", "filter"))
    assert not_allowed_errors(config, UserCodePolicy()) == []  # native API: any module
    refused = not_allowed_errors(
        config, UserCodePolicy.server(["helios_userpkg", " acme.* "]), prefix="spec."
    )
    assert [(e.path, e.message) for e in refused] == [
        (
            "spec.transformations[2].config.function",
            "module 'os' is not allowed on this server (allowed: helios_userpkg, acme.*); its administrator "
            "can allow it with --python-modules os",
        )
    ]
    assert [e.path for e in not_allowed_errors(config, UserCodePolicy.server([]))] == [
        f"transformations[{i}].config.function" for i in (1, 2, 3)
    ]


def test_import_check_reports_missing_code_wrong_kinds_and_foreign_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(USERPKG))
    config = job(
        ("helios_userpkg.records:add_fee", "map"),
        ("helios_userpkg.records:nope", "map"),
        ("helios_userpkg.records:Scorer", "map"),
        ("helios_nowhere:f", "filter"),
        ("helios_userpkg.records:reexported", "map"),
    )
    refused, errors = import_errors(config, UserCodePolicy.server(["helios_userpkg", "helios_nowhere"]))
    found = {e.path: e.message for e in errors}
    assert sorted(found) == [f"transformations[{i}].config.function" for i in (2, 3, 4)]
    assert "has no attribute 'nope'" in found["transformations[2].config.function"]
    assert "is a class" in found["transformations[3].config.function"]
    assert "no module named 'helios_nowhere'" in found["transformations[4].config.function"]
    assert [e.path for e in refused] == ["transformations[5].config.function"]
    assert "is loads of module 'json', which is not allowed" in refused[0].message
    refused, errors = import_errors(config, UserCodePolicy())  # the native API: json's code is fine
    assert refused == [] and len(errors) == 3


def test_workers_are_told_the_allow_list() -> None:
    assert worker_env(UserCodePolicy()) == {}
    assert worker_env(UserCodePolicy.server([])) == {"HELIOS_PYTHON_MODULES": ""}
    assert worker_env(UserCodePolicy.server(["acme", "b.*"])) == {"HELIOS_PYTHON_MODULES": "acme,b.*"}


def test_python_modules_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELIOS_PYTHON_MODULES", "acme, fraud.*")
    assert python_modules(["a,b", " c "]) == ["acme", "fraud.*", "a", "b", "c"]
    monkeypatch.delenv("HELIOS_PYTHON_MODULES")
    assert python_modules([]) == []
