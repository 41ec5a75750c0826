"""What a person or a token may do to one job, or to many: retry (a dead job, through its
dead-letter record), cancel (a job that has not started) and delete (a finished job's
record). Each answers what it did or raises Refused saying why not."""

from __future__ import annotations

from collections.abc import Callable

from . import registry, replay
from .errors import BackstopError, Refused

MAX_BULK = 1000
REFUSED_STATE = {
    "cancel": "only a job that has not started (waiting, delayed, or waiting to retry) can "
              "be cancelled",
    "delete": "only a finished job (completed, dead or cancelled) can be deleted",
}


def known_job(job_id: str) -> dict:
    """The job's record; Refused (404, code "missing") when there is none."""
    job = registry.get_job(job_id)
    if job is None:
        raise Refused(f"no job {job_id!r} (never enqueued, or removed by retention)",
                      code="missing", status=404)
    return job


def retry(job_id: str, actor: str) -> dict:
    """Replay a dead job's DLQ record as a new attempt: {"id", "outcome": "retried",
    "attempt_id"}. Raises Refused (missing, not_dead) or DlqError (the record's own refusal:
    missing, resolved, busy, limit, locked)."""
    job = known_job(job_id)
    if job["state"] != "dead":
        raise Refused(f"job {job_id} is {job['state']}: only a dead job can be retried",
                      code="not_dead")
    done = replay.replay(job.get("dlq_id") or job_id, actor=actor)
    return {"id": job_id, "outcome": "retried", "attempt_id": done["attempt_id"]}


def cancel(job_id: str, actor: str) -> dict:
    """Cancel a job that has not started: {"id", "outcome": "cancelled"}. Raises Refused
    (missing; state, with the job's state, when it has started or finished)."""
    known_job(job_id)
    if registry.cancel_job(job_id, detail=f"cancelled by {actor}"):
        return {"id": job_id, "outcome": "cancelled"}
    raise _state_refusal("cancel", job_id)


def delete(job_id: str, actor: str) -> dict:
    """Delete a finished job's record and timeline (a dead job's DLQ record stays):
    {"id", "outcome": "deleted"}. Raises Refused (missing; state; queued: a cancelled job
    while its queue still holds messages, one of which may be the job's)."""
    outcome = registry.delete_job(job_id)
    if outcome == "deleted":
        return {"id": job_id, "outcome": "deleted"}
    if outcome == "missing":
        known_job(job_id)
    if outcome == "queued":
        raise Refused(f"job {job_id} is cancelled but its queue still holds messages (its own "
                      "may be one): delete it once the queue is empty", code="queued")
    raise _state_refusal("delete", job_id, outcome)


def _state_refusal(verb: str, job_id: str, state: str | None = None) -> Refused:
    state = state or (registry.get_job(job_id) or {}).get("state", "gone")
    return Refused(f"job {job_id} is {state}: {REFUSED_STATE[verb]}", code="state")


VERBS: dict[str, Callable[[str, str], dict]] = {"retry": retry, "cancel": cancel,
                                                 "delete": delete}


def bulk(verb: str, ids: list[str], actor: str) -> list[dict]:
    """Apply one verb to each id (once each, in the order given): [{"id", "outcome",
    "detail"?}] where outcome is retried / cancelled / deleted, or the refusal's code with
    its message as detail. Raises ValueError for an unknown verb or too many ids."""
    if verb not in VERBS:
        raise ValueError(f"the verb is one of {', '.join(VERBS)}")
    if len(ids) > MAX_BULK:
        raise ValueError(f"at most {MAX_BULK} ids at a time")
    results = []
    for job_id in dict.fromkeys(ids):
        try:
            results.append(VERBS[verb](job_id, actor))
        except BackstopError as exc:
            results.append({"id": job_id, "outcome": getattr(exc, "code", "refused"),
                            "detail": str(exc)})
    return results
