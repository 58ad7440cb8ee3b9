"""Extracts the fenced code blocks of README.md and docs/*.md, with the ``<!-- sample: ... -->`` mark
that may precede each, so that tests can check every sample by its language and the docs cannot rot.

A mark is an HTML comment on the last non-blank line before the fence (invisible on the site), with
space-separated words:

- ``fragment``: a part of a larger body (``...`` stands for what is left out); JSON is parsed, not
  validated as a whole.
- ``error CODE``: a request body that must be refused with this error code.
- ``excerpt``: Python that is compiled and whose imports and names are resolved, not run;
  ``given=NAME[:TYPE],...`` names what it uses from the surrounding text (attributes used on a typed
  name must exist on the type).
- ``expressions``: a ``text`` block of expression-language lines, each compiled.
- ``kind=KIND``: a YAML fragment of the ``spec`` of a resource of this kind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The Markdown the site shows: its pages, and what they include (docs/hooks: README sections,
# ARCHITECTURE.md, the chart's README). Code included with helios:include-code is the source itself.
SOURCES = (
    REPO / "README.md",
    REPO / "ARCHITECTURE.md",
    REPO / "helm" / "heliosdb-streaming" / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    *sorted((REPO / "docs" / "reference").glob("*.md")),
)

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[^\s`]*)")
_MARK = re.compile(r"^\s*<!--\s*sample:\s*(?P<words>.*?)\s*-->\s*$")


@dataclass(frozen=True, slots=True)
class Sample:
    """One fenced block: where it is (for the failure message), its language, text and mark."""

    path: Path
    line: int
    lang: str
    text: str
    marks: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    def has(self, word: str) -> bool:
        return word in self.marks

    def option(self, name: str) -> str | None:
        """The value of a ``name=value`` word of the mark."""
        for word in self.marks:
            if word.startswith(name + "="):
                return word.split("=", 1)[1]
        return None

    def error_code(self) -> str | None:
        if "error" in self.marks:
            i = self.marks.index("error")
            return self.marks[i + 1] if i + 1 < len(self.marks) else ""
        return None


def extract(path: Path) -> list[Sample]:
    """The fenced blocks of one Markdown file, dedented by their fence's indentation (list items)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    samples: list[Sample] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = len(m["indent"]), m["fence"], m["lang"]
        close = re.compile(r"^\s*" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}\s*$")
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not close.match(lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = _MARK.match(prev)
        marks = tuple(mark["words"].split()) if mark else ()
        samples.append(Sample(path, start + 1, lang, "\n".join(body) + "\n", marks))
    return samples


def all_samples() -> list[Sample]:
    return [s for path in SOURCES for s in extract(path)]


# Runs a block as ``python -m asyncio`` would: top-level ``await`` and ``async with`` allowed.
_RUNNER = """
import ast, asyncio, sys
source = open(sys.argv[1]).read()
result = eval(compile(source, sys.argv[2], "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT), {"__name__": "__main__"})
if asyncio.iscoroutine(result):
    asyncio.run(result)
"""


def run_python_sample(
    sample: Sample, cwd: Path, pythonpath: Path, env: dict[str, str], text: str | None = None
) -> str:
    """Runs one block (or ``text`` made of it) in a fresh interpreter of this venv, with a home in
    ``cwd``; its stdout, or a test failure with its stderr."""
    (cwd / "sample.py").write_text(sample.text if text is None else text)
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER, "sample.py", sample.where],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env, "PYTHONPATH": str(pythonpath), "HELIOS_HOME": str(cwd / "home")},
    )
    assert done.returncode == 0, f"{sample.where}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout
