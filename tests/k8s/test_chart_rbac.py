"""The chart's RBAC as the emulated API server enforces it (and as a cluster would), over real HTTP.

The operator records a savepoint it takes on cancel or delete as a Savepoint resource: its Role must
grant ``create`` on ``savepoints`` (without it a cluster answers 403, which the operator only logs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from chart_rbac import (
    API,
    OPERATOR,
    USERS,
    enforce_crd_schemas,
    install_api_rbac,
    install_operator_rbac,
    operator_values,
    rbac_manifests,
)
from k8s_helpers import savepoint, streaming_job, window_spec

from heliosdb_streaming.kubernetes import crds, kube
from heliosdb_streaming.testing import rbac
from heliosdb_streaming.testing.kube_emulator import Cluster, start_cluster

# The operator's custom-resource rule before this fix: savepoints shared the streamingjobs verbs.
OLD_OPERATOR_RULE = {
    "apiGroups": ["streaming.heliosdb.io"],
    "resources": ["streamingjobs", "savepoints"],
    "verbs": ["get", "list", "watch", "patch", "update"],
}
JOB = window_spec(Path("/tmp/unused.db"), parallelism=2, rate=1)
CREATE_SAVEPOINT = rbac.request_attributes(
    "POST", "/apis/streaming.heliosdb.io/v1/namespaces/default/savepoints", {}
)


def _old(rule: dict[str, Any]) -> dict[str, Any]:
    return (
        OLD_OPERATOR_RULE if "savepoints" in rule.get("resources", []) and "create" in rule["verbs"] else rule
    )


def _policy(manifests: list[dict[str, Any]]) -> rbac.Policy:
    return rbac.Policy.from_manifests([*rbac.BOOTSTRAP, *manifests])


@pytest.mark.parametrize("scope", [["--all-namespaces"], ["--namespace", "default"]], ids=str)
def test_the_operator_may_record_a_savepoint_and_the_old_rules_may_not(scope: list[str]) -> None:
    manifests = rbac_manifests(operator_values(scope), OPERATOR)
    assert rbac.authorize(_policy(manifests), USERS[OPERATOR], CREATE_SAVEPOINT)
    old = [{**doc, "rules": [_old(r) for r in doc.get("rules", [])]} for doc in manifests]
    assert old != manifests
    assert not rbac.authorize(_policy(old), USERS[OPERATOR], CREATE_SAVEPOINT)
    # the colors of a blue/green deployment are its StreamingJobs, but deployments are the users'
    create_job = rbac.request_attributes(
        "POST", "/apis/streaming.heliosdb.io/v1/namespaces/default/streamingjobs", {}
    )
    assert rbac.authorize(_policy(manifests), USERS[OPERATOR], create_job)
    create_deployment = rbac.request_attributes(
        "POST", "/apis/streaming.heliosdb.io/v1/namespaces/default/streamingjobdeployments", {}
    )
    assert not rbac.authorize(_policy(manifests), USERS[OPERATOR], create_deployment)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with start_cluster(tmp_path, USERS) as emulated:
        enforce_crd_schemas(emulated.emulator)
        yield emulated


async def test_each_identity_gets_what_the_chart_grants_it(cluster: Cluster) -> None:
    async with kube.KubeClient(cluster.connection()) as admin:
        await install_operator_rbac(admin, ["--namespace", "default"])
        await install_api_rbac(admin, "default")
        await admin.create(kube.STREAMINGJOBS, "default", streaming_job("j", JOB))
    async with kube.KubeClient(cluster.connection(OPERATOR)) as operator:
        sp = await operator.create(kube.SAVEPOINTS, "default", savepoint("j-1", "j"))
        assert sp["metadata"]["name"] == "j-1"
        await operator.patch(
            kube.SAVEPOINTS, "default", "j-1", {"status": {"state": "completed"}}, subresource="status"
        )
        deployment = {
            "apiVersion": crds.API_VERSION,
            "kind": "StreamingJobDeployment",
            "metadata": {"name": "mine"},
            "spec": {"template": {"spec": JOB}},
        }
        with pytest.raises(kube.ApiError) as denied:  # deployments come from users
            await operator.create(kube.STREAMINGJOBDEPLOYMENTS, "default", deployment)
        assert (denied.value.status, denied.value.reason) == (403, "Forbidden")
        message = f'User "{USERS[OPERATOR].name}" cannot create resource "streamingjobdeployments"'
        assert message in denied.value.message
        with pytest.raises(kube.ApiError) as elsewhere:  # a Role in "default" only
            await operator.list(kube.PODS, "other")
        assert elsewhere.value.status == 403
        with pytest.raises(kube.ApiError) as secrets:
            await operator.list(kube.SECRETS, "default")
        assert secrets.value.status == 403
    async with kube.KubeClient(cluster.connection(API)) as api:
        assert [s["metadata"]["name"] for s in await api.list(kube.SAVEPOINTS, "default")] == ["j-1"]
        with pytest.raises(kube.ApiError) as status:  # status is the operator's
            await api.patch(
                kube.STREAMINGJOBS, "default", "j", {"status": {"phase": "x"}}, subresource="status"
            )
        assert status.value.status == 403
        with pytest.raises(kube.ApiError) as pods:
            await api.create(
                kube.PODS, "default", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}
            )
        assert pods.value.status == 403
    async with kube.KubeClient(kopf.ConnectionInfo(server=cluster.url, token="nobody")) as anonymous:
        with pytest.raises(kube.ApiError) as unknown:
            await anonymous.list(kube.PODS, "default")
        assert (unknown.value.status, unknown.value.reason) == (401, "Unauthorized")


async def test_custom_resources_are_pruned_and_validated(cluster: Cluster) -> None:
    async with kube.KubeClient(cluster.connection()) as admin:
        spec = {**JOB, "notAField": 1}
        created = await admin.create(kube.STREAMINGJOBS, "default", streaming_job("j", spec))
        assert "notAField" not in created["spec"]  # pruned, as an API server prunes unknown fields
        stored = await admin.get(kube.STREAMINGJOBS, "default", "j")
        assert "notAField" not in stored["spec"] and stored["spec"]["config"]["parallelism"] == 2
        patched = await admin.patch(kube.STREAMINGJOBS, "default", "j", {"spec": {"alsoNot": True}})
        assert "alsoNot" not in patched["spec"]
        with pytest.raises(kube.ApiError) as invalid:
            await admin.patch(
                kube.STREAMINGJOBS, "default", "j", {"spec": {"config": {"parallelism": "many"}}}
            )
        assert (invalid.value.status, invalid.value.reason) == (422, "Invalid")
        assert "spec.config.parallelism" in invalid.value.message
        assert (await admin.get(kube.STREAMINGJOBS, "default", "j"))["spec"]["config"]["parallelism"] == 2
        with pytest.raises(kube.ApiError) as missing:  # jobRef is required
            await admin.create(kube.SAVEPOINTS, "default", {**savepoint("s", "j"), "spec": {}})
        assert missing.value.status == 422 and "jobRef" in missing.value.message
