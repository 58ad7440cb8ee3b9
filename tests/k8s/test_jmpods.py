"""The job manager pod's manifest: the podTemplate beneath, the restricted PSS, probes, no secret value."""

from __future__ import annotations

from heliosdb_streaming.kubernetes.operator import jmpods, pods
from heliosdb_streaming.kubernetes.operator.pods import Target
from heliosdb_streaming.testing import pss

TEMPLATE = {
    "metadata": {"labels": {"team": "a", pods.LABEL_COMPONENT: "mine"}, "annotations": {"x": "y"}},
    "spec": {
        "nodeSelector": {"pool": "jobs"},
        "tolerations": [{"key": "dedicated", "operator": "Exists"}],
        "priorityClassName": "high",
        "containers": [
            {
                "name": "jobmanager",
                "env": [{"name": "EXTRA", "value": "1"}, {"name": "HELIOS_API_TOKEN", "value": "leak"}],
                "resources": {"limits": {"memory": "1Gi"}},
            },
            {"name": "worker", "env": [{"name": "WORKER_ONLY", "value": "1"}]},
        ],
    },
}


def test_pod_merges_the_template_under_the_operators_settings() -> None:
    target = Target("ns", "spend", "uid-1", None, {}, TEMPLATE)
    settings = jmpods.JobManagerSettings(
        image="img:1", service_account="helios-jobmanager", env=(("HELIOS_IMAGE", "img:1"),), args=("-v",)
    )
    pod = jmpods.pod(target, settings, ("AWS_SECRET_ACCESS_KEY",))
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "spend-jobmanager" and meta["ownerReferences"][0]["uid"] == "uid-1"
    assert meta["labels"]["team"] == "a" and meta["labels"][pods.LABEL_COMPONENT] == "jobmanager"
    assert pods.LABEL_JOB not in meta["labels"]  # nothing that selects the workers selects it
    assert meta["annotations"] == {"x": "y"}
    assert spec["nodeSelector"] == {"pool": "jobs"} and spec["priorityClassName"] == "high"
    assert spec["serviceAccountName"] == "helios-jobmanager" and spec["restartPolicy"] == "Always"
    (container,) = spec["containers"]
    assert container["command"][-7:] == ["--namespace", "ns", "--name", "spend", "--home", jmpods.HOME, "-v"]
    env = {e["name"]: e for e in container["env"]}
    assert env["EXTRA"]["value"] == "1" and "WORKER_ONLY" not in env
    # the operator's token reference wins over the template's value; credentials come from the Secret
    assert env["HELIOS_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "spend-jobmanager",
        "key": "token",
    }
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
    assert container["resources"] == {"limits": {"memory": "1Gi"}}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": jmpods.API_PORT}
    assert pss.violations(spec) == []
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_service_selects_only_the_jobmanager() -> None:
    target = Target("ns", "spend", "uid-1")
    service = jmpods.service(target)
    assert service["spec"]["selector"] == jmpods.labels("spend")
    assert {p["port"] for p in service["spec"]["ports"]} == {jmpods.API_PORT, jmpods.CONTROL_PORT}
