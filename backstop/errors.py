"""Errors a caller can act on: each says which field, which job, what to do."""

from __future__ import annotations


class BackstopError(Exception):
    """Base of Backstop's own errors."""


class UnknownJob(BackstopError):
    def __init__(self, job_name: str):
        super().__init__(f"unknown job name {job_name!r}; see backstop.contracts.JOBS")
        self.job_name = job_name


class PayloadError(BackstopError):
    """A payload failed its contract. ``errors`` lists {field, message} per bad field."""

    def __init__(self, job_name: str, errors: list[dict]):
        fields = ", ".join(f"{e['field']}: {e['message']}" for e in errors)
        super().__init__(f"invalid payload for {job_name}: {fields}")
        self.job_name = job_name
        self.errors = errors


class PermanentFailure(BackstopError):
    """Raised by a handler when retrying cannot help; the job goes to the DLQ at once."""

    def __init__(self, message: str, code: str = "permanent"):
        super().__init__(message)
        self.code = code


class JobTimeout(BackstopError):
    """Raised inside a job that ran past its queue's timeout."""
    code = "timeout"


class WorkerLost(BackstopError):
    """Recorded for a job whose worker process died while running it."""
    code = "worker_lost"


class JobFailed(BackstopError):
    """A job run inline (sync_direct mode, or the `direct` outage policy) failed. outcome
    (backstop.direct.Outcome) says what became of it: retrying, dead (with its DLQ record),
    or kept in the outbox when Redis was unreachable."""

    def __init__(self, outcome):
        error = outcome.error or {}
        super().__init__(f"job {outcome.job_id} failed: {error.get('type', 'Error')}: "
                         f"{error.get('message', '')}")
        self.outcome = outcome


class Refused(BackstopError):
    """An action the current state does not allow. ``code`` says why in a word a program
    can test ("missing", "state", "not_dead", "token" ...); ``status`` is the HTTP status
    that fits (404 for something not there, 409 for a conflict with the current state)."""

    def __init__(self, message: str, code: str, status: int = 409):
        super().__init__(message)
        self.code = code
        self.status = status
