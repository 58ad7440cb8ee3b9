"""Manifests of worker pods, the job Secret and the workers' Service; pod exit codes (pure)."""

from __future__ import annotations

import base64
from pathlib import Path

from heliosdb_streaming.control.launcher import WorkerSpec
from heliosdb_streaming.kubernetes.operator import pods
from heliosdb_streaming.kubernetes.operator.pods import PodSettings, Target

TARGET = Target("team-a", "fraud", "uid-1", image=None, resources={"limits": {"memory": "1Gi"}})
SPEC = WorkerSpec(
    "job-uid-1",
    Path("/home/jobs/job-uid-1"),
    1,
    4,
    "10.0.0.1:7070",
    "tok",
    "s3://b/p",
    restore_from="job/ckpt-9",
)


def test_worker_pod() -> None:
    settings = PodSettings(
        image="helios:1", control_address="op.helios.svc:7070", env=(("AWS_REGION", "eu"),)
    )
    pod = pods.worker_pod(TARGET, SPEC, settings)
    meta, spec = pod["metadata"], pod["spec"]
    assert (meta["name"], meta["namespace"]) == ("fraud-worker-1", "team-a")
    assert meta["labels"][pods.LABEL_JOB] == "fraud" and meta["labels"][pods.LABEL_ATTEMPT] == "4"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "streaming.heliosdb.io/v1alpha1",
            "kind": "StreamingJob",
            "name": "fraud",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert spec["restartPolicy"] == "Never" and spec["hostname"] == "fraud-worker-1"
    assert spec["subdomain"] == "fraud-workers"
    container = spec["containers"][0]
    assert container["image"] == "helios:1" and container["resources"] == {"limits": {"memory": "1Gi"}}
    command = container["command"]
    assert command[:3] == ["python", "-m", "heliosdb_streaming.runtime.worker"]
    args = dict(zip(command[3::2], command[4::2], strict=True))
    assert args == {
        "--job-dir": pods.WORK_DIR,
        "--config": "/etc/helios/job/job.json",
        "--job-id": "job-uid-1",
        "--index": "1",
        "--attempt": "4",
        "--control": "op.helios.svc:7070",
        "--checkpoints": "s3://b/p",
        "--restore": "job/ckpt-9",
    }
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HELIOS_WORKER_TOKEN"] == "tok" and env["AWS_REGION"] == "eu"
    assert "HELIOS_PYTHON_MODULES" not in env
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["job"]["secret"]["secretName"] == "fraud-job" and volumes["work"]["emptyDir"] == {}


def test_secret_instead_of_inline_credentials_and_own_image() -> None:
    settings = PodSettings(image="helios:1", env=(("AWS_SECRET_ACCESS_KEY", "s"),), env_secret="helios-s3")
    target = Target("ns", "j", "u", image="custom:2")
    container = pods.worker_pod(target, SPEC, settings)["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "helios-s3"}}]
    assert "AWS_SECRET_ACCESS_KEY" not in {e["name"] for e in container["env"]}
    assert container["image"] == "custom:2"
    assert "10.0.0.1:7070" in container["command"]  # no operator address: the control plane's own


def test_long_names_keep_labels_and_hostnames_valid() -> None:
    name = "x" * 70
    assert len(pods.label_value(name)) == 63 and pods.label_value("short") == "short"
    pod = pods.worker_pod(Target("ns", name, "u"), SPEC, PodSettings(image="i"))
    assert "hostname" not in pod["spec"]
    assert all(len(v) <= 63 for v in pod["metadata"]["labels"].values())


def test_job_secret_and_headless_service() -> None:
    secret = pods.job_secret(TARGET, '{"name":"fraud"}')
    assert (secret["kind"], secret["metadata"]["name"]) == ("Secret", "fraud-job")
    assert base64.b64decode(secret["data"]["job.json"]) == b'{"name":"fraud"}'
    assert secret["metadata"]["ownerReferences"][0]["uid"] == TARGET.uid
    svc = pods.workers_service(TARGET)
    assert svc["metadata"]["name"] == "fraud-workers" and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {pods.LABEL_APP: pods.APP, pods.LABEL_JOB: "fraud"}


def test_pod_exit_code() -> None:
    def pod(phase: str | None, state: dict[str, object] | None = None) -> dict[str, object]:
        return {"status": {"phase": phase, "containerStatuses": [{"name": "worker", "state": state or {}}]}}

    assert pods.pod_exit_code(pod("Running", {"running": {}})) is None
    assert pods.pod_exit_code(pod("Pending")) is None
    assert pods.pod_exit_code(pod("Succeeded")) == 0
    assert pods.pod_exit_code(pod("Failed", {"terminated": {"exitCode": 137}})) == 137
    assert pods.pod_exit_code(pod("Failed")) == 1
    assert pods.pod_exit_code(pod("Pending", {"waiting": {"reason": "ImagePullBackOff"}})) == 1


def test_workers_are_told_the_operators_python_modules() -> None:
    """Workers check what python steps import against the operator's --python-modules, also with a Secret."""
    settings = PodSettings(image="i", env_secret="helios-s3", python_modules=("acme", "fraud.*"))
    container = pods.worker_pod(TARGET, SPEC, settings)["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HELIOS_PYTHON_MODULES"] == "acme,fraud.*"
