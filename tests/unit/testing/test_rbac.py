"""The RBAC authorizer of the test API server: request parsing and rule matching as Kubernetes does."""

from __future__ import annotations

from typing import Any

import pytest

from heliosdb_streaming.testing import rbac

SA = rbac.service_account("streaming", "op")
OTHER = rbac.service_account("streaming", "other")


def attrs(method: str, path: str, **query: str) -> rbac.Attributes:
    return rbac.request_attributes(method, path, query)


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/api/v1/namespaces/a/pods", {}, ("list", "", "pods", "", "", "a")),
        ("GET", "/api/v1/namespaces/a/pods", {"watch": "true"}, ("watch", "", "pods", "", "", "a")),
        ("GET", "/api/v1/pods", {}, ("list", "", "pods", "", "", "")),
        ("GET", "/api/v1/namespaces/a/pods/p/log", {}, ("get", "", "pods", "log", "p", "a")),
        ("POST", "/apis/g.io/v1/namespaces/a/savepoints", {}, ("create", "g.io", "savepoints", "", "", "a")),
        (
            "PATCH",
            "/apis/g.io/v1/namespaces/a/jobs/j/status",
            {},
            ("patch", "g.io", "jobs", "status", "j", "a"),
        ),
        ("PUT", "/apis/g.io/v1/namespaces/a/jobs/j", {}, ("update", "g.io", "jobs", "", "j", "a")),
        ("DELETE", "/api/v1/namespaces/a/pods/p", {}, ("delete", "", "pods", "", "p", "a")),
        ("DELETE", "/api/v1/namespaces/a/pods", {}, ("deletecollection", "", "pods", "", "", "a")),
        ("GET", "/api/v1/namespaces", {}, ("list", "", "namespaces", "", "", "")),
        ("GET", "/api/v1/namespaces/a", {}, ("get", "", "namespaces", "", "a", "a")),
        ("GET", "/api/v1/namespaces/a/status", {}, ("get", "", "namespaces", "status", "a", "a")),
        (
            "GET",
            "/apis/x.io/v1/crds",
            {"fieldSelector": "metadata.name=c"},
            ("list", "x.io", "crds", "", "c", ""),
        ),
    ],
)
def test_request_attributes(method: str, path: str, query: dict[str, str], expected: tuple[str, ...]) -> None:
    a = rbac.request_attributes(method, path, query)
    assert a.resource_request
    assert (a.verb, a.api_group, a.resource, a.subresource, a.name, a.namespace) == expected


@pytest.mark.parametrize("path", ["/api", "/apis", "/apis/g.io", "/apis/g.io/v1", "/api/v1", "/version"])
def test_discovery_paths_are_non_resource_requests(path: str) -> None:
    a = attrs("GET", path)
    assert not a.resource_request and a.verb == "get" and a.path == path


def role(kind: str, name: str, rules: list[dict[str, Any]], namespace: str = "") -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"kind": kind, "metadata": meta, "rules": rules}


def binding(
    binding_kind: str, role_kind: str, name: str, namespace: str = "", subject: dict[str, str] | None = None
) -> dict[str, Any]:
    meta = {"name": name, **({"namespace": namespace} if namespace else {})}
    subj = subject or {"kind": "ServiceAccount", "name": "op", "namespace": "streaming"}
    return {
        "kind": binding_kind,
        "metadata": meta,
        "roleRef": {"kind": role_kind, "name": name},
        "subjects": [subj],
    }


def cluster_policy(*rules: dict[str, Any]) -> rbac.Policy:
    return rbac.Policy.from_manifests(
        [
            *rbac.BOOTSTRAP,
            role("ClusterRole", "r", list(rules)),
            binding("ClusterRoleBinding", "ClusterRole", "r"),
        ]
    )


def test_verbs_and_the_verb_wildcard() -> None:
    policy = cluster_policy({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]})
    assert rbac.authorize(policy, SA, attrs("GET", "/api/v1/namespaces/a/pods/p"))
    assert rbac.authorize(policy, SA, attrs("GET", "/api/v1/namespaces/a/pods"))
    assert not rbac.authorize(policy, SA, attrs("GET", "/api/v1/namespaces/a/pods", watch="true"))
    assert not rbac.authorize(policy, SA, attrs("POST", "/api/v1/namespaces/a/pods"))
    anything = cluster_policy({"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]})
    assert rbac.authorize(anything, SA, attrs("DELETE", "/api/v1/namespaces/a/pods"))
    assert not rbac.authorize(anything, SA, attrs("GET", "/api/v1/namespaces/a/services"))


def test_api_groups_must_match() -> None:
    policy = cluster_policy({"apiGroups": ["g.io"], "resources": ["savepoints"], "verbs": ["create"]})
    assert rbac.authorize(policy, SA, attrs("POST", "/apis/g.io/v1/namespaces/a/savepoints"))
    assert not rbac.authorize(policy, SA, attrs("POST", "/apis/h.io/v1/namespaces/a/savepoints"))
    every = cluster_policy({"apiGroups": ["*"], "resources": ["savepoints"], "verbs": ["create"]})
    assert rbac.authorize(every, SA, attrs("POST", "/apis/h.io/v1/namespaces/a/savepoints"))


def test_subresources_are_their_own_resources() -> None:
    pods = cluster_policy({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]})
    assert not rbac.authorize(pods, SA, attrs("GET", "/api/v1/namespaces/a/pods/p/log"))
    log = cluster_policy({"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]})
    assert rbac.authorize(log, SA, attrs("GET", "/api/v1/namespaces/a/pods/p/log"))
    assert not rbac.authorize(log, SA, attrs("GET", "/api/v1/namespaces/a/pods/p"))
    status = cluster_policy({"apiGroups": ["g.io"], "resources": ["*/status"], "verbs": ["patch"]})
    assert rbac.authorize(status, SA, attrs("PATCH", "/apis/g.io/v1/namespaces/a/jobs/j/status"))
    assert not rbac.authorize(status, SA, attrs("PATCH", "/apis/g.io/v1/namespaces/a/jobs/j"))
    every = cluster_policy({"apiGroups": [""], "resources": ["*"], "verbs": ["get"]})
    assert rbac.authorize(every, SA, attrs("GET", "/api/v1/namespaces/a/pods/p/log"))


def test_resource_names_never_match_a_list_or_create() -> None:
    policy = cluster_policy(
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["lease"], "verbs": ["*"]}
    )
    assert rbac.authorize(policy, SA, attrs("PATCH", "/api/v1/namespaces/a/configmaps/lease"))
    assert not rbac.authorize(policy, SA, attrs("PATCH", "/api/v1/namespaces/a/configmaps/other"))
    assert not rbac.authorize(policy, SA, attrs("GET", "/api/v1/namespaces/a/configmaps"))
    assert not rbac.authorize(policy, SA, attrs("POST", "/api/v1/namespaces/a/configmaps"))


def test_a_role_binding_grants_only_in_its_namespace() -> None:
    rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "get"]}]
    policy = rbac.Policy.from_manifests(
        [
            role("Role", "r", rules, "team-a"),
            binding("RoleBinding", "Role", "r", "team-a"),
            role("ClusterRole", "c", rules),
            {
                **binding("RoleBinding", "ClusterRole", "c", "team-b"),
                "roleRef": {"kind": "ClusterRole", "name": "c"},
            },
        ]
    )
    assert rbac.authorize(policy, SA, attrs("GET", "/api/v1/namespaces/team-a/pods"))
    assert rbac.authorize(
        policy, SA, attrs("GET", "/api/v1/namespaces/team-b/pods/p")
    )  # a ClusterRole, bound here
    assert not rbac.authorize(policy, SA, attrs("GET", "/api/v1/namespaces/team-c/pods"))
    assert not rbac.authorize(policy, SA, attrs("GET", "/api/v1/pods"))  # not across all namespaces
    # a Role of another namespace with the same name grants nothing here
    other = rbac.Policy.from_manifests(
        [role("Role", "r", rules, "team-a"), binding("RoleBinding", "Role", "r", "x")]
    )
    assert not rbac.authorize(other, SA, attrs("GET", "/api/v1/namespaces/x/pods"))


def test_a_cluster_role_binding_grants_everywhere_and_at_the_cluster_scope() -> None:
    policy = cluster_policy({"apiGroups": [""], "resources": ["namespaces", "pods"], "verbs": ["list"]})
    assert rbac.authorize(policy, SA, attrs("GET", "/api/v1/namespaces"))
    assert rbac.authorize(policy, SA, attrs("GET", "/api/v1/pods"))
    assert rbac.authorize(policy, SA, attrs("GET", "/api/v1/namespaces/any/pods"))


def test_subjects() -> None:
    rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]
    get = attrs("GET", "/api/v1/namespaces/a/pods/p")
    for subject, allowed in (
        ({"kind": "ServiceAccount", "name": "op", "namespace": "streaming"}, {SA}),
        ({"kind": "ServiceAccount", "name": "op", "namespace": "elsewhere"}, set()),
        ({"kind": "Group", "name": "system:serviceaccounts:streaming"}, {SA, OTHER}),
        ({"kind": "User", "name": OTHER.name}, {OTHER}),
    ):
        policy = rbac.Policy.from_manifests(
            [
                role("ClusterRole", "r", rules),
                binding("ClusterRoleBinding", "ClusterRole", "r", subject=subject),
            ]
        )
        assert {u for u in (SA, OTHER) if rbac.authorize(policy, u, get)} == allowed, subject
    # a RoleBinding's service account without a namespace is one of the binding's namespace
    local = rbac.Policy.from_manifests(
        [
            role("Role", "r", rules, "streaming"),
            binding("RoleBinding", "Role", "r", "streaming", {"kind": "ServiceAccount", "name": "op"}),
        ]
    )
    assert rbac.authorize(local, SA, attrs("GET", "/api/v1/namespaces/streaming/pods/p"))


def test_discovery_for_every_authenticated_user_and_masters_for_everything() -> None:
    policy = rbac.Policy.from_manifests(rbac.BOOTSTRAP)
    assert rbac.authorize(policy, SA, attrs("GET", "/apis/g.io/v1"))
    assert rbac.authorize(policy, SA, attrs("GET", "/version"))
    assert not rbac.authorize(policy, SA, attrs("POST", "/apis"))
    assert not rbac.authorize(policy, SA, attrs("GET", "/metrics"))
    assert not rbac.authorize(policy, SA, attrs("GET", "/api/v1/namespaces/a/pods"))
    assert rbac.authorize(policy, rbac.cluster_admin(), attrs("DELETE", "/api/v1/namespaces/a/pods"))


def test_forbidden_message_is_the_api_servers() -> None:
    a = attrs("POST", "/apis/streaming.heliosdb.io/v1/namespaces/default/savepoints")
    assert rbac.forbidden_message(SA, a) == (
        'savepoints.streaming.heliosdb.io is forbidden: User "system:serviceaccount:streaming:op" cannot '
        'create resource "savepoints" in API group "streaming.heliosdb.io" in the namespace "default"'
    )
    log = attrs("GET", "/api/v1/namespaces/a/pods/p/log")
    assert rbac.forbidden_message(SA, log).startswith('pods "p" is forbidden: ')
    assert 'resource "pods/log" in API group "" in the namespace "a"' in rbac.forbidden_message(SA, log)
    assert rbac.forbidden_message(SA, attrs("GET", "/api/v1/namespaces")).endswith("at the cluster scope")
