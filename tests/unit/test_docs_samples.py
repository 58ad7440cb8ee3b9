"""Every fenced code block of README.md and docs/*.md is checked by its language, so the docs cannot rot:
JSON job bodies pass (or, marked ``error CODE``, fail with that code) the job model, error bodies fit
the REST error schema; Python modules import and excerpts resolve every name they use; each ``helios``
command line parses with the real CLI parser, ``curl`` hits a route of docs/openapi.json, ``make``
targets, ``python -m`` modules and repository paths exist; YAML manifests pass the generated CRDs (and
Kubernetes' own schema for pod templates); Prometheus config passes ``promtool``. See docs_samples.py
for the ``<!-- sample: ... -->`` marks. Running the README's native-API sample against real services is
tests/integration/test_docs_samples_run.py."""

from __future__ import annotations

import argparse
import ast
import builtins
import contextlib
import copy
import importlib
import io
import itertools
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from docs_samples import REPO, Sample, all_samples, run_python_sample

from heliosdb_streaming.api.errors import ERROR_CODES
from heliosdb_streaming.api.schemas import ErrorResponse
from heliosdb_streaming.job import InvalidJobConfigError, JobConfig, PythonNotAllowedError
from heliosdb_streaming.model.expr import validate_expression

SAMPLES = all_samples()
CHECKED = {"json", "python", "sh", "bash", "console", "yaml", "text", "promql", "dockerfile"}
# ``text`` blocks are output and diagrams, checked only when marked (expressions, validate-output).
UNCHECKED: set[str] = set()


def _of(*langs: str) -> list[Sample]:
    return [s for s in SAMPLES if s.lang in langs]


def _ids(sample: Sample) -> str:
    return sample.where


def test_every_block_has_a_known_language() -> None:
    """An unlabelled block would escape every check: output and diagrams are ``text``."""
    unknown = [f"{s.where}: {s.lang or '(none)'}" for s in SAMPLES if s.lang not in CHECKED | UNCHECKED]
    assert not unknown, "label these code blocks (text for output and diagrams):\n" + "\n".join(unknown)


def test_the_extraction_finds_the_samples() -> None:
    """Guards the extractor itself: a regression there would make every other test vacuous."""
    by_lang = {lang: len(_of(lang)) for lang in ("json", "python", "sh", "yaml")}
    assert by_lang["json"] >= 10 and by_lang["python"] >= 5 and by_lang["sh"] >= 10 and by_lang["yaml"] >= 3


# ------------------------------------------------------------------------------------------- python


def _module_path(sample: Sample) -> str | None:
    """A block whose first line is ``# some/module.py`` is that file of the reader's project."""
    first = sample.text.lstrip().splitlines()[0]
    m = re.fullmatch(r"#\s*([\w/]+\.py)", first.strip())
    return m[1] if m else None


@pytest.fixture(scope="module")
def user_modules(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The docs' module samples written where a reader would put them, importable for the other checks."""
    root = tmp_path_factory.mktemp("docs_modules")
    for sample in _of("python"):
        rel = _module_path(sample)
        if rel is None:
            continue
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        for parent in target.relative_to(root).parents:
            (root / parent / "__init__.py").touch()
        target.write_text(sample.text)
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n == "acme" or n.startswith("acme.")]:
            del sys.modules[name]


@pytest.mark.parametrize("sample", [s for s in _of("python") if _module_path(s)], ids=_ids)
def test_python_module_samples_import(sample: Sample, user_modules: Path) -> None:
    """A module sample runs: imported in a fresh interpreter (its definitions execute)."""
    module = _module_path(sample).removesuffix(".py").replace("/", ".")  # type: ignore[union-attr]
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        cwd=user_modules,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{sample.where}: {done.stderr}"


def test_python_module_samples_behave_as_documented(user_modules: Path) -> None:
    """The scoring functions of python-functions.md do what their comments say."""
    scoring = importlib.import_module("acme.fraud.scoring")
    assert scoring.score({"id": 1}) is None
    scored = scoring.score({"amount": 6000})
    assert scored == {"amount": 6000, "risk": 0.9} and scoring.is_risky(scored)
    assert list(scoring.line_items({"id": 7, "items": [{"sku": "a"}, {"sku": "b"}]})) == [
        {"order_id": 7, "sku": "a"},
        {"order_id": 7, "sku": "b"},
    ]


def _given(sample: Sample) -> dict[str, str | None]:
    given = sample.option("given")
    out: dict[str, str | None] = {}
    for item in given.split(",") if given else []:
        name, _, type_name = item.partition(":")
        out[name] = type_name or None
    return out


def _resolve_imports(tree: ast.AST, where: str) -> dict[str, Any]:
    """The names the block's imports bind, each resolved for real (a missing name fails here)."""
    names: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                if alias.name == "*":
                    exported = getattr(module, "__all__", [n for n in vars(module) if not n.startswith("_")])
                    names.update({n: getattr(module, n) for n in exported})
                else:
                    assert hasattr(module, alias.name), f"{where}: {node.module} has no {alias.name}"
                    names[alias.asname or alias.name] = getattr(module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = importlib.import_module(alias.name)
    return names


def _bound_names(tree: ast.AST) -> set[str]:
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
    return bound


@pytest.mark.parametrize("sample", [s for s in _of("python") if not _module_path(s)], ids=_ids)
def test_python_excerpts_resolve(sample: Sample, user_modules: Path) -> None:
    """An excerpt compiles (top-level ``await`` allowed, as in ``python -m asyncio``), its imports resolve,
    every name it reads is imported, bound in it or given by its mark, and every attribute it uses on an
    imported or typed name exists (``SourceConfig.kafka``, ``jm.create_savepoint``)."""
    if not sample.has("excerpt"):
        return  # run by test_python_samples_run
    tree = compile(sample.text, sample.where, "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    compile(tree, sample.where, "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    imported = _resolve_imports(tree, sample.where)
    if sample.has("continues"):  # the previous Python block of the page is its beginning
        before = [s for s in _of("python") if s.path == sample.path and s.line < sample.line][-1]
        before_tree = compile(
            before.text, before.where, "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        )
        imported = {**_resolve_imports(before_tree, before.where), **imported}
    given = _given(sample)
    objects: dict[str, Any] = dict(imported)
    for name, type_name in given.items():
        if type_name:
            assert type_name in imported, f"{sample.where}: given type {type_name} is not imported"
            objects[name] = imported[type_name]
    known = set(imported) | set(given) | _bound_names(tree) | set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            assert node.id in known, f"{sample.where}:{node.lineno}: {node.id} is never defined"
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in objects
            and node.value.id not in _bound_names(tree) - set(imported)
        ):
            owner = objects[node.value.id]
            fields = getattr(owner, "model_fields", {})
            assert hasattr(owner, node.attr) or node.attr in fields, (
                f"{sample.where}:{node.lineno}: {node.value.id}.{node.attr} does not exist"
            )


@pytest.mark.parametrize(
    "sample", [s for s in _of("python") if not _module_path(s) and not s.has("excerpt")], ids=_ids
)
def test_python_samples_run(sample: Sample, user_modules: Path, tmp_path: Path) -> None:
    """A block that is neither a module nor an excerpt runs to its end without an error."""
    run_python_sample(sample, tmp_path, user_modules, {})


# --------------------------------------------------------------------------------------------- json


def _parse_json(sample: Sample) -> Any:
    """A fragment's ``...`` are elisions: ``{...}``, ``[...]`` and ``, ...`` are dropped; a fragment that
    is a member list (``"config": {...}``) is wrapped in braces."""
    text = sample.text
    if sample.has("fragment"):
        text = re.sub(r"\{\s*\.\.\.\s*\}", "{}", text)
        text = re.sub(r"\[\s*\.\.\.\s*\]", "[]", text)
        text = re.sub(r",\s*\.\.\.(?=\s*[\]}])", "", text)
        if not text.lstrip().startswith(("{", "[")):
            text = "{" + text + "}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        pytest.fail(f"{sample.where}: not JSON (mark a fragment with <!-- sample: fragment -->): {e}")


def _base_job() -> dict[str, Any]:
    """A valid job to embed fragments in: examples/embedded_window.json."""
    job: dict[str, Any] = json.loads((REPO / "examples" / "embedded_window.json").read_text())
    return job


def _job_of(sample: Sample, body: dict[str, Any]) -> dict[str, Any] | None:
    """The whole job a JSON sample stands for, or None when it is not part of a job."""
    if "sources" in body or "sinks" in body:
        return body
    if set(body) == {"config"}:
        job = _base_job()
        job["config"] = {**job.get("config", {}), **body["config"]}
        return job
    if set(body) == {"type", "config"}:
        job = _base_job()
        job["config"] = {**job.get("config", {}), "parallelism": 1}  # a step alone, not its regrouping
        job["transformations"] = [*job["transformations"], body]
        return job
    return None


def _validate_job(body: dict[str, Any]) -> str | None:
    """None when the job is valid, else its error code (as the REST API answers)."""
    try:
        JobConfig.from_dict(body)
    except InvalidJobConfigError as e:
        return f"{e.code}: " + "; ".join(f"{d.path}: {d.message}" for d in e.errors)
    return None


@pytest.mark.parametrize("sample", _of("json"), ids=_ids)
def test_json_samples(sample: Sample, user_modules: Path) -> None:
    body = _parse_json(sample)
    assert isinstance(body, dict), f"{sample.where}: a JSON sample is an object"
    if "error" in body:
        ErrorResponse.model_validate(body)
        assert body["error"]["code"] in ERROR_CODES, f"{sample.where}: unknown code {body['error']['code']}"
        return
    job = _job_of(sample, body)
    if job is None:
        assert sample.has("fragment"), f"{sample.where}: neither a job, a part of one, nor an error body"
        return
    if sample.has("fragment") and job is body:
        return  # a sketch of a whole job with elisions: parsed, not validated
    problem = _validate_job(job)
    expected = sample.error_code()
    if expected is None:
        assert problem is None, f"{sample.where}: {problem}"
    else:
        assert problem is not None, f"{sample.where}: documented as refused ({expected}) but accepted"
        assert problem.startswith(expected + ":"), f"{sample.where}: {problem}"


def test_an_error_sample_names_the_fields_its_refusal_names(user_modules: Path) -> None:
    """A refused body followed by its error answer: the answer's paths are the model's."""
    checked = 0
    for sample, answer in itertools.pairwise(SAMPLES):
        if sample.lang != "json" or sample.error_code() is None or answer.lang != "json":
            continue
        body = _parse_json(answer)
        if "error" not in body or answer.path != sample.path:
            continue
        with pytest.raises(InvalidJobConfigError) as refused:
            JobConfig.from_dict(_job_of(sample, _parse_json(sample)))
        assert [d["path"] for d in body["error"]["details"]] == [d.path for d in refused.value.errors]
        for shown, real in zip(body["error"]["details"], refused.value.errors, strict=True):
            assert "..." in shown["message"] or shown["message"] == real.message, answer.where
        assert body["error"]["code"] == refused.value.code
        checked += 1
    assert checked >= 1


def test_the_python_not_allowed_answers_are_the_servers(user_modules: Path) -> None:
    """A ``python_not_allowed`` answer shown in the docs is what a server allowing the modules it names
    answers for a job whose step at that path calls into the refused module."""
    from heliosdb_streaming.control import usercode

    answers = [s for s in _of("json") if '"python_not_allowed"' in s.text and not s.has("fragment")]
    assert answers
    for sample in answers:
        error = _parse_json(sample)["error"]
        for detail in error["details"]:
            m = re.fullmatch(r"transformations\[(\d+)\]\.config\.function", detail["path"])
            refused = re.search(
                r"module '([\w.]+)' is not allowed on this server \(allowed: ([^)]*)\)", detail["message"]
            )
            assert m and refused, f"{sample.where}: {detail}"
            job = _base_job()
            step = {"type": "python", "config": {"function": f"{refused[1]}:getcwd", "kind": "map"}}
            job["transformations"] = [*job["transformations"], step][: int(m[1]) + 1]
            assert len(job["transformations"]) == int(m[1]) + 1, f"{sample.where}: the base job is too short"
            policy = usercode.UserCodePolicy.server(refused[2].split(", "))
            real = usercode.not_allowed_errors(JobConfig.from_dict(job), policy)
            assert [(e.path, e.message) for e in real] == [(detail["path"], detail["message"])], sample.where
            if len(error["details"]) == 1:
                assert error["message"] == str(PythonNotAllowedError(real)), sample.where


def test_the_outside_the_roots_answers_are_the_servers(user_modules: Path) -> None:
    """An answer shown for a path outside the server's directories is the one the path check gives for
    that path with those roots (``/etc/passwd`` resolves to itself on any Linux machine)."""
    from heliosdb_streaming.control import paths

    shown = [
        (s, d)
        for s in _of("json")
        if "outside the directories" in s.text
        for d in _parse_json(s)["error"]["details"]
    ]
    assert shown
    for sample, detail in shown:
        m = re.fullmatch(r"(\S+) is outside the directories this server allows \((.*)\)", detail["message"])
        assert m, f"{sample.where}: {detail}"
        roots = paths.AllowedRoots.of(m[2].split(", "), base=m[2].split(", ")[0])
        assert roots.problem(m[1]) == detail["message"], sample.where
        job = _base_job()
        job["sources"] = [{"type": "file", "config": {"path": m[1]}}]
        job["config"] = {**job.get("config", {}), "parallelism": 1}
        real = paths.job_path_errors(JobConfig.from_dict(job), roots)
        assert detail["path"] in [e.path for e in real], sample.where


def test_the_unresolvable_function_answers_are_the_servers(user_modules: Path) -> None:
    """An answer shown for a function reference that does not resolve (a typo in the docs' own
    ``acme.fraud.scoring``) is what the submit-time import check says for it."""
    from heliosdb_streaming.control import usercode

    shown = [s for s in _of("json") if "cannot resolve" in s.text]
    assert shown
    for sample in shown:
        message = _parse_json(sample)["error"]["message"]
        m = re.fullmatch(
            r"invalid job config: (transformations\[0\]\.config\.function): (cannot resolve (\S+): .*)",
            message,
        )
        assert m, f"{sample.where}: {message}"
        job = _base_job()
        job["config"] = {**job.get("config", {}), "parallelism": 1}
        job["transformations"] = [{"type": "python", "config": {"function": m[3]}}]
        refused, errors = usercode.import_errors(JobConfig.from_dict(job), usercode.UserCodePolicy())
        assert not refused and [(e.path, e.message) for e in errors] == [(m[1], m[2])], sample.where


# ------------------------------------------------------------------------------------------- text


@pytest.mark.parametrize("sample", [s for s in _of("text") if s.has("validate-output")], ids=_ids)
def test_validate_output_samples(sample: Sample, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A ``validate-output`` block is what ``helios validate`` prints for the page's previous job (with
    ``parallelism=N`` of the mark)."""
    from heliosdb_streaming.cli.main import build_parser

    before = [_parse_json(s) for s in _of("json") if s.path == sample.path and s.line < sample.line]
    job = [body for body in before if "sources" in body][-1]
    if sample.option("parallelism"):
        job["config"] = {**job.get("config", {}), "parallelism": int(sample.option("parallelism") or 0)}
    (tmp_path / "job.json").write_text(json.dumps(job))
    args = build_parser().parse_args(["validate", str(tmp_path / "job.json")])
    assert args.func(args) == 0
    assert capsys.readouterr().out == sample.text, sample.where


@pytest.mark.parametrize("sample", [s for s in _of("text") if s.has("expressions")], ids=_ids)
def test_expression_samples_compile(sample: Sample) -> None:
    for line in filter(None, (raw.strip() for raw in sample.text.splitlines())):
        validate_expression(line)


@pytest.mark.promtool
@pytest.mark.parametrize("sample", _of("promql"), ids=_ids)
def test_promql_samples_parse(sample: Sample, tmp_path: Path) -> None:
    """Each query line (comments dropped) parses, as a recording rule ``promtool check rules`` reads, and
    names only metrics the server exports (the names of api/prometheus.py)."""
    queries = [line.split("  #")[0].strip() for line in sample.text.splitlines() if line.strip()]
    rules = [{"record": f"docs:sample_{i}", "expr": q} for i, q in enumerate(queries)]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "docs", "rules": rules}]}))
    done = subprocess.run(
        ["promtool", "check", "rules", "rules.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{sample.where}: {done.stdout}{done.stderr}"
    from heliosdb_streaming.api import prometheus

    exported = {v for v in vars(prometheus).values() if isinstance(v, str) and v.startswith("heliosdb_")}
    for name in re.findall(r"\b(heliosdb_\w+)", sample.text):
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in exported or family in exported, f"{sample.where}: the server exports no {name}"


@pytest.mark.parametrize("sample", _of("dockerfile"), ids=_ids)
def test_dockerfile_samples_build_on_the_published_image(sample: Sample) -> None:
    """Building needs a Docker daemon (tests/k8s/test_image.py builds the project's image); what can rot
    without one is checked: the base is the image the chart runs (``image.repository:appVersion``) and
    the user switched back to is the one the project's Dockerfile runs as."""
    chart = yaml.safe_load((REPO / "helm" / "heliosdb-streaming" / "Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "helm" / "heliosdb-streaming" / "values.yaml").read_text())
    ours = re.findall(r"^USER\s+(\S+)", (REPO / "Dockerfile").read_text(), re.M)[-1]
    base = re.findall(r"^FROM\s+(\S+)", sample.text, re.M)
    assert base == [f"{values['image']['repository']}:{chart['appVersion']}"], sample.where
    assert re.findall(r"^USER\s+(\S+)", sample.text, re.M)[-1] == ours, sample.where


# ------------------------------------------------------------------------------------------ shell


def _commands(sample: Sample) -> Iterator[list[str]]:
    """Each simple command of a shell block, comments and ``VAR=value`` prefixes dropped."""
    text = re.sub(r"\\\n", " ", sample.text)
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, "|"]:
            if word in ("|", "&&", "||", ";"):
                while command and re.fullmatch(r"[A-Z_]+=.*", command[0]):
                    command.pop(0)
                if command and command[0] == "sudo":
                    command.pop(0)
                if command:
                    yield command
                command = []
            else:
                command.append(word)


def _parse_helios(argv: list[str]) -> str | None:
    """None when the real CLI parser accepts ``argv``, else its complaint."""
    from heliosdb_streaming.cli.main import build_parser

    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as e:
        return f"exit {e.code}: {err.getvalue().strip()}"
    except argparse.ArgumentError as e:
        return str(e)
    return None


def _route(method: str, path: str) -> bool:
    paths = json.loads((REPO / "docs" / "openapi.json").read_text())["paths"]
    for template, operations in paths.items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in operations:
            return True
    return False


def _check_curl(argv: list[str]) -> str | None:
    method = "GET"
    url = None
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-X", "--request"):
            method = next(args)
        elif arg in ("-d", "--data", "--data-binary", "--json"):
            next(args)
            method = "POST" if method == "GET" else method
        elif arg in ("-H", "--header", "-o", "--output", "-u", "-w"):
            next(args)
        elif not arg.startswith("-"):
            url = arg
    if url is None:
        return "no URL"
    path = urlsplit(url if "://" in url else "http://" + url).path
    return None if _route(method, path) else f"no route {method} {path} in docs/openapi.json"


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))


_TOP = {p.name for p in REPO.iterdir()}


def _missing_paths(argv: list[str]) -> list[str]:
    """Words that name a file of this repository (their first part is a top-level entry) and match none."""
    missing = []
    for word in argv[1:]:
        for part in word.split(":"):
            part = part.removeprefix('"').removeprefix("$PWD/").removeprefix("./")
            if "/" in part and part.split("/")[0] in _TOP and not list(REPO.glob(part)):
                missing.append(part)
    return missing


@pytest.mark.parametrize("sample", _of("sh", "bash", "console"), ids=_ids)
def test_shell_samples(sample: Sample) -> None:
    commands = list(_commands(sample))
    assert commands, f"{sample.where}: no command"
    for argv in commands:
        assert not _missing_paths(argv), f"{sample.where}: {argv}: no such file {_missing_paths(argv)}"
        tool = argv[0]
        if tool == "helios":
            problem = _parse_helios(argv[1:])
            assert problem is None, f"{sample.where}: {shlex.join(argv)}: {problem}"
        elif tool == "curl":
            problem = _check_curl(argv)
            assert problem is None, f"{sample.where}: {shlex.join(argv)}: {problem}"
        elif tool == "make":
            unknown = [t for t in argv[1:] if not t.startswith("-") and t not in _make_targets()]
            assert not unknown, f"{sample.where}: no make target {unknown}"
        elif tool in ("python", ".venv/bin/python") and argv[1:2] == ["-m"]:
            module = REPO.joinpath(*argv[2].split("."))  # run from the repository root
            found = module.with_suffix(".py").is_file() or (module / "__main__.py").is_file()
            assert found or importlib.util.find_spec(argv[2]) is not None, (
                f"{sample.where}: no module {argv[2]}"
            )
        elif tool == "helm":
            values = yaml.safe_load((REPO / "helm" / "heliosdb-streaming" / "values.yaml").read_text())
            for key in (b.split("=")[0] for a, b in itertools.pairwise(argv) if a == "--set"):
                node: Any = values
                for part in key.split("."):
                    assert isinstance(node, dict) and part in node, f"{sample.where}: no chart value {key}"
                    node = node[part]
        elif tool == "kubectl":
            kinds = {s for crd in _crds().values() for s in crd["spec"]["names"].get("shortNames", [])}
            files = {b for a, b in itertools.pairwise(argv) if a in ("-f", "--filename")}
            for word in argv[1:]:
                if "/" in word and not word.startswith("-") and word not in files:
                    assert word.split("/")[0] in kinds | {"pod", "pods", "deploy"}, f"{sample.where}: {word}"
            valued = ("-n", "--namespace", "-f", "--filename")
            positional = [b for a, b in itertools.pairwise(argv) if not b.startswith("-") and a not in valued]
            verb_and_type = positional[:2]
            if verb_and_type[0] in ("get", "describe", "delete") and "/" not in verb_and_type[1]:
                names = {n for crd in _crds().values() for n in _crd_names(crd)}
                assert verb_and_type[1] in names | {"pods", "pod", "events"}, f"{sample.where}: {argv}"
            if argv[1] == "scale":
                assert all("scale" in crd["spec"]["versions"][0]["subresources"] for crd in _sj_crd())


# ------------------------------------------------------------------------------------------- yaml


def _crds() -> dict[str, dict[str, Any]]:
    return {
        (crd := yaml.safe_load(p.read_text()))["spec"]["names"]["kind"]: crd
        for p in (REPO / "crds").glob("*.yaml")
    }


def _crd_names(crd: dict[str, Any]) -> set[str]:
    names = crd["spec"]["names"]
    return {names["plural"], names["singular"], *names.get("shortNames", [])}


def _sj_crd() -> list[dict[str, Any]]:
    return [_crds()["StreamingJob"]]


def _crd_validation() -> Any:
    sys.path.insert(0, str(REPO / "tests" / "k8s"))
    try:
        return importlib.import_module("crd_validation")
    finally:
        sys.path.remove(str(REPO / "tests" / "k8s"))


def _check_pod_template(where: str, template: dict[str, Any]) -> None:
    """The podTemplate is a Kubernetes PodTemplateSpec: Kubernetes' own schema checks it."""
    import kubernetes_validate  # type: ignore[import-untyped]

    spec: dict[str, Any] = copy.deepcopy(template.get("spec", {}))
    metadata = {"name": "x", **template.get("metadata", {})}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
    for container in spec.get("containers", []):
        container.setdefault("image", "worker")
    try:
        kubernetes_validate.validate(pod, "1.30", strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{where}: podTemplate: {e}")


def _is_prometheus_config(sample: Sample) -> bool:
    return sample.text.lstrip().startswith("# prometheus.yml")


@pytest.mark.parametrize(
    "sample",
    [pytest.param(s, marks=[pytest.mark.promtool] if _is_prometheus_config(s) else []) for s in _of("yaml")],
    ids=_ids,
)
def test_yaml_samples(sample: Sample, tmp_path: Path) -> None:
    doc = yaml.safe_load(sample.text)
    assert isinstance(doc, dict), f"{sample.where}: not a YAML mapping"
    if _is_prometheus_config(sample):
        (tmp_path / "prometheus.yml").write_text(sample.text)
        done = subprocess.run(
            ["promtool", "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True, text=True
        )
        assert done.returncode == 0, f"{sample.where}: {done.stdout}{done.stderr}"
        return
    kind = sample.option("kind") or doc.get("kind")
    assert kind in _crds(), f"{sample.where}: a manifest of an unknown kind {kind}"
    if sample.option("kind"):
        base = yaml.safe_load((REPO / "examples" / "k8s" / "fraud-pipeline.yaml").read_text())
        base["spec"].update(doc["spec"])
        doc = base
    problems = _crd_validation().validate(_crds()[kind], doc)
    assert not problems, f"{sample.where}: {problems}"
    if "podTemplate" in doc["spec"]:
        _check_pod_template(sample.where, doc["spec"]["podTemplate"])
