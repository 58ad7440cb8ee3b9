"""The reference rules of user code (``model/usercode.py``): shape, what the native API accepts, the
server's allow-list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.model import usercode
from heliosdb_streaming.model.usercode import UserCodeError, check_allowed, parse_reference, reference_of

USERPKG = Path(__file__).resolve().parents[2] / "userpkg"


@pytest.fixture
def records(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(USERPKG))
    from helios_userpkg import records

    return records


def module_level(record: dict[str, Any]) -> dict[str, Any]:
    return record


@pytest.mark.parametrize(
    ("text", "module", "qualname"),
    [
        ("pkg:fn", "pkg", "fn"),
        ("a.b.c:Klass.method", "a.b.c", "Klass.method"),
        ("_m1:_f2", "_m1", "_f2"),
    ],
)
def test_parse_reference(text: str, module: str, qualname: str) -> None:
    ref = parse_reference(text)
    assert (ref.module, ref.qualname, str(ref)) == (module, qualname, f"{module}:{qualname}")


@pytest.mark.parametrize(
    "text", ["pkg", "pkg:", ":fn", "pkg.:fn", "pkg:fn:x", "1pkg:fn", "pkg:fn()", "a b:c", "", " a:b", "a:b\n"]
)
def test_malformed_references_are_refused(text: str) -> None:
    with pytest.raises(UserCodeError, match=r"expected 'package\.module:name'"):
        parse_reference(text)


@pytest.mark.parametrize("text", ["acme:f.__globals__", "acme:Cls.__call__", "acme:__builtins__"])
def test_special_attributes_are_refused(text: str) -> None:
    with pytest.raises(UserCodeError, match="is a special attribute"):
        parse_reference(text)


def test_main_module_reference_is_refused() -> None:
    with pytest.raises(UserCodeError, match=r"__main__ script.*move it to a module"):
        parse_reference("__main__:score")


def test_reference_of_functions_classes_and_callable_objects(records: Any) -> None:
    assert reference_of(records.add_fee) == "helios_userpkg.records:add_fee"
    assert reference_of(records.Scorer) == "helios_userpkg.records:Scorer"
    assert reference_of(records.Scorer.static_rule) == "helios_userpkg.records:Scorer.static_rule"
    assert reference_of(module_level) == f"{__name__}:module_level"
    assert reference_of("helios_userpkg.records:is_large") == "helios_userpkg.records:is_large"


def test_reference_of_refuses_lambdas_closures_and_main(records: Any) -> None:
    with pytest.raises(UserCodeError, match=r"a lambda .* move it to a module the workers can import"):
        reference_of(lambda r: r)
    with pytest.raises(UserCodeError, match=r"make_closure\.<locals>\.inner is defined inside a function"):
        reference_of(records.make_closure())
    fn = records.make_closure()
    fn.__module__, fn.__qualname__ = "__main__", "score"
    with pytest.raises(UserCodeError, match="score is defined in the __main__ script"):
        reference_of(fn)


def test_reference_of_refuses_what_has_no_name(records: Any) -> None:
    with pytest.raises(UserCodeError, match="no importable name"):
        reference_of(records.scorer)  # an instance: its reference must be given as a string
    with pytest.raises(UserCodeError, match="bound to an instance"):
        reference_of(records.Scorer().__call__)
    with pytest.raises(UserCodeError, match="got int"):
        reference_of(42)


@pytest.mark.parametrize(
    ("module", "patterns", "allowed"),
    [
        ("acme", ["acme"], True),
        ("acme.fraud.score", ["acme"], True),  # a package allows its submodules
        ("acme_evil", ["acme"], False),  # ... not modules that merely start with its name
        ("acme.fraud", ["acme.*"], True),
        ("acme", ["acme.*"], False),
        ("other.mod", ["acme", "other.m?d"], True),
        ("os", [], False),
        ("anything.at.all", ["*"], True),
    ],
)
def test_module_allowed(module: str, patterns: list[str], allowed: bool) -> None:
    assert usercode.module_allowed(module, patterns) is allowed


def test_check_allowed_names_the_module_and_the_flag() -> None:
    check_allowed("os:system", None)  # native API: anything importable
    check_allowed("acme.x:f", ["acme"])
    with pytest.raises(UserCodeError) as info:
        check_allowed("os:system", [])
    assert str(info.value) == (
        "module 'os' is not allowed on this server (allowed: none); its administrator can allow it "
        "with --python-modules os"
    )
    with pytest.raises(
        UserCodeError, match=r"'subprocess' is not allowed on this server \(allowed: acme, b\*\)"
    ):
        check_allowed("subprocess:run", ["acme", "b*"])
