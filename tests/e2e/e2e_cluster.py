"""The kind run's I/O: commands with deadlines, ``kubectl``, port-forwards, the Helm release, and the
session's cluster (create or reuse, image, test services, chart) with its teardown.

Helm runs through helm-python-sdk (Helm's own Go code, already a test dependency for the chart
tests), so no ``helm`` binary is needed: ``Config(kubeconfig_path=...).install`` is ``helm install``
against the kind cluster's private kubeconfig.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import asyncpg
import e2e_support as support
import helm_python as helm

from heliosdb_streaming.kubernetes import crds
from heliosdb_streaming.kubernetes.operator import pods
from heliosdb_streaming.runtime.checkpoint.storage import CheckpointStorage, storage_from_uri
from heliosdb_streaming.testing.ports import free_port

logger = logging.getLogger(__name__)
T = TypeVar("T")


class CommandError(RuntimeError):
    """A command of the run failed or overran its deadline; the message carries its output's end."""


async def run(argv: list[str], *, input: bytes | None = None, timeout: float = 60) -> str:
    """Runs ``argv`` to completion within ``timeout`` seconds and returns its stdout."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(input), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise CommandError(f"`{shlex.join(argv)}` did not finish within {timeout:g} s") from None
    if process.returncode != 0:
        tail = (err or out).decode(errors="replace")[-3000:]
        raise CommandError(f"`{shlex.join(argv)}` exited with {process.returncode}:\n{tail}")
    return out.decode()


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    timeout: float,
    what: str,
    diagnostics: Callable[[], Awaitable[str]] | None = None,
    interval: float = 0.5,
) -> T:
    """Polls ``probe`` until it returns something other than None or False; fails after ``timeout``
    with the last value and, when given, what ``diagnostics`` says about the cluster."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        last = await probe()
        if last is not None and last is not False:
            return last
        if asyncio.get_running_loop().time() > deadline:
            more = f"\n{await diagnostics()}" if diagnostics else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r}){more}")
        await asyncio.sleep(interval)


# ------------------------------------------------------------------------------------- kubectl


@dataclass(frozen=True)
class Kubectl:
    """``kubectl`` with the kind cluster's private kubeconfig, in one namespace."""

    kubeconfig: Path
    namespace: str = support.NAMESPACE

    def argv(self, *args: str) -> list[str]:
        return ["kubectl", "--kubeconfig", str(self.kubeconfig), "--namespace", self.namespace, *args]

    async def __call__(self, *args: str, input: bytes | None = None, timeout: float = 60) -> str:
        return await run(self.argv(*args), input=input, timeout=timeout)

    async def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The object, or None when there is none (``--ignore-not-found`` prints nothing then)."""
        out = await self("get", kind, name, "--ignore-not-found", "--output", "json")
        return json.loads(out) if out.strip() else None

    async def items(
        self, kind: str, selector: str | None = None, all_namespaces: bool = False
    ) -> list[dict[str, Any]]:
        args = ["get", kind, "--output", "json"]
        if selector:
            args += ["--selector", selector]
        if all_namespaces:
            args.append("--all-namespaces")
        items: list[dict[str, Any]] = json.loads(await self(*args))["items"]
        return items

    async def apply(self, *docs: Mapping[str, Any]) -> None:
        body = {"apiVersion": "v1", "kind": "List", "items": list(docs)}
        await self("apply", "--filename", "-", input=json.dumps(body).encode())

    async def patch_spec(self, kind: str, name: str, changes: Mapping[str, Any]) -> None:
        await self("patch", kind, name, "--type", "merge", "--patch", json.dumps({"spec": changes}))

    async def events(self, name: str) -> list[tuple[str, str]]:
        """(reason, message) of the Events about the object ``name``, oldest first."""
        items = await self.items("events")
        about = [e for e in items if (e.get("involvedObject") or {}).get("name") == name]
        about.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
        return [(e.get("reason", ""), e.get("message", "")) for e in about]


# -------------------------------------------------------------------------------- port-forward


class PortForward:
    """``kubectl port-forward`` to a Service on a fixed local port, started again when it dies.

    kubectl forwards to one pod chosen at start and exits when that connection is lost; keeping the
    local port across restarts lets clients keep their URL. Its output is drained continuously
    (it prints a line per connection, and a full pipe would block it).
    """

    MAX_RESTARTS = 10

    def __init__(self, kubectl: Kubectl, target: str, remote_port: int) -> None:
        self.kubectl = kubectl
        self.target = target
        self.remote_port = remote_port
        self.port = free_port()
        self.restarts = 0
        self.output: collections.deque[str] = collections.deque(maxlen=20)
        self._process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> PortForward:
        await self._start()
        self._tasks.append(asyncio.create_task(self._supervise()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stop()

    async def _start(self, timeout: float = 30) -> None:
        """Starts kubectl and returns once it forwards; ``_process`` is only ever a forwarding one."""
        argv = self.kubectl.argv(
            "port-forward", self.target, f"{self.port}:{self.remote_port}", "--address", "127.0.0.1"
        )
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = (await process.stdout.readline()).decode(errors="replace")
                    if not line:
                        raise CommandError(
                            f"`{shlex.join(argv)}` exited: {' | '.join(self.output) or 'no output'}"
                        )
                    self.output.append(line.rstrip())
                    if support.forwarded_port(line) == self.port:
                        break
        except BaseException:
            await _terminate(process)
            raise
        self._process = process
        self._tasks.append(asyncio.create_task(self._drain(process)))

    async def _drain(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            self.output.append(line.decode(errors="replace").rstrip())

    async def _supervise(self) -> None:
        while not self._closing:
            assert self._process is not None
            await self._process.wait()
            if self._closing:
                return
            if self.restarts >= self.MAX_RESTARTS:
                logger.error("port-forward to %s died %d times; giving up", self.target, self.restarts)
                return
            self.restarts += 1
            logger.warning(
                "port-forward to %s exited (%s); starting it again (%d of %d)",
                self.target,
                " | ".join(list(self.output)[-3:]),
                self.restarts,
                self.MAX_RESTARTS,
            )
            await asyncio.sleep(1)
            try:
                await self._start()
            except (CommandError, TimeoutError) as e:
                logger.warning("port-forward to %s did not start again: %s", self.target, e)

    async def _stop(self) -> None:
        if self._process is not None:
            await _terminate(self._process)


async def _terminate(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


# --------------------------------------------------------------------------------------- Helm


def install_release(kubeconfig: Path, *, dry_run: str | None = None, timeout: int = 300) -> dict[str, Any]:
    """``helm install`` of the chart with the e2e values, waiting until its workloads are ready.

    Blocking (Helm's Go code): call it in a thread. ``dry_run="client"`` renders the release as the
    install would, without a cluster, which is how the normal test run checks this very call.
    """
    with (
        helm.Chart.load(support.CHART) as chart,
        helm.Config(kubeconfig_path=kubeconfig, namespace=support.NAMESPACE) as config,
    ):
        release: dict[str, Any] = config.install(
            chart,
            support.RELEASE,
            support.chart_values(),
            namespace=support.NAMESPACE,
            wait=None if dry_run else "watcher",
            timeout=timeout,
            dry_run=dry_run,
        )
        return release


def uninstall_release(kubeconfig: Path) -> None:
    with helm.Config(kubeconfig_path=kubeconfig, namespace=support.NAMESPACE) as config:
        config.uninstall(support.RELEASE, ignore_not_found=True, wait="watcher", timeout=120)


# ------------------------------------------------------------------------------ the session env


@dataclass
class KindEnv:
    """The running kind cluster as the scenarios use it: ``kubectl``, the API's URL, PostgreSQL's
    DSN and MinIO's endpoint (each through a port-forward), and polling helpers."""

    settings: support.Settings
    kubeconfig: Path
    kubectl: Kubectl
    api_url: str
    pg_dsn: str
    s3_endpoint: str
    forwards: list[PortForward] = field(default_factory=list)

    # -- what a failure message needs

    async def diagnostics(self) -> str:
        parts = []
        for args in (
            ("get", "streamingjobs,savepoints,pods", "--output", "wide"),
            ("logs", f"deployment/{support.OPERATOR_DEPLOYMENT}", "--tail", "80"),
            ("logs", f"deployment/{support.API_SERVICE}", "--tail", "20"),
        ):
            try:
                parts.append(f"$ kubectl {' '.join(args)}\n{await self.kubectl(*args)}")
            except CommandError as e:
                parts.append(str(e))
        for forward in self.forwards:
            if forward.restarts:
                parts.append(f"port-forward {forward.target}: {forward.restarts} restarts")
        return "\n".join(parts)[-8000:]

    # -- StreamingJobs and their pods

    async def job_status(self, name: str) -> dict[str, Any]:
        obj = await self.kubectl.get("streamingjobs", name)
        return dict((obj or {}).get("status") or {})

    async def wait_phase(self, name: str, *phases: str, timeout: float = 120) -> dict[str, Any]:
        async def probe() -> dict[str, Any] | None:
            status = await self.job_status(name)
            return status if status.get("phase") in phases else None

        return await eventually(probe, timeout, f"{name} to be {'/'.join(phases)}", self.diagnostics)

    async def wait_checkpoint(self, name: str, after: str | None = None) -> str:
        async def probe() -> str | None:
            last = (await self.job_status(name)).get("lastCheckpoint")
            return last if last and last != after else None

        return await eventually(probe, 60, f"a checkpoint of {name}", self.diagnostics)

    async def worker_pods(self, name: str) -> list[dict[str, Any]]:
        items = await self.kubectl.items("pods", f"{pods.LABEL_JOB}={name}")
        return sorted(items, key=lambda p: p["metadata"]["name"])

    async def owned(self, name: str) -> list[str]:
        """kind/name of everything labelled as the job's: worker pods, the job file, the Service."""
        out = await self.kubectl(
            "get",
            "pods,configmaps,secrets,services",
            "--selector",
            f"{pods.LABEL_JOB}={name}",
            "--output",
            "name",
        )
        return sorted(out.split())

    async def savepoint_status(self, name: str) -> dict[str, Any] | None:
        """The Savepoint's status once completed (None before); a failed one fails the test."""
        obj = await self.kubectl.get("savepoints", name)
        status = dict((obj or {}).get("status") or {})
        assert status.get("state") != "failed", status
        return status if status.get("state") == "completed" else None

    # -- the services behind the jobs

    async def rows(self, table: str) -> list[tuple[Any, ...]]:
        """The window table's rows as ``expected.datagen_tumbling_windows`` computes them."""
        connection = await asyncpg.connect(self.pg_dsn, timeout=10)
        try:
            records = await connection.fetch(f'SELECT key, window_start, window_end, n, total FROM "{table}"')
        except asyncpg.UndefinedTableError:
            return []
        finally:
            await connection.close()
        return sorted((k, s, e, n, round(t, 6)) for k, s, e, n, t in records)

    async def python_rows(self, table: str) -> list[tuple[Any, ...]]:
        """The python job's table as ``support.python_reference`` computes it (none yet: [])."""
        columns = ", ".join(support.PY_COLUMNS)
        connection = await asyncpg.connect(self.pg_dsn, timeout=10)
        try:
            records = await connection.fetch(f'SELECT {columns} FROM "{table}"')
        except asyncpg.UndefinedTableError:
            return []
        finally:
            await connection.close()
        return sorted(tuple(r) for r in records)

    def storage(self, location: str) -> CheckpointStorage:
        """The checkpoint storage rooted at ``location`` (``s3://...``), through the port-forward."""
        return storage_from_uri(location, support.s3_options(f"http://{self.s3_endpoint}"))

    async def api_ready(self) -> bool:
        """The API server answers, and so does the operator's read API behind it (``/metrics``)."""
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with (
                aiohttp.ClientSession(headers=support.AUTH, timeout=aiohttp.ClientTimeout(total=5)) as s,
                s.get(f"{self.api_url}/metrics") as response,
            ):
                return response.status == 200
        return False


# ---------------------------------------------------------------------------------- set-up steps


async def ensure_cluster(settings: support.Settings, kubeconfig: Path) -> bool:
    """Creates the kind cluster, or reuses it when asked; True when this run created it."""
    existing = (await run(["kind", "get", "clusters"])).split()
    if settings.cluster in existing:
        if not settings.reuse:
            raise CommandError(
                f"a kind cluster named {settings.cluster!r} exists: set HELIOS_E2E_REUSE=1 to run on it, "
                f"or delete it (kind delete cluster --name {settings.cluster})"
            )
        kubeconfig.write_text(await run(support.kind_kubeconfig(settings)))
        logger.info("reusing kind cluster %s", settings.cluster)
        return False
    logger.info("creating kind cluster %s", settings.cluster)
    await run(support.kind_create(settings, kubeconfig), timeout=600)
    return True


async def load_images(settings: support.Settings, workdir: Path) -> None:
    """Builds the project's image, and from it the user image of the Dockerfile in
    docs/python-functions.md (with tests/userpkg as the user's package), and loads both into the
    node; preloads the test services' images.

    A preload pulls with the host's Docker (its login, mirrors and cache) and is only a speed-up:
    when ``kind load`` refuses an image (multi-platform images on some Docker setups), the node
    pulls it itself (``imagePullPolicy: IfNotPresent``).
    """
    logger.info("building %s", support.IMAGE)
    await run(support.docker_build(), timeout=1800)
    await run(support.kind_load(settings, support.IMAGE), timeout=600)
    context = support.user_image_context(workdir / "user-image", base=support.IMAGE)
    logger.info("building %s from the Dockerfile of %s", support.USER_IMAGE, support.PYTHON_FUNCTIONS_DOC)
    await run(support.docker_build(support.USER_IMAGE, context), timeout=900)
    await run(support.kind_load(settings, support.USER_IMAGE), timeout=600)
    for image in support.images_of(support.service_manifests()):
        try:
            try:
                await run(["docker", "image", "inspect", image])
            except CommandError:
                await run(["docker", "pull", image], timeout=900)
            await run(support.kind_load(settings, image), timeout=600)
        except CommandError as e:
            logger.warning("could not preload %s; the node will pull it: %s", image, e)


async def reset_namespace(kubectl: Kubectl) -> None:
    """On a reused cluster: removes what an earlier run left, so the release installs afresh.

    The finalizers of leftover jobs and savepoints are dropped first: without a running operator
    nothing would ever remove them, and the namespace would never go.
    """
    if not (await kubectl("get", "namespace", kubectl.namespace, "--ignore-not-found", "--output", "name")):
        return
    for plural in (crds.STREAMING_JOB_PLURAL, crds.SAVEPOINT_PLURAL):
        crd = f"{plural}.{crds.GROUP}"
        if not (await kubectl("get", "crd", crd, "--ignore-not-found", "--output", "name")).strip():
            continue
        for name in (await kubectl("get", plural, "--output", "name")).split():
            await kubectl("patch", name, "--type", "merge", "--patch", '{"metadata":{"finalizers":null}}')
    await kubectl("delete", "namespace", kubectl.namespace, "--wait=true", "--timeout=300s", timeout=320)
    # the release's cluster-wide RBAC outlives its namespace
    release = f"app.kubernetes.io/instance={support.RELEASE}"
    await kubectl("delete", "clusterroles,clusterrolebindings", "--selector", release, "--ignore-not-found")


async def install_services(kubectl: Kubectl) -> None:
    await kubectl("apply", "--filename", str(support.MANIFESTS))
    for doc in support.service_manifests():
        if doc["kind"] == "Deployment":
            name = doc["metadata"]["name"]
            await kubectl("rollout", "status", f"deployment/{name}", "--timeout=600s", timeout=620)


@contextlib.asynccontextmanager
async def kind_env(settings: support.Settings, workdir: Path) -> AsyncIterator[KindEnv]:
    """The whole session: cluster, image, test services, chart, port-forwards; torn down after
    unless ``HELIOS_E2E_KEEP=1`` (and a reused cluster itself is never deleted)."""
    kubeconfig = workdir / "kubeconfig"
    created = await ensure_cluster(settings, kubeconfig)
    kubectl = Kubectl(kubeconfig)
    try:
        await load_images(settings, workdir)
        if not created:
            await reset_namespace(kubectl)
            # Helm installs CRDs only when absent: bring an older run's up to date first.
            await kubectl(
                "apply", "--server-side", "--force-conflicts", "--filename", str(support.CHART / "crds")
            )
        await kubectl("create", "namespace", support.NAMESPACE)
        await install_services(kubectl)
        logger.info("installing the chart")
        await asyncio.to_thread(install_release, kubeconfig)
        async with contextlib.AsyncExitStack() as stack:
            api = await stack.enter_async_context(
                PortForward(kubectl, f"service/{support.API_SERVICE}", support.API_PORT)
            )
            pg = await stack.enter_async_context(
                PortForward(kubectl, f"service/{support.PG_SERVICE}", support.PG_PORT)
            )
            s3 = await stack.enter_async_context(
                PortForward(kubectl, f"service/{support.S3_SERVICE}", support.S3_PORT)
            )
            env = KindEnv(
                settings,
                kubeconfig,
                kubectl,
                api_url=f"http://{api.address}",
                pg_dsn=f"postgresql://{support.PG_USER}@{pg.address}/{support.PG_DATABASE}",
                s3_endpoint=s3.address,
                forwards=[api, pg, s3],
            )
            await eventually(env.api_ready, 180, "the API server and the operator", env.diagnostics, 1)
            yield env
    finally:
        await teardown(settings, kubeconfig, kubectl, created)


async def teardown(settings: support.Settings, kubeconfig: Path, kubectl: Kubectl, created: bool) -> None:
    if settings.keep:
        logger.warning(
            "HELIOS_E2E_KEEP=1: cluster %s is left up; `kind export kubeconfig --name %s`, then "
            "`kubectl -n %s get streamingjobs,pods`; remove it with `kind delete cluster --name %s`",
            settings.cluster,
            settings.cluster,
            support.NAMESPACE,
            settings.cluster,
        )
        return
    if created:
        await run(support.kind_delete(settings, kubeconfig), timeout=300)
        return
    # A reused cluster stays; what this run installed goes, jobs first so the operator can stop them.
    with contextlib.suppress(CommandError):
        await kubectl(
            "delete", "streamingjobs,savepoints", "--all", "--wait=true", "--timeout=120s", timeout=130
        )
    await asyncio.to_thread(uninstall_release, kubeconfig)
    await kubectl("delete", "namespace", support.NAMESPACE, "--wait=true", "--timeout=300s", timeout=320)
