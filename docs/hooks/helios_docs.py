"""MkDocs hook of the documentation site: fills the generated parts of pages from the sources.

A page asks for a part with an HTML comment on its own line, replaced at build time:

- ``<!-- helios:job-reference -->``: every job key, connector and step (``jobref``, pydantic models)
- ``<!-- helios:rest-reference -->``: every route and schema of ``docs/openapi.json`` (``restref``)
- ``<!-- helios:cli-reference -->``: every ``helios`` command (``cliref``, the argparse parsers)
- ``<!-- helios:error-codes -->``: every error code and its HTTP status (``errorcodes``); the page
  that holds it must also have a ``### `code` `` section per code, else the build warns (and
  ``mkdocs build --strict`` fails)
- ``<!-- helios:lifecycle -->``: the job state machine's table (``control.lifecycle.TRANSITIONS``)
- ``<!-- helios:benchmarks -->``: every ``benchmarks/*.py`` that has a command line, with its docstring
- ``<!-- helios:dashboards -->``: every panel of ``dashboards/*.json`` with its PromQL
- ``<!-- helios:readme SECTION -->``: the README's ``## SECTION``, so the quick start is not copied
- ``<!-- helios:include PATH -->``: a Markdown file of the repository (its headings one level down)
- ``<!-- helios:include-code PATH LANG -->``: a file of the repository as a code block

Nothing is fetched from the network: every part comes from the repository and the installed package.
"""

from __future__ import annotations

import ast
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).parent))

import cliref
import errorcodes
import jobref
import markup
import restref

log = logging.getLogger("mkdocs.hooks.helios_docs")

MARKER = re.compile(r"^<!-- helios:([a-z-]+)(?: ([^>]*?))? -->$", re.MULTILINE)


def readme_section(root: Path, title: str) -> str:
    """The body of the README's ``## title`` section (up to the next ``## ``), without its heading."""
    text = (root / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    if match is None:
        raise ValueError(f"README.md has no section '## {title}'")
    # The README links into docs/ from the root; the including page is at the root of docs/.
    body = match.group(1).strip().replace("](docs/", "](").replace("](ARCHITECTURE.md)", "](architecture.md)")
    return body + "\n"


def include(root: Path, path: str) -> str:
    """``path`` (relative to the repository) with every heading outside code blocks one level down."""
    out, fence = [], False
    for line in (root / path).read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        out.append("#" + line if line.startswith("#") and not fence else line)
    return "\n".join(out) + "\n"


def include_code(root: Path, argument: str) -> str:
    path, _, language = argument.partition(" ")
    text = (root / path).read_text(encoding="utf-8")
    return f'```{language or "text"} title="{path}"\n{text.rstrip()}\n```\n'


def benchmarks(root: Path) -> str:
    """One section per benchmark module with a ``main`` (the ones ``python -m`` runs): its docstring,
    which says what it measures and how to run it."""
    out = []
    for path in sorted((root / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if not any(
            isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == "main" for n in tree.body
        ):
            continue
        doc = ast.get_docstring(tree) or ""
        summary, _, rest = doc.partition("\n\n")
        out += [f"### `benchmarks.{path.stem}` {{#{path.stem.replace('_', '-')}}}", "", summary, "", rest, ""]
    return "\n".join(out) + "\n"


def dashboards(root: Path) -> str:
    """Each Grafana dashboard of ``dashboards/``: its title, then every panel with its queries."""
    out = []
    for path in sorted((root / "dashboards").glob("*.json")):
        board = orjson.loads(path.read_bytes())
        out += [f"#### {board['title']} (`{path.name}`)", "", board.get("description", ""), ""]
        out += ["| panel | type | queries |", "|---|---|---|"]
        for panel in board.get("panels", []):
            if panel.get("type") == "row":
                continue
            queries = "<br>".join(
                markup.code_cell(t["expr"]) for t in panel.get("targets", []) if t.get("expr")
            )
            out.append(f"| {markup.cell(panel.get('title'))} | {panel.get('type')} | {queries} |")
        out.append("")
    return "\n".join(out) + "\n"


def lifecycle_table() -> str:
    """The job state machine, one row per (status, event), as ``control.lifecycle`` decides it."""
    from heliosdb_streaming.control import lifecycle

    rows = ["| status | event | new status |", "|---|---|---|"]
    for (status, event), new in lifecycle.TRANSITIONS.items():
        rows.append(f"| `{status.value}` | {event.value} | `{new.value}` |")
    return "\n".join(rows) + "\n"


def error_code_table() -> str:
    rows = ["| code | HTTP status | what to do |", "|---|---|---|"]
    for code, status in errorcodes.error_codes().items():
        rows.append(f"| `{code}` | {status or 'varies'} | [{code}](#{code}) |")
    return "\n".join(rows) + "\n"


def missing_error_sections(markdown: str) -> list[str]:
    """The error codes that have no ``### `code` `` section in ``markdown``."""
    return [code for code in errorcodes.error_codes() if f"### `{code}`" not in markdown]


def _generators(config: Any) -> dict[str, Callable[[str], str]]:
    docs = Path(config["docs_dir"])
    return {
        "job-reference": lambda _: jobref.render(),
        "rest-reference": lambda _: restref.render(docs / "openapi.json"),
        "cli-reference": lambda _: cliref.render(),
        "error-codes": lambda _: error_code_table(),
        "lifecycle": lambda _: lifecycle_table(),
        "benchmarks": lambda _: benchmarks(docs.parent),
        "dashboards": lambda _: dashboards(docs.parent),
        "readme": lambda title: readme_section(docs.parent, title),
        "include": lambda path: include(docs.parent, path),
        "include-code": lambda argument: include_code(docs.parent, argument),
    }


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    generators = _generators(config)

    def fill(match: re.Match[str]) -> str:
        name, argument = match.group(1), (match.group(2) or "").strip()
        if name not in generators:
            log.warning("%s: unknown generated part %r", page.file.src_uri, name)
            return match.group(0)
        return generators[name](argument)

    if "<!-- helios:error-codes -->" in markdown:
        for code in missing_error_sections(markdown):
            log.warning("%s: error code %r has no '### `%s`' section", page.file.src_uri, code, code)
    return MARKER.sub(fill, markdown)
