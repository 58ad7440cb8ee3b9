"""ERROR_CODES is the whole list: every code an error class of the code base carries, or the error
middleware writes, is in it with the status it is answered with, and docs/errors.md lists exactly it."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from heliosdb_streaming.api import errors
from heliosdb_streaming.api.errors import ERROR_CODES, HTTP_CODES, ApiError
from heliosdb_streaming.api.schemas import ErrorInfo
from heliosdb_streaming.model.errors import JobError

REPO = Path(__file__).resolve().parents[3]
SRC = REPO / "src"


def coded_classes() -> dict[tuple[str, str], str]:
    """(module, class) -> code for every class in src with a ``code = "..."`` class attribute."""
    found = {}
    for path in sorted((SRC / "heliosdb_streaming").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef):
                continue
            for statement in node.body:
                if (
                    isinstance(statement, ast.Assign)
                    and [getattr(t, "id", None) for t in statement.targets] == ["code"]
                    and isinstance(statement.value, ast.Constant)
                    and isinstance(statement.value.value, str)
                ):
                    found[(module, node.name)] = statement.value.value
    return found


def literal_codes() -> set[str]:
    """The codes the middleware writes as literals: ``error_response(status, "code", ...)``."""
    codes = set()
    for path in sorted((SRC / "heliosdb_streaming").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "error_response"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                codes.add(node.args[1].value)
    return codes


def status_of(cls: type) -> int:
    if issubclass(cls, ApiError):
        return cls.status
    assert issubclass(cls, JobError), cls
    return next(status for base, status in errors.DOMAIN_STATUS if issubclass(cls, base))


def test_every_error_class_has_its_code_in_the_table_with_its_status() -> None:
    classes = coded_classes()
    assert len(classes) >= 15  # the walk found the error classes (api, guard, model)
    for (module, name), code in classes.items():
        cls = getattr(importlib.import_module(module), name)
        assert code in ERROR_CODES, f"{module}.{name}: code {code!r} is not in api.errors.ERROR_CODES"
        assert status_of(cls) == ERROR_CODES[code].status, (module, name, code)


def test_subclasses_without_a_code_of_their_own_answer_a_listed_one() -> None:
    """E.g. the Kubernetes REST backend's errors, which inherit their code."""
    for module in {m for m, _ in coded_classes()} | {
        "heliosdb_streaming.kubernetes.restapi.commands",
        "heliosdb_streaming.kubernetes.restapi.readclient",
    }:
        importlib.import_module(module)
    pending: list[type] = [ApiError, JobError]
    seen = 0
    while pending:
        cls = pending.pop()
        seen += 1
        assert ERROR_CODES[cls.code].status == status_of(cls), cls
        pending.extend(cls.__subclasses__())
    assert seen >= 17


def test_the_codes_the_middleware_writes_itself_are_listed() -> None:
    assert literal_codes() == {"internal_error"}
    for status, code in HTTP_CODES.items():
        assert ERROR_CODES[code].status == status


def test_an_http_error_aiohttp_raises_with_another_status_is_answered_as_the_table_says() -> None:
    request = make_mocked_request("GET", "/api/v1/jobs")
    timeout = errors._http_exception_response(request, web.HTTPRequestTimeout())
    assert timeout.status == 400 and b'"code":"bad_request"' in timeout.body  # type: ignore[operator]
    gateway = errors._http_exception_response(request, web.HTTPBadGateway())
    assert gateway.status == 500 and b'"code":"internal_error"' in gateway.body  # type: ignore[operator]


def test_docs_list_exactly_the_table() -> None:
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", (REPO / "docs" / "errors.md").read_text(), re.M)
    assert {code: int(status) for code, status in rows} == {c: e.status for c, e in ERROR_CODES.items()}
    assert len(rows) == len(ERROR_CODES)


def test_the_openapi_document_lists_every_code() -> None:
    description = ErrorInfo.model_fields["code"].description or ""
    assert all(code in description for code in ERROR_CODES)
