"""Importing user code in a worker (``runtime/usercode.py``): each failure says what and where."""

from __future__ import annotations

from pathlib import Path

import pytest

from heliosdb_streaming.runtime.usercode import (
    UserCodeLoadError,
    UserCodeNotAllowedError,
    defining_module,
    load_class,
    load_function,
    resolve,
    worker_allow_list,
)

USERPKG = Path(__file__).resolve().parents[2] / "userpkg"


@pytest.fixture(autouse=True)
def userpkg_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(USERPKG))


def test_resolves_functions_nested_attributes_and_objects() -> None:
    fn = load_function("helios_userpkg.records:add_fee")
    assert fn({"amount": 250}) == {"amount": 250, "fee": 2.5}
    assert load_function("helios_userpkg.records:Scorer.static_rule")({}) is True
    assert load_function("helios_userpkg.records:scorer")({"a": 1}) == {"a": 1, "score": 1}
    assert resolve("helios_userpkg.records:NOT_A_FUNCTION") == 42


def test_missing_module() -> None:
    with pytest.raises(UserCodeLoadError) as info:
        load_function("helios_nowhere.mod:fn")
    assert str(info.value) == (
        "cannot import helios_nowhere.mod:fn: no module named 'helios_nowhere' in this environment "
        "(install the package, or put its directory on PYTHONPATH of the server and its workers)"
    )
    with pytest.raises(UserCodeLoadError, match=r"no module named 'helios_userpkg\.nope'"):
        load_function("helios_userpkg.nope:fn")


def test_module_whose_import_raises() -> None:
    with pytest.raises(
        UserCodeLoadError, match=r"importing 'helios_userpkg\.broken' raised RuntimeError: broken on purpose"
    ):
        load_function("helios_userpkg.broken:fn")


def test_missing_attribute() -> None:
    with pytest.raises(UserCodeLoadError) as info:
        load_function("helios_userpkg.records:Scorer.nope")
    assert str(info.value) == (
        "cannot resolve helios_userpkg.records:Scorer.nope: module 'helios_userpkg.records' has no "
        "attribute 'Scorer.nope'"
    )


def test_wrong_kinds() -> None:
    with pytest.raises(UserCodeLoadError, match="is a int, not a function"):
        load_function("helios_userpkg.records:NOT_A_FUNCTION")
    with pytest.raises(UserCodeLoadError, match="is a class; a python step needs a function"):
        load_function("helios_userpkg.records:Scorer")
    with pytest.raises(UserCodeLoadError, match="not a class"):
        load_class("helios_userpkg.records:add_fee", object)
    with pytest.raises(UserCodeLoadError, match=r"does not subclass builtins\.dict"):
        load_class("helios_userpkg.records:Scorer", dict)
    assert load_class("helios_userpkg.records:Scorer", object).__name__ == "Scorer"


def test_bad_reference_shape() -> None:
    with pytest.raises(UserCodeLoadError, match="invalid function reference"):
        resolve("not a reference")


def test_a_qualname_does_not_walk_through_a_module() -> None:
    with pytest.raises(UserCodeLoadError) as info:
        resolve("helios_userpkg.records:json.loads")
    assert str(info.value) == (
        "cannot resolve helios_userpkg.records:json.loads: 'json' is a module; name it before the colon: "
        "'json:loads'"
    )


def test_under_an_allow_list_the_code_must_be_defined_in_an_allowed_module() -> None:
    """``from json import loads as reexported`` in an allowed module does not allow json's code."""
    assert load_function("helios_userpkg.records:reexported", None)("[1]") == [1]  # the native API
    with pytest.raises(UserCodeNotAllowedError) as info:
        load_function("helios_userpkg.records:reexported", ["helios_userpkg"])
    assert str(info.value) == (
        "helios_userpkg.records:reexported is loads of module 'json', which is not allowed on this server "
        "(allowed: helios_userpkg): name a function defined in an allowed module, or allow 'json' with "
        "--python-modules"
    )
    assert load_function("helios_userpkg.records:scorer", ["helios_userpkg.*"])({}) == {"score": 0}
    assert defining_module(load_function("helios_userpkg.records:scorer")) == "helios_userpkg.records"
    with pytest.raises(UserCodeNotAllowedError, match="allowed: none"):
        load_class("helios_userpkg.records:Scorer", object, [])
    with pytest.raises(UserCodeLoadError, match="is a int, not a function"):  # the kind is said first
        load_function("helios_userpkg.records:NOT_A_FUNCTION", ["helios_userpkg"])


def test_worker_allow_list_from_the_environment() -> None:
    assert worker_allow_list({}) is None
    assert worker_allow_list({"HELIOS_PYTHON_MODULES": ""}) == ()
    assert worker_allow_list({"HELIOS_PYTHON_MODULES": "acme, b.*"}) == ("acme", "b.*")
