"""A Kubernetes API server for tests and benchmarks: kmock's ``KubernetesEmulator`` plus the metadata
the operator and kopf rely on.

kmock stores objects as plain JSON and merges patches; a real server also stamps ``uid``,
``resourceVersion`` (kopf guards its JSON patches with a ``test`` on it), ``generation`` (bumped by
spec changes) and ``creationTimestamp``. ``ClusterEmulator`` adds those and answers
``/api/v1/namespaces``, which kmock cannot parse, and the pod log subresource (``pods/{name}/log``,
text as a kubelet serves it) from ``pod_logs``, a callable a test kubelet provides, and a custom
resource's ``scale`` subresource from ``scales`` (the CRD's replica paths).
``start_cluster`` serves it on a free port and writes a kubeconfig pointing at it.

Two checks a real API server makes, off unless a test turns them on (kept small, on purpose):

- Authentication and RBAC (``users``, token -> ``rbac.UserInfo``): a request without a known bearer
  token is 401; one its user's Roles and ClusterRoles (the ``rbac.authorization.k8s.io`` objects stored
  here, created like any other object, plus the bootstrap discovery role) do not grant is 403 Forbidden,
  decided by ``rbac.authorize``. Every authorized request is counted in ``audit`` (user, verb, group,
  resource, namespace): the requests a least-privilege Role needs; every refused one in ``denied``.
- Custom resource schemas (``schemas``, (group, plural) -> ``SchemaCheck``): a create or patch of a
  custom resource is checked on the object it would store; unknown fields are pruned (or refused with
  ``?fieldValidation=Strict``) and an invalid object is 422 Invalid, as a CRD's structural schema does.

Written against kmock 0.8, pinned exactly (``kmock==0.8`` in pyproject) because these reach into
kmock's private internals; each is small and is here for one reason:

1. ``__call__`` (``KubernetesEmulator`` as kmock's aiohttp handler) answers authentication/RBAC,
   ``/api/v1/namespaces`` (kmock cannot parse that path) and ``pods/{name}/log`` before kmock, and
   then trims kmock's private ``_requests`` log: kmock matches each request against every request
   served so far, so a long test would slow down quadratically.
2. ``_handle`` (private) stamps ``uid``, ``resourceVersion``, ``generation``, ``creationTimestamp`` and
   ``generateName`` names on the request's body, and prunes/validates custom resources against their
   schema (``_admit``), before kmock stores the object: kmock stores the body as it is given.
   A merge patch that names a ``metadata.resourceVersion`` other than the stored one is 409 Conflict,
   as on a real server (the operator's leader election relies on it: ``operator.leader``).
3. ``_serve_list`` (private) adds the list's ``metadata.resourceVersion``, which a watch resumes from.
4. ``_serve_watch`` (private) sends only changes after the requested ``resourceVersion``, as a real
   server does; kmock replays every object as ADDED, and a client that listed first would then see
   stale versions after newer ones. It reads kmock's private ``_lock``, ``_buses`` and
   ``objects`` the same way kmock's own watch does.
5. ``kmock._internal.dicts.patch_dict`` computes the object a patch would make, so that the schema
   check sees exactly what kmock will store.

6. ``_scale`` forwards a ``/scale`` change as a patch of the object through kmock's handler, with the
   body set on a clone of the request (aiohttp's private ``_read_bytes``).

7. ``_convert_version`` serves a custom resource in a version other than the one kmock stores
   (``conversions``, (group, plural) -> (storage version, converter)), as the API server does with a
   CRD's conversion webhook: the request goes to kmock under the storage version (its body converted;
   a merge patch applied to the object as the client's version has it), the answer is converted back.
   A watch in another version is refused (400): no caller here needs one. A deprecated version's
   answers carry its ``Warning: 299`` header (``deprecations``), as kubectl shows it.

A kmock upgrade is a deliberate change: rerun tests/k8s and adapt the seven points above.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import itertools
import logging
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp.web
import kmock
import kopf
import orjson
from kmock._internal import dicts as kmock_dicts

from heliosdb_streaming.kubernetes import crds, deployment_crd
from heliosdb_streaming.testing import rbac

logger = logging.getLogger(__name__)

NAMESPACES_PATH = "/api/v1/namespaces"
POD_LOG_PATH = re.compile(r"^/api/v1/namespaces/(?P<namespace>[^/]+)/pods/(?P<name>[^/]+)/log$")
SCALE_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<namespace>[^/]+)/(?P<plural>[^/]+)"
    r"/(?P<name>[^/]+)/scale$"
)

VERSIONED_PATH = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)(/namespaces/(?P<namespace>[^/]+))?/(?P<plural>[^/]+)"
    r"(/(?P<name>[^/]+))?(?P<sub>/.*)?$"
)
# objects (any version) and the apiVersion wanted -> the objects in it (a CRD's conversion webhook)
Converter = Callable[[list[dict[str, Any]], str], Awaitable[list[dict[str, Any]]]]

# (namespace, pod name) -> the container's output so far, or None while it has not started
PodLogSource = Callable[[str, str], str | None]
RBAC_GROUP = rbac.GROUP
# (user, verb, API group, resource[/subresource] or non-resource path, namespace)
AuditKey = tuple[str, str, str, str, str]


class SchemaCheck(Protocol):
    """A CRD's structural schema: ``(object, strict, old)`` -> (the object pruned, why it is invalid);
    ``old``: the stored object an update replaces (None on create), for CEL transition rules."""

    def __call__(
        self, obj: dict[str, Any], *, strict: bool, old: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], list[str]]: ...


class ClusterEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with uids, resource versions, generations and a namespace list."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._versions = itertools.count(1)
        self._last_version = 0
        self.namespace_names: set[str] = {"default"}
        self.pod_logs: PodLogSource | None = None
        self.users: dict[str, rbac.UserInfo] = {}  # bearer token -> user; empty: no authentication
        self.audit: collections.Counter[AuditKey] = collections.Counter()
        self.denied: collections.Counter[AuditKey] = collections.Counter()  # the 403s, the same way
        self.schemas: dict[tuple[str, str], SchemaCheck] = {}  # (group, plural) -> check
        # (group, plural) -> a CRD's scale subresource (specReplicasPath, statusReplicasPath, ...)
        self.scales: dict[tuple[str, str], Mapping[str, str]] = {}
        # (group, plural) -> (storage version, converter): other versions are served through it
        self.conversions: dict[tuple[str, str], tuple[str, Converter]] = {}
        # (group, version) -> the CRD's deprecationWarning, sent as a ``Warning`` header as a server does
        self.deprecations: dict[tuple[str, str], str] = {}
        self._policy: rbac.Policy | None = None

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        refusal = self._authorize(raw_request)
        if refusal is not None:
            return refusal
        if raw_request.path.rstrip("/") == NAMESPACES_PATH and raw_request.method == "GET":
            return await self._namespaces(raw_request)
        log_path = POD_LOG_PATH.match(raw_request.path)
        if log_path is not None and raw_request.method == "GET":
            return self._pod_log(raw_request, log_path["namespace"], log_path["name"])
        versioned = VERSIONED_PATH.match(raw_request.path)
        if versioned is not None and (versioned["group"], versioned["plural"]) in self.conversions:
            storage, _ = self.conversions[(versioned["group"], versioned["plural"])]
            if versioned["version"] != storage:
                return await self._convert_version(raw_request, versioned)
        scale_path = SCALE_PATH.match(raw_request.path)
        if scale_path is not None and (scale_path["group"], scale_path["plural"]) in self.scales:
            return await self._scale(raw_request, scale_path)
        # kmock matches each request against every request served so far (its views are sequences
        # of requests), so a long run slows down quadratically: forget a request once it is served
        try:
            return await super().__call__(raw_request)
        finally:
            self._requests[:] = [r for r in self._requests if r._raw_request is not raw_request]

    def _authorize(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.Response | None:
        """401 for an unknown caller, 403 for a request its RBAC does not grant, else None."""
        if not self.users:
            return None
        scheme, _, token = raw_request.headers.get("Authorization", "").partition(" ")
        user = self.users.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            return _status(401, "Unauthorized", "Unauthorized")
        a = rbac.request_attributes(raw_request.method, raw_request.path, raw_request.query)
        if self._policy is None:
            stored = [
                obj.raw
                for (resource, _ns, _name), obj in self.objects.items()
                if getattr(resource, "group", None) == RBAC_GROUP and not obj.deleted
            ]
            self._policy = rbac.Policy.from_manifests([*rbac.BOOTSTRAP, *stored])
        key = (user.name, a.verb, a.api_group, a.combined_resource or a.path, a.namespace)
        if rbac.authorize(self._policy, user, a):
            self.audit[key] += 1
            return None
        self.denied[key] += 1
        message = rbac.forbidden_message(user, a)
        logger.info("403: %s", message)
        details = {"name": a.name, "group": a.api_group, "kind": a.resource}
        return _status(403, "Forbidden", message, details)

    def _pod_log(
        self, raw_request: aiohttp.web.BaseRequest, namespace: str, name: str
    ) -> aiohttp.web.StreamResponse:
        """``GET .../pods/{name}/log[?tailLines=N]``: 404 for no such pod, 400 before its container runs."""
        exists = any(
            getattr(resource, "plural", None) == "pods" and (ns, n) == (namespace, name) and not obj.deleted
            for (resource, ns, n), obj in self.objects.items()
        )
        if not exists:
            return _status(404, "NotFound", f'pods "{name}" not found')
        text = self.pod_logs(namespace, name) if self.pod_logs is not None else None
        if text is None:
            return _status(400, "BadRequest", f'container in pod "{name}" is waiting to start')
        tail = raw_request.query.get("tailLines", "")
        if tail.isdigit():
            lines = text.splitlines(keepends=True)
            text = "".join(lines[len(lines) - int(tail) :]) if int(tail) else ""
        return aiohttp.web.Response(text=text, content_type="text/plain")

    async def _scale(
        self, raw_request: aiohttp.web.BaseRequest, path: re.Match[str]
    ) -> aiohttp.web.StreamResponse:
        """A custom resource's ``scale`` subresource (an ``autoscaling/v1`` Scale), as the API server
        serves it from the CRD's paths. A change of ``spec.replicas`` (merge patch, JSON patch or PUT,
        as ``kubectl scale`` sends) becomes a merge patch of the object at ``specReplicasPath``, served
        like any patch: schema-checked, generation bumped, watchers notified."""
        paths = self.scales[(path["group"], path["plural"])]
        namespace, name = path["namespace"], path["name"]
        if raw_request.method != "GET":
            main = raw_request.path.removesuffix("/scale")
            headers = {**raw_request.headers, "Content-Type": "application/merge-patch+json"}
            forward = raw_request.clone(method="PATCH", rel_url=main, headers=headers)  # before reading
            body = orjson.loads(await raw_request.read() or b"{}")
            replicas = _scale_replicas(body)
            if not isinstance(replicas, int) or isinstance(replicas, bool):
                return _status(422, "Invalid", "spec.replicas: an integer is required")
            patch: dict[str, Any] = {}
            node = patch
            keys = paths["specReplicasPath"].strip(".").split(".")
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = replicas
            forward._read_bytes = orjson.dumps(patch)  # aiohttp reads the body from here
            response = await kmock.KubernetesEmulator.__call__(self, forward)
            if response.status >= 300:
                return response
        obj = next(
            (
                o.raw
                for (resource, ns, n), o in self.objects.items()
                if (getattr(resource, "group", None), getattr(resource, "plural", None))
                == (path["group"], path["plural"])
                and (ns, n) == (namespace, name)
                and not o.deleted
            ),
            None,
        )
        if obj is None:
            return _status(404, "NotFound", f'{path["plural"]}.{path["group"]} "{name}" not found')
        meta = obj.get("metadata") or {}
        status: dict[str, Any] = {"replicas": _at(obj, paths["statusReplicasPath"]) or 0}
        if paths.get("labelSelectorPath") and _at(obj, paths["labelSelectorPath"]) is not None:
            status["selector"] = _at(obj, paths["labelSelectorPath"])
        scale = {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta},
            "spec": {"replicas": _at(obj, paths["specReplicasPath"]) or 0},
            "status": status,
        }
        return aiohttp.web.json_response(scale)

    async def _convert_version(
        self, raw_request: aiohttp.web.BaseRequest, path: re.Match[str]
    ) -> aiohttp.web.StreamResponse:
        """A request in a served non-storage version, answered through the converter (point 7)."""
        storage, convert = self.conversions[(path["group"], path["plural"])]
        asked, stored = f"{path['group']}/{path['version']}", f"{path['group']}/{storage}"
        if raw_request.query.get("watch") in ("true", "1"):
            return _status(400, "BadRequest", f"the emulator watches {stored} only, not {asked}")
        main = (
            f"/apis/{path['group']}/{storage}"
            + raw_request.path[len(f"/apis/{path['group']}/{path['version']}") :]
        )
        if raw_request.method == "PATCH" and "json-patch" in raw_request.headers.get("Content-Type", ""):
            return _status(415, "UnsupportedMediaType", f"JSON patches of {asked} are not emulated")
        headers = dict(raw_request.headers)
        if raw_request.method == "PATCH":
            headers["Content-Type"] = "application/merge-patch+json"
        query = f"?{raw_request.query_string}" if raw_request.query_string else ""
        forward = raw_request.clone(rel_url=main + query, headers=headers)  # before reading the body
        if raw_request.method in ("POST", "PUT"):
            obj = orjson.loads(await raw_request.read() or b"{}")
            forward._read_bytes = orjson.dumps(
                (await convert([obj], stored))[0]
            )  # aiohttp reads it from here
        elif raw_request.method == "PATCH":
            # a patch names the fields as the client's version has them: apply it to the object in
            # that version, then store the difference in the storage version
            current = next(
                (
                    dict(o.raw)
                    for (resource, ns, n), o in self.objects.items()
                    if (getattr(resource, "group", None), getattr(resource, "plural", None))
                    == (path["group"], path["plural"])
                    and (ns, n) == (path["namespace"], path["name"])
                    and not o.deleted
                ),
                None,
            )
            if current is None:
                return _status(
                    404, "NotFound", f'{path["plural"]}.{path["group"]} "{path["name"]}" not found'
                )
            patch = orjson.loads(await raw_request.read() or b"{}")
            theirs = (await convert([current], asked))[0]
            changed = (await convert([dict(kmock_dicts.patch_dict(copy.deepcopy(theirs), patch))], stored))[0]
            forward._read_bytes = orjson.dumps(merge_diff(current, changed))
        response = await self.__call__(forward)
        if not isinstance(response, aiohttp.web.Response) or response.body is None:
            return response
        try:
            answer = orjson.loads(bytes(response.body))  # type: ignore[arg-type]
        except orjson.JSONDecodeError:
            return response
        if isinstance(answer, dict) and answer.get("apiVersion") == stored:
            answer = (await convert([answer], asked))[0]
        elif isinstance(answer, dict) and isinstance(answer.get("items"), list):
            answer["items"] = await convert(answer["items"], asked) if answer["items"] else []
            answer["apiVersion"] = asked
        converted = aiohttp.web.json_response(answer, status=response.status)
        warning = self.deprecations.get((path["group"], path["version"]))
        if warning is not None:
            converted.headers["Warning"] = f'299 - "{warning}"'
        return converted

    async def _namespaces(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        names = set(self.namespace_names)
        for _resource, namespace, _name in self.objects:
            if namespace:
                names.add(namespace)
        items = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "uid": f"ns-{n}"}}
            for n in sorted(names)
        ]
        if raw_request.query.get("watch") != "true":
            body = {"apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": items}
            return aiohttp.web.json_response(body)
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw_request)
        for item in items:
            await response.write(orjson.dumps({"type": "ADDED", "object": item}) + b"\n")
        # namespaces never change here: hold the stream open for its timeout, as a server would
        await asyncio.sleep(float(raw_request.query.get("timeoutSeconds") or 60))
        return response

    async def _serve_list(self, request: kmock.Request) -> Any:
        payload: Any = await super()._serve_list(request)
        payload["metadata"]["resourceVersion"] = str(self._last_version)  # a watch can resume from here
        return payload

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        """A watch from ``resourceVersion`` N sends only changes after N, as a real server does.

        kmock's watch replays every object as ADDED; a client that listed first would then see
        stale versions after newer ones (and kopf would patch against them, fail and stall).
        """
        since_text = request.params.get("resourceVersion") or ""
        since = int(since_text) if since_text.isdigit() else 0
        yield b""
        assert request.resource is not None
        bus = self._buses[request.resource]
        async with self._lock:
            mark = await bus.mark()
            dump = [
                obj.raw
                for (resource, namespace, name), obj in self.objects.items()
                if self._matches(request, resource, namespace, name) and not obj.deleted
            ]
        try:
            for raw in dump:
                if _version(raw) > since:
                    yield {"type": "ADDED", "object": raw}
            async for event in bus.stream(since=mark):
                raw = event.get("object") or {}
                meta = raw.get("metadata") or {}
                mine = self._matches(request, request.resource, meta.get("namespace"), meta.get("name"))
                if mine and (event.get("type") == "DELETED" or _version(raw) > since):
                    yield event
        finally:
            await bus.unmark(mark)

    @staticmethod
    def _matches(request: kmock.Request, resource: Any, namespace: str | None, name: str | None) -> bool:
        return bool(
            resource == request.resource
            and (request.namespace is None or namespace == request.namespace)
            and (request.name is None or name == request.name)
        )

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if request.resource is not None:
            self._stamp(request)
            self._admit(request)
        try:
            return await super()._handle(request)
        finally:
            if getattr(request.resource, "group", None) == RBAC_GROUP:
                self._policy = None  # a Role or binding may have changed: read them again

    def _admit(self, request: kmock.Request) -> None:
        """Prunes and validates the object a create or patch of a custom resource would store.

        The request's body is rewritten in place so that kmock stores the pruned object: a created
        object is replaced, a merge patch becomes the diff to the pruned result, a JSON patch ends by
        replacing the whole document with it.
        """
        key = (getattr(request.resource, "group", ""), getattr(request.resource, "plural", ""))
        check = self.schemas.get(key)
        data: Any = request.data
        if check is None or request.action not in (kmock.action.CREATE, kmock.action.UPDATE):
            return
        current: dict[str, Any] = {}
        if request.action == kmock.action.CREATE:
            if not isinstance(data, dict):
                return
            result = copy.deepcopy(data)
        else:
            stored = self._current(request)
            if stored is None or request.name is None or not isinstance(data, dict | list):
                return  # kmock answers 404 for it
            current = stored
            try:
                result = dict(kmock_dicts.patch_dict(copy.deepcopy(current), data))
            except Exception:  # a JSON patch that does not apply: kmock answers it as it would
                return
        strict = request.params.get("fieldValidation") == "Strict"
        pruned, problems = check(result, strict=strict, old=current or None)
        if problems:
            meta = result.get("metadata") or {}
            name = meta.get("name") or request.name or ""
            kind = str(result.get("kind") or key[1])
            raise kmock.KubernetesError(
                status=422,
                reason="Invalid",
                message=f'{kind}.{key[0]} "{name}" is invalid: {"; ".join(problems)}',
                details={
                    "name": name,
                    "group": key[0],
                    "kind": kind,
                    "causes": [{"reason": "FieldValueInvalid", "message": p} for p in problems],
                },
            )
        if pruned == result:
            return
        if isinstance(data, list):
            data.append({"op": "replace", "path": "", "value": pruned})
        elif request.action == kmock.action.CREATE:
            data.clear()
            data.update(pruned)
        else:
            diff = merge_diff(current, pruned)
            data.clear()
            data.update(diff)

    def _stamp(self, request: kmock.Request) -> None:
        self._last_version = next(self._versions)
        version = str(self._last_version)
        data: Any = request.data
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            meta["resourceVersion"] = version
            meta.setdefault("generation", 1)
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
            if meta.get("generateName") and not meta.get("name"):
                meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:10]}"
            return
        if request.action != kmock.action.UPDATE or request.name is None:
            return
        current = self._current(request)
        generation = int(current.get("metadata", {}).get("generation", 1)) if current is not None else None
        if isinstance(data, list):  # a JSON patch: its resourceVersion test fails with 422, as on a server
            have = (current or {}).get("metadata", {}).get("resourceVersion")
            for op in data:
                is_test = op.get("op") == "test" and op.get("path") == "/metadata/resourceVersion"
                if is_test and op.get("value") != have:
                    raise kmock.KubernetesError(
                        status=422,
                        reason="Invalid",
                        message=f"resourceVersion is {have}, not {op.get('value')}",
                    )
            touches_spec = any(str(op.get("path", "")).startswith("/spec") for op in data)
            data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
            if touches_spec and request.subresource is None and generation is not None:
                data.append({"op": "add", "path": "/metadata/generation", "value": generation + 1})
        elif isinstance(data, dict):  # a merge patch
            meta = data.get("metadata")
            if not isinstance(meta, dict):
                meta = data["metadata"] = {}
            have = (current or {}).get("metadata", {}).get("resourceVersion")
            if meta.get("resourceVersion") is not None and meta["resourceVersion"] != have:
                # a patch naming a resourceVersion is a precondition (optimistic concurrency: Leases)
                raise kmock.KubernetesError(
                    status=409,
                    reason="Conflict",
                    message="the object has been modified; please apply your changes to the latest version",
                )
            meta["resourceVersion"] = version
            if "spec" in data and request.subresource is None and generation is not None:
                meta["generation"] = generation + 1

    def _current(self, request: kmock.Request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects:  # type: ignore[operator]
            return None
        obj = self.objects[key]  # type: ignore[index]
        return None if obj.deleted else dict(obj.raw)


def declare_resources(emulator: ClusterEmulator) -> None:
    """The core resources (bundled discovery data) and the custom resources, with their
    subresources (the StreamingJob's ``scale`` as its CRD declares it)."""
    emulator.resources.load_bundled()
    verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
    for kind, plural, short in (
        (crds.STREAMING_JOB_KIND, crds.STREAMING_JOB_PLURAL, "sj"),
        (crds.SAVEPOINT_KIND, crds.SAVEPOINT_PLURAL, "sp"),
        (deployment_crd.KIND, deployment_crd.PLURAL, deployment_crd.SHORT),
    ):
        emulator.resources[f"{crds.GROUP}/{crds.VERSION}/{plural}"] = kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=True,
            verbs=verbs,
            shortnames={short},
            subresources={"status", "scale"} if plural == crds.STREAMING_JOB_PLURAL else {"status"},
        )
    emulator.scales[(crds.GROUP, crds.STREAMING_JOB_PLURAL)] = crds.SCALE


def _at(obj: Mapping[str, Any], path: str) -> Any:
    """The value at a CRD's simple JSON path (``.spec.config.parallelism``), or None."""
    node: Any = obj
    for key in path.strip(".").split("."):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def _scale_replicas(body: Any) -> Any:
    """``spec.replicas`` of a Scale merge patch or PUT body, or the value a JSON patch sets it to."""
    if isinstance(body, list):
        return next((op.get("value") for op in body if op.get("path") == "/spec/replicas"), None)
    return ((body or {}).get("spec") or {}).get("replicas")


def merge_diff(current: Mapping[str, Any], target: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``current`` into ``target``."""
    diff: dict[str, Any] = {}
    for key in current:
        if key not in target:
            diff[key] = None
    for key, value in target.items():
        old = current.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            nested = merge_diff(old, value)
            if nested:
                diff[key] = nested
        elif key not in current or old != value:
            diff[key] = value
    return diff


def write_kubeconfig(path: Path, server: str, namespace: str = "default", token: str = "test-token") -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f'clusters: [{{name: emulator, cluster: {{server: "{server}"}}}}]\n'
        f"users: [{{name: tester, user: {{token: {token}}}}}]\n"
        "contexts: [{name: emulator, context: "
        f"{{cluster: emulator, user: tester, namespace: {namespace}}}}}]\n"
        "current-context: emulator\n"
    )
    return path


@dataclass(frozen=True, slots=True)
class Cluster:
    """A running emulator. ``kubeconfig`` and ``connection()`` are the cluster admin's (who bypasses
    RBAC); ``kubeconfig_of(user)`` and ``connection(user)`` are one of the ``users`` it was started with."""

    emulator: ClusterEmulator
    url: str
    kubeconfig: Path
    admin_token: str = ""
    tokens: Mapping[str, str] = field(default_factory=dict)
    kubeconfigs: Mapping[str, Path] = field(default_factory=dict)

    def connection(self, user: str | None = None) -> kopf.ConnectionInfo:
        token = self.tokens[user] if user is not None else self.admin_token
        return kopf.ConnectionInfo(server=self.url, token=token or None)

    def kubeconfig_of(self, user: str) -> Path:
        return self.kubeconfigs[user]


@contextlib.asynccontextmanager
async def start_cluster(
    directory: Path, users: Mapping[str, rbac.UserInfo] | None = None
) -> AsyncIterator[Cluster]:
    """An emulated API server on a free loopback port, with a kubeconfig in ``directory``.

    With ``users`` (a name -> who it authenticates as) the server authenticates and authorizes every
    request: each user gets a token and ``kubeconfig-{name}.yaml``, the admin ``kubeconfig.yaml``,
    and what a user may do is what the RBAC objects created in it grant.
    """
    async with ClusterEmulator() as emulator, kmock.Server(emulator) as server:
        declare_resources(emulator)
        url = str(server.url).rstrip("/")
        if users is None:
            yield Cluster(emulator, url, write_kubeconfig(directory / "kubeconfig.yaml", url))
            return
        admin = secrets.token_hex(16)
        tokens = {name: secrets.token_hex(16) for name in users}
        emulator.users = {admin: rbac.cluster_admin(), **{tokens[n]: user for n, user in users.items()}}
        kubeconfigs = {
            name: write_kubeconfig(directory / f"kubeconfig-{name}.yaml", url, token=tokens[name])
            for name in users
        }
        kubeconfig = write_kubeconfig(directory / "kubeconfig.yaml", url, token=admin)
        yield Cluster(emulator, url, kubeconfig, admin, tokens, kubeconfigs)


def _status(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> aiohttp.web.Response:
    """An error answer in the API server's shape (a ``Status`` object)."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return aiohttp.web.json_response(body, status=code)


def _version(raw: dict[str, Any]) -> int:
    text = str((raw.get("metadata") or {}).get("resourceVersion") or "0")
    return int(text) if text.isdigit() else 0
