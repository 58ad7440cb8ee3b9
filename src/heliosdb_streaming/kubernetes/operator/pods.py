"""Manifests of what a StreamingJob owns: worker pods, the job's Secret, the workers' Service. Pure.

Every object carries an owner reference to its StreamingJob, so deleting the job deletes them (the
cluster's garbage collector does it). Worker pods have stable names (``<job>-worker-<index>``) and a
hostname under the headless Service, ``restartPolicy: Never`` (the control plane applies the job's
restart strategy, not the kubelet), the job file from a Secret (a job holds connection strings with
passwords, which a ConfigMap would show to anyone who may read ConfigMaps) and an emptyDir for state.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from heliosdb_streaming.control.launcher import WorkerSpec
from heliosdb_streaming.kubernetes import crds

APP = "heliosdb-streaming"
LABEL_APP = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_JOB = f"{crds.GROUP}/job"
LABEL_INDEX = f"{crds.GROUP}/index"
LABEL_ATTEMPT = f"{crds.GROUP}/attempt"
ANNOTATION_JOB_ID = f"{crds.GROUP}/job-id"
CONFIG_MOUNT = "/etc/helios/job"
CONFIG_FILE = "job.json"
WORK_DIR = "/var/lib/helios/job"
# the checkpoint storage's settings a worker needs; passed through from the operator's environment
S3_ENV = (
    "HELIOS_S3_ENDPOINT",
    "HELIOS_S3_SECURE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_SESSION_TOKEN",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
)


@dataclass(frozen=True, slots=True)
class Target:
    """The StreamingJob a control-plane job belongs to, and the pod settings its spec asks for."""

    namespace: str
    name: str
    uid: str
    image: str | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PodSettings:
    """Operator-wide pod settings: default image, where workers reach the control plane, credentials.

    ``env`` is copied into every worker (the S3 settings); with ``env_secret`` the workers take their
    credentials from that Secret instead (``envFrom``) and no secret value is written into a pod spec.
    """

    image: str
    control_address: str | None = None  # e.g. helios-operator.helios.svc:7070; None: the plane's own
    env: tuple[tuple[str, str], ...] = ()
    env_secret: str | None = None
    service_account: str | None = None
    python_modules: tuple[str, ...] = ()  # the allow-list workers check what they import against


def label_value(text: str) -> str:
    """A label value (at most 63 characters): the text itself, or a prefix and a hash when too long."""
    if len(text) <= 63:
        return text
    return f"{text[:52]}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def job_labels(name: str) -> dict[str, str]:
    return {LABEL_APP: APP, LABEL_JOB: label_value(name)}


def pod_name(job: str, index: int) -> str:
    return f"{job}-worker-{index}"


def job_secret_name(job: str) -> str:
    return f"{job}-job"


def service_name(job: str) -> str:
    return f"{job}-workers"


def owner_reference(target: Target) -> dict[str, Any]:
    return {
        "apiVersion": crds.API_VERSION,
        "kind": crds.STREAMING_JOB_KIND,
        "name": target.name,
        "uid": target.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(target: Target, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": target.namespace,
        "labels": dict(labels),
        "ownerReferences": [owner_reference(target)],
    }


def worker_pod(target: Target, spec: WorkerSpec, settings: PodSettings) -> dict[str, Any]:
    """The pod of worker ``spec.index`` of run ``spec.attempt``."""
    name = pod_name(target.name, spec.index)
    labels = {
        **job_labels(target.name),
        LABEL_COMPONENT: "worker",
        LABEL_INDEX: str(spec.index),
        LABEL_ATTEMPT: str(spec.attempt),
    }
    metadata = _metadata(target, name, labels)
    metadata["annotations"] = {ANNOTATION_JOB_ID: spec.job_id}
    env = [
        {"name": "HELIOS_WORKER_TOKEN", "value": spec.token},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HELIOS_LOG_FORMAT", "value": "json"},  # the pod log is the job log (the API reads it)
    ]
    if settings.python_modules:
        env.append({"name": "HELIOS_PYTHON_MODULES", "value": ",".join(settings.python_modules)})
    if not settings.env_secret:
        env += [{"name": k, "value": v} for k, v in settings.env]
    container: dict[str, Any] = {
        "name": "worker",
        "image": target.image or settings.image,
        "command": spec.command(
            "python",
            job_dir=WORK_DIR,
            control_address=settings.control_address or spec.control_address,
            config_file=f"{CONFIG_MOUNT}/{CONFIG_FILE}",
        ),
        "env": env,
        "volumeMounts": [
            {"name": "job", "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": "work", "mountPath": WORK_DIR},
        ],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if settings.env_secret:
        container["envFrom"] = [{"secretRef": {"name": settings.env_secret}}]
    if target.resources:
        container["resources"] = dict(target.resources)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": [
            {"name": "job", "secret": {"secretName": job_secret_name(target.name)}},
            {"name": "work", "emptyDir": {}},
        ],
    }
    if len(name) <= 63:  # a hostname is one DNS label
        pod_spec["hostname"] = name
        pod_spec["subdomain"] = service_name(target.name)
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def job_secret(target: Target, job_json: str) -> dict[str, Any]:
    """The job file the workers mount; ``data`` (base64) rather than ``stringData``, which a patch
    would merge into ``data`` on the server, so what is written is what is read back."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(target, job_secret_name(target.name), job_labels(target.name)),
        "data": {CONFIG_FILE: base64.b64encode(job_json.encode()).decode()},
    }


def workers_service(target: Target) -> dict[str, Any]:
    """Headless: gives each worker pod a stable DNS name; the selector picks the job's pods."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(target, service_name(target.name), job_labels(target.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": job_labels(target.name),
        },
    }


def pod_exit_code(pod: Mapping[str, Any]) -> int | None:
    """The worker's exit code once its pod has ended (None while it runs).

    Succeeded is 0; Failed is the container's ``terminated.exitCode`` (1 when unknown). A container
    that cannot start (bad image, missing config) counts as failed with 1, so the restart strategy
    decides instead of the job waiting forever.
    """
    status = pod.get("status") or {}
    phase = status.get("phase")
    containers = status.get("containerStatuses") or []
    if phase == "Succeeded":
        return 0
    if phase == "Failed":
        for c in containers:
            terminated = (c.get("state") or {}).get("terminated")
            if terminated and terminated.get("exitCode") is not None:
                return int(terminated["exitCode"])
        return 1
    for c in containers:
        reason = ((c.get("state") or {}).get("waiting") or {}).get("reason")
        if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"):
            return 1
    return None
