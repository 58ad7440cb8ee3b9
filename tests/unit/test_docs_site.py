"""The documentation site: ``mkdocs build --strict`` passes on the real site and fails on a broken link,
a broken anchor or a page missing from the nav; the generated reference pages cover what the code has
(every error code, every job option, every CLI command); the expression examples compile."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
HOOKS = DOCS / "hooks"
# Linked from the generated pages or included by them: the build reads them from the repository root.
BUILD_INPUTS = ("README.md", "ARCHITECTURE.md", "src", "helm", "benchmarks")


def _hook_module(name: str) -> ModuleType:
    """A generator module of docs/hooks (they import each other by bare name, as MkDocs loads them)."""
    if str(HOOKS) not in sys.path:
        sys.path.insert(0, str(HOOKS))
    return __import__(name)


def _require_mkdocs() -> None:
    """mkdocs comes from PyPI with `make install` (the docs extra): missing, the builds fail, not skip."""
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        pytest.fail("the docs extra is not installed: `make install` installs '.[test,docs]'")


# Every build is a subprocess of a few seconds (the real site about 10 s): `make test-fast` leaves them out.
needs_mkdocs = pytest.mark.usefixtures("_mkdocs")


@pytest.fixture
def _mkdocs() -> None:
    _require_mkdocs()


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=config.parent,
    )


@pytest.fixture
def small_site(tmp_path: Path) -> Iterator[Path]:
    """A two-page site with the real mkdocs.yml's theme, strictness and link validation, without the
    slow reference pages: what the rules catch is tested here, the real site in one slow build."""
    real: dict[str, Any] = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    config = {key: real[key] for key in ("site_name", "strict", "theme", "validation", "markdown_extensions")}
    config["nav"] = [{"Home": "index.md"}, {"Other": "other.md"}]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the other page](other.md#a-section).\n")
    (docs / "other.md").write_text("# Other\n\n## A section\n\nText.\n")
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    yield tmp_path


@needs_mkdocs
@pytest.mark.slow
def test_small_site_with_the_real_rules_builds(small_site: Path) -> None:
    result = _build(small_site / "mkdocs.yml", small_site / "site")
    assert result.returncode == 0, result.stderr
    assert (small_site / "site" / "other" / "index.html").is_file()


@needs_mkdocs
@pytest.mark.slow
@pytest.mark.parametrize(
    ("page", "text", "complaint"),
    [
        ("index.md", "# Home\n\nSee [gone](missing.md).\n", "missing.md"),
        ("index.md", "# Home\n\nSee [other](other.md#no-such-section).\n", "no-such-section"),
    ],
    ids=["broken-link", "broken-anchor"],
)
def test_a_broken_link_fails_the_build(small_site: Path, page: str, text: str, complaint: str) -> None:
    (small_site / "docs" / page).write_text(text)
    result = _build(small_site / "mkdocs.yml", small_site / "site")
    assert result.returncode != 0
    assert complaint in result.stderr


@needs_mkdocs
@pytest.mark.slow
def test_a_page_missing_from_the_nav_or_the_disk_fails_the_build(small_site: Path) -> None:
    (small_site / "docs" / "stray.md").write_text("# Not in the nav\n")
    result = _build(small_site / "mkdocs.yml", small_site / "site")
    assert result.returncode != 0 and "stray.md" in result.stderr

    (small_site / "docs" / "stray.md").unlink()
    (small_site / "docs" / "other.md").unlink()
    result = _build(small_site / "mkdocs.yml", small_site / "site")
    assert result.returncode != 0 and "other.md" in result.stderr


@needs_mkdocs
@pytest.mark.slow
def test_the_site_builds_strict(tmp_path: Path) -> None:
    """The real site, with every generated reference page, as `make docs` builds it (about 10 s)."""
    result = _build(REPO / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    site = tmp_path / "site"
    rest = (site / "reference" / "rest" / "index.html").read_text()
    assert "/api/v1/jobs/{job_id}/savepoints/{savepoint_id}" in rest
    python_api = (site / "reference" / "python" / "index.html").read_text()
    assert "cancel_job_with_savepoint" in python_api and "JobConfigOverrides" in python_api
    assert "job_restarting" in (site / "troubleshooting" / "index.html").read_text()
    for page in site.rglob("*.html"):  # offline: every script, stylesheet and font is served by the site
        remote = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(?:https?:)?//[^"]+"', page.read_text())
        assert not remote, (page, remote)


@needs_mkdocs
@pytest.mark.slow
def test_a_broken_link_in_the_real_site_fails_its_build(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    for name in BUILD_INPUTS:
        (root / name).symlink_to(REPO / name)
    shutil.copy(REPO / "mkdocs.yml", root / "mkdocs.yml")
    shutil.copytree(DOCS, root / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    concepts = root / "docs" / "concepts.md"
    concepts.write_text(concepts.read_text() + "\nSee [the old guide](guide-v0.md).\n")
    result = _build(root / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "guide-v0.md" in result.stderr


# ------------------------------------------------------------------------------------- error codes


def _codes_in_source() -> set[str]:
    """Every ``code = "..."`` class attribute and every code literal of the API's error tables, read
    from the source text: a second derivation, independent of the hook's class walk."""
    codes: set[str] = set()
    for path in (REPO / "src" / "heliosdb_streaming").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Constant):
                continue
            names = [getattr(t, "id", None) for t in node.targets]
            if names == ["code"] and isinstance(node.value.value, str):
                codes.add(node.value.value)
    errors = ast.parse((REPO / "src" / "heliosdb_streaming" / "api" / "errors.py").read_text())
    for node in ast.walk(errors):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "error_response":
            codes |= {a.value for a in node.args[1:2] if isinstance(a, ast.Constant)}
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "HTTP_CODES":
            assert isinstance(node.value, ast.Dict)
            codes |= {v.value for v in node.value.values if isinstance(v, ast.Constant)}
    return codes


def test_the_error_code_table_has_every_code_of_the_source() -> None:
    table = _hook_module("errorcodes").error_codes()
    in_source = _codes_in_source()
    assert {"job_not_found", "invalid_job_config", "forbidden", "internal_error"} <= in_source
    assert in_source <= set(table), in_source - set(table)
    assert table["savepoint_in_use"] == 409 and table["unsupported_media_type"] == 415


def test_troubleshooting_explains_every_error_code() -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    codes = set(_hook_module("errorcodes").error_codes()) | _codes_in_source()
    missing = sorted(code for code in codes if f"### `{code}`" not in text)
    assert not missing, f"docs/troubleshooting.md has no section for {missing}"
    assert _hook_module("helios_docs").missing_error_sections(text) == []
    assert _hook_module("helios_docs").missing_error_sections("# empty\n") != []


# --------------------------------------------------------------------------------- generated pages


def test_the_job_reference_lists_every_connector_step_and_option() -> None:
    from pydantic import BaseModel

    from heliosdb_streaming.model import config, connectors, transformations

    page = _hook_module("jobref").render()
    unions = (connectors.AnySource, transformations.AnyTransformation, connectors.AnySink)
    items = [item for union in unions for item in _hook_module("jobref")._members(union)]
    assert len(items) >= 13  # 3 sources, 5 steps, 5 sinks when this was written
    for item in items:
        settings = item.model_fields["config"].annotation
        assert isinstance(settings, type) and issubclass(settings, BaseModel)
        section = page.split(f"### `{item.model_fields['type'].default}`")
        assert len(section) >= 2, item
    for model in (config.JobSettings, connectors.KafkaSourceSettings, transformations.WindowSettings):
        for name, field in model.model_fields.items():
            assert f"| `{field.alias or name}` |" in page, (model, name)


def test_the_cli_reference_lists_every_command_and_option() -> None:
    import argparse

    from heliosdb_streaming.cli import main

    page = _hook_module("cliref").render()

    def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
            else:
                yield path, action

    seen = 0
    for path, action in walk(main.build_parser(), "helios"):
        if path != "helios":
            assert f"`{path}`" in page, path
        for option in action.option_strings:
            if option not in ("-h", "--help", "--version"):
                assert f"`{option}`" in page, (path, option)
                seen += 1
    assert seen > 40


def test_the_rest_reference_has_every_operation_and_error_status() -> None:
    page = _hook_module("restref").render(DOCS / "openapi.json")
    doc = yaml.safe_load((DOCS / "openapi.json").read_text())
    for path, item in doc["paths"].items():
        for method, op in item.items():
            heading = f"### `{method.upper()} {path}` {{#{op['operationId'].lower()}}}"
            assert heading in page
            for status in op["responses"]:
                assert re.search(rf"^\| {status} \|", page, re.MULTILINE), (path, method, status)


def test_the_expression_examples_compile() -> None:
    from heliosdb_streaming.model.expr import compile_expression

    text = (DOCS / "expressions.md").read_text()
    block = re.search(r"```text\n(.*?)```", text, re.DOTALL)
    assert block is not None
    examples = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(examples) >= 5
    record = {"amount": 12000.5, "country": "FR", "merchant": "Amazon EU", "payload": {"user": {}}}
    for example in examples:
        compile_expression(example)(record)


def test_the_observability_page_lists_every_dashboard_panel() -> None:
    page = _hook_module("helios_docs").dashboards(REPO)
    panels = 0
    for path in (REPO / "dashboards").glob("*.json"):
        board = yaml.safe_load(path.read_text())
        assert board["title"] in page
        for panel in board["panels"]:
            if panel.get("type") != "row":
                assert f"| {panel['title']} | {panel['type']} |" in page
                panels += 1
    assert panels > 20
    assert "<!-- helios:dashboards -->" in (DOCS / "observability.md").read_text()
