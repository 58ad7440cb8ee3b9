"""A small async Kubernetes API client over aiohttp: get, list, create, patch, delete and watch.

Why not a client library: the official ``kubernetes`` package pins python-dateutil against botocore,
and the operator needs only a handful of calls. Credentials come from kopf's own login functions
(kubeconfig or the pod's service account), so the operator and this client always agree on the server.
Label selectors are sent to the server and also applied here, so a server that ignores them (a test
emulator) gives the same answers.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
import orjson

from heliosdb_streaming.kubernetes import crds
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


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return True
    if info.insecure:
        return False
    context = ssl.create_default_context()
    if info.ca_path:
        context.load_verify_locations(cafile=os.fsdecode(info.ca_path))
    elif info.ca_data:
        context.load_verify_locations(cadata=_b64_text(info.ca_data))
    cert, key = info.certificate_path, info.private_key_path
    if info.certificate_data and info.private_key_data:
        # ssl loads client certificates from files only: write them to private temporary files
        cert, key = _temp_file(info.certificate_data), _temp_file(info.private_key_data)
    if cert:
        context.load_cert_chain(os.fsdecode(cert), os.fsdecode(key) if key else None)
    return context


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


class KubeClient:
    """One aiohttp session to one API server. Use ``async with KubeClient(info)`` or ``close()``."""

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self.server = info.server.rstrip("/")
        self.default_namespace = info.default_namespace or "default"
        headers = {"Accept": "application/json"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        auth = aiohttp.BasicAuth(info.username, info.password or "") if info.username else None
        connector = aiohttp.TCPConnector(ssl=_ssl_context(info), limit=64)
        self._session = aiohttp.ClientSession(
            headers=headers, auth=auth, connector=connector, json_serialize=lambda o: orjson.dumps(o).decode()
        )

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

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
        attempts = len(RETRY_DELAYS_S) + 1 if retry else 1
        data = None if body is None else orjson.dumps(body)
        for attempt in range(attempts):
            try:
                async with self._session.request(
                    method,
                    self.server + path,
                    data=data,
                    params=params,
                    headers={"Content-Type": content_type} if data is not None else None,
                    timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                ) as response:
                    payload = await response.read()
                    if response.status < 300:
                        return orjson.loads(payload) if payload else None
                    error = _error(response.status, payload)
                    if response.status not in (429, 500, 502, 503, 504) or attempt == attempts - 1:
                        raise error
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
        body: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Background",
        }
        if grace_period_s is not None:
            body["gracePeriodSeconds"] = grace_period_s
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await self._request("DELETE", resource.path(namespace, name), body=body)
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
        params = {"watch": "true", "timeoutSeconds": str(timeout_s), "allowWatchBookmarks": "false"}
        if labels:
            params["labelSelector"] = selector_text(labels)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT_S, sock_read=timeout_s + 15)
        try:
            async with self._session.get(
                self.server + resource.path(namespace), params=params, timeout=timeout
            ) as response:
                if response.status >= 300:
                    raise _error(response.status, await response.read())
                async for line in response.content:
                    if not line.strip():
                        continue
                    event = orjson.loads(line)
                    kind, obj = str(event.get("type", "")), event.get("object") or {}
                    if kind == "ERROR":
                        logger.info("watch %s ended by the server: %s", resource.plural, obj.get("message"))
                        return
                    if matches(obj, labels):
                        yield kind, obj
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as e:
            logger.info("watch %s interrupted: %s", resource.plural, e)

    async def pod_log(self, namespace: str, name: str, *, tail_lines: int | None = None) -> str:
        """A pod's container log (``GET .../pods/{name}/log``), the last ``tail_lines`` lines if given.

        ``NotFoundError`` for an unknown pod; an ``ApiError`` (400) while its container has not started.
        """
        params = {"tailLines": str(tail_lines)} if tail_lines is not None else None
        async with self._session.get(
            self.server + PODS.path(namespace, name, "log"),
            params=params,
            headers={"Accept": "text/plain, */*"},
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        ) as response:
            payload = await response.read()
            if response.status >= 300:
                raise _error(response.status, payload)
            return payload.decode(errors="replace")

    # ------------------------------------------------------------------------------ helpers

    async def post_event(
        self, involved: Mapping[str, Any], *, type_: str, reason: str, message: str, component: str
    ) -> None:
        """Records an Event on an object; a failure is logged, never raised (events are advisory)."""
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
            await self.create(EVENTS, namespace, event)
        except (ApiError, aiohttp.ClientError, TimeoutError) as e:
            logger.warning("could not post event %s on %s/%s: %s", reason, namespace, meta.get("name"), e)


def _error(status: int, payload: bytes) -> ApiError:
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
