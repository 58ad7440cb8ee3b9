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
from chart_rbac import (
    JOBMANAGER,
    JOBMANAGER_ACCOUNT,
    OPERATOR,
    USERS,
    assert_never_denied,
    enforce_crd_schemas,
    install_operator_rbac,
    save_audit,
)
from k8s_helpers import Env, OperatorProcess, StartOperator

from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.testing.kube_emulator import start_cluster
from heliosdb_streaming.testing.kubelet import GarbageCollector, ProcessKubelet
from heliosdb_streaming.testing.ports import free_port
from heliosdb_streaming.testing.server import operator_command, operator_env


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Env]:
    async with start_cluster(tmp_path, USERS) as emulated:
        enforce_crd_schemas(emulated.emulator)
        client = kube.KubeClient(emulated.connection())
        try:
            # a job manager pod runs as its service account, with that account's token
            accounts = {JOBMANAGER_ACCOUNT: emulated.kubeconfig_of(JOBMANAGER)}
            kubelet_ = ProcessKubelet(client, tmp_path / "node", kubeconfigs=accounts)
            async with kubelet_ as kubelet, GarbageCollector(client) as gc:
                yield Env(emulated, client, kubelet, gc, tmp_path)
        finally:
            await client.close()
            save_audit(emulated.emulator)
        assert_never_denied(emulated.emulator)


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
        home = home or cluster.tmp / "operator-home"
        port = control_port or free_port()
        log = cluster.tmp / f"operator-{len(started)}.log"
        scope = args if args is not None else ["--all-namespaces"]
        await install_operator_rbac(cluster.client, scope)
        # the tests' SQLite files and checkpoint dirs are in the test's directory
        allow = ["--allow-path", str(cluster.tmp)]
        # its read API on a free loopback port: 8082 on all interfaces collides with any other operator
        # on the machine (another test run), which fails this one's start
        read_port = free_port()
        read = ["--read-host", "127.0.0.1", "--read-port", str(read_port)]
        argv = operator_command(home, port, *scope, *allow, *read, "--image", "heliosdb-streaming:test")
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv,
                env=operator_env(cluster.cluster.kubeconfig_of(OPERATOR), env),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        operator = OperatorProcess(process, log, home, port, argv, read_port)
        started.append(operator)
        return operator

    yield start
    for operator in started:
        if operator.process.poll() is None:
            operator.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                operator.process.wait(10)
