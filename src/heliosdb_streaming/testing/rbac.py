"""Kubernetes RBAC, decided as the API server's RBAC authorizer decides it, for the test API server.

A real cluster refuses a request its caller's Roles do not grant (403 Forbidden); an emulator that
answers everything hides a missing verb in the Helm chart until the chart meets a real cluster. This
module restates the parts of Kubernetes that decide it, without I/O:

- ``request_attributes``: what a request asks for (``k8s.io/apiserver`` ``RequestInfoFactory``): the verb
  from the method (GET without a name is ``list``, or ``watch`` with ``?watch=true``; DELETE without a
  name is ``deletecollection``), API group, resource, subresource, name and namespace from the path, or a
  non-resource URL (discovery: ``/api``, ``/apis/{group}/{version}``, ``/version``).
- ``authorize``: the RBAC authorizer (``plugin/pkg/auth/authorizer/rbac``): a ClusterRoleBinding grants
  its ClusterRole's rules everywhere; a RoleBinding grants its Role's (or a ClusterRole's) rules only
  inside the binding's namespace; a rule matches on verbs, API groups, resources (``*``, ``pods/log``,
  ``*/status``), resourceNames (which a ``list`` or ``create``, having no name, never matches) and
  non-resource URLs (``/apis/*``). The group ``system:masters`` is allowed everything, as on a cluster.
- ``forbidden_message``: the API server's words for a denial.

Pure: manifests and request parts in, decisions out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Manifest = Mapping[str, Any]

MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
ALL = "*"
GROUP = "rbac.authorization.k8s.io"
RBAC_KINDS = frozenset({"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"})

_METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
_NAMESPACE_SUBRESOURCES = frozenset({"status", "finalize"})

# The bootstrap policy every cluster has (``system:discovery``, ``system:public-info-viewer``): any
# authenticated user may read the discovery documents and the health endpoints.
BOOTSTRAP: tuple[Manifest, ...] = (
    {
        "kind": "ClusterRole",
        "metadata": {"name": "system:discovery"},
        "rules": [
            {
                "nonResourceURLs": [
                    "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/version",
                    "/version/", "/openapi", "/openapi/*",
                ],
                "verbs": ["get"],
            }
        ],
    },
    {
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "system:discovery"},
        "roleRef": {"apiGroup": GROUP, "kind": "ClusterRole", "name": "system:discovery"},
        "subjects": [{"apiGroup": GROUP, "kind": "Group", "name": AUTHENTICATED}],
    },
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class UserInfo:
    """Who makes a request, as the authenticator found it (token -> user)."""

    name: str
    groups: frozenset[str] = frozenset({AUTHENTICATED})


def service_account(namespace: str, name: str) -> UserInfo:
    """The user a service account's token authenticates as, with the groups Kubernetes gives it."""
    return UserInfo(
        f"system:serviceaccount:{namespace}:{name}",
        frozenset({"system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED}),
    )


def cluster_admin(name: str = "kubernetes-admin") -> UserInfo:
    """A user in ``system:masters`` (the kubeconfig ``kind`` and ``kubeadm`` hand out)."""
    return UserInfo(name, frozenset({MASTERS, AUTHENTICATED}))


@dataclass(frozen=True, slots=True)
class Attributes:
    """What one request asks to do (the fields RBAC decides on)."""

    verb: str
    path: str
    resource_request: bool
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    namespace: str = ""

    @property
    def combined_resource(self) -> str:
        """``pods/log``: how a rule names a subresource."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def request_attributes(method: str, path: str, query: Mapping[str, str]) -> Attributes:
    """The attributes of ``method path?query``, parsed as the API server's ``RequestInfoFactory`` does."""
    parts = [p for p in path.strip("/").split("/") if p]
    non_resource = Attributes(verb=method.lower(), path=path, resource_request=False)
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return non_resource
    rest = parts[1:]
    group = ""
    if parts[0] == "apis":
        if len(rest) < 3:
            return non_resource
        group, rest = rest[0], rest[1:]
    rest = rest[1:]  # the version
    verb = _METHOD_VERBS.get(method.upper(), "")
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in _NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) >= 2 else ""
    subresource = rest[2] if len(rest) >= 3 else ""
    if not name and verb == "get":
        verb = "watch" if query.get("watch") in ("true", "1") else "list"
        selected = _exact_name(query.get("fieldSelector", ""))
        if selected:
            name = selected
    if not name and verb == "delete":
        verb = "deletecollection"
    return Attributes(verb, path, True, group, resource, subresource, name, namespace)


def _exact_name(selector: str) -> str:
    """``metadata.name=x`` in a field selector narrows a list or watch to one name (as on a server)."""
    for term in selector.split(","):
        key, _, value = term.partition("=")
        if key.strip() == "metadata.name" and value and not value.startswith("="):
            return value.strip()
    return ""


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``PolicyRule`` of a Role or ClusterRole."""

    verbs: frozenset[str]
    api_groups: frozenset[str] = frozenset()
    resources: frozenset[str] = frozenset()
    resource_names: frozenset[str] = frozenset()
    non_resource_urls: frozenset[str] = frozenset()

    @classmethod
    def from_manifest(cls, rule: Manifest) -> Rule:
        return cls(
            frozenset(rule.get("verbs") or ()),
            frozenset(rule.get("apiGroups") or ()),
            frozenset(rule.get("resources") or ()),
            frozenset(rule.get("resourceNames") or ()),
            frozenset(rule.get("nonResourceURLs") or ()),
        )

    def allows(self, a: Attributes) -> bool:
        if ALL not in self.verbs and a.verb not in self.verbs:
            return False
        if not a.resource_request:
            return any(_url_matches(url, a.path) for url in self.non_resource_urls)
        return (
            (ALL in self.api_groups or a.api_group in self.api_groups)
            and any(_resource_matches(r, a) for r in self.resources)
            and (not self.resource_names or a.name in self.resource_names)
        )


def _resource_matches(rule_resource: str, a: Attributes) -> bool:
    if rule_resource in (ALL, a.combined_resource):
        return True
    return bool(a.subresource) and rule_resource == f"*/{a.subresource}"


def _url_matches(rule_url: str, path: str) -> bool:
    if rule_url in (ALL, path):
        return True
    return rule_url.endswith("*") and path.startswith(rule_url.rstrip("*"))


@dataclass(frozen=True, slots=True)
class Subject:
    kind: str  # ServiceAccount, User or Group
    name: str
    namespace: str = ""

    def applies_to(self, user: UserInfo, binding_namespace: str) -> bool:
        if self.kind == "User":
            return user.name == self.name
        if self.kind == "Group":
            return self.name in user.groups
        if self.kind == "ServiceAccount":
            return user.name == f"system:serviceaccount:{self.namespace or binding_namespace}:{self.name}"
        return False


@dataclass(frozen=True, slots=True)
class Binding:
    """A RoleBinding (``namespace`` set) or ClusterRoleBinding (``namespace`` empty)."""

    namespace: str
    role_kind: str
    role_name: str
    subjects: tuple[Subject, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    """The RBAC objects of a cluster: roles by (namespace, name), cluster roles by name, bindings."""

    roles: Mapping[tuple[str, str], tuple[Rule, ...]] = field(default_factory=dict)
    cluster_roles: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)
    bindings: tuple[Binding, ...] = ()

    @classmethod
    def from_manifests(cls, manifests: Iterable[Manifest]) -> Policy:
        """Roles, ClusterRoles and their bindings among ``manifests`` (other kinds are ignored)."""
        roles: dict[tuple[str, str], tuple[Rule, ...]] = {}
        cluster_roles: dict[str, tuple[Rule, ...]] = {}
        bindings: list[Binding] = []
        for doc in manifests:
            kind, meta = doc.get("kind"), doc.get("metadata") or {}
            name, namespace = str(meta.get("name", "")), str(meta.get("namespace") or "")
            if kind in ("Role", "ClusterRole"):
                rules = tuple(Rule.from_manifest(r) for r in doc.get("rules") or ())
                if kind == "Role":
                    roles[(namespace, name)] = rules
                else:
                    cluster_roles[name] = rules
            elif kind in ("RoleBinding", "ClusterRoleBinding"):
                ref = doc.get("roleRef") or {}
                subjects = tuple(
                    Subject(str(s.get("kind")), str(s.get("name")), str(s.get("namespace") or ""))
                    for s in doc.get("subjects") or ()
                )
                scope = namespace if kind == "RoleBinding" else ""
                bindings.append(Binding(scope, str(ref.get("kind")), str(ref.get("name")), subjects))
        return cls(roles, cluster_roles, tuple(bindings))

    def _rules(self, binding: Binding) -> tuple[Rule, ...]:
        if binding.role_kind == "ClusterRole":
            return self.cluster_roles.get(binding.role_name, ())
        if binding.role_kind == "Role" and binding.namespace:
            return self.roles.get((binding.namespace, binding.role_name), ())
        return ()


def authorize(policy: Policy, user: UserInfo, a: Attributes) -> bool:
    """Whether ``user`` may do ``a``: some binding that names the user grants a rule that allows it.

    A RoleBinding counts only for a namespaced request in its own namespace (not for a cluster-scoped
    request, nor for a list or watch across all namespaces).
    """
    if MASTERS in user.groups:
        return True
    for binding in policy.bindings:
        if binding.namespace and (not a.resource_request or binding.namespace != a.namespace):
            continue
        if not any(s.applies_to(user, binding.namespace) for s in binding.subjects):
            continue
        if any(rule.allows(a) for rule in policy._rules(binding)):
            return True
    return False


def forbidden_message(user: UserInfo, a: Attributes) -> str:
    """The API server's message for a 403 (``forbidden`` in ``k8s.io/apiserver`` ``responsewriters``)."""
    if not a.resource_request:
        return f'forbidden: User "{user.name}" cannot {a.verb} path "{a.path}"'
    what = f"{a.resource}.{a.api_group}" if a.api_group else a.resource
    if a.name:
        what = f'{what} "{a.name}"'
    scope = f'in the namespace "{a.namespace}"' if a.namespace else "at the cluster scope"
    return (
        f'{what} is forbidden: User "{user.name}" cannot {a.verb} resource "{a.combined_resource}" '
        f'in API group "{a.api_group}" {scope}'
    )
