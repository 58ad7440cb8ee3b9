"""The Helm chart's RBAC and the CRDs' schemas, enforced by the emulated API server.

The operator and the API server authenticate as the chart's two service accounts (each with its own
token and kubeconfig), and the emulator grants them exactly the Roles, ClusterRoles and bindings that
``helm install`` would create (rendered by Helm's own code, as ``test_chart`` renders them), so a verb
the chart forgets is a 403 in these tests as on a real cluster. The test harness (kubelet, garbage
collector, the tests' own reads) is the cluster admin. The emulator also prunes and validates custom
resources against the shipped ``crds/*.yaml`` schemas.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import helm_python as helm
import kmock
import yaml
from crd_validation import admission
from test_chart import CHART, FULLNAME, NAMESPACE, ROOT, render

from heliosdb_streaming.kubernetes import conversion, kube
from heliosdb_streaming.testing import rbac
from heliosdb_streaming.testing.kube_emulator import ClusterEmulator

OPERATOR, API, JOBMANAGER = "operator", "api", "jobmanager"
JOBMANAGER_ACCOUNT = f"{FULLNAME}-jobmanager"
JOB_NAMESPACE = "default"  # where the tests' StreamingJobs (and so their job managers) are
USERS = {
    OPERATOR: rbac.service_account(NAMESPACE, f"{FULLNAME}-operator"),
    API: rbac.service_account(NAMESPACE, f"{FULLNAME}-api"),
    JOBMANAGER: rbac.service_account(JOB_NAMESPACE, JOBMANAGER_ACCOUNT),
}
RESOURCES = {
    kind: kube.Resource(rbac.GROUP, "v1", plural, namespaced=kind.startswith("Role"))
    for kind, plural in (
        ("Role", "roles"),
        ("RoleBinding", "rolebindings"),
        ("ClusterRole", "clusterroles"),
        ("ClusterRoleBinding", "clusterrolebindings"),
    )
}
COMPONENT = "app.kubernetes.io/component"

Manifest = dict[str, Any]


@functools.cache
def _rendered(values_json: str) -> tuple[Manifest, ...]:
    with helm.Chart.load(CHART) as chart:
        return tuple(render(chart, json.loads(values_json)))


def rbac_manifests(values: dict[str, Any], component: str) -> list[Manifest]:
    """The Roles, ClusterRoles and bindings of one component (``operator`` or ``api``) for ``values``."""
    docs = _rendered(json.dumps(values, sort_keys=True))
    mine = [d for d in docs if d["metadata"]["labels"].get(COMPONENT) == component]
    return [d for d in mine if d["kind"] in rbac.RBAC_KINDS]


def operator_values(scope: list[str]) -> dict[str, Any]:
    """The chart values that run the operator over ``scope`` (its namespace arguments): plain
    ``--namespace`` names are ``operator.watchNamespaces``; all namespaces, or a pattern the chart cannot
    express, is the cluster-wide default."""
    names = [scope[i + 1] for i, arg in enumerate(scope) if arg == "--namespace" and i + 1 < len(scope)]
    if not names or any(not n.replace("-", "").isalnum() for n in names):
        return {}
    return {"operator": {"watchNamespaces": names}}


async def install(client: kube.KubeClient, manifests: list[Manifest]) -> None:
    """Creates the objects as the admin, or replaces what an earlier rendering created (helm upgrade)."""
    for doc in manifests:
        resource = RESOURCES[doc["kind"]]
        namespace = doc["metadata"].get("namespace")
        try:
            await client.create(resource, namespace, doc)
        except kube.ConflictError:
            change = {k: doc.get(k) for k in ("rules", "roleRef", "subjects")}
            await client.patch(resource, namespace, doc["metadata"]["name"], change)


def _is_pattern(scope: list[str]) -> bool:
    names = [scope[i + 1] for i, arg in enumerate(scope) if arg == "--namespace" and i + 1 < len(scope)]
    return any(set(n) & set("*?[!") for n in names)


def namespace_scan_rbac() -> list[Manifest]:
    """What ``--namespace <pattern>`` needs beyond the chart's cluster-wide rules: kopf lists and
    watches namespaces to match the pattern. The chart never runs the operator so (its watchNamespaces
    are names), so it does not grant this; an install that passes a pattern adds it, as here."""
    name = "helios-operator-namespace-scan"
    role = {
        "apiVersion": f"{rbac.GROUP}/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}],
    }
    binding = {
        "apiVersion": f"{rbac.GROUP}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": rbac.GROUP, "kind": "ClusterRole", "name": name},
        "subjects": [
            {"kind": "ServiceAccount", "name": USERS[OPERATOR].name.rsplit(":", 1)[1], "namespace": NAMESPACE}
        ],
    }
    return [role, binding]


async def install_operator_rbac(client: kube.KubeClient, scope: list[str]) -> None:
    await install(client, rbac_manifests(operator_values(scope), OPERATOR))
    if _is_pattern(scope):
        await install(client, namespace_scan_rbac())


async def install_jobmanager_rbac(
    client: kube.KubeClient, scope: list[str], namespace: str = JOB_NAMESPACE
) -> None:
    """The job managers' Role in ``namespace``, as the chart renders it with job managers on. The test
    kubelet runs every job manager with the one token of ``JOB_NAMESPACE``'s account, so a binding in
    another namespace names that account (the chart names the namespace's own)."""
    values = {**operator_values(scope), "jobManagers": {"enabled": True, "namespaces": [namespace]}}
    docs = rbac_manifests(values, JOBMANAGER)
    for doc in docs:
        for subject in doc.get("subjects") or []:
            subject["namespace"] = JOB_NAMESPACE
    await install(client, docs)


async def install_api_rbac(client: kube.KubeClient, job_namespace: str) -> None:
    await install(client, rbac_manifests({"api": {"jobNamespace": job_namespace}}, API))


def enforce_crd_schemas(emulator: ClusterEmulator) -> None:
    """The emulator prunes and validates StreamingJobs and Savepoints against ``crds/*.yaml`` and
    serves their other served versions through the conversion the operator's webhook runs."""
    for path in sorted(Path(ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        key = (crd["spec"]["group"], crd["spec"]["names"]["plural"])
        emulator.schemas[key] = admission(crd)
        (storage,) = [v["name"] for v in crd["spec"]["versions"] if v["storage"]]
        emulator.conversions[key] = (storage, convert_by_review)
        for version in crd["spec"]["versions"]:
            if version.get("deprecated"):
                emulator.deprecations[(key[0], version["name"])] = version["deprecationWarning"]


async def convert_by_review(objects: list[dict[str, Any]], desired: str) -> list[dict[str, Any]]:
    """What the API server does with a CRD's conversion webhook: one ConversionReview, answered by
    the same code the operator serves at ``/convert`` (``webhook_converter`` asks the operator itself)."""
    return _converted(conversion.review(review_request(objects, desired)))


def review_request(objects: list[dict[str, Any]], desired: str) -> dict[str, Any]:
    return {
        "apiVersion": conversion.REVIEW_VERSION,
        "kind": "ConversionReview",
        "request": {"uid": "emulated", "desiredAPIVersion": desired, "objects": objects},
    }


def webhook_converter(url: str) -> Callable[[list[dict[str, Any]], str], Awaitable[list[dict[str, Any]]]]:
    """A converter that POSTs the ConversionReview to a running operator's webhook (``url``), as the
    API server calls the Service the CRD names."""

    async def convert(objects: list[dict[str, Any]], desired: str) -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=review_request(objects, desired)) as r,
        ):
            if r.status != 200:
                raise kmock.KubernetesError(status=500, reason="InternalError", message=await r.text())
            return _converted(await r.json())

    return convert


def _converted(review: dict[str, Any]) -> list[dict[str, Any]]:
    answer = review["response"]
    if answer["result"]["status"] != "Success":
        raise kmock.KubernetesError(status=500, reason="InternalError", message=answer["result"]["message"])
    converted: list[dict[str, Any]] = answer["convertedObjects"]
    return converted


def save_audit(emulator: ClusterEmulator) -> None:
    """Appends the requests the emulator authorized to ``$HELIOS_RBAC_AUDIT`` (JSON lines) when set:
    the evidence for which verbs the chart's Roles really need (``make rbac-audit`` style runs)."""
    target = os.environ.get("HELIOS_RBAC_AUDIT")
    if not target:
        return
    with open(target, "a") as out:
        for (user, verb, group, resource, namespace), count in sorted(emulator.audit.items()):
            row = {"user": user, "verb": verb, "group": group, "resource": resource, "namespace": namespace}
            out.write(json.dumps({**row, "count": count}) + "\n")


def assert_never_denied(emulator: ClusterEmulator) -> None:
    """No request of the operator or the API server was refused: a 403 they only log (as the savepoint
    record on cancel was) fails the test instead of going unnoticed."""
    assert not emulator.denied, f"the chart's RBAC refused: {sorted(emulator.denied)}"
