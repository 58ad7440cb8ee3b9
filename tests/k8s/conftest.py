"""Fixtures for the operator against kmock's Kubernetes emulator, over real HTTP.

``cluster``: an emulated API server (``ClusterEmulator``, free port) with a kubeconfig, a kubelet that
runs the pods as local processes (``ProcessKubelet``) and the garbage collector that deletes what a
deleted StreamingJob owns. ``start_operator`` runs ``helios operator`` as a subprocess against it
(cluster-wide by default), with its own home; it can be stopped (SIGTERM) or killed (SIGKILL) and
started again over the same home.

The emulated API server enforces the Helm chart's RBAC (``chart_rbac``): the operator runs as the
chart's operator service account with the Roles the chart renders for its namespace scope; the tests'
own client, the kubelet and the garbage collector are the cluster admin. Custom resources are pruned
and validated against the CRD schemas.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from k8s_helpers import Env, OperatorProcess, StartOperator, emulated_env, launch_operator


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Env]:
    async with emulated_env(tmp_path) as env:
        yield env


@pytest.fixture
def start_operator(cluster: Env) -> Iterator[StartOperator]:
    """``await start_operator(home=..., args=[...], env={...})`` runs ``helios operator``."""
    started: list[OperatorProcess] = []

    async def start(
        home: Path | None = None,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        control_port: int | None = None,
    ) -> OperatorProcess:
        scope = args if args is not None else ["--all-namespaces"]
        log = cluster.tmp / f"operator-{len(started)}.log"
        home = home or cluster.tmp / "operator-home"
        operator = await launch_operator(cluster, home, log, scope, environ=env, control_port=control_port)
        started.append(operator)
        return operator

    yield start
    for operator in started:
        if operator.process.poll() is None:
            operator.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                operator.process.wait(10)
