"""The CRD conversion webhook: StreamingJob and Savepoint objects between ``v1alpha1`` and ``v1alpha2``.

The API server stores ``v1alpha2`` and calls this (a ``ConversionReview``, apiextensions.k8s.io/v1) to
serve an object in the other version: a client still on ``v1alpha1``, or an object stored as ``v1alpha1``
before the upgrade read as ``v1alpha2``. Only ``spec`` differs (the job's field names, ``crds.to_camel``
/ ``crds.to_snake``); metadata and status are returned as they are, as the webhook contract requires.
The operator serves it (``opmetrics.serve``, on every replica, leader or not). Pure: dicts in and out.
"""

from __future__ import annotations

from typing import Any, Final

from heliosdb_streaming.kubernetes import crds

Obj = dict[str, Any]
REVIEW_VERSION: Final = "apiextensions.k8s.io/v1"
VERSIONS: Final = (crds.API_VERSION, crds.LEGACY_API_VERSION)


class ConversionError(ValueError):
    """An object this webhook cannot convert (an unknown version or kind)."""


def convert(obj: Obj, desired: str) -> Obj:
    """``obj`` (either version) as ``desired`` (an apiVersion); a copy with its spec renamed."""
    source, kind = obj.get("apiVersion"), obj.get("kind")
    if source not in VERSIONS or desired not in VERSIONS:
        raise ConversionError(f"cannot convert {source} to {desired}: only {', '.join(VERSIONS)}")
    if kind not in (crds.STREAMING_JOB_KIND, crds.SAVEPOINT_KIND):
        raise ConversionError(f"unknown kind {kind!r}")
    out = dict(obj, apiVersion=desired)
    spec = obj.get("spec")
    if kind == crds.STREAMING_JOB_KIND and source != desired and isinstance(spec, dict):
        out["spec"] = crds.to_camel(spec) if desired == crds.API_VERSION else crds.to_snake(spec)
    return out


def review(body: Obj) -> Obj:
    """The ``ConversionReview`` answering ``body``'s request: all objects converted, or a failure
    naming the first object that could not be (the API server then fails the client's request)."""
    request = body.get("request") or {}
    uid = request.get("uid", "")
    desired = str(request.get("desiredAPIVersion") or "")
    try:
        converted = [convert(o, desired) for o in request.get("objects") or []]
        result: Obj = {"status": "Success"}
    except ConversionError as e:
        converted, result = [], {"status": "Failure", "message": str(e)}
    return {
        "apiVersion": REVIEW_VERSION,
        "kind": "ConversionReview",
        "response": {"uid": uid, "convertedObjects": converted, "result": result},
    }
