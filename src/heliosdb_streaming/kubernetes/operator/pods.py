"""Manifests of what a StreamingJob owns: worker pods, the job's Secret, the workers' Service. Pure.

Every object carries an owner reference to its StreamingJob, so deleting the job deletes them (the
cluster's garbage collector does it). Worker pods have stable names (``<job>-worker-<index>``) and a
hostname under the headless Service, ``restartPolicy: Never`` (the control plane applies the job's
restart strategy, not the kubelet), the job file from a Secret (a job holds connection strings with
passwords, which a ConfigMap would show to anyone who may read ConfigMaps) and an emptyDir for state.

Worker pods meet the ``restricted`` Pod Security Standard by default (non-root, no privilege
escalation, all capabilities dropped, ``RuntimeDefault`` seccomp) with a read-only root filesystem
(emptyDirs for ``/tmp`` and the local state directory) and no service account token (workers call no
Kubernetes API). The job's ``spec.podTemplate`` is the base of each pod and the operator's settings go
on top, as the Flink operator merges its podTemplate. Checkpoint-storage credentials reach a worker
only through Secrets: the operator's own are copied into the job's Secret and referenced by
``secretKeyRef``, or ``workers.envSecret`` is loaded with ``envFrom``; no secret value is written
into a pod spec.
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
TMP_DIR = "/tmp"
CONTAINER = "worker"
RUN_AS = 10001  # the image's user (Dockerfile)
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
# those of them that are credentials: never a plain value in a pod spec
CREDENTIAL_ENV = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "MINIO_ACCESS_KEY",
        "MINIO_SECRET_KEY",
    }
)
# restricted Pod Security Standard, plus a read-only root filesystem
POD_SECURITY_CONTEXT: Mapping[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "fsGroup": RUN_AS,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT: Mapping[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
# the scheduling and pod-level fields a podTemplate sets as given
TEMPLATE_POD_FIELDS = (
    "imagePullSecrets",
    "nodeSelector",
    "tolerations",
    "affinity",
    "topologySpreadConstraints",
    "priorityClassName",
)


@dataclass(frozen=True, slots=True)
class Target:
    """The StreamingJob a control-plane job belongs to, and the pod settings its spec asks for."""

    namespace: str
    name: str
    uid: str
    image: str | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    pod_template: Mapping[str, Any] = field(default_factory=dict)  # spec.podTemplate, validated


@dataclass(frozen=True, slots=True)
class PodSettings:
    """Operator-wide pod settings: default image, where workers reach the control plane, credentials.

    ``env`` is the operator's S3 settings: the plain ones are copied into every worker, the
    credentials (``CREDENTIAL_ENV``) go into the job's Secret and the pod references them. With
    ``env_secret`` the workers take all of them from that Secret instead (``envFrom``).
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


def disruption_budget_name(job: str) -> str:
    return f"{job}-workers"


def disruption_budget(target: Target, max_unavailable: int) -> dict[str, Any]:
    """The job's opt-in PodDisruptionBudget (``spec.podDisruptionBudget``) over its worker pods: a
    drain evicts at most ``max_unavailable`` of them at a time (an eviction restarts the job from its
    latest checkpoint without using up its restart strategy, but each costs a recovery)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(target, disruption_budget_name(target.name), job_labels(target.name)),
        "spec": {
            "maxUnavailable": max_unavailable,
            "selector": {"matchLabels": {**job_labels(target.name), LABEL_COMPONENT: "worker"}},
        },
    }


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


def _by_key(mine: list[dict[str, Any]], theirs: Any, key: str) -> list[dict[str, Any]]:
    """The operator's items, then the template's whose ``key`` the operator does not use."""
    taken = {item[key] for item in mine}
    return [*mine, *(dict(item) for item in theirs or [] if item.get(key) not in taken)]


def credentials(settings: PodSettings) -> dict[str, str]:
    """The operator's credentials a worker gets through the job's Secret (none with ``env_secret``)."""
    if settings.env_secret:
        return {}
    return {k: v for k, v in settings.env if k in CREDENTIAL_ENV}


def worker_pod(target: Target, spec: WorkerSpec, settings: PodSettings) -> dict[str, Any]:
    """The pod of worker ``spec.index`` of run ``spec.attempt``: the job's podTemplate with the
    operator's settings on top (its labels, env, mounts and volumes win on a clash of names)."""
    template = target.pod_template or {}
    tmeta: Mapping[str, Any] = template.get("metadata") or {}
    tspec: Mapping[str, Any] = template.get("spec") or {}
    tcontainer: Mapping[str, Any] = next(
        (c for c in tspec.get("containers") or [] if c.get("name", CONTAINER) == CONTAINER), {}
    )
    name = pod_name(target.name, spec.index)
    labels = {
        **(tmeta.get("labels") or {}),
        **job_labels(target.name),
        LABEL_COMPONENT: "worker",
        LABEL_INDEX: str(spec.index),
        LABEL_ATTEMPT: str(spec.attempt),
    }
    metadata = _metadata(target, name, labels)
    metadata["annotations"] = {**(tmeta.get("annotations") or {}), ANNOTATION_JOB_ID: spec.job_id}
    env: list[dict[str, Any]] = [
        {"name": "HELIOS_WORKER_TOKEN", "value": spec.token},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HELIOS_LOG_FORMAT", "value": "json"},  # the pod log is the job log (the API reads it)
    ]
    if settings.python_modules:
        env.append({"name": "HELIOS_PYTHON_MODULES", "value": ",".join(settings.python_modules)})
    if not settings.env_secret:
        secret = job_secret_name(target.name)
        for k, v in settings.env:
            if k in CREDENTIAL_ENV:
                env.append({"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k}}})
            else:
                env.append({"name": k, "value": v})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": target.image or settings.image,
        "command": spec.command(
            "python",
            job_dir=WORK_DIR,
            control_address=settings.control_address or spec.control_address,
            config_file=f"{CONFIG_MOUNT}/{CONFIG_FILE}",
        ),
        "env": _by_key(env, tcontainer.get("env"), "name"),
        "volumeMounts": _by_key(
            [
                {"name": "job", "mountPath": CONFIG_MOUNT, "readOnly": True},
                {"name": "work", "mountPath": WORK_DIR},
                {"name": "tmp", "mountPath": TMP_DIR},
            ],
            tcontainer.get("volumeMounts"),
            "mountPath",
        ),
        "securityContext": {**CONTAINER_SECURITY_CONTEXT, **(tcontainer.get("securityContext") or {})},
    }
    env_from = [{"secretRef": {"name": settings.env_secret}}] if settings.env_secret else []
    env_from += [dict(e) for e in tcontainer.get("envFrom") or []]
    if env_from:
        container["envFrom"] = env_from
    resources = dict(target.resources) or dict(tcontainer.get("resources") or {})
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {
        **{k: tspec[k] for k in TEMPLATE_POD_FIELDS if tspec.get(k)},
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 30,
        "automountServiceAccountToken": False,  # workers call no Kubernetes API
        "securityContext": {**POD_SECURITY_CONTEXT, **(tspec.get("securityContext") or {})},
        "containers": [container],
        "volumes": _by_key(
            [
                {
                    "name": "job",
                    "secret": {
                        "secretName": job_secret_name(target.name),
                        "items": [{"key": CONFIG_FILE, "path": CONFIG_FILE}],  # not the credentials
                    },
                },
                {"name": "work", "emptyDir": {}},
                {"name": "tmp", "emptyDir": {}},
            ],
            tspec.get("volumes"),
            "name",
        ),
    }
    if len(name) <= 63:  # a hostname is one DNS label
        pod_spec["hostname"] = name
        pod_spec["subdomain"] = service_name(target.name)
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def job_secret(target: Target, job_json: str, extra: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The job file the workers mount, and ``extra`` keys (the credentials their env references);
    ``data`` (base64) rather than ``stringData``, which a patch would merge into ``data`` on the server,
    so what is written is what is read back."""
    data = {CONFIG_FILE: job_json, **(extra or {})}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(target, job_secret_name(target.name), job_labels(target.name)),
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
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
    """The worker's exit code once its pod has ended (None while it runs or waits).

    Succeeded is 0; Failed is the container's ``terminated.exitCode`` (1 when unknown). A container
    that can never start (an invalid image name, a missing Secret key) counts as failed with 1, so the
    restart strategy decides instead of the job waiting forever. An image pull error is retried by
    the kubelet (a registry outage, credentials being fixed): it is pending (``pending_reason``).
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
        if reason in FATAL_WAITING:
            return 1
    return None


FATAL_WAITING = frozenset({"InvalidImageName", "CreateContainerConfigError"})
PENDING_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff"})


def pending_reason(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(reason, message)`` of a pod that cannot start yet: the scheduler found no node
    (``PodScheduled`` False, e.g. ``Unschedulable``) or its image cannot be pulled. None otherwise."""
    status = pod.get("status") or {}
    if status.get("phase") not in (None, "Pending"):
        return None
    for c in status.get("containerStatuses") or []:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in PENDING_WAITING:
            return str(waiting["reason"]), str(waiting.get("message") or "")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return str(cond.get("reason") or "Unschedulable"), str(cond.get("message") or "")
    return None


def disruption(pod: Mapping[str, Any]) -> str | None:
    """The reason of the pod's ``DisruptionTarget`` condition (eviction, node drain, preemption,
    taint), which Kubernetes sets on a pod it is about to delete for a reason not of its own. None
    when there is none: the pod ended on its own."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            return str(cond.get("reason") or "DisruptionTarget")
    if status.get("reason") == "Evicted":  # the kubelet's node-pressure eviction (before the condition)
        return "Evicted"
    return None
