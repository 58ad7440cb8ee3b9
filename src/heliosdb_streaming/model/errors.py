"""Domain errors of the job API. Each has a stable ``code``; the REST layer maps codes to statuses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with a submitted job, located by a path like ``transformations[1].config.pattern``."""

    path: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}


class JobError(Exception):
    """Base of every error the job API raises on purpose."""

    code = "job_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list[dict[str, str]]:
        return []


class InvalidJobConfigError(JobError):
    """The job config is invalid; ``errors`` lists every problem found, not just the first."""

    code = "invalid_job_config"

    def __init__(self, errors: list[FieldError]) -> None:
        summary = "; ".join(f"{e.path}: {e.message}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"invalid job config: {summary}{more}")
        self.errors = errors

    def details(self) -> list[dict[str, str]]:
        return [e.to_dict() for e in self.errors]


class JobNotFoundError(JobError):
    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id!r} not found")
        self.job_id = job_id


class SavepointNotFoundError(JobError):
    code = "savepoint_not_found"

    def __init__(self, job_id: str, savepoint_id: str) -> None:
        super().__init__(f"savepoint {savepoint_id!r} of job {job_id!r} not found")
        self.job_id = job_id
        self.savepoint_id = savepoint_id


class SavepointFailedError(JobError):
    """A savepoint did not complete (a worker failed it, or it timed out); the job keeps running."""

    code = "savepoint_failed"

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"savepoint of job {job_id!r} failed: {reason}")
        self.job_id = job_id
        self.reason = reason


class IllegalStateTransitionError(JobError):
    """The requested action is not allowed in the job's current status (HTTP 409)."""

    code = "illegal_state_transition"

    def __init__(self, job_id: str, current: str, action: str) -> None:
        super().__init__(f"cannot {action} job {job_id!r}: it is {current}")
        self.job_id = job_id
        self.current = current
        self.action = action

    def details(self) -> list[dict[str, str]]:
        return [{"path": "status", "message": self.current}]


class JobRestartingError(IllegalStateTransitionError):
    """The job is between two runs (restart delay, a restart in progress): no run can act now (409).

    A savepoint asked for while the job restarts waits a bounded time for the new run; this is the
    answer when none came, or when the run the request was queued on ended before it could start.
    """

    code = "job_restarting"

    def __init__(self, job_id: str, action: str, reason: str) -> None:
        super().__init__(job_id, "restarting", action)
        self.message = f"cannot {action} job {job_id!r}: {reason}"
        self.args = (self.message,)


class SavepointInUseError(IllegalStateTransitionError):
    """A job restores this savepoint (its next or current run, before it has a snapshot of its own)."""

    code = "savepoint_in_use"

    def __init__(self, job_id: str, savepoint_id: str, users: list[str]) -> None:
        super().__init__(job_id, "in use", "delete a savepoint of")
        self.savepoint_id = savepoint_id
        self.users = users
        jobs = ", ".join(repr(u) for u in users)
        self.message = (
            f"cannot delete savepoint {savepoint_id!r} of job {job_id!r}: job(s) {jobs} restore from it "
            "until they have a completed checkpoint of their own"
        )
        self.args = (self.message,)

    def details(self) -> list[dict[str, str]]:
        return [{"path": "job_id", "message": user} for user in self.users]


class JobNotTerminalError(IllegalStateTransitionError):
    """Only a finished, failed or cancelled job can be purged: a live one is cancelled first (409)."""

    code = "job_not_terminal"

    def __init__(self, job_id: str, current: str) -> None:
        super().__init__(job_id, current, "purge")
        self.message = f"cannot purge job {job_id!r}: it is {current}; cancel it first"
        self.args = (self.message,)


class JobHasSavepointsError(IllegalStateTransitionError):
    """A purge would delete savepoints a person kept: they are deleted one by one first (409)."""

    code = "job_has_savepoints"

    def __init__(self, job_id: str, savepoint_ids: list[str]) -> None:
        super().__init__(job_id, "holding savepoints", "purge")
        self.savepoint_ids = savepoint_ids
        self.message = (
            f"cannot purge job {job_id!r}: it still has {len(savepoint_ids)} savepoint(s); delete them first"
        )
        self.args = (self.message,)

    def details(self) -> list[dict[str, str]]:
        return [{"path": "savepoint_id", "message": s} for s in self.savepoint_ids]


class PythonNotAllowedError(InvalidJobConfigError):
    """A job names user code of a module this server does not allow (``--python-modules``): HTTP 400.

    A network server runs code only from modules its administrator allowed; the details name each
    field (``transformations[i].config.function``) and the message names the module and the flag."""

    code = "python_not_allowed"
