"""Manifests of a StreamingJob's job manager: its pod, its Service and its Secret. Pure.

A pod rather than a one-replica Deployment: the operator is its only owner and already recreates what
a job owns on every resync, so a Deployment's controller would add a ReplicaSet and rolling updates
that a job manager must never do (two job managers of one job would both run it); ``restartPolicy:
Always`` has the kubelet restart a crashed container in place (its emptyDir, and so its job store,
kept), and a deleted or evicted pod is recreated by the operator, after which the new job manager
recovers the job from its latest checkpoint.

The pod carries the job's ``spec.podTemplate`` as the worker pods do (labels, annotations, scheduling
fields, securityContext, the ``jobmanager`` container's env and mounts), the restricted Pod Security
Standard with a read-only root filesystem, and probes on its API's ``/healthz``. Its labels are not the
workers' (no ``streaming.heliosdb.io/job``), so nothing that selects a job's workers selects it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from heliosdb_streaming.kubernetes import crds
from heliosdb_streaming.kubernetes.operator import pods
from heliosdb_streaming.kubernetes.operator.pods import Target

CONTAINER = "jobmanager"
LABEL_JOBMANAGER = f"{crds.GROUP}/jobmanager"
HOME = "/var/lib/helios/jobmanager"
API_PORT = 8081
CONTROL_PORT = 7070
TOKEN_KEY = "token"
JOBMANAGER_IMAGE_ENV = "HELIOS_JOBMANAGER_IMAGE"


@dataclass(frozen=True, slots=True)
class JobManagerSettings:
    """What the operator passes to every job manager: its image, service account and environment
    (plain values; credentials go into the job manager's Secret), and extra arguments (tests bind
    loopback ports with them)."""

    image: str
    service_account: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()


def name_of(job: str) -> str:
    return f"{job}-jobmanager"


def labels(job: str) -> dict[str, str]:
    return {
        pods.LABEL_APP: pods.APP,
        pods.LABEL_COMPONENT: "jobmanager",
        LABEL_JOBMANAGER: pods.label_value(job),
    }


def _metadata(target: Target, extra_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name_of(target.name),
        "namespace": target.namespace,
        "labels": {**(extra_labels or {}), **labels(target.name)},
        "ownerReferences": [pods.owner_reference(target)],
    }


def secret(target: Target, token: str, credentials: Mapping[str, str]) -> dict[str, Any]:
    """The bearer token of the job manager's API (the operator reads it back to call it) and the
    checkpoint storage's credentials its env references."""
    data = {TOKEN_KEY: token, **credentials}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(target),
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def service(target: Target) -> dict[str, Any]:
    """Where the operator (API) and the worker pods (control channel) reach the job manager."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(target),
        "spec": {
            "selector": labels(target.name),
            "ports": [
                {"name": "api", "port": API_PORT, "targetPort": API_PORT},
                {"name": "control", "port": CONTROL_PORT, "targetPort": CONTROL_PORT},
            ],
        },
    }


def _probe(period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/healthz", "port": API_PORT},
        "periodSeconds": period_s,
        "failureThreshold": failures,
    }


def pod(target: Target, settings: JobManagerSettings, credential_keys: tuple[str, ...]) -> dict[str, Any]:
    """The job manager's pod: ``helios jobmanager`` for this StreamingJob, the podTemplate beneath."""
    template = target.pod_template or {}
    tmeta: Mapping[str, Any] = template.get("metadata") or {}
    tspec: Mapping[str, Any] = template.get("spec") or {}
    tcontainer: Mapping[str, Any] = next(
        (c for c in tspec.get("containers") or [] if c.get("name") == CONTAINER), {}
    )
    metadata = _metadata(target, tmeta.get("labels") or {})
    if tmeta.get("annotations"):
        metadata["annotations"] = dict(tmeta["annotations"])
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in settings.env]
    from_secret = {"HELIOS_API_TOKEN": TOKEN_KEY, **{k: k for k in credential_keys}}
    env += [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": name_of(target.name), "key": key}}}
        for k, key in from_secret.items()
    ]
    env.append({"name": "PYTHONUNBUFFERED", "value": "1"})
    command = ["python", "-m", "heliosdb_streaming.cli.main", "jobmanager"]
    command += ["--namespace", target.namespace, "--name", target.name, "--home", HOME, *settings.args]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.image,
        "command": command,
        "ports": [
            {"name": "api", "containerPort": API_PORT},
            {"name": "control", "containerPort": CONTROL_PORT},
        ],
        "env": pods._by_key(env, tcontainer.get("env"), "name"),
        "volumeMounts": pods._by_key(
            [{"name": "home", "mountPath": HOME}, {"name": "tmp", "mountPath": pods.TMP_DIR}],
            tcontainer.get("volumeMounts"),
            "mountPath",
        ),
        "startupProbe": _probe(2, 30),
        "readinessProbe": _probe(5, 3),
        "livenessProbe": _probe(10, 6),
        "securityContext": {**pods.CONTAINER_SECURITY_CONTEXT, **(tcontainer.get("securityContext") or {})},
    }
    if tcontainer.get("envFrom"):
        container["envFrom"] = [dict(e) for e in tcontainer["envFrom"]]
    if tcontainer.get("resources"):
        container["resources"] = dict(tcontainer["resources"])
    spec: dict[str, Any] = {
        **{k: tspec[k] for k in pods.TEMPLATE_POD_FIELDS if tspec.get(k)},
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "securityContext": {**pods.POD_SECURITY_CONTEXT, **(tspec.get("securityContext") or {})},
        "containers": [container],
        "volumes": pods._by_key(
            [{"name": "home", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}], tspec.get("volumes"), "name"
        ),
    }
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}
