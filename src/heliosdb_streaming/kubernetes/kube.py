"""The Kubernetes API client of the operator and the REST backend, over ``kubernetes_asyncio``.

The library does the HTTP (aiohttp, as kopf), TLS, authentication, (de)serialization and the watch
protocol (``watch.Watch``: the event stream, resource versions, the server's ERROR events). This
module keeps only what the callers need on top: objects as plain dicts (the generic ``call_api`` with
response type ``object``, as the library's ``CustomObjectsApi`` does) addressed by a ``Resource``, one
error type per status, and bounded retries of idempotent calls (the library makes one attempt).
Why ``kubernetes_asyncio``: it is aiohttp like kopf and our servers, typed, and it pins no
python-dateutil against botocore (the official ``kubernetes`` package does).

Credentials come from kopf's own login functions (kubeconfig or the pod's service account), turned
into the library's ``Configuration``, so the operator and this client always agree on the server.
Label selectors are sent to the server and also applied here, so a server that ignores them (a test
emulator) gives the same answers.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
import orjson
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import watch as k8s_watch

from heliosdb_streaming.kubernetes import crds, deployment_crd
from heliosdb_streaming.runtime.connectors.secrets import mask_secrets

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 30.0
RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0)  # for connection errors and 429/5xx on idempotent calls


@dataclass(frozen=True, slots=True)
class Resource:
    """One API resource: where it lives in the URL space and whether objects sit in namespaces."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
            if sub:
                base += f"/{sub}"
        return base


PODS = Resource("", "v1", "pods")
CONFIGMAPS = Resource("", "v1", "configmaps")
SERVICES = Resource("", "v1", "services")
SECRETS = Resource("", "v1", "secrets")
EVENTS = Resource("", "v1", "events")
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
STREAMINGJOBS = Resource(crds.GROUP, crds.VERSION, crds.STREAMING_JOB_PLURAL)
SAVEPOINTS = Resource(crds.GROUP, crds.VERSION, crds.SAVEPOINT_PLURAL)
STREAMINGJOBDEPLOYMENTS = Resource(crds.GROUP, crds.VERSION, deployment_crd.PLURAL)
LEASES = Resource("coordination.k8s.io", "v1", "leases")
PODDISRUPTIONBUDGETS = Resource("policy", "v1", "poddisruptionbudgets")


class ApiError(Exception):
    """A non-2xx answer of the API server, with its status code and the server's reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFoundError(ApiError):
    pass


class ConflictError(ApiError):
    pass


def selector_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def matches(obj: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
    if not labels:
        return True
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


def configuration(info: kopf.ConnectionInfo) -> k8s.Configuration:
    """The library's connection settings for what kopf's login found (server, TLS, token or user)."""
    config = k8s.Configuration(host=info.server.rstrip("/"))
    config.connection_pool_maxsize = 64
    config.verify_ssl = not info.insecure
    if info.ca_path:
        config.ssl_ca_cert = os.fsdecode(info.ca_path)
    elif info.ca_data:
        config.ssl_ca_cert = _temp_file(info.ca_data)
    if info.certificate_data and info.private_key_data:
        # ssl loads client certificates from files only: write them to private temporary files
        config.cert_file = _temp_file(info.certificate_data)
        config.key_file = _temp_file(info.private_key_data)
    elif info.certificate_path:
        config.cert_file = os.fsdecode(info.certificate_path)
        config.key_file = os.fsdecode(info.private_key_path) if info.private_key_path else None
    if info.token:
        config.api_key = {"BearerToken": info.token}
        config.api_key_prefix = {"BearerToken": info.scheme or "Bearer"}
    elif info.username:
        basic = base64.b64encode(f"{info.username}:{info.password or ''}".encode()).decode()
        config.api_key = {"BearerToken": basic}  # the library's one header-auth slot: Authorization
        config.api_key_prefix = {"BearerToken": "Basic"}
    return config


def _b64_text(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64decode(raw).decode()


def _temp_file(data: str | bytes) -> str:
    fd, path = tempfile.mkstemp(prefix="helios-kube-", suffix=".pem")
    with os.fdopen(fd, "w") as f:
        f.write(_b64_text(data))
    return path


def load_connection_info() -> kopf.ConnectionInfo:
    """The pod's service account inside a cluster, else the kubeconfig (``KUBECONFIG`` or ~/.kube/config)."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.LoginError("no service account token and no kubeconfig (set KUBECONFIG)")
    return info


AUTH = ["BearerToken"]  # the library's name for the Authorization header it fills from the configuration
OBJECT = {200: "object", 201: "object", 202: "object"}  # answers stay plain dicts, as JSON gave them
RETRYABLE = frozenset({429, 500, 502, 503, 504})


class KubeClient:
    """One library API client to one server. Use ``async with KubeClient(info)`` or ``close()``."""

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self.server = info.server.rstrip("/")
        self.default_namespace = info.default_namespace or "default"
        self._api = k8s.ApiClient(configuration(info))

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._api.close()

    # ------------------------------------------------------------------------------ requests

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        retry: bool = True,
    ) -> Any:
        """One call through the library, retried on connection errors and 429/5xx when ``retry``."""
        attempts = len(RETRY_DELAYS_S) + 1 if retry else 1
        for attempt in range(attempts):
            try:
                return await self._api.call_api(
                    path,
                    method,
                    query_params=list((params or {}).items()),
                    header_params={"Accept": "application/json", "Content-Type": content_type},
                    body=body,
                    response_types_map=OBJECT,
                    auth_settings=AUTH,
                    _return_http_data_only=True,
                    _request_timeout=REQUEST_TIMEOUT_S,
                )
            except k8s.ApiException as e:
                error = _error(e.status, e.body or b"")
                if e.status not in RETRYABLE or attempt == attempts - 1:
                    raise error from None
            except (aiohttp.ClientConnectionError, TimeoutError) as e:
                if attempt == attempts - 1:
                    raise
                error = ApiError(0, type(e).__name__, str(e))
            delay = RETRY_DELAYS_S[attempt]
            logger.warning("%s %s failed (%s); retry %d in %gs", method, path, error, attempt + 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def get(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._request("GET", resource.path(namespace, name))
        return result

    async def get_or_none(
        self, resource: Resource, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        try:
            return await self.get(resource, namespace, name)
        except NotFoundError:
            return None

    async def list(
        self, resource: Resource, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": selector_text(labels)} if labels else None
        result = await self._request("GET", resource.path(namespace), params=params)
        return [item for item in (result or {}).get("items", []) if matches(item, labels)]

    async def create(self, resource: Resource, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        # not retried: a create that reached the server before the connection broke would conflict
        result: dict[str, Any] = await self._request("POST", resource.path(namespace), body=body, retry=False)
        return result

    async def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386): nested dicts merge, ``None`` removes a key."""
        result: dict[str, Any] = await self._request(
            "PATCH",
            resource.path(namespace, name, subresource),
            body=dict(patch),
            content_type="application/merge-patch+json",
        )
        return result

    async def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        grace_period_s: int | None = None,
        uid: str | None = None,
    ) -> bool:
        """Deletes one object; False when it was already gone. Dependents go in the background.

        With ``uid`` the server deletes only that incarnation of the name (409 for a newer one).
        """
        options = k8s.V1DeleteOptions(
            api_version="v1",
            kind="DeleteOptions",
            propagation_policy="Background",
            grace_period_seconds=grace_period_s,
            preconditions=k8s.V1Preconditions(uid=uid) if uid else None,
        )
        try:
            await self._request(
                "DELETE", resource.path(namespace, name), body=self._api.sanitize_for_serialization(options)
            )
        except NotFoundError:
            return False
        return True

    async def watch(
        self,
        resource: Resource,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        timeout_s: int = 60,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yields ``(type, object)`` until the server ends the stream (after about ``timeout_s``).

        The caller lists first and then watches, and repeats; a stream that breaks just ends.
        """
        path = resource.path(namespace)
        try:
            async with k8s_watch.Watch(return_type="object") as stream:
                async for event in stream.stream(
                    self._open_watch,
                    path,
                    selector_text(labels) if labels else None,
                    timeout_seconds=timeout_s,
                ):
                    kind, obj = str(event.get("type", "")), event.get("raw_object") or {}
                    if matches(obj, labels):
                        yield kind, obj
        except k8s.ApiException as e:  # an ERROR event in the stream, e.g. 410 Gone: too old a version
            logger.info("watch %s ended by the server: %s %s", resource.plural, e.status, e.reason)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as e:
            logger.info("watch %s interrupted: %s", resource.plural, e)

    async def _open_watch(
        self,
        path: str,
        label_selector: str | None,
        *,
        timeout_seconds: int,
        watch: bool,
        _preload_content: bool,
        resource_version: str | None = None,
    ) -> aiohttp.ClientResponse:
        """The list call ``watch.Watch`` streams from (it passes ``watch`` and the version to resume at)."""
        params = [("watch", "true" if watch else "false"), ("timeoutSeconds", str(timeout_seconds))]
        params.append(("allowWatchBookmarks", "false"))
        if label_selector:
            params.append(("labelSelector", label_selector))
        if resource_version:
            params.append(("resourceVersion", resource_version))
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=REQUEST_TIMEOUT_S, sock_read=timeout_seconds + 15
        )
        response: aiohttp.ClientResponse = await self._api.call_api(
            path,
            "GET",
            query_params=params,
            header_params={"Accept": "application/json"},
            auth_settings=AUTH,
            _preload_content=_preload_content,
            _request_timeout=timeout,
        )
        if response.status >= 300:  # an error answer, not a stream: the caller gets it as for any call
            try:
                payload = await response.read()
            finally:
                response.release()
            raise _error(response.status, payload)
        return response

    async def pod_log(self, namespace: str, name: str, *, tail_lines: int | None = None) -> str:
        """A pod's container log (``GET .../pods/{name}/log``), the last ``tail_lines`` lines if given.

        ``NotFoundError`` for an unknown pod; an ``ApiError`` (400) while its container has not started.
        The text is read raw: the library would parse a log that happens to be JSON.
        """
        params = [("tailLines", str(tail_lines))] if tail_lines is not None else []
        response: aiohttp.ClientResponse = await self._api.call_api(
            PODS.path(namespace, name, "log"),
            "GET",
            query_params=params,
            header_params={"Accept": "text/plain, */*"},
            auth_settings=AUTH,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        try:
            payload = await response.read()
        finally:
            response.release()
        if response.status >= 300:
            raise _error(response.status, payload)
        return payload.decode(errors="replace")

    # ------------------------------------------------------------------------------ helpers

    async def post_event(
        self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str, component: str
    ) -> str | None:
        """Records an Event on an object and returns its name; a failure is logged, never raised
        (events are advisory), and gives None."""
        meta = involved.get("metadata") or {}
        namespace = meta.get("namespace") or self.default_namespace
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'helios')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": mask_secrets(message)[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": component,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "eventTime": None,
            "count": 1,
        }
        try:
            created = await self.create(EVENTS, namespace, event)
        except (ApiError, aiohttp.ClientError, TimeoutError) as e:
            logger.warning("could not post event %s on %s/%s: %s", reason, namespace, meta.get("name"), e)
            return None
        return str((created.get("metadata") or {}).get("name") or "") or None


def _error(status: int, payload: bytes | str) -> ApiError:
    if isinstance(payload, str):
        payload = payload.encode()
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    reason = str(body.get("reason") or "")
    message = str(body.get("message") or payload[:200].decode(errors="replace"))
    if status == 404:
        return NotFoundError(status, reason or "NotFound", message)
    if status == 409:
        return ConflictError(status, reason or "Conflict", message)
    return ApiError(status, reason or "Error", message)
