"""Manifests of worker pods, the job Secret and the workers' Service; pod exit codes (pure)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from heliosdb_streaming.control.launcher import WorkerSpec
from heliosdb_streaming.kubernetes import podtemplate
from heliosdb_streaming.kubernetes.operator import pods
from heliosdb_streaming.kubernetes.operator.pods import PodSettings, Target
from heliosdb_streaming.model.errors import InvalidJobConfigError
from heliosdb_streaming.testing import pss

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
            "apiVersion": "streaming.heliosdb.io/v1alpha2",
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
    assert volumes["job"]["secret"] == {
        "secretName": "fraud-job",
        "items": [{"key": "job.json", "path": "job.json"}],  # the file only, not the credentials
    }
    assert volumes["work"]["emptyDir"] == {} and volumes["tmp"]["emptyDir"] == {}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {pods.CONFIG_MOUNT: "job", pods.WORK_DIR: "work", "/tmp": "tmp"}


def test_worker_pods_are_restricted_by_default() -> None:
    """runAsNonRoot, a non-zero user, no privilege escalation, no capabilities, RuntimeDefault
    seccomp, a read-only root filesystem (emptyDirs for the writable paths) and no API token."""
    pod = pods.worker_pod(TARGET, SPEC, PodSettings(image="helios:1"))
    spec = pod["spec"]
    assert pss.violations(spec) == []
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
    sc = spec["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # the checker has teeth: each of these breaks the profile
    for broken in (
        {"securityContext": {"runAsUser": 0}},
        {"hostNetwork": True},
        {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
    ):
        assert pss.violations({**spec, **broken}), broken
    root = {
        **spec,
        "containers": [{**spec["containers"][0], "securityContext": {**sc, "runAsNonRoot": False}}],
    }
    assert pss.violations(root) == [
        "containers[worker]: runAsNonRoot must be true (in the container or the pod)"
    ]


POD_TEMPLATE = {
    "metadata": {"labels": {"team": "fraud", pods.LABEL_JOB: "not-mine"}, "annotations": {"a": "1"}},
    "spec": {
        "securityContext": {"runAsUser": 20002, "fsGroup": 20002},
        "imagePullSecrets": [{"name": "registry"}],
        "nodeSelector": {"pool": "streaming"},
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "streaming", "effect": "NoSchedule"}
        ],
        "affinity": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
        },
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
            }
        ],
        "priorityClassName": "streaming-high",
        "volumes": [
            {"name": "certs", "secret": {"secretName": "kafka-certs"}},
            {"name": "work", "emptyDir": {}},
        ],
        "containers": [
            {
                "name": "worker",
                "env": [
                    {
                        "name": "KAFKA_PASSWORD",
                        "valueFrom": {"secretKeyRef": {"name": "kafka", "key": "password"}},
                    },
                    {"name": "HELIOS_WORKER_TOKEN", "value": "forged"},
                ],
                "envFrom": [{"secretRef": {"name": "db-creds"}}],
                "volumeMounts": [{"name": "certs", "mountPath": "/etc/kafka", "readOnly": True}],
                "resources": {"requests": {"cpu": "250m"}},
            }
        ],
    },
}


def test_pod_template_is_merged_under_the_operators_settings() -> None:
    """As Flink's podTemplate: the template is the base; the operator's labels, env, mounts and
    volumes win on a clash of names; spec.resources wins over the template's."""
    template, _ = podtemplate.parse(POD_TEMPLATE, None)
    target = Target("ns", "fraud", "u", pod_template=template)
    pod = pods.worker_pod(target, SPEC, PodSettings(image="i", env_secret="helios-s3"))
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"]["team"] == "fraud" and meta["labels"][pods.LABEL_JOB] == "fraud"
    assert meta["annotations"]["a"] == "1" and meta["annotations"][pods.ANNOTATION_JOB_ID] == SPEC.job_id
    for key in ("imagePullSecrets", "nodeSelector", "tolerations", "affinity", "topologySpreadConstraints"):
        assert spec[key] == POD_TEMPLATE["spec"][key], key  # type: ignore[index]
    assert spec["priorityClassName"] == "streaming-high"
    assert spec["securityContext"]["runAsUser"] == 20002 and spec["securityContext"]["runAsNonRoot"] is True
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["certs"]["secret"] == {"secretName": "kafka-certs"} and volumes["work"] == {
        "name": "work",
        "emptyDir": {},
    }
    assert [v["name"] for v in spec["volumes"]].count("work") == 1
    container = spec["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["HELIOS_WORKER_TOKEN"]["value"] == "tok"  # the operator's
    assert env["KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kafka", "key": "password"}
    assert container["envFrom"] == [{"secretRef": {"name": "helios-s3"}}, {"secretRef": {"name": "db-creds"}}]
    assert {"name": "certs", "mountPath": "/etc/kafka", "readOnly": True} in container["volumeMounts"]
    assert container["resources"] == {"requests": {"cpu": "250m"}}
    assert pss.violations(spec) == []
    with_resources = Target(
        "ns", "fraud", "u", resources={"limits": {"memory": "2Gi"}}, pod_template=template
    )
    container = pods.worker_pod(with_resources, SPEC, PodSettings(image="i"))["spec"]["containers"][0]
    assert container["resources"] == {"limits": {"memory": "2Gi"}}


def test_pod_template_and_resources_are_validated() -> None:
    with pytest.raises(InvalidJobConfigError) as e:
        podtemplate.parse(
            {"spec": {"hostNetwork": True, "containers": [{"name": "sidecar"}]}},
            {"limits": {"memory": "lots"}, "requests": []},
        )
    paths = {err.path for err in e.value.errors}
    assert "spec.podTemplate.spec.hostNetwork" in paths
    assert "spec.podTemplate.spec.containers.0.name" in paths
    assert any(p.startswith("spec.resources.limits.memory") for p in paths)
    assert "spec.resources.requests" in paths


def test_credentials_only_through_secrets() -> None:
    """By default the operator's S3 credentials go into the job's Secret and the pod references them:
    no secret value is in the pod spec, the plain settings are."""
    settings = PodSettings(image="i", env=(("AWS_REGION", "eu"), ("AWS_SECRET_ACCESS_KEY", "s3cr3t")))
    pod = pods.worker_pod(TARGET, SPEC, settings)
    assert "s3cr3t" not in json.dumps(pod)
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["AWS_REGION"]["value"] == "eu"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "fraud-job",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    secret = pods.job_secret(TARGET, "{}", pods.credentials(settings))
    assert base64.b64decode(secret["data"]["AWS_SECRET_ACCESS_KEY"]) == b"s3cr3t"
    assert "AWS_REGION" not in secret["data"]
    assert pods.credentials(PodSettings(image="i", env=settings.env, env_secret="helios-s3")) == {}


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
    # an image pull error is retried by the kubelet: pending, not failed; a bad image name never starts
    assert pods.pod_exit_code(pod("Pending", {"waiting": {"reason": "ImagePullBackOff"}})) is None
    assert pods.pod_exit_code(pod("Pending", {"waiting": {"reason": "InvalidImageName"}})) == 1


def test_pending_reason_and_disruption() -> None:
    pulling = {
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {"name": "worker", "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}
            ],
        }
    }
    assert pods.pending_reason(pulling) == ("ErrImagePull", "not found")
    unschedulable = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}
            ],
        }
    }
    assert pods.pending_reason(unschedulable) == ("Unschedulable", "0/3 nodes")
    assert pods.pending_reason({"status": {"phase": "Running"}}) is None
    assert pods.pending_reason({"status": {"phase": "Pending"}}) is None  # just created: not stuck
    evicted = {
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"},
            ],
        }
    }
    assert pods.disruption(evicted) == "EvictionByEvictionAPI"
    assert pods.disruption(unschedulable) is None
    assert pods.disruption({"status": {"phase": "Failed", "reason": "Evicted"}}) == "Evicted"
    assert pods.disruption({"status": {"phase": "Failed", "reason": "Error"}}) is None


def test_workers_are_told_the_operators_python_modules() -> None:
    """Workers check what python steps import against the operator's --python-modules, also with a Secret."""
    settings = PodSettings(image="i", env_secret="helios-s3", python_modules=("acme", "fraud.*"))
    container = pods.worker_pod(TARGET, SPEC, settings)["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HELIOS_PYTHON_MODULES"] == "acme,fraud.*"
