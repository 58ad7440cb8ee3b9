"""Submit-time checks of a process step's class: the server's allow-list and the import of the class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from heliosdb_streaming.control.service import JobServiceCore
from heliosdb_streaming.control.usercode import UserCodePolicy
from heliosdb_streaming.model.errors import InvalidJobConfigError, PythonNotAllowedError

USERPKG = Path(__file__).resolve().parents[2] / "userpkg"


@pytest.fixture(autouse=True)
def userpkg_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(USERPKG))


def body(function: str) -> dict[str, Any]:
    return {
        "name": "fraud",
        "sources": [{"type": "datagen", "config": {"count": 10}}],
        "transformations": [{"type": "process", "config": {"function": function, "key": "card_id"}}],
        "sinks": [{"type": "print", "config": {}}],
    }


async def test_a_server_refuses_a_process_class_outside_its_allowed_modules() -> None:
    service = JobServiceCore(None, user_code=UserCodePolicy.server(["acme.*"]))
    with pytest.raises(PythonNotAllowedError) as info:
        await service.submit_job(body("helios_userpkg.fraud:CardSessions"))
    assert info.value.code == "python_not_allowed"
    (error,) = info.value.errors
    assert error.path == "transformations[0].config.function"
    assert "'helios_userpkg.fraud' is not allowed" in error.message
    assert "--python-modules helios_userpkg" in error.message


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("helios_userpkg.fraud:NotAProcessFunction", "does not subclass heliosdb_streaming.functions"),
        ("helios_userpkg.fraud:reference", "is a function, not a class"),
        ("helios_userpkg.fraud:Missing", "has no attribute 'Missing'"),
    ],
)
async def test_an_allowed_reference_that_is_not_a_process_function_is_a_field_error(
    function: str, message: str
) -> None:
    service = JobServiceCore(None, user_code=UserCodePolicy.server(["helios_userpkg"]))
    with pytest.raises(InvalidJobConfigError) as info:
        await service.submit_job(body(function))
    assert not isinstance(info.value, PythonNotAllowedError)
    (error,) = info.value.errors
    assert error.path == "transformations[0].config.function"
    assert message in error.message
