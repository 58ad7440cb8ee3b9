"""The ``StreamingJobDeployment`` CRD: blue/green deployment of a StreamingJob, as the Flink operator's
``FlinkBlueGreenDeployment``.

Its ``spec.template.spec`` is a StreamingJob spec (the same schema, from the same pydantic models); the
operator (``operator.bluegreen``) runs it as the StreamingJob ``<name>-blue`` or ``<name>-green`` and,
on a template change, starts the other color from a savepoint of the active one and switches over once
the new one is caught up. Kept apart from ``crds`` so the two resources' schemas change independently;
``crds.all_crds`` renders this one into ``crds/streamingjobdeployment.yaml`` too. The template is
camelCase (``checkpointIntervalMs``), as a ``v1alpha2`` StreamingJob, and is copied into the colors as
it is.
"""

from __future__ import annotations

from typing import Any, Final

from heliosdb_streaming.kubernetes import crds

KIND: Final = "StreamingJobDeployment"
PLURAL: Final = "streamingjobdeployments"
SHORT: Final = "sjd"
FILE: Final = "streamingjobdeployment.yaml"

COLORS: Final = ("blue", "green")
PHASES: Final = ("Deploying", "Running", "Transitioning", "Failed")
HISTORY_RESULTS: Final = ("deployed", "switched", "aborted")
TRANSITION_STATES: Final = ("savepointing", "catching_up")
DEFAULT_CAUGHT_UP_TIMEOUT_MS: Final = 300_000
DEFAULT_MAX_SOURCE_LAG: Final = 1000
DEFAULT_CAUGHT_UP_CHECKPOINTS: Final = 2

Schema = dict[str, Any]


# what a savepoint of the active color cannot be restored into: the key groups and the state's form
TEMPLATE_IMMUTABLE_CONFIG: Final = ("maxParallelism", "stateBackend")


def _without_transition_rules(node: Any) -> Any:
    """``node`` without the CEL rules that compare with ``oldSelf`` (a StreamingJob's immutable fields).
    A copy."""
    if isinstance(node, list):
        return [_without_transition_rules(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: Schema = {}
    for key, value in node.items():
        if key == "x-kubernetes-validations":
            kept = [r for r in value if "oldSelf" not in str(r.get("rule", ""))]
            if kept:
                out[key] = kept
        else:
            out[key] = _without_transition_rules(value)
    return out


def template_spec_schema() -> Schema:
    """The StreamingJob spec, with the transition rules a template needs: each template runs as a new
    StreamingJob, so its name and checkpoint storage may change (what the StreamingJob's rules ask a
    new job for), but the new color restores a savepoint of the active one, which holds only under the
    same key groups and state backend. Both fields have defaults, so they are never unset."""
    job: Schema = _without_transition_rules(crds.streaming_job_spec_schema())
    config = job["properties"]["config"]["properties"]
    for field in TEMPLATE_IMMUTABLE_CONFIG:
        config[field]["x-kubernetes-validations"] = [
            {
                "rule": "self == oldSelf",
                "message": f"spec.template.spec.config.{field} is immutable: the new color restores a "
                "savepoint of the active one; create a new StreamingJobDeployment",
            }
        ]
    return job


def spec_schema() -> Schema:
    job = template_spec_schema()
    return {
        "type": "object",
        "required": ["template"],
        "description": "A StreamingJob template, deployed blue/green: a template change starts the other "
        "color from a savepoint of the active one and switches over once it has caught up",
        "properties": {
            "template": {
                "type": "object",
                "required": ["spec"],
                "properties": {
                    "metadata": {
                        "type": "object",
                        "description": "Labels and annotations of the StreamingJobs made from the template",
                        "properties": {
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    },
                    "spec": {**job, "description": "The StreamingJob spec of each color"},
                },
            },
            "caughtUpTimeoutMs": {
                "type": "integer",
                "minimum": 1,
                "default": DEFAULT_CAUGHT_UP_TIMEOUT_MS,
                "description": "How long the new color may take, from its creation, to run and catch up; "
                "past it the new color is deleted and the active one keeps running",
            },
            "maxSourceLag": {
                "type": "integer",
                "minimum": 0,
                "default": DEFAULT_MAX_SOURCE_LAG,
                "description": "Caught up needs the new color's source lag (records behind the newest "
                "offsets) at most this; sources that measure no lag skip this test",
            },
            "caughtUpCheckpoints": {
                "type": "integer",
                "minimum": 1,
                "default": DEFAULT_CAUGHT_UP_CHECKPOINTS,
                "description": "Caught up needs this many completed checkpoints of the new color (its "
                "output committed that often)",
            },
        },
    }


def status_schema() -> Schema:
    entry = {
        "type": "object",
        "properties": {
            "color": {"type": "string", "enum": list(COLORS)},
            "job": {"type": "string", "description": "The StreamingJob's name"},
            "result": {"type": "string", "enum": list(HISTORY_RESULTS)},
            "templateHash": {"type": "string"},
            "savepoint": {"type": "string", "description": "The Savepoint it started from (empty: none)"},
            "at": {"type": "string", "format": "date-time"},
            "message": {"type": "string"},
        },
    }
    return {
        "type": "object",
        crds.PRESERVE: True,
        "description": "Written by the operator",
        "properties": {
            "phase": {"type": "string", "enum": list(PHASES)},
            "activeColor": {"type": "string", "enum": list(COLORS)},
            "activeJob": {"type": "string", "description": "The StreamingJob that runs now"},
            "activeTemplateHash": {"type": "string", "description": "The template the active job runs"},
            "abortedTemplateHash": {
                "type": "string",
                "description": "A template whose switch failed: not tried again until the template changes",
            },
            "transition": {
                "type": "object",
                "description": "The switch in progress, if any",
                "properties": {
                    "state": {"type": "string", "enum": list(TRANSITION_STATES)},
                    "toColor": {"type": "string", "enum": list(COLORS)},
                    "job": {"type": "string"},
                    "templateHash": {"type": "string"},
                    "savepoint": {"type": "string"},
                    "startedAt": {"type": "string", "format": "date-time"},
                    "deadline": {"type": "string", "format": "date-time"},
                    "progress": {"type": "string", "description": "Checkpoints and lag of the new color"},
                },
            },
            "history": {
                "type": "array",
                "description": "Deployments and switches, newest last",
                "items": entry,
            },
            "message": {"type": "string"},
            "conditions": crds._conditions(),
            "observedGeneration": {"type": "integer", "format": "int64"},
        },
    }


def crd() -> Schema:
    """Served at the group's current version only: the resource is new, so no client ever wrote a
    ``v1alpha1`` one, and a single version needs no conversion (the webhook stays the StreamingJob's)."""
    return crds._crd(
        KIND,
        PLURAL,
        SHORT,
        {crds.VERSION: spec_schema()},
        status_schema(),
        [
            crds._column("Phase", "string", ".status.phase", "Deploying, Running, Transitioning or Failed"),
            crds._column("Active", "string", ".status.activeColor", "The color that runs now"),
            crds._column("Job", "string", ".status.activeJob", "The StreamingJob that runs now"),
            crds._column("Age", "date", ".metadata.creationTimestamp", "Since the resource was created"),
            crds._column("Message", "string", ".status.message", "What happens now", priority=1),
        ],
    )
