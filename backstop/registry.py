"""Job records: one Redis hash per job with JSON fields, state indexes and timelines.

A record holds id, queue, job, payload, state, attempts, max_attempts, priority, created_at,
updated_at, started_at, finished_at, first_failed_at (its first failed attempt), run_at,
progress, progress_message, result, error, worker and timeline. States: waiting, delayed,
active, completed, failed (retrying), dead, cancelled.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from typing import cast

import redis

from . import keys
from .config import Settings, settings
from .connection import client
from .contracts import QUEUES
from .redaction import redact, redact_text
from .scripts import scripts_for

STATES = ("waiting", "delayed", "active", "completed", "failed", "dead", "cancelled")
DELETABLE = ("completed", "dead", "cancelled")
JSON_FIELDS = ("payload", "result", "error")
NUMBER_FIELDS = ("attempts", "max_attempts", "priority", "progress", "lost")
TIME_FIELDS = ("created_at", "updated_at", "started_at", "finished_at", "first_failed_at",
               "run_at")


def script_args(*args) -> list:
    """The arguments every registry script starts with (see scripts.PRELUDE), then args."""
    return [*_common_args(settings()), *args]


@lru_cache(maxsize=4)
def _common_args(current: Settings) -> tuple:
    return (keys.state_index_prefix(), keys.job_prefix(), keys.timeline_prefix(),
            keys.events_stream(), keys.events_channel(), current.backstop_events_maxlen,
            keys.dlq_prefix())


def to_json(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)


def entry(name: str, t: float, **extra) -> str:
    """A timeline entry as JSON: what happened and when, with details (secrets in them
    redacted: a timeline is read by every viewer)."""
    return to_json({"t": t, "event": name, **redact(extra)})


def event(kind: str, job_id: str, queue: str, job: str, state: str, t: float, **extra) -> str:
    """An event as JSON, as published on the channel and the recent-events stream (secrets
    in the details redacted: the feed is read by every viewer)."""
    return to_json({"type": kind, "job_id": job_id, "queue": queue, "job": job,
                    "state": state, "t": t, **redact(extra)})


def decode_record(raw: dict, timeline: list[str]) -> dict:
    """A record hash and its timeline as plain data: JSON parsed, numbers as numbers. A job
    enqueued to run at once has no stored "enqueued" entry (scripts.ENQUEUE): it is made here
    from created_at."""
    entries = [json.loads(item) for item in timeline]
    if raw.get("created_at") and (not entries or entries[0].get("event") != "enqueued"):
        entries.insert(0, {"t": float(raw["created_at"]), "event": "enqueued"})
    record = dict(raw, timeline=entries)
    record.pop("token", None)  # the running start's token: the worker's business only
    for name in JSON_FIELDS:
        if record.get(name):
            record[name] = json.loads(record[name])
    for name in NUMBER_FIELDS:
        record[name] = int(record.get(name) or 0)
    for name in TIME_FIELDS:
        if record.get(name):
            record[name] = float(record[name])
    return record


def redacted(job: dict) -> dict:
    """A record as a person or a token may read it: payload, result, error, progress message
    and timeline with secrets redacted. The stored record keeps the exact payload (the
    worker runs it), so every reader goes through this."""
    shown = dict(job)
    for name in ("payload", "result", "error", "timeline"):
        if name in shown:
            shown[name] = redact(shown[name])
    if shown.get("progress_message"):
        shown["progress_message"] = redact_text(shown["progress_message"])
    return shown


def get_job(job_id: str, r: redis.Redis | None = None) -> dict | None:
    """The record of a job, or None when there is none (never enqueued, or trimmed)."""
    return get_jobs([job_id], r)[0]


def get_jobs(job_ids: list[str], r: redis.Redis | None = None) -> list[dict | None]:
    """Several records in one round trip, in the order asked."""
    pipe = (r or client()).pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hgetall(keys.job(job_id))
        pipe.lrange(keys.timeline(job_id), 0, -1)
    replies = pipe.execute()
    return [decode_record(raw, timeline) if raw else None
            for raw, timeline in zip(replies[::2], replies[1::2], strict=True)]


def list_jobs(queue: str, state: str, offset: int = 0, limit: int = 50) -> list[dict]:
    """A page of a queue's jobs in one state, newest first."""
    ids = client().zrevrange(keys.state_index(queue, state), offset, offset + limit - 1)
    return [job for job in get_jobs(ids) if job]


def page_jobs(queue: str, state: str, cursor: str | None = None,
              limit: int = 50) -> tuple[list[dict], str | None]:
    """A page of a queue's jobs in one state, newest first (the panel's order), and the cursor
    of the next page (None at the end).

    A cursor is "<score>:<id>" of the page's last job: the next page starts after it, so jobs
    that arrive meanwhile do not shift the pages (they come before the first one), and a job
    that left the state in between does not make its neighbours skip or repeat.
    Raises ValueError when the cursor is not one a page gave.
    """
    key, r = keys.state_index(queue, state), client()
    top, skip = _after(r, key, cursor) if cursor else ("+inf", 0)
    rows = cast(list[tuple[str, float]], r.zrevrangebyscore(
        key, top, "-inf", start=skip, num=limit + 1, withscores=True))
    jobs = [job for job in get_jobs([job_id for job_id, _ in rows[:limit]], r) if job]
    if len(rows) <= limit:
        return jobs, None
    last_id, last_score = rows[limit - 1]
    return jobs, f"{last_score!r}:{last_id}"


def _after(r: redis.Redis, key: str, cursor: str) -> tuple[float | str, int]:
    """Where the page after a cursor starts: its score, and how many jobs of that very score
    come before it (reverse order of ids, as ZREVRANGEBYSCORE gives them) or are it."""
    score_text, _sep, last_id = cursor.partition(":")
    try:
        score = float(score_text)
    except ValueError:
        raise ValueError(f"not a cursor a page gave: {cursor[:60]!r}") from None
    if not last_id or score != score:  # NaN
        raise ValueError(f"not a cursor a page gave: {cursor[:60]!r}")
    ties = cast(list[str], r.zrangebyscore(key, score, score))
    return score, sum(1 for job_id in ties if job_id >= last_id)


def delete_job(job_id: str) -> str:
    """Delete a finished job's record, timeline and index entry (one script): completed,
    dead (its DLQ record stays: the failure is still there to replay) or cancelled (only
    while its queue and schedule hold no message: one whose record is gone would run).

    Returns "deleted", "missing", "queued" (cancelled, messages still in its queue) or the
    state that forbids it (waiting, delayed, active, failed).
    """
    job = get_job(job_id)
    if job is None:
        return "missing"
    from .hueys import huey_for  # hueys -> execution -> registry: imported when used

    storage = huey_for(job["queue"]).storage
    return scripts_for(client()).delete_job(
        keys=[keys.job(job_id), keys.timeline(job_id), storage.queue_key, storage.schedule_key],
        args=script_args(job_id, job["queue"]))


def counts(queues: tuple[str, ...] = QUEUES) -> dict[str, dict[str, int]]:
    """Counts by state for every queue, O(1) each, in one round trip."""
    pipe = client().pipeline(transaction=False)
    for queue in queues:
        for state in STATES:
            pipe.zcard(keys.state_index(queue, state))
    values = iter(pipe.execute())
    return {queue: {state: next(values) for state in STATES} for queue in queues}


def report_progress(job_id: str, queue: str, job: str, percent: int, message: str) -> None:
    """Store a running job's progress and publish it as an event."""
    now, message = time.time(), redact_text(message)
    body = event("progress", job_id, queue, job, "active", now, progress=percent,
                 message=message)
    scripts_for(client()).progress(keys=[keys.job(job_id)],
                                   args=script_args(percent, message, now, body))


def cancel_job(job_id: str, detail: str = "cancelled") -> bool:
    """Cancel a job that has not started (waiting, delayed or retrying). True if it was."""
    job = get_job(job_id)
    if job is None:
        return False
    now, queue = time.time(), job["queue"]
    outcome = scripts_for(client()).set_state(keys=[keys.job(job_id), keys.timeline(job_id)],
                                              args=script_args(
        job_id, queue, now, "cancelled", entry("cancelled", now, detail=detail),
        event("cancelled", job_id, queue, job["job"], "cancelled", now)))
    return outcome == "ok"


def latest_events(count: int = 50) -> list[dict]:
    """The newest events, newest first, each with its stream ``id``."""
    entries = client().xrevrange(keys.events_stream(), count=count)
    return [{"id": xid, **json.loads(fields["e"])} for xid, fields in entries]


def recent_events(after: str = "0", count: int = 100) -> list[dict]:
    """Events after a stream id (exclusive), oldest first; each carries its ``id``."""
    entries = client().xrange(keys.events_stream(), min=f"({after}" if after != "0" else "-",
                              count=count)
    return [{"id": xid, **json.loads(fields["e"])} for xid, fields in entries]


def purge_waiting(queue: str, actor: str) -> int:
    """Cancel every waiting job of a queue; return how many. Workers skip cancelled messages,
    so nothing enqueued meanwhile is lost with them."""
    ids = client().zrange(keys.state_index(queue, "waiting"), 0, -1)
    return sum(cancel_job(job_id, detail=f"purged by {actor}") for job_id in ids)
