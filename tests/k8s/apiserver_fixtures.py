"""Fixtures of the API server's kubernetes substrate: one emulated cluster and operator per module.

The operator (a ``helios operator`` subprocess with its read API on a free port, behind a token) and
the test kubelet are shared by the module's tests, which is what keeps them fast; isolation comes
from namespaces instead: each ``k8s_api`` gets a fresh namespace and its own ``KubernetesJobService``
(the REST app over real HTTP on a free port). The emulator answers the pod log API from the test
kubelet's process output. The operator and the API server authenticate as the chart's service
accounts and get exactly the chart's RBAC (``chart_rbac``); each namespace gets the API server's Role.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from chart_rbac import API, JOBMANAGER_ACCOUNT, install_api_rbac, install_jobmanager_rbac
from k8s_helpers import emulated_env, launch_operator

from heliosdb_streaming.api.app import create_app
from heliosdb_streaming.kubernetes import kube
from heliosdb_streaming.kubernetes.restapi.apiserver import KubernetesJobService
from heliosdb_streaming.testing.kube_emulator import Cluster
from heliosdb_streaming.testing.kubelet import ProcessKubelet

TOKEN = "apiserver-test-token"
MAX_PARALLELISM = 8  # the embedded contract tests' JobManager(8): over it is 400 on both substrates
AUTH = {"Authorization": f"Bearer {TOKEN}"}
_namespaces = itertools.count(1)


@dataclass
class KubeSubstrate:
    cluster: Cluster
    client: kube.KubeClient
    kubelet: ProcessKubelet
    operator: subprocess.Popen[bytes]
    operator_log: Path
    operator_url: str
    tmp: Path
    job_managers: bool = False

    def operator_output(self) -> str:
        return self.operator_log.read_text(errors="replace")[-4000:]


class CountingJobService(KubernetesJobService):
    """``KubernetesJobService`` with the one ``JobManager`` method the embedded contract scenarios
    call besides the ``JobService`` ones: how many jobs there are (here: the namespace's
    StreamingJobs), so that those scenarios run on this substrate unchanged."""

    async def count_jobs(self) -> int:
        return len(await self.kube.list(kube.STREAMINGJOBS, self.namespace))


@dataclass
class K8sApi:
    """A REST client of one API server (kubernetes substrate) over one namespace."""

    url: str
    namespace: str
    service: CountingJobService
    substrate: KubeSubstrate


async def _wait_read_api(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = asyncio.get_running_loop().time() + 30
    async with aiohttp.ClientSession() as session:
        while True:
            if process.poll() is not None:
                raise AssertionError(f"operator exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the operator's read API did not answer:\n{log.read_text()[-3000:]}")
            await asyncio.sleep(0.1)


# the operator running the jobs itself, and the operator with a job manager pod per job (whose read API
# passes the job routes through to them): the API server must answer the same over both
LAYOUTS = ["in-operator", "job-managers"]
JOBMANAGER_KEY = "apiserver-test-jobmanager-key"


def _job_manager_args(tmp: Path) -> list[str]:
    loopback = ["--api-host=127.0.0.1", "--api-port=0", "--control-host=127.0.0.1", "--control-port=0"]
    return [
        "--job-managers",
        "--jobmanager-url-from-status",
        "--jobmanager-service-account",
        JOBMANAGER_ACCOUNT,
        *(f"--jobmanager-arg={a}" for a in [*loopback, "--advertise-host=127.0.0.1"]),
        "--checkpoint-storage",  # shared by every job manager, as S3 in a cluster
        f"file://{tmp / 'checkpoints'}",
    ]


@pytest.fixture(scope="module", params=LAYOUTS)
async def substrate(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[KubeSubstrate]:
    """Emulated API server, kubelet, garbage collector and ``helios operator -A`` with a read API and
    ``--max-parallelism 8`` in each layout (``k8s_helpers``: the same cluster and launch as the operator
    tests')"""
    job_managers = request.param == "job-managers"
    tmp = tmp_path_factory.mktemp("apiserver")
    async with emulated_env(tmp) as env:
        operator = await launch_operator(
            env,
            tmp / "operator-home",
            tmp / "operator.log",
            ["--all-namespaces"],
            *("--max-parallelism", str(MAX_PARALLELISM)),
            *(_job_manager_args(tmp) if job_managers else []),
            environ={"HELIOS_API_TOKEN": TOKEN, "HELIOS_JOBMANAGER_KEY": JOBMANAGER_KEY},
        )
        process, url = operator.process, f"http://127.0.0.1:{operator.read_port}"
        try:
            await _wait_read_api(url, process, operator.log)
            yield KubeSubstrate(
                env.cluster, env.client, env.kubelet, process, operator.log, url, tmp, job_managers
            )
        finally:
            process.terminate()
            try:
                await asyncio.wait_for(asyncio.to_thread(process.wait), 20)
            except TimeoutError:
                process.kill()
                process.wait()


@contextlib.asynccontextmanager
async def k8s_api_server(substrate: KubeSubstrate, namespace: str) -> AsyncIterator[K8sApi]:
    """The REST app over ``KubernetesJobService`` for ``namespace``, on a free port of 127.0.0.1, as the
    chart's API service account with the chart's Role in ``namespace``."""
    await install_api_rbac(substrate.client, namespace)
    if substrate.job_managers:
        await install_jobmanager_rbac(substrate.client, ["--all-namespaces"], namespace)
    service = CountingJobService(
        substrate.cluster.connection(API),
        namespace,
        substrate.operator_url,
        api_token=TOKEN,
    )
    server = TestServer(create_app(service, api_token=TOKEN, owns_manager=True), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield K8sApi(str(server.make_url("")).rstrip("/"), namespace, service, substrate)
    finally:
        await server.close()


@pytest.fixture
async def k8s_api(substrate: KubeSubstrate) -> AsyncIterator[K8sApi]:
    """A fresh namespace; its StreamingJobs are deleted afterwards (the operator stops their jobs)."""
    namespace = f"apitest-{next(_namespaces)}"
    async with k8s_api_server(substrate, namespace) as api:
        yield api
    for obj in await substrate.client.list(kube.STREAMINGJOBS, namespace):
        await substrate.client.delete(kube.STREAMINGJOBS, namespace, obj["metadata"]["name"])
