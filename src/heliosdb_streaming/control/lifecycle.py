"""The job state machine: one table of (status, event) -> new status. Pure; no I/O.

The control plane, the REST API and (later) the Kubernetes operator all ask this table whether an
action is legal; an illegal one becomes ``IllegalStateTransitionError`` (HTTP 409).
"""

from __future__ import annotations

from enum import StrEnum

from heliosdb_streaming.model.types import JobStatus

S = JobStatus


class Event(StrEnum):
    START = "start"  # workers launched and connected
    PAUSE = "pause"
    RESUME = "resume"
    FINISH = "finish"  # every split exhausted and every sink flushed
    FAIL = "fail"  # a failure the restart strategy does not absorb
    RECOVER = "recover"  # automatic restart after a failure (status stays running)
    CANCEL = "cancel"
    RESTART = "restart"  # user restart: from a checkpoint or savepoint


TRANSITIONS: dict[tuple[JobStatus, Event], JobStatus] = {
    (S.SUBMITTED, Event.START): S.RUNNING,
    (S.SUBMITTED, Event.CANCEL): S.CANCELLED,
    (S.SUBMITTED, Event.FAIL): S.FAILED,
    (S.SUBMITTED, Event.RECOVER): S.SUBMITTED,
    (S.RUNNING, Event.PAUSE): S.PAUSED,
    (S.RUNNING, Event.FINISH): S.FINISHED,
    (S.RUNNING, Event.FAIL): S.FAILED,
    (S.RUNNING, Event.RECOVER): S.RUNNING,
    (S.RUNNING, Event.CANCEL): S.CANCELLED,
    (S.RUNNING, Event.RESTART): S.SUBMITTED,
    (S.PAUSED, Event.RESUME): S.RUNNING,
    (S.PAUSED, Event.CANCEL): S.CANCELLED,
    (S.PAUSED, Event.FAIL): S.FAILED,
    (S.PAUSED, Event.FINISH): S.FINISHED,  # bounded input ran out before the pause reached the sources
    (S.PAUSED, Event.RECOVER): S.PAUSED,
    (S.FAILED, Event.RESTART): S.SUBMITTED,
    (S.CANCELLED, Event.RESTART): S.SUBMITTED,
    (S.FINISHED, Event.RESTART): S.SUBMITTED,
}


def next_status(current: JobStatus, event: Event) -> JobStatus | None:
    """The status after ``event``, or None when the event is illegal in ``current``."""
    return TRANSITIONS.get((current, event))


def allowed_events(current: JobStatus) -> list[Event]:
    return [event for (status, event) in TRANSITIONS if status == current]
