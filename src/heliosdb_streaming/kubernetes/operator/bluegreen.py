"""Blue/green deployment of a StreamingJob (``StreamingJobDeployment``), as the Flink operator's
``FlinkBlueGreenDeployment``.

The deployment's ``spec.template`` runs as the StreamingJob ``<name>-blue`` (first) and, after each
template change, alternately ``<name>-green`` / ``<name>-blue``. A switch, one step per tick
(``decide`` is pure; ``BlueGreenController`` observes and acts):

1. a Savepoint resource of the active job (owned by it), taken as any other Savepoint;
2. once it completed, the new color's StreamingJob from the template, ``restoreFrom`` that Savepoint,
   owned by the deployment; the active job keeps running meanwhile;
3. once the new job is **caught up** (``caught_up``) the active StreamingJob is deleted (its job is
   cancelled) and the new color is active; if the new job fails, disappears, or is not caught up within
   ``caughtUpTimeoutMs`` of its creation, it is deleted instead and the active job runs on, with the
   reason in ``status.message``, the history and a Warning Event. That template is not tried again until
   the template changes.

Caught up: the new job runs, has completed ``caughtUpCheckpoints`` checkpoints of its own (its output up
to there is committed: exactly-once sinks commit with checkpoints), and its source lag (records behind
the newest offsets, from its workers' heartbeats) is at most ``maxSourceLag``; a job whose sources
report no lag is judged by the checkpoints alone, and a bounded job that already finished is caught up.
Both colors run side by side until the switch, so both write to the sinks for that while: a sink keyed
by the result's key (an upserting database sink) ends with every result once.

The controller acts through resources only (StreamingJobs, a Savepoint, the deployment's status) and
reads the jobs' phases from their status, so it is the same whether the operator runs the control
planes or a job manager pod per job does; only the new color's checkpoints and lag come from where the
job runs (``Progress``: the operator's control plane, or the job manager's REST metrics).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import kopf

from heliosdb_streaming.kubernetes import crds, deployment_crd, kube
from heliosdb_streaming.kubernetes.operator import events, status

logger = logging.getLogger(__name__)

TICK_S = 1.0
HISTORY_LIMIT = 10
LABEL_DEPLOYMENT = f"{crds.GROUP}/deployment"
LABEL_COLOR = f"{crds.GROUP}/color"
ENDED = ("failed", "cancelled")
SAVEPOINT_ENDED = ("failed", "missing")

# the completed checkpoints and source lag (None: not measured) of the job of a StreamingJob resource;
# None while they cannot be told (not submitted yet, its job manager unreachable)
Progress = Callable[[Mapping[str, Any]], Awaitable[tuple[int, int | None] | None]]


class Action(StrEnum):
    NONE = "none"
    DEPLOY = "deploy"  # no job yet: the template as blue
    START = "start"  # a new template: a Savepoint of the active job
    CREATE = "create"  # that Savepoint completed: the other color from it
    WAIT = "wait"
    SWITCH = "switch"  # the new color is caught up: delete the old one
    ABORT = "abort"  # the new color failed or did not catch up in time: delete it


@dataclass(frozen=True, slots=True)
class CaughtUpRule:
    """``spec``'s caught-up settings, with the CRD's defaults."""

    timeout_ms: int = deployment_crd.DEFAULT_CAUGHT_UP_TIMEOUT_MS
    max_source_lag: int = deployment_crd.DEFAULT_MAX_SOURCE_LAG
    checkpoints: int = deployment_crd.DEFAULT_CAUGHT_UP_CHECKPOINTS

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> CaughtUpRule:
        return cls(
            timeout_ms=int(spec.get("caughtUpTimeoutMs") or deployment_crd.DEFAULT_CAUGHT_UP_TIMEOUT_MS),
            max_source_lag=int(spec.get("maxSourceLag", deployment_crd.DEFAULT_MAX_SOURCE_LAG)),
            checkpoints=int(spec.get("caughtUpCheckpoints") or deployment_crd.DEFAULT_CAUGHT_UP_CHECKPOINTS),
        )


@dataclass(frozen=True, slots=True)
class JobView:
    """One color's job as the control plane sees it: phase (``pending`` until submitted), completed
    checkpoints and source lag (None: not measured)."""

    phase: str
    checkpoints: int = 0
    source_lag: int | None = None
    message: str = ""  # why it failed, when it did


def caught_up(job: JobView, rule: CaughtUpRule) -> bool:
    """Running with ``rule.checkpoints`` completed checkpoints and a lag within ``rule.max_source_lag``
    (or no lag measured); a bounded job that finished has nothing left to catch up."""
    if job.phase == "finished":
        return True
    lag_ok = job.source_lag is None or job.source_lag <= rule.max_source_lag
    return job.phase == "running" and job.checkpoints >= rule.checkpoints and lag_ok


def template_hash(spec: Mapping[str, Any]) -> str:
    text = json.dumps(spec.get("template") or {}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def decide(
    wanted_hash: str,
    current: Mapping[str, Any],
    active: JobView | None,
    new: JobView | None,
    rule: CaughtUpRule,
    now: datetime,
    savepoint: tuple[str, str] | None = None,
) -> tuple[Action, str]:
    """The next step and why. ``current`` is the status; ``active``/``new`` the jobs of the active color
    and of the transition (None: no such StreamingJob); ``savepoint`` the state and message of the
    transition's Savepoint while it is taken (``missing`` when it is gone)."""
    transition = current.get("transition")
    if not current.get("activeJob"):
        return Action.DEPLOY, "first deployment"
    if not transition:
        if wanted_hash in (current.get("activeTemplateHash"), current.get("abortedTemplateHash")):
            return Action.NONE, ""
        if active is None or active.phase != "running":
            phase = active.phase if active else "missing"
            return Action.WAIT, f"the template changed; the switch waits for {current['activeJob']} ({phase})"
        return Action.START, "the template changed"
    job = str(transition.get("job"))
    if transition.get("templateHash") != wanted_hash:
        return Action.ABORT, "the template changed again during the switch"
    deadline = datetime.fromisoformat(str(transition["deadline"]).replace("Z", "+00:00"))
    if transition.get("state") == "savepointing":
        name, (state, message) = transition.get("savepoint"), savepoint or ("missing", "")
        if state == "completed":
            return Action.CREATE, f"Savepoint {name} completed"
        if state in SAVEPOINT_ENDED:
            what = f"failed ({message})" if state == "failed" else "was deleted"
            return Action.ABORT, f"Savepoint {name} of {current['activeJob']} {what}"
        if now >= deadline:
            return Action.ABORT, f"Savepoint {name} did not complete within {rule.timeout_ms}ms"
        return Action.WAIT, f"Savepoint {name} of {current['activeJob']} is {state or 'pending'}"
    if new is None:
        return Action.ABORT, f"{job} was deleted"
    if new.phase in ENDED:
        return Action.ABORT, f"{job} is {new.phase}" + (f" ({new.message})" if new.message else "")
    if caught_up(new, rule):
        return Action.SWITCH, f"{job} caught up ({progress(new)})"
    if now >= deadline:
        return Action.ABORT, f"{job} did not catch up within {rule.timeout_ms}ms ({progress(new)})"
    return Action.WAIT, f"{job} is catching up ({progress(new)})"


def progress(job: JobView) -> str:
    lag = "not measured" if job.source_lag is None else str(job.source_lag)
    return f"{job.phase}, {job.checkpoints} checkpoints, source lag {lag}"


def color_job(body: Mapping[str, Any], color: str, savepoint: str | None) -> dict[str, Any]:
    """The ``v1alpha2`` StreamingJob of ``color``: the template's spec as it is (the CRD makes it a
    camelCase StreamingJob spec), ``restoreFrom`` the savepoint, owned by the deployment."""
    meta = body.get("metadata") or {}
    name = str(meta["name"])
    template = dict((body.get("spec") or {}).get("template") or {})
    extra = dict(template.get("metadata") or {})
    spec = copy.deepcopy(dict(template.get("spec") or {}))
    if savepoint:
        spec["restoreFrom"] = savepoint
    labels = {**(extra.get("labels") or {}), LABEL_DEPLOYMENT: name, LABEL_COLOR: color}
    owner = {
        "apiVersion": crds.API_VERSION,
        "kind": deployment_crd.KIND,
        "name": name,
        "uid": meta.get("uid"),
        "controller": True,
        "blockOwnerDeletion": True,
    }
    return {
        "apiVersion": crds.API_VERSION,
        "kind": crds.STREAMING_JOB_KIND,
        "metadata": {
            "name": f"{name}-{color}",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": dict(extra.get("annotations") or {}),
            "ownerReferences": [owner],
        },
        "spec": spec,
    }


def _now() -> datetime:
    return datetime.now(UTC)


def _other(color: str) -> str:
    return "green" if color == "blue" else "blue"


class BlueGreenController:
    def __init__(self, client: kube.KubeClient, progress: Progress) -> None:
        self.client = client
        self.progress = progress
        self._status: dict[tuple[str, str], dict[str, Any]] = {}  # what this operator last wrote

    async def reconcile(self, body: Mapping[str, Any]) -> None:
        """One tick: observe both colors, decide, act, write the status when it changed."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta["namespace"]), str(meta["name"])
        key = (namespace, name)
        spec = dict(body.get("spec") or {})
        current = copy.deepcopy(self._status.get(key) or dict(body.get("status") or {}))
        rule = CaughtUpRule.from_spec(spec)
        wanted = template_hash(spec)
        active_name = current.get("activeJob")
        transition = current.get("transition") or {}
        active = await self._view(namespace, str(active_name)) if active_name else None
        savepointing = transition.get("state") == "savepointing"
        new = await self._view(namespace, str(transition["job"])) if transition and not savepointing else None
        taken = await self._savepoint(namespace, str(transition["savepoint"])) if savepointing else None
        action, why = decide(wanted, current, active, new, rule, _now(), taken)
        ref = events.involved(namespace, name, meta.get("uid"), deployment_crd.KIND)
        if action == Action.DEPLOY:
            await self._deploy(body, current, wanted)
        elif action == Action.START:
            await self._start(body, current, wanted, rule)
        elif action == Action.CREATE:
            await self._create(body, current, rule, ref)
        elif action == Action.SWITCH:
            await self._switch(namespace, current, why, ref)
        elif action == Action.ABORT:
            await self._abort(namespace, current, why, ref)
        elif action == Action.WAIT and transition:
            current["transition"] = {**transition, "progress": progress(new) if new else why}
        if action in (Action.WAIT, Action.SWITCH):
            current["message"] = why
        active_name = current.get("activeJob")
        active = await self._view(namespace, str(active_name)) if active_name else None
        self._conditions(current, active, meta.get("generation"))
        await self._write(namespace, name, body, current)

    def forget(self, namespace: str, name: str) -> None:
        self._status.pop((namespace, name), None)

    # ------------------------------------------------------------------------ observe

    async def _view(self, namespace: str, name: str) -> JobView | None:
        """The job of StreamingJob ``name``: its phase from the status, and while it runs its
        checkpoints and lag from where it runs (``progress``)."""
        resource = await self.client.get_or_none(kube.STREAMINGJOBS, namespace, name)
        if resource is None:
            return None
        observed = resource.get("status") or {}
        phase = str(observed.get("phase") or "pending")
        message = str(observed.get("message") or "") if phase in ENDED else ""
        measured = await self.progress(resource) if phase == "running" else None
        checkpoints, lag = measured or (0, None)
        return JobView(phase, checkpoints, lag, message)

    async def _savepoint(self, namespace: str, name: str) -> tuple[str, str]:
        """The state and message of the Savepoint ``name`` (``missing``: deleted)."""
        resource = await self.client.get_or_none(kube.SAVEPOINTS, namespace, name)
        if resource is None:
            return "missing", ""
        observed = resource.get("status") or {}
        return str(observed.get("state") or "pending"), str(observed.get("message") or "")

    # ------------------------------------------------------------------------ act

    async def _deploy(self, body: Mapping[str, Any], current: dict[str, Any], wanted: str) -> None:
        job = color_job(body, "blue", None)
        with contextlib.suppress(kube.ConflictError):  # made before this operator wrote the status
            await self.client.create(kube.STREAMINGJOBS, job["metadata"]["namespace"], job)
        name = job["metadata"]["name"]
        current.update(activeColor="blue", activeJob=name, activeTemplateHash=wanted, message="")
        _history(current, "blue", name, "deployed", wanted, "", "first deployment")

    async def _start(
        self, body: Mapping[str, Any], current: dict[str, Any], wanted: str, rule: CaughtUpRule
    ) -> None:
        """A Savepoint of the active job, owned by it (it goes with that job once green no longer
        restores from it); the switch waits for its status."""
        namespace = str((body.get("metadata") or {})["namespace"])
        color = _other(str(current.get("activeColor") or "blue"))
        target = color_job(body, color, None)["metadata"]["name"]
        leftover = await self.client.get_or_none(kube.STREAMINGJOBS, namespace, target)
        if leftover is not None:  # an old color being deleted, or one a crashed operator did not record
            if not (leftover.get("metadata") or {}).get("deletionTimestamp"):
                await self.client.delete(kube.STREAMINGJOBS, namespace, target)
            current["message"] = f"waiting for the previous {target} to be deleted"
            return
        active = str(current["activeJob"])
        resource = await self.client.get_or_none(kube.STREAMINGJOBS, namespace, active)
        if resource is None:
            current["message"] = f"waiting for {active}"
            return
        now = _now()
        savepoint = f"{active}-switch-{now:%Y%m%d%H%M%S}"
        owner = {
            "apiVersion": crds.API_VERSION,
            "kind": crds.STREAMING_JOB_KIND,
            "name": active,
            "uid": resource["metadata"].get("uid"),
        }
        manifest = {
            "apiVersion": crds.API_VERSION,
            "kind": crds.SAVEPOINT_KIND,
            "metadata": {"name": savepoint, "namespace": namespace, "ownerReferences": [owner]},
            "spec": {"jobRef": active, "description": f"blue/green switch to {target}"},
        }
        with contextlib.suppress(kube.ConflictError):  # made by a tick whose status write was lost
            await self.client.create(kube.SAVEPOINTS, namespace, manifest)
        current["transition"] = {
            "state": "savepointing",
            "toColor": color,
            "job": target,
            "templateHash": wanted,
            "savepoint": savepoint,
            "startedAt": status.iso(now),
            "deadline": status.iso(now + timedelta(milliseconds=rule.timeout_ms)),
            "progress": "",
        }
        current["message"] = f"taking Savepoint {savepoint} of {active} for {target}"

    async def _create(
        self, body: Mapping[str, Any], current: dict[str, Any], rule: CaughtUpRule, ref: dict[str, Any]
    ) -> None:
        """The Savepoint completed: the new color's StreamingJob restores from it."""
        namespace = str((body.get("metadata") or {})["namespace"])
        transition = dict(current["transition"])
        savepoint, target = str(transition["savepoint"]), str(transition["job"])
        job = color_job(body, str(transition["toColor"]), savepoint)
        with contextlib.suppress(kube.ConflictError):  # made by a tick whose status write was lost
            await self.client.create(kube.STREAMINGJOBS, namespace, job)
        now = _now()
        current["transition"] = {
            **transition,
            "state": "catching_up",
            "startedAt": status.iso(now),
            "deadline": status.iso(now + timedelta(milliseconds=rule.timeout_ms)),
            "progress": "",
        }
        current["message"] = f"{target} starts from Savepoint {savepoint}; {current['activeJob']} runs on"
        logger.info("%s/%s: %s", namespace, ref["metadata"]["name"], current["message"])
        await events.post(self.client, ref, "Normal", "Switching", current["message"])

    async def _switch(self, namespace: str, current: dict[str, Any], why: str, ref: dict[str, Any]) -> None:
        transition = dict(current.pop("transition"))
        old = str(current["activeJob"])
        await self.client.delete(kube.STREAMINGJOBS, namespace, old)  # its finalizer cancels its job
        color, job = str(transition["toColor"]), str(transition["job"])
        current.update(activeColor=color, activeJob=job, activeTemplateHash=transition["templateHash"])
        message = f"switched from {old} to {job}: {why}"
        _history(
            current, color, job, "switched", str(transition["templateHash"]), transition["savepoint"], message
        )
        logger.info("%s/%s: %s", namespace, ref["metadata"]["name"], message)
        await events.post(self.client, ref, "Normal", "Switched", message)

    async def _abort(self, namespace: str, current: dict[str, Any], why: str, ref: dict[str, Any]) -> None:
        transition = dict(current.pop("transition"))
        job = str(transition["job"])
        await self.client.delete(kube.STREAMINGJOBS, namespace, job)
        if transition.get("savepoint"):  # taken for this switch only; its finalizer waits for the restorer
            await self.client.delete(kube.SAVEPOINTS, namespace, str(transition["savepoint"]))
        changed_again = why.startswith("the template changed again")
        await self._aborted(
            current,
            str(transition["toColor"]),
            job,
            None if changed_again else str(transition["templateHash"]),
            str(transition.get("savepoint") or ""),
            why,
            ref,
        )

    async def _aborted(
        self,
        current: dict[str, Any],
        color: str,
        job: str,
        template: str | None,
        savepoint: str,
        why: str,
        ref: dict[str, Any],
    ) -> None:
        if template is not None:
            current["abortedTemplateHash"] = template
        message = f"switch to {job} aborted: {why}; {current['activeJob']} keeps running"
        _history(current, color, job, "aborted", template or "", savepoint, message)
        current["message"] = message
        logger.warning("%s/%s: %s", ref["metadata"]["namespace"], ref["metadata"]["name"], message)
        await events.post(self.client, ref, "Warning", "SwitchAborted", message)

    # ------------------------------------------------------------------------ status

    @staticmethod
    def _conditions(current: dict[str, Any], active: JobView | None, generation: Any) -> None:
        phase = active.phase if active else "missing"
        transition = current.get("transition")
        if transition:
            current["phase"] = "Transitioning"
        elif phase in ENDED or active is None:
            current["phase"] = "Failed"
            if active is None:  # deleted by hand: nothing runs; recreate the deployment to start over
                current["message"] = f"{current.get('activeJob')} was deleted; nothing runs"
        elif phase in ("running", "paused", "finished"):
            current["phase"] = "Running"
        else:
            current["phase"] = "Deploying"
        history = current.get("history") or [{}]
        last = history[-1]
        wanted: list[status.Wanted] = [
            ("Ready", phase == "running", phase.capitalize(), f"{current.get('activeJob')} is {phase}"),
            (
                "Progressing",
                bool(transition),
                "Switching" if transition else {"aborted": "SwitchAborted"}.get(last.get("result"), "Stable"),
                str(current.get("message") or ""),
            ),
        ]
        current["conditions"] = status.conditions(wanted, current.get("conditions"), _now(), generation)
        if generation is not None:
            current["observedGeneration"] = generation

    async def _write(
        self, namespace: str, name: str, body: Mapping[str, Any], current: dict[str, Any]
    ) -> None:
        key = (namespace, name)
        previous = self._status.get(key) or dict(body.get("status") or {})
        patch: dict[str, Any] = {k: v for k, v in current.items() if previous.get(k) != v}
        patch |= {k: None for k in previous if k not in current and k != "kopf"}
        if patch:
            await self.client.patch(
                kube.STREAMINGJOBDEPLOYMENTS, namespace, name, {"status": patch}, subresource="status"
            )
        self._status[key] = current


def _history(
    current: dict[str, Any], color: str, job: str, result: str, template: str, savepoint: str, message: str
) -> None:
    entry = {
        "color": color,
        "job": job,
        "result": result,
        "templateHash": template,
        "savepoint": savepoint,
        "at": status.iso(_now()),
        "message": message,
    }
    current["history"] = [*(current.get("history") or []), entry][-HISTORY_LIMIT:]


class QuietTicks(logging.Filter):
    """Drops kopf's "Timer 'bluegreen' succeeded." line: once a second per deployment is noise; what a
    tick does (a switch, an abort) is logged by the controller, a failed tick by kopf as a warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != f"Timer {TIMER_ID!r} succeeded."


QUIET_TICKS = QuietTicks()
TIMER_ID = "bluegreen"


def register(registry: kopf.OperatorRegistry, controller: BlueGreenController) -> None:
    """A timer per StreamingJobDeployment: each tick is one ``reconcile`` (kopf runs them one at a time
    per object); the owned StreamingJobs go with a deleted deployment (ownerReferences)."""
    resource = (crds.GROUP, crds.VERSION, deployment_crd.PLURAL)
    logging.getLogger("kopf.objects").addFilter(QUIET_TICKS)

    @kopf.timer(*resource, id=TIMER_ID, interval=TICK_S, registry=registry)
    async def tick(body: kopf.Body, **_: Any) -> None:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return
        await controller.reconcile(body)

    @kopf.on.delete(*resource, id="delete", registry=registry, optional=True)
    async def deleted(body: kopf.Body, **_: Any) -> None:
        meta = body.get("metadata") or {}
        controller.forget(str(meta.get("namespace")), str(meta.get("name")))
