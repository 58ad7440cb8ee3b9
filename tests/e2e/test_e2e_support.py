"""The kind run's helpers, where no cluster runs: the skip (with fake tools on a private PATH, and
through pytest itself), the settings, the parsing of kubectl's output and of resource quantities,
the port-forward's restart (against a fake ``kubectl``), the user image's Dockerfile taken from the
docs and its build context, and the python job's reference (and the engine's answer to that job).
"""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import dockerfile
import e2e_require
import e2e_support as support
import pytest
from e2e_cluster import CommandError, Kubectl, PortForward, eventually

from heliosdb_streaming.job import JobManager, JobStatus
from heliosdb_streaming.runtime.connectors.datagen import DatagenSourceReader
from heliosdb_streaming.testing.waits import wait_until

sys.path.insert(0, str(support.USERPKG))  # helios_userpkg, for the python job's reference

Manifest = dict[str, Any]


# ---------------------------------------------------------------------------------- the skip


def fake_tool(directory: Path, name: str, script: str = "exit 0") -> Path:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


NO_ENGINE = (
    'echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. '
    'Is the docker daemon running?" >&2; exit 1'
)


def test_missing_tools_names_each_absent_tool_and_where_to_get_it(tmp_path: Path) -> None:
    reason = support.missing_tools(str(tmp_path))
    assert reason is not None
    for tool in support.TOOLS:
        assert f"{tool.name} (get it: {tool.how_to_get})" in reason
    fake_tool(tmp_path, "docker")
    fake_tool(tmp_path, "kubectl")
    reason = support.missing_tools(str(tmp_path))
    assert reason is not None and "kind" in reason and "docker" not in reason and "kubectl" not in reason
    fake_tool(tmp_path, "kind")
    assert support.missing_tools(str(tmp_path)) is None


def test_no_docker_engine_is_a_reason_with_dockers_own_words(tmp_path: Path) -> None:
    for name in ("kind", "kubectl"):
        fake_tool(tmp_path, name)
    fake_tool(tmp_path, "docker", NO_ENGINE)
    reason = support.skip_reason(str(tmp_path))
    assert reason is not None and reason.startswith("no Docker engine: `docker info` failed")
    assert "Cannot connect to the Docker daemon" in reason
    fake_tool(tmp_path, "docker", "sleep 5")
    assert "did not answer within 0.2 s" in str(support.docker_engine_problem(str(tmp_path), timeout=0.2))
    fake_tool(tmp_path, "docker", 'echo "27.3.1"')  # an engine answered with its version
    assert support.skip_reason(str(tmp_path)) is None


def test_missing_tools_are_reported_before_docker_is_asked(tmp_path: Path) -> None:
    asked = tmp_path / "asked"
    fake_tool(tmp_path, "docker", f"touch {asked}; {NO_ENGINE}")
    reason = support.skip_reason(str(tmp_path))
    assert reason is not None and reason.startswith("not on PATH: kind")
    assert not asked.exists()


def run_pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest on test_kind.py in a child whose PATH has none of the tools (python is run by path)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HELIOS_E2E_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(Path(__file__).with_name("test_kind.py")), "-q", "-rs",
         "-p", "no:cacheprovider"],
        env={**base, "PATH": str(tmp_path), **env},
        cwd=support.ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


def test_without_the_tools_every_cluster_test_is_skipped_with_the_reason(tmp_path: Path) -> None:
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    reason = f"kind e2e: {support.missing_tools(str(tmp_path))}"
    module = ast.parse(Path(__file__).with_name("test_kind.py").read_text())
    tests = [n for n in module.body if isinstance(n, ast.AsyncFunctionDef) and n.name.startswith("test_")]
    assert tests
    assert f"SKIPPED [{len(tests)}] tests/e2e/test_kind.py: {reason}" in result.stdout, result.stdout
    assert f"{len(tests)} skipped in" in result.stdout


def test_require_turns_the_skip_into_an_error(tmp_path: Path) -> None:
    result = run_pytest(tmp_path, HELIOS_E2E_REQUIRE="1")
    assert result.returncode not in (0, 5)
    assert "HELIOS_E2E_REQUIRE=1 but kind e2e: not on PATH: docker" in result.stdout + result.stderr


SKIPPING_SCENARIOS = """
import pytest

CAPACITY = "the kind node has 500m and 900 MiB free: give Docker more"


@pytest.fixture
def cluster_of_another_kind():
    pytest.skip("no cluster of that kind")


@pytest.mark.kind
def test_lacks_capacity():
    pytest.skip(CAPACITY)


@pytest.mark.kind
def test_skips_in_a_fixture(cluster_of_another_kind):
    pass


def test_not_a_kind_scenario():
    pytest.skip("a helper test may skip")
"""


def run_skipping_scenarios(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """A child pytest with the ``e2e_require`` hook over scenarios that skip in their body and fixture."""
    (tmp_path / "test_skipping.py").write_text(SKIPPING_SCENARIOS)
    base = {k: v for k, v in os.environ.items() if not k.startswith("HELIOS_E2E_")}
    python_path = os.pathsep.join([str(Path(__file__).parent), base.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path / "test_skipping.py"), "-q", "-rA",
         "-p", "e2e_require", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning"],
        env={**base, "PYTHONPATH": python_path, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip


def test_require_fails_every_skipped_scenario_whatever_skipped_it(tmp_path: Path) -> None:
    """The "kind node lacks CPU or memory" skip in test_kind and a fixture's skip fail under
    HELIOS_E2E_REQUIRE=1, with the reason; without it they stay skips. Tests not marked kind may skip."""
    relaxed = run_skipping_scenarios(tmp_path)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr
    assert "3 skipped" in relaxed.stdout, relaxed.stdout
    required = run_skipping_scenarios(tmp_path, HELIOS_E2E_REQUIRE="1")
    out = required.stdout + required.stderr
    assert required.returncode == 1, out
    assert "1 failed, 1 skipped, 1 error" in out, out  # a skip in a fixture: an error in setup
    capacity = "the kind node has 500m and 900 MiB free: give Docker more"
    assert "FAILED test_skipping.py::test_lacks_capacity" in out, out
    assert e2e_require.required_failure(capacity) in out, out
    assert e2e_require.required_failure("no cluster of that kind") in out, out


def test_the_capacity_skip_of_test_kind_is_a_kind_scenario() -> None:
    """The hook only turns ``kind`` scenarios' skips into failures: the one that skips on capacity is one."""
    module = ast.parse(Path(__file__).with_name("test_kind.py").read_text())
    skipping = [
        n.name
        for n in ast.walk(module)
        if isinstance(n, ast.AsyncFunctionDef | ast.FunctionDef)
        and any(
            isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "skip"
            for c in ast.walk(n)
        )
    ]
    assert skipping == ["test_examples_apply_as_is"]
    assert "pytestmark = [pytest.mark.kind" in Path(__file__).with_name("test_kind.py").read_text()


# ------------------------------------------------------------------------------- pure helpers


def test_settings_from_the_environment() -> None:
    assert support.Settings.from_env({}) == support.Settings("helios-e2e", False, False, False)
    knobs = {
        "HELIOS_E2E_CLUSTER": "ci-7",
        "HELIOS_E2E_REUSE": "1",
        "HELIOS_E2E_KEEP": "true",
        "HELIOS_E2E_REQUIRE": "0",
    }
    assert support.Settings.from_env(knobs) == support.Settings("ci-7", True, True, False)
    with pytest.raises(ValueError, match="HELIOS_E2E_KEEP"):
        support.Settings.from_env({"HELIOS_E2E_KEEP": "please"})
    with pytest.raises(ValueError, match="HELIOS_E2E_CLUSTER"):
        support.Settings.from_env({"HELIOS_E2E_CLUSTER": "My_Cluster"})


def test_kind_never_writes_the_users_kubeconfig(tmp_path: Path) -> None:
    settings, kubeconfig = support.Settings(), tmp_path / "kubeconfig"
    for argv in (support.kind_create(settings, kubeconfig), support.kind_delete(settings, kubeconfig)):
        assert argv[argv.index("--kubeconfig") + 1] == str(kubeconfig)
        assert argv[argv.index("--name") + 1] == settings.cluster


@pytest.mark.parametrize(
    ("line", "port"),
    [
        ("Forwarding from 127.0.0.1:43210 -> 8081\n", 43210),
        ("Forwarding from [::1]:43210 -> 8081", None),
        ("Handling connection for 43210", None),
        ("error: unable to forward port because pod is not running. Current status=Pending", None),
    ],
)
def test_forwarded_port(line: str, port: int | None) -> None:
    assert support.forwarded_port(line) == port


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500m", "0.5"),
        ("2", "2"),
        ("1.5", "1.5"),
        ("512Mi", str(512 * 2**20)),
        ("1G", "1000000000"),
        (3, "3"),
    ],
)
def test_quantity(text: str | int, value: str) -> None:
    assert support.quantity(text) == Decimal(value)


def test_quantity_rejects_what_kubernetes_would() -> None:
    for text in ("", "1.5x", "Mi", "1e3"):
        with pytest.raises(ValueError, match="not a resource quantity"):
            support.quantity(text)


def test_free_capacity_subtracts_the_requests_of_pods_that_have_not_ended() -> None:
    def node(ready: str) -> Manifest:
        return {
            "status": {
                "allocatable": {"cpu": "4", "memory": "8Gi"},
                "conditions": [{"type": "Ready", "status": ready}],
            }
        }

    def pod(phase: str, cpu: str, memory: str, init_cpu: str | None = None) -> Manifest:
        spec: Manifest = {"containers": [{"resources": {"requests": {"cpu": cpu, "memory": memory}}}, {}]}
        if init_cpu:
            spec["initContainers"] = [{"resources": {"requests": {"cpu": init_cpu}}}]
        return {"spec": spec, "status": {"phase": phase}}

    pods = [
        pod("Running", "500m", "1Gi"),
        pod("Pending", "250m", "256Mi", init_cpu="1"),  # its init container's 1 CPU is the larger need
        pod("Succeeded", "2", "4Gi"),
    ]
    assert support.free_capacity([node("True"), node("False")], pods) == (
        4000 - 500 - 1000,
        8 * 2**30 - 2**30 - 256 * 2**20,
    )
    job = {
        "spec": {"config": {"parallelism": 3}, "resources": {"requests": {"cpu": "250m", "memory": "1Gi"}}}
    }
    assert support.job_requests(job) == (750, 3 * 2**30)
    assert support.job_requests({"spec": {}}) == (0, 0)


# ------------------------------------------------------------------------------- port-forward

# Records its arguments, prints what kubectl prints once the tunnel is up, and holds it open.
FAKE_PORT_FORWARD = r"""
echo "$@" >> "$(dirname "$0")/calls"
for arg in "$@"; do case "$arg" in *:*) ports="$arg";; esac; done
echo "Forwarding from 127.0.0.1:${ports%%:*} -> ${ports##*:}"
echo "Forwarding from [::1]:${ports%%:*} -> ${ports##*:}"
exec sleep 60
"""


@pytest.fixture
def fake_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return fake_tool(bin_dir, "kubectl", FAKE_PORT_FORWARD)


async def test_port_forward_keeps_its_local_port_across_restarts(fake_kubectl: Path, tmp_path: Path) -> None:
    kubectl = Kubectl(tmp_path / "kubeconfig")
    async with PortForward(kubectl, "service/api", 8081) as forward:
        calls = fake_kubectl.with_name("calls")
        first = calls.read_text().split()
        assert first == [
            "--kubeconfig", str(tmp_path / "kubeconfig"), "--namespace", support.NAMESPACE,
            "port-forward", "service/api", f"{forward.port}:8081", "--address", "127.0.0.1",
        ]  # fmt: skip
        assert forward.address == f"127.0.0.1:{forward.port}"
        process = forward._process
        assert process is not None
        process.kill()  # what kubectl does when it loses the pod: it exits

        async def started_again() -> bool:
            current = forward._process
            return forward.restarts == 1 and current is not process and current is not None

        await eventually(started_again, 10, "the port-forward to start again", interval=0.1)
        assert calls.read_text().splitlines()[1].split() == first  # the same local port
        restarted = forward._process
    assert restarted is not None and restarted.returncode is not None  # stopped on exit


async def test_port_forward_that_cannot_start_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_tool(bin_dir, "kubectl", 'echo "error: services \\"api\\" not found"; exit 1')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(CommandError, match='services "api" not found'):
        async with PortForward(Kubectl(tmp_path / "kubeconfig"), "service/api", 8081):
            pass


# -------------------------------------------------------------------- the user image's Dockerfile


def commands(text: str) -> list[dockerfile.Command]:
    return list(dockerfile.parse_string(text))


def test_the_docs_hold_one_dockerfile_that_pip_installs_the_copied_package() -> None:
    """The Dockerfile users are told to write (docs/python-functions.md): on the project's image,
    COPY their package, pip-install what was copied, and back to the image's non-root user."""
    cmds = commands(support.docs_dockerfile())
    (base,) = [c.value for c in cmds if c.cmd == "FROM"]
    repository, _, tag = base[0].rpartition(":")
    assert repository.endswith("heliosdb-streaming") and tag
    (copy,) = [c for c in cmds if c.cmd == "COPY"]
    _source, dest = copy.value
    (run,) = [c for c in cmds if c.cmd == "RUN"]
    assert f"pip install --no-cache-dir {dest.rstrip('/')}" in run.value[0]
    users = [c.value[0] for c in cmds if c.cmd == "USER"]
    assert users[-1] == "10001:10001"  # the chart's runAsUser; root only for the install
    assert [c.cmd for c in cmds].index("COPY") > [c.cmd for c in cmds].index("USER")  # after USER root


def test_fenced_blocks_are_found_in_list_items_by_language() -> None:
    markdown = (
        "- Kubernetes:\n\n  ```dockerfile\n  FROM a:1\n  RUN echo \\\n      x\n  ```\n\n"
        "```bash\ndocker build .\n```\n\n```\nplain\n```\n"
    )
    assert support.fenced_blocks(markdown, "dockerfile") == ["FROM a:1\nRUN echo \\\n    x\n"]
    assert support.fenced_blocks(markdown, "bash") == ["docker build .\n"]
    with pytest.raises(ValueError, match="one ```dockerfile block"):
        support.docs_dockerfile("no code here\n")
    with pytest.raises(ValueError, match="found 2"):
        support.docs_dockerfile(markdown + markdown)


def test_the_rewrite_puts_the_docs_dockerfile_on_the_local_image_and_package() -> None:
    text = support.docs_dockerfile()
    rewritten = support.user_dockerfile(text, base=support.IMAGE, package_dir="userpkg")
    before, after = commands(text), commands(rewritten)
    assert [c.cmd for c in after] == [c.cmd for c in before]
    for old, new in zip(before, after, strict=True):
        if old.cmd == "FROM":
            assert new.value == (support.IMAGE,)
        elif old.cmd == "COPY":
            assert new.value == ("userpkg/", old.value[1])
        else:
            assert (new.value, new.flags) == (old.value, old.flags)  # every other line as written


def test_the_rewrite_refuses_what_it_cannot_rewrite_faithfully() -> None:
    with pytest.raises(ValueError, match="one FROM"):
        support.user_dockerfile("FROM a\nFROM b\nCOPY x/ /x/\n", base="c", package_dir="p")
    with pytest.raises(ValueError, match="one COPY"):
        support.user_dockerfile("FROM a\nRUN true\n", base="c", package_dir="p")
    with pytest.raises(ValueError, match="COPY <package>/ <dest>"):
        support.user_dockerfile("FROM a\nCOPY --chown=1 x/ /x/\n", base="c", package_dir="p")
    # a continued COPY is replaced whole, and the lines around it stay
    out = support.user_dockerfile(
        "FROM a \\\n  AS b\nCOPY x/ \\\n  /x/\nRUN ls /x\n", base="c", package_dir="p"
    )
    assert out == "FROM c\nCOPY p/ /x/\nRUN ls /x\n"


def test_the_user_image_context_holds_the_package_the_dockerfile_installs(tmp_path: Path) -> None:
    context = support.user_image_context(tmp_path / "ctx", base=support.IMAGE)
    cmds = commands((context / "Dockerfile").read_text())
    assert [c.value for c in cmds if c.cmd == "FROM"] == [(support.IMAGE,)]
    (copy,) = [c for c in cmds if c.cmd == "COPY"]
    package = context / copy.value[0]
    assert (package / "pyproject.toml").is_file()
    for module in ("__init__.py", "records.py", "fraud.py"):
        assert (package / "helios_userpkg" / module).is_file()
    shipped = {p.name for p in package.rglob("*")}
    assert not shipped & {"__pycache__", "build", "helios_userpkg.egg-info"}
    assert {p.name for p in context.iterdir()} == {"Dockerfile", package.name}


def test_the_user_package_pip_installs_and_imports_outside_the_tree(tmp_path: Path) -> None:
    """What the Dockerfile's RUN does, without an engine: pip installs the context's package (as the
    image does: build isolation, its build backend from the index), and a fresh interpreter imports
    the job's functions from the install alone."""
    package = support.user_image_context(tmp_path / "ctx") / "userpkg"
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(package)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    probe = (
        "import helios_userpkg, helios_userpkg.fraud as f, helios_userpkg.records as r;"
        "print(helios_userpkg.__file__, f.LongSessions.__name__, r.add_fee({'amount': 100})['fee'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(target)},
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    assert out[0].startswith(str(target)) and out[1:] == ["LongSessions", "1.0"]


# --------------------------------------------------------------------------- the python job


def test_the_python_jobs_reference_exercises_alerts_and_sessions() -> None:
    splits = support.datagen_splits()
    assert sum(map(len, splits)) == support.PY_COUNT
    for p, events in enumerate(splits):  # each card in one split: its order survives the regrouping
        assert {e["card_id"] for e in events} <= set(DatagenSourceReader(
            partitions=support.PARTITIONS, keys=support.KEYS).cards_of(p))  # fmt: skip
    want = support.python_reference(splits)
    sessions = [r for r in want if r[0] == "session"]
    alerts = [r for r in want if r[0] == "alert"]
    assert alerts and len({r[1] for r in sessions}) == len(sessions) > 10  # one session per card
    assert all(r[2] > 1_000 for r in alerts)  # fraud.LIMIT
    assert sum(r[3] for r in sessions) == sum(
        1 for events in splits for e in events if e["amount"] >= 100
    )  # every large record counted once


@pytest.mark.postgres
@pytest.mark.kafka
async def test_the_python_job_run_here_writes_its_reference(
    tmp_path: Path,
    kafka_bootstrap: str,
    pg_dsn: str,
    pg_schema: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The kind scenario's python job, run by local workers (helios_userpkg on their PYTHONPATH
    instead of in an image; the test broker for the regrouping), writes exactly
    ``python_reference``: the kind test's expectation is the engine's answer, not a guess."""
    monkeypatch.setenv("PYTHONPATH", str(support.USERPKG))
    table = f"{pg_schema}.user_code"
    spec = support.python_job(table, image=support.USER_IMAGE, restarts=0)
    del spec["image"]
    spec["config"]["repartition"] = {"bootstrap_servers": [kafka_bootstrap]}
    spec["sources"][0]["config"]["rate_per_sec"] = 0
    spec["sinks"][0]["config"]["connection_string"] = pg_dsn
    async with JobManager(2, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job({"name": "user-code", **spec})

        async def ended() -> bool:
            return (await jm.get_job_details(job_id)).status in (JobStatus.FINISHED, JobStatus.FAILED)

        await wait_until(ended, what="the job to end", within=120)
        details = await jm.get_job_details(job_id)
    assert details.status == JobStatus.FINISHED, details
    connection = await asyncpg.connect(pg_dsn)
    try:
        columns = ", ".join(support.PY_COLUMNS)
        got = sorted(
            tuple(r) for r in await connection.fetch(f'SELECT {columns} FROM "{pg_schema}".user_code')
        )
    finally:
        await connection.close()
    assert got == support.python_reference(support.datagen_splits())


async def test_workers_without_the_package_fail_the_first_run_with_the_import_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stock-image scenario here: the control plane imports helios_userpkg (this process's
    sys.path) but its workers cannot (no PYTHONPATH), as worker pods of an image without it; the
    first run fails with the message the kind test looks for, and no restart hides it."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    spec = support.python_job("t", image=support.IMAGE, parallelism=1, restarts=0)
    del spec["image"], spec["config"]["repartition"]  # parallelism 1: no regrouping between workers
    spec["sinks"] = [{"type": "file", "config": {"path": str(tmp_path / "out.jsonl")}}]
    async with JobManager(1, home=tmp_path / "home") as jm:
        job_id = await jm.submit_job({"name": "no-user-code", **spec})

        async def ended() -> bool:
            return (await jm.get_job_details(job_id)).status in (JobStatus.FINISHED, JobStatus.FAILED)

        await wait_until(ended, what="the job to end", within=60)
        details = await jm.get_job_details(job_id)
    assert (details.status, details.restarts) == (JobStatus.FAILED, 0)
    assert support.MISSING_PACKAGE in (details.message or ""), details.message
