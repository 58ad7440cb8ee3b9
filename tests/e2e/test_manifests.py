"""What of the kind run can be checked without a cluster, checked on every test run.

The test services' manifests are valid Kubernetes objects and sit where the chart's e2e values and
the unchanged ``examples/k8s`` point; the chart installs with those values (Helm's install action in
client dry-run, the same call the session makes) into valid manifests that name the image, Services
and Deployment the session uses; and the jobs the scenarios send are valid. The skip and the other
helpers are tested in test_e2e_support.py.
"""

from __future__ import annotations

import base64
import fnmatch
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import e2e_support as support
import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from e2e_cluster import install_release

from heliosdb_streaming.kubernetes import crds
from heliosdb_streaming.model.config import JobSubmitRequest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "k8s"))
from crd_validation import validate as crd_problems  # checks a resource against a CRD, as tests/k8s do

KUBE_VERSION = "1.30"
Manifest = dict[str, Any]


def find(docs: list[Manifest], kind: str, name: str) -> Manifest:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def container(deployment: Manifest) -> Manifest:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(c)


def env_of(deployment: Manifest) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment).get("env", [])}


def service_port(docs: list[Manifest], name: str) -> int:
    """The port of Service ``name``, after checking that it reaches a container port of its pods."""
    service = find(docs, "Service", name)
    (port,) = service["spec"]["ports"]
    selector = service["spec"]["selector"]
    (deployment,) = [
        d
        for d in docs
        if d["kind"] == "Deployment"
        and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    named = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    assert port["targetPort"] in named, (name, port)
    return int(port["port"])


# ------------------------------------------------------------------------- the test services


@pytest.fixture(scope="module")
def services() -> list[Manifest]:
    return support.service_manifests()


def test_service_manifests_are_valid_kubernetes(services: list[Manifest]) -> None:
    assert {d["kind"] for d in services} == {"Deployment", "Service"}
    for doc in services:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        assert "namespace" not in doc["metadata"]  # applied into the run's namespace
    for service in (d for d in services if d["kind"] == "Service"):
        service_port(services, service["metadata"]["name"])


def test_service_images_are_pinned_and_used_once_preloaded(services: list[Manifest]) -> None:
    images = support.images_of(services)
    assert len(images) == len({d["metadata"]["name"] for d in services if d["kind"] == "Deployment"})
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", image  # the same image on every run
    for deployment in (d for d in services if d["kind"] == "Deployment"):
        assert container(deployment)["imagePullPolicy"] == "IfNotPresent"  # what `kind load` put there


def test_minio_takes_the_credentials_of_the_chart_values(services: list[Manifest]) -> None:
    values = support.chart_values()["s3"]
    env = env_of(find(services, "Deployment", support.S3_SERVICE))
    assert (env["MINIO_ROOT_USER"], env["MINIO_ROOT_PASSWORD"]) == (values["accessKey"], values["secretKey"])
    assert len(env["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses to start with a shorter one
    host, _, port = values["endpoint"].rpartition(":")
    assert host == support.service_host(support.S3_SERVICE) and values["secure"] is False
    assert int(port) == service_port(services, support.S3_SERVICE) == support.S3_PORT


def test_the_unchanged_example_finds_its_services(services: list[Manifest]) -> None:
    """examples/k8s/fraud-pipeline.yaml, applied into the run's namespace as it is, reaches
    PostgreSQL and Kafka by the short Service names it uses, as the user and database it names."""
    job = yaml.safe_load((support.EXAMPLES / "fraud-pipeline.yaml").read_text())
    (sink,) = job["spec"]["sinks"]
    dsn = urlsplit(sink["config"]["connectionString"])
    assert dsn.port == service_port(services, str(dsn.hostname)) == support.PG_PORT
    pg = env_of(find(services, "Deployment", str(dsn.hostname)))
    assert (pg["POSTGRES_USER"], pg["POSTGRES_DB"]) == (dsn.username, dsn.path.lstrip("/"))
    assert pg["POSTGRES_HOST_AUTH_METHOD"] == "trust" and dsn.password is None
    assert (pg["POSTGRES_USER"], pg["POSTGRES_DB"]) == (support.PG_USER, support.PG_DATABASE)

    (source,) = job["spec"]["sources"]
    (bootstrap,) = source["config"]["bootstrapServers"]
    host, _, port = bootstrap.rpartition(":")
    assert int(port) == service_port(services, host) == support.KAFKA_PORT
    kafka_deployment = find(services, "Deployment", host)
    kafka = env_of(kafka_deployment)
    # clients bootstrapped at kafka:9092 are sent to the advertised address: it must be the same
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{bootstrap}"
    # else the kubelet injects KAFKA_PORT=tcp://..., which the image would read as broker config
    assert kafka_deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False

    assert job["spec"]["checkpointStorage"].startswith("s3://")  # MinIO then holds its savepoints
    savepoint = yaml.safe_load((support.EXAMPLES / "savepoint.yaml").read_text())
    assert savepoint["spec"]["jobRef"] == job["metadata"]["name"]
    for doc in (job, savepoint):
        assert "namespace" not in doc["metadata"]  # so `kubectl apply -n` places it


# ------------------------------------------------------------------------------------ the chart


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> list[Manifest]:
    """The release as ``install_release`` would install it, rendered by Helm's install action in
    client dry-run; the kubeconfig points nowhere, and nothing may contact it."""
    kubeconfig = tmp_path_factory.mktemp("helm") / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        'clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]\n'
        "users: [{name: none, user: {}}]\n"
        "contexts: [{name: none, context: {cluster: none, user: none}}]\n"
        "current-context: none\n"
    )
    rendered = install_release(kubeconfig, dry_run="client")
    assert (rendered["name"], rendered["namespace"]) == (support.RELEASE, support.NAMESPACE)
    return [d for d in yaml.safe_load_all(rendered["manifest"]) if d]


def test_the_e2e_values_pass_the_chart_schema() -> None:
    with helm.Chart.load(support.CHART) as chart:
        chart.validate_schema(support.chart_values())


def test_the_release_is_valid_kubernetes(release: list[Manifest]) -> None:
    assert release
    for doc in release:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == support.NAMESPACE, doc["metadata"]["name"]


def test_the_release_runs_the_loaded_image_and_uses_the_test_services(
    release: list[Manifest], services: list[Manifest]
) -> None:
    operator = find(release, "Deployment", support.OPERATOR_DEPLOYMENT)
    api = find(release, "Deployment", support.API_SERVICE)
    for deployment in (operator, api):
        c = container(deployment)
        assert (c["image"], c["imagePullPolicy"]) == (support.IMAGE, "Never")  # only what kind loaded
    env = env_of(operator)
    assert env["HELIOS_IMAGE"] == support.IMAGE  # the workers' image
    host, _, port = env["HELIOS_S3_ENDPOINT"].rpartition(":")
    name, namespace, svc = host.split(".")
    assert (namespace, svc) == (support.NAMESPACE, "svc")
    assert int(port) == service_port(services, name)
    assert (env["HELIOS_S3_SECURE"], env["HELIOS_CHECKPOINT_STORAGE"]) == ("false", support.CHECKPOINTS)
    # the allow-list the python scenarios need (the chart's operator.pythonModules)
    assert env["HELIOS_PYTHON_MODULES"] == "helios_userpkg.*"
    for function in (s["config"]["function"] for s in support.PYTHON_STEPS if "function" in s["config"]):
        module = function.partition(":")[0]
        assert any(fnmatch.fnmatchcase(module, m) for m in support.USER_MODULES), module

    secret = find(release, "Secret", support.FULLNAME)
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded["api-token"] == support.API_TOKEN  # what the test client sends
    (access, secret_key) = (support.S3_ACCESS_KEY, support.S3_SECRET_KEY)
    assert (decoded["s3-access-key"], decoded["s3-secret-key"]) == (access, secret_key)

    api_service = find(release, "Service", support.API_SERVICE)  # the port-forward's target
    assert api_service["spec"]["ports"][0]["port"] == support.API_PORT


# ---------------------------------------------------------------------------- what jobs are sent


def test_the_scenarios_jobs_are_valid() -> None:
    job_crd = crds.streaming_job_crd()
    for count in (support.COUNT, None):
        spec = support.window_job("t", parallelism=2, count=count, upsert=count is None)
        JobSubmitRequest.model_validate({"name": "x", **spec})  # the REST body
        assert crd_problems(job_crd, support.streaming_job("x", spec)) == []
    for image in (support.USER_IMAGE, support.IMAGE):
        for restarts in (0, 5):
            spec = support.python_job("t", image=image, restarts=restarts)
            assert crd_problems(job_crd, support.streaming_job("x", spec)) == []
            body = {k: v for k, v in spec.items() if k != "image"}  # a StreamingJob's, not a REST field
            JobSubmitRequest.model_validate({"name": "x", **body})
    sp = support.savepoint("before-upgrade", "x")
    assert crd_problems(crds.savepoint_crd(), sp) == []
    sink = support.window_job("t", parallelism=1)["sinks"][0]["config"]
    assert urlsplit(sink["connection_string"]).hostname == support.service_host(support.PG_SERVICE)
