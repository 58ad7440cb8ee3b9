"""The kind run's helpers, where no cluster runs: the skip (with fake tools on a private PATH, and
through pytest itself), the settings, the parsing of kubectl's output and of resource quantities,
and the port-forward's restart (against a fake ``kubectl``).
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

import e2e_require
import e2e_support as support
import pytest
from e2e_cluster import CommandError, Kubectl, PortForward, eventually

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
