"""The pure parts of the kind end-to-end run, kept apart so they are checked where no cluster runs.

Settings from the ``HELIOS_E2E_*`` environment, the tool check behind the skip, the commands the
session runs, the chart values, the user image's Dockerfile (taken from the docs) and build context,
the jobs the scenarios submit with the python job's reference, and the parsing of what ``kubectl``
prints. Nothing here starts a process except ``docker_engine_problem`` (``docker info``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import dockerfile
import yaml

from heliosdb_streaming.kubernetes import crds
from heliosdb_streaming.runtime.connectors.datagen import DatagenSourceReader
from heliosdb_streaming.testing.expected import tumbling_window_per_card

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "heliosdb-streaming"
MANIFESTS = Path(__file__).resolve().parent / "manifests"
EXAMPLES = ROOT / "examples" / "k8s"
PYTHON_FUNCTIONS_DOC = ROOT / "docs" / "python-functions.md"
USERPKG = ROOT / "tests" / "userpkg"  # helios_userpkg, pip-installable (its pyproject.toml)

NAMESPACE = "helios-e2e"  # the release, the test services and the jobs all live here
RELEASE = "helios"
FULLNAME = f"{RELEASE}-heliosdb-streaming"
API_SERVICE, API_PORT = f"{FULLNAME}-api", 8081
OPERATOR_DEPLOYMENT = f"{FULLNAME}-operator"
IMAGE = "heliosdb-streaming:e2e"
USER_IMAGE = "heliosdb-streaming-userpkg:e2e"  # IMAGE plus helios_userpkg, from the docs' Dockerfile
USER_MODULES = ("helios_userpkg.*",)  # the chart's operator.pythonModules in the kind run
API_TOKEN = "helios-e2e-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}

# The test services of manifests/ (a test checks that these match them).
S3_SERVICE, S3_PORT = "minio", 9000
S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION = "helios-e2e", "helios-e2e-secret", "us-east-1"
CHECKPOINTS = "s3://helios-checkpoints/e2e"
PG_SERVICE, PG_PORT = "postgres", 5432
PG_USER, PG_DATABASE = "helios", "fraud"  # what examples/k8s/fraud-pipeline.yaml connects as
KAFKA_SERVICE, KAFKA_PORT = "kafka", 9092

# The bounded datagen -> tumbling window job of the scenarios (as in tests/k8s, slower: real pods
# take seconds to start, and the job must still be running when a test cancels or kills it).
COUNT, PARTITIONS, SEED, KEYS = 20_000, 6, 11, 60
RATE = 1000.0


def service_host(name: str) -> str:
    return f"{name}.{NAMESPACE}.svc"


PG_DSN_IN_CLUSTER = f"postgresql://{PG_USER}@{service_host(PG_SERVICE)}:{PG_PORT}/{PG_DATABASE}"

# ------------------------------------------------------------------------------------- settings

DEFAULT_CLUSTER = "helios-e2e"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
_CLUSTER_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name}={env[name]!r}: use 1 or 0")


@dataclass(frozen=True, slots=True)
class Settings:
    """The knobs of ``make e2e-kind``; a mistyped value is an error rather than silently ignored."""

    cluster: str = DEFAULT_CLUSTER  # HELIOS_E2E_CLUSTER: the kind cluster's name
    reuse: bool = False  # HELIOS_E2E_REUSE=1: use an existing cluster of that name (else: a new one)
    keep: bool = False  # HELIOS_E2E_KEEP=1: leave the cluster (or the release) up afterwards
    require: bool = False  # HELIOS_E2E_REQUIRE=1: missing tools fail the run instead of skipping it

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        cluster = env.get("HELIOS_E2E_CLUSTER", "").strip() or DEFAULT_CLUSTER
        if not _CLUSTER_NAME.match(cluster):
            raise ValueError(f"HELIOS_E2E_CLUSTER={cluster!r} is not a valid kind cluster name")
        return cls(
            cluster=cluster,
            reuse=_flag(env, "HELIOS_E2E_REUSE"),
            keep=_flag(env, "HELIOS_E2E_KEEP"),
            require=_flag(env, "HELIOS_E2E_REQUIRE"),
        )


# ----------------------------------------------------------------------------------- the skip


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    how_to_get: str


TOOLS = (
    Tool("docker", "https://docs.docker.com/engine/install/"),
    Tool(
        "kind",
        "`go install sigs.k8s.io/kind@latest` or a release binary, "
        "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    ),
    Tool("kubectl", "https://kubernetes.io/docs/tasks/tools/"),
)


def missing_tools(path: str | None = None) -> str | None:
    """Why the kind run cannot start for want of a command on ``path`` (default: ``$PATH``), or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool.name, path=path) is None]
    if not missing:
        return None
    return "not on PATH: " + "; ".join(f"{tool.name} (get it: {tool.how_to_get})" for tool in missing)


def docker_engine_problem(path: str | None = None, timeout: float = 20) -> str | None:
    """Why ``docker info`` says there is no engine to build and run kind's node, or None.

    The CLI alone is not enough (it is often installed without an engine, as on the development
    machine); ``docker info`` is the cheapest question that only an engine answers.
    """
    docker = shutil.which("docker", path=path)
    if docker is None:
        return missing_tools(path)
    try:
        result = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"no Docker engine: `docker info` did not answer within {timeout:g} s"
    if result.returncode != 0 or not result.stdout.strip():
        lines = [ln.strip() for ln in (result.stderr + result.stdout).splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit code {result.returncode}"
        return f"no Docker engine: `docker info` failed ({detail}); start Docker or set DOCKER_HOST"
    return None


def skip_reason(path: str | None = None) -> str | None:
    """The first thing that keeps the kind scenarios from running here, or None when all is there."""
    return missing_tools(path) or docker_engine_problem(path)


# ------------------------------------------------------------------------------------- commands


def kind_create(settings: Settings, kubeconfig: Path) -> list[str]:
    """``--kubeconfig``: the cluster's credentials go to a private file, never ``~/.kube/config``."""
    return [
        "kind", "create", "cluster", "--name", settings.cluster, "--kubeconfig", str(kubeconfig),
        "--wait", "180s",
    ]  # fmt: skip


def kind_delete(settings: Settings, kubeconfig: Path) -> list[str]:
    return ["kind", "delete", "cluster", "--name", settings.cluster, "--kubeconfig", str(kubeconfig)]


def kind_kubeconfig(settings: Settings) -> list[str]:
    return ["kind", "get", "kubeconfig", "--name", settings.cluster]


def kind_load(settings: Settings, image: str) -> list[str]:
    return ["kind", "load", "docker-image", image, "--name", settings.cluster]


def docker_build(image: str = IMAGE, context: Path = ROOT) -> list[str]:
    return ["docker", "build", "--tag", image, str(context)]


# ---------------------------------------------------------------------------------- chart values


def chart_values() -> dict[str, Any]:
    """The chart's values for the kind run: the image loaded into the node (never pulled), the
    in-cluster MinIO as checkpoint storage, a known API token for the test client, job managers. No
    conversion webhook: kind has no cert-manager, and the scenarios write v1alpha2 only."""
    repository, _, tag = IMAGE.rpartition(":")
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "s3": {
            "endpoint": f"{service_host(S3_SERVICE)}:{S3_PORT}",
            "secure": False,
            "region": S3_REGION,
            "accessKey": S3_ACCESS_KEY,
            "secretKey": S3_SECRET_KEY,
        },
        "checkpointStorage": CHECKPOINTS,
        "auth": {"apiToken": API_TOKEN},
        "operator": {"pythonModules": list(USER_MODULES), "conversionWebhook": {"enabled": False}},
        # every job in a job manager pod of its own, as the chart's jobManagers (test_kind_jobmanagers)
        "jobManagers": {"enabled": True},
    }


def s3_options(endpoint: str) -> dict[str, str]:
    """``storage_from_uri`` options for MinIO reached at ``endpoint`` (a port-forward)."""
    return {
        "endpoint": endpoint,
        "access_key": S3_ACCESS_KEY,
        "secret_key": S3_SECRET_KEY,
        "region": S3_REGION,
    }


# ------------------------------------------------------------------------ the user code image

_FENCE = re.compile(r"^[ \t]*```(?P<lang>[\w-]*)[ \t]*$")


def fenced_blocks(markdown: str, language: str) -> list[str]:
    """The bodies of the ``language`` code blocks of ``markdown``, dedented (a block inside a list
    item is indented with it)."""
    blocks: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        start = _FENCE.match(lines[i])
        if start is None or not start.group("lang"):
            i += 1
            continue
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        if start.group("lang") == language:
            blocks.append(textwrap.dedent("\n".join(body)) + "\n")
    return blocks


def docs_dockerfile(markdown: str | None = None) -> str:
    """The one Dockerfile of docs/python-functions.md (its Kubernetes section): the image a user
    builds for their functions. The kind run builds exactly this text, so the docs cannot rot."""
    text = PYTHON_FUNCTIONS_DOC.read_text() if markdown is None else markdown
    blocks = fenced_blocks(text, "dockerfile")
    if len(blocks) != 1:
        raise ValueError(f"expected one ```dockerfile block in the docs, found {len(blocks)}")
    return blocks[0]


def user_dockerfile(text: str, *, base: str, package_dir: str) -> str:
    """``text`` with its one ``FROM`` on ``base`` (the locally built image) and its one ``COPY``
    taking ``package_dir`` of the build context (the user package); every other line as written.
    Parsed by BuildKit's own parser, so a continuation line or a flag cannot fool the rewrite."""
    commands = list(dockerfile.parse_string(text))
    froms = [c for c in commands if c.cmd == "FROM"]
    copies = [c for c in commands if c.cmd == "COPY"]
    if len(froms) != 1 or len(copies) != 1:
        raise ValueError(f"expected one FROM and one COPY, found {len(froms)} and {len(copies)}")
    (copy,) = copies
    if copy.flags or len(copy.value) != 2:
        raise ValueError(f"expected `COPY <package>/ <dest>`, found {copy.original!r}")
    lines = text.splitlines()
    replace = {
        froms[0].start_line: [f"FROM {base}"],
        copy.start_line: [f"COPY {package_dir.rstrip('/')}/ {copy.value[1]}"],
    }
    out: list[str] = []
    for number, line in enumerate(lines, start=1):
        if number in replace:
            out.extend(replace[number])
        elif not any(c.start_line < number <= c.end_line for c in (froms[0], copy)):
            out.append(line)
    return "\n".join(out) + "\n"


_NOT_SHIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


def user_image_context(directory: Path, *, base: str = IMAGE, markdown: str | None = None) -> Path:
    """A build context for the user image in ``directory``: the docs' Dockerfile, rewritten onto
    ``base``, and a copy of tests/userpkg (its pyproject.toml and package, no build leftovers)."""
    package_dir = "userpkg"
    shutil.copytree(USERPKG, directory / package_dir, ignore=_NOT_SHIPPED)
    text = user_dockerfile(docs_dockerfile(markdown), base=base, package_dir=package_dir)
    (directory / "Dockerfile").write_text(text)
    return directory


# ------------------------------------------------------------------------------------ manifests


def load_yaml_documents(paths: Iterable[Path]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in paths:
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def service_manifests() -> list[dict[str, Any]]:
    """The in-cluster test services (PostgreSQL, MinIO, Kafka) of manifests/."""
    return load_yaml_documents(sorted(MANIFESTS.glob("*.yaml")))


def images_of(docs: Iterable[Mapping[str, Any]]) -> list[str]:
    """The container images of the workloads in ``docs``, each once, in order."""
    images: list[str] = []
    for doc in docs:
        pod = (doc.get("spec") or {}).get("template", {}).get("spec", {})
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            if container["image"] not in images:
                images.append(container["image"])
    return images


def streaming_job(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A v1alpha2 StreamingJob; ``spec``'s job fields as the REST body has them, renamed to camelCase."""
    return {
        "apiVersion": crds.API_VERSION,
        "kind": crds.STREAMING_JOB_KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": crds.to_camel(dict(spec)),
    }


def savepoint(name: str, job: str, description: str = "") -> dict[str, Any]:
    return {
        "apiVersion": crds.API_VERSION,
        "kind": crds.SAVEPOINT_KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"jobRef": job, "description": description},
    }


def window_job(
    table: str, *, parallelism: int, rate: float = RATE, count: int | None = COUNT, upsert: bool = False
) -> dict[str, Any]:
    """Datagen -> tumbling 1 s windows per card -> PostgreSQL in the cluster: a result the test can
    compute on its own (``expected.datagen_tumbling_windows``). ``count=None`` never ends.
    ``upsert`` keys the table by window, for a restore from a savepoint older than the output."""
    source: dict[str, Any] = {"partitions": PARTITIONS, "seed": SEED, "keys": KEYS, "rate_per_sec": rate}
    if count is not None:
        source["count"] = count
    sink: dict[str, Any] = {"connection_string": PG_DSN_IN_CLUSTER, "table": table}
    if upsert:
        sink["key"] = ["key", "window_start"]
    return {
        "config": {
            "parallelism": parallelism,
            "checkpoint_interval_ms": 500,
            "restart_strategy": {"type": "fixed_delay", "attempts": 5, "delay_ms": 500},
        },
        "sources": [{"type": "datagen", "config": source}],
        "transformations": [tumbling_window_per_card()],
        "sinks": [{"type": "database", "config": sink}],
    }


# --------------------------------------------------------------------------- the python pipeline

PY_COUNT = 6_000  # datagen records of the python job (PARTITIONS splits, SEED, KEYS as above)
PY_COLUMNS = ("kind", "card_id", "total", "count", "merchants", "at")
PYTHON_STEPS: list[dict[str, Any]] = [
    {"type": "python", "config": {"function": "helios_userpkg.records:add_fee", "kind": "map"}},
    {"type": "python", "config": {"function": "helios_userpkg.records:is_large", "kind": "filter"}},
    {"type": "key_by", "config": {"key": "card_id"}},
    {"type": "process", "config": {"function": "helios_userpkg.fraud:LongSessions"}},
]


# What a job's first run fails with on an image without helios_userpkg (the worker's import error).
MISSING_PACKAGE = (
    "cannot import helios_userpkg.records:add_fee: no module named 'helios_userpkg' in this environment"
)


def python_job(table: str, *, image: str, parallelism: int = 2, restarts: int = 5) -> dict[str, Any]:
    """Datagen -> helios_userpkg's map, filter and keyed process function (map state, event-time
    timers) -> PostgreSQL, on worker pods of ``image``. The map may rewrite the key, so the records
    are regrouped by card across the pods through internal topics on the in-cluster Kafka.
    User errors fail the run; ``restarts=0`` leaves a failed first run failed."""
    source = {"partitions": PARTITIONS, "seed": SEED, "keys": KEYS, "rate_per_sec": RATE, "count": PY_COUNT}
    strategy: dict[str, Any] = (
        {"type": "fixed_delay", "attempts": restarts, "delay_ms": 500} if restarts else {"type": "none"}
    )
    return {
        "image": image,
        "config": {
            "parallelism": parallelism,
            "checkpoint_interval_ms": 500,
            "restart_strategy": strategy,
            "on_error": "fail",
            "repartition": {"bootstrap_servers": [f"{KAFKA_SERVICE}:{KAFKA_PORT}"]},
        },
        "sources": [{"type": "datagen", "config": source}],
        "transformations": [dict(step) for step in PYTHON_STEPS],
        "sinks": [{"type": "database", "config": {"connection_string": PG_DSN_IN_CLUSTER, "table": table}}],
    }


def datagen_splits(count: int = PY_COUNT) -> list[list[dict[str, Any]]]:
    """The python job's input, per split in order: the datagen records (a pure function of the seed)."""
    reader = DatagenSourceReader(
        schema="transactions", rate_per_sec=0, count=count, partitions=PARTITIONS, seed=SEED, keys=KEYS
    )
    out = []
    for p in range(PARTITIONS):
        n = reader.split_count(p)
        assert n is not None
        out.append([dict(r) for r in reader.generate(p, 0, n)])
    return out


def python_reference(splits: Sequence[Sequence[Mapping[str, Any]]]) -> list[tuple[Any, ...]]:
    """The python job's table (``PY_COLUMNS``, sorted), computed in this process: the same map and
    filter, then ``helios_userpkg.fraud.reference`` per split (datagen puts each card in one split,
    so a card's events keep their order through the regrouping). Needs tests/userpkg on sys.path."""
    from helios_userpkg.fraud import LongSessions, reference
    from helios_userpkg.records import add_fee, is_large

    rows: list[tuple[Any, ...]] = []
    for events in splits:
        mapped = [m for m in (add_fee(dict(e)) for e in events) if m is not None and is_large(m)]
        rows += [tuple(r[c] for c in PY_COLUMNS) for r in reference(mapped, LongSessions)]
    return sorted(rows)


# ------------------------------------------------------------------------------- kubectl output

_FORWARDING = re.compile(r"^Forwarding from 127\.0\.0\.1:(\d+) -> \d+\s*$")


def forwarded_port(line: str) -> int | None:
    """The local port of ``kubectl port-forward``'s "Forwarding from 127.0.0.1:PORT -> N" line."""
    match = _FORWARDING.match(line.strip())
    return int(match.group(1)) if match else None


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1)} | {
    s: Decimal(10) ** (3 * (i + 1)) for i, s in enumerate("kMGTPE")
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]?)$")


def quantity(text: str | int | float) -> Decimal:
    """A Kubernetes resource quantity (``500m``, ``2``, ``1.5Gi``, ``1e3`` excepted) as a number."""
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ValueError(f"not a resource quantity: {text!r}")
    number, suffix = Decimal(match.group(1)), match.group(2)
    return number * (_BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix])


def cpu_millis(text: str | int | float) -> int:
    return int(quantity(text) * 1000)


def pod_requests(pod_spec: Mapping[str, Any]) -> tuple[int, int]:
    """(CPU millis, memory bytes) that the scheduler reserves for a pod: the sum over its containers
    (init containers run one at a time before them, so the largest of those if it is larger)."""

    def of(containers: list[dict[str, Any]]) -> list[tuple[int, int]]:
        out = []
        for c in containers:
            requests = (c.get("resources") or {}).get("requests") or {}
            out.append((cpu_millis(requests.get("cpu", 0)), int(quantity(requests.get("memory", 0)))))
        return out

    main = of(pod_spec.get("containers", []))
    init = of(pod_spec.get("initContainers", []))
    cpu, memory = sum(c for c, _ in main), sum(m for _, m in main)
    return max([cpu, *(c for c, _ in init)]), max([memory, *(m for _, m in init)])


def free_capacity(nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """(CPU millis, memory bytes) still schedulable: allocatable over the ready nodes minus the
    requests of the pods that have not ended (ended pods hold no reservation)."""
    cpu = memory = 0
    for node in nodes:
        conditions = {c["type"]: c["status"] for c in (node.get("status") or {}).get("conditions", [])}
        if conditions.get("Ready") != "True":
            continue
        allocatable = node["status"]["allocatable"]
        cpu += cpu_millis(allocatable["cpu"])
        memory += int(quantity(allocatable["memory"]))
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        pod_cpu, pod_memory = pod_requests(pod["spec"])
        cpu -= pod_cpu
        memory -= pod_memory
    return cpu, memory


def job_requests(job: Mapping[str, Any]) -> tuple[int, int]:
    """(CPU millis, memory bytes) a StreamingJob's worker pods request: parallelism x resources."""
    spec = job["spec"]
    parallelism = int((spec.get("config") or {}).get("parallelism", 1))
    cpu, memory = pod_requests({"containers": [{"resources": spec.get("resources") or {}}]})
    return parallelism * cpu, parallelism * memory
