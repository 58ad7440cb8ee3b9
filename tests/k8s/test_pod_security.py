"""Every pod template we ship against the ``restricted`` Pod Security Standard (``testing.pss``).

A namespace enforcing ``restricted`` admits a pod only if it passes every rule; this checks the pods
the Helm chart renders (helm-python-sdk, every values scenario of ``test_chart``) and the worker pods
the operator builds (its manifests, default and with a podTemplate), plus what we add on top: a
read-only root filesystem everywhere, probes on every pod the chart creates, and no service account
token in worker pods (they call no Kubernetes API).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
from test_chart import CHART, SCENARIOS, render

from heliosdb_streaming.control.launcher import WorkerSpec
from heliosdb_streaming.kubernetes import podtemplate
from heliosdb_streaming.kubernetes.operator import pods
from heliosdb_streaming.kubernetes.operator.pods import PodSettings, Target
from heliosdb_streaming.testing import pss

SPEC = WorkerSpec("job-1", Path("/home/jobs/job-1"), 0, 1, "10.0.0.1:7070", "tok", "s3://b/p")
TEMPLATE = {
    "metadata": {"labels": {"team": "a"}},
    "spec": {
        "securityContext": {"runAsUser": 20000, "fsGroup": 20000},
        "nodeSelector": {"pool": "streaming"},
        "volumes": [{"name": "certs", "secret": {"secretName": "certs"}}],
        "containers": [{"name": "worker", "volumeMounts": [{"name": "certs", "mountPath": "/etc/certs"}]}],
    },
}
WORKER_CASES = {
    "defaults": (Target("ns", "j", "u"), PodSettings(image="i")),
    "credentials and resources": (
        Target("ns", "j", "u", resources={"limits": {"memory": "1Gi"}}),
        PodSettings(image="i", env=(("AWS_SECRET_ACCESS_KEY", "s"),), service_account="workers"),
    ),
    "env secret": (Target("ns", "j", "u"), PodSettings(image="i", env_secret="s3")),
    "pod template": (
        Target("ns", "j", "u", pod_template=podtemplate.parse(TEMPLATE, None)[0]),
        PodSettings(image="i"),
    ),
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_pod_of_the_chart_is_restricted_and_probed(chart: helm.Chart, scenario: str) -> None:
    checked = []
    for doc in render(chart, SCENARIOS[scenario]):
        for what, spec in pss.pod_specs(doc):
            assert pss.violations(spec) == [], what
            for c in _containers(dict(spec)):
                assert c["securityContext"]["readOnlyRootFilesystem"] is True, what
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert c.get(probe), f"{what}: {c['name']} has no {probe}"
            checked.append(what)
    assert "Deployment/helios-heliosdb-streaming-operator" in checked  # the api is off in one scenario


def test_the_operator_probes_its_health_endpoint(chart: helm.Chart) -> None:
    (operator,) = [
        d
        for d in render(chart, {})
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
    ]
    (c,) = operator["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # the metrics port: a standby answers too (test_operator_ha asks both replicas)
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    assert {"name": "metrics", "containerPort": 8083, "protocol": "TCP"} in c["ports"]


@pytest.mark.parametrize("case", list(WORKER_CASES))
def test_worker_pods_are_restricted(case: str) -> None:
    target, settings = WORKER_CASES[case]
    pod = pods.worker_pod(target, SPEC, settings)
    spec = pod["spec"]
    assert pss.violations(spec) == []
    assert spec["automountServiceAccountToken"] is False
    (c,) = spec["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert {"/tmp", pods.WORK_DIR} <= writable  # what the worker writes, on emptyDirs
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert all(
        "emptyDir" in volumes[m["name"]]
        for m in c["volumeMounts"]
        if m["mountPath"] in ("/tmp", pods.WORK_DIR)
    )
    assert not any("value" in e for e in c["env"] if e["name"] in pods.CREDENTIAL_ENV)


def test_the_checker_refuses_what_restricted_refuses() -> None:
    """Each rule, broken once on an otherwise compliant worker pod, is reported."""
    spec = pods.worker_pod(Target("ns", "j", "u"), SPEC, PodSettings(image="i"))["spec"]
    (c,) = spec["containers"]

    def with_container(**security: Any) -> dict[str, Any]:
        return {**spec, "containers": [{**c, "securityContext": {**c["securityContext"], **security}}]}

    broken = {
        "privileged": with_container(privileged=True),
        "escalation": with_container(allowPrivilegeEscalation=True),
        "root user": with_container(runAsUser=0),
        "capability": with_container(capabilities={"drop": ["ALL"], "add": ["SYS_ADMIN"]}),
        "no drop": with_container(capabilities={}),
        "unconfined": with_container(seccompProfile={"type": "Unconfined"}),
        "proc mount": with_container(procMount="Unmasked"),
        "host pid": {**spec, "hostPID": True},
        "host port": {**spec, "containers": [{**c, "ports": [{"containerPort": 80, "hostPort": 80}]}]},
        "host path": {**spec, "volumes": [{"name": "h", "hostPath": {"path": "/var"}}]},
        "unsafe sysctl": {
            **spec,
            "securityContext": {
                **spec["securityContext"],
                "sysctls": [{"name": "kernel.msgmax", "value": "1"}],
            },
        },
        "no seccomp": {
            **{
                **spec,
                "securityContext": {
                    k: v for k, v in spec["securityContext"].items() if k != "seccompProfile"
                },
            },
            "containers": [
                {
                    **c,
                    "securityContext": {
                        k: v for k, v in c["securityContext"].items() if k != "seccompProfile"
                    },
                }
            ],
        },
    }
    for name, bad in broken.items():
        assert pss.violations(bad), name
