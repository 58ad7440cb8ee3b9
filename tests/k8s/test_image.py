"""The Dockerfile, read by BuildKit's own parser (the ``dockerfile`` package), since no engine runs here.

It must stay what the chart assumes: a slim Python base, the ``helios`` entrypoint, a non-root user
whose uid is the chart's ``runAsUser``, the ports the chart's Services target, and a build context
(``.dockerignore``) that sends the package source and nothing else.
"""

from __future__ import annotations

import re
import tomllib
from functools import cache
from pathlib import Path

import dockerfile
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
VALUES = yaml.safe_load((ROOT / "helm" / "heliosdb-streaming" / "values.yaml").read_text())


@cache
def instructions() -> tuple[dockerfile.Command, ...]:
    return tuple(dockerfile.parse_file(str(ROOT / "Dockerfile")))


def values_of(cmd: str) -> list[tuple[str, ...]]:
    return [c.value for c in instructions() if c.cmd == cmd]


def test_base_entrypoint_and_user() -> None:
    assert values_of("FROM") == [("python:3.11-slim",)]
    (entrypoint,) = [c for c in instructions() if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json and entrypoint.value == ("helios",)  # exec form: signals reach helios
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "helios" in scripts
    (user,) = values_of("USER")
    uid, _, gid = user[0].partition(":")
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can verify it
    assert int(uid) == VALUES["podSecurityContext"]["runAsUser"]
    assert int(gid) == VALUES["podSecurityContext"]["runAsGroup"]
    # the user is switched to after everything that needs root
    order = [c.cmd for c in instructions()]
    assert order.index("USER") > max(i for i, cmd in enumerate(order) if cmd == "RUN")


def test_installs_the_source_tree_without_a_cache() -> None:
    runs = " ".join(v[0] for v in values_of("RUN"))
    assert re.search(r"pip install --no-cache-dir \S*helios-src", runs)
    copied = [v[:-1] for v in values_of("COPY")]
    sources = [s for group in copied for s in group]
    assert sorted(sources) == ["README.md", "pyproject.toml", "src"]
    for source in sources:
        assert (ROOT / source).exists()


def test_exposes_the_ports_the_chart_uses() -> None:
    (exposed,) = values_of("EXPOSE")
    assert {int(p) for p in exposed} == {VALUES["api"]["port"], VALUES["operator"]["controlPort"]}


def _pattern(glob: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex over slash paths."""
    out = ""
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out += ".*"
            i += 2
        elif glob[i] == "*":
            out += "[^/]*"
            i += 1
        elif glob[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(glob[i])
            i += 1
    return re.compile(out)


def ignored(path: str) -> bool:
    """Docker's rule: the last matching line wins; a line matching a parent directory matches too."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for line in lines:
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        regex = _pattern(line.removeprefix("!").strip("/"))
        if any(regex.fullmatch(p) for p in prefixes):
            result = not negated
    return result


@pytest.mark.parametrize(
    ("path", "sent"),
    [
        ("pyproject.toml", True),
        ("README.md", True),
        ("src/heliosdb_streaming/cli/main.py", True),
        ("src/heliosdb_streaming/examples/demo_job.json", True),
        ("src/heliosdb_streaming/py.typed", True),
        ("src/heliosdb_streaming/__pycache__/x.cpython-311.pyc", False),
        ("src/heliosdb_streaming.egg-info/PKG-INFO", False),
        (".venv/bin/python", False),
        (".git/HEAD", False),
        ("tests/conftest.py", False),
        ("helm/heliosdb-streaming/values.yaml", False),
        (".helios/jobs.db", False),
    ],
)
def test_build_context_holds_only_the_package(path: str, sent: bool) -> None:
    assert ignored(path) is not sent
