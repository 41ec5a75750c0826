"""Producers: validate, dedupe, record and push a job in one round trip.

``enqueue("email.send", {...})`` returns the job id. A typed producer exists per job name:
``producers.email_send(to=[...], subject=..., text=...)``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import keys
from .connection import client
from .contracts import JOBS, job_spec, load_job_modules, queue_config, validated
from .errors import JobFailed, PayloadError
from .hueys import frame, huey_for, task_wrapper
from .registry import entry, event, script_args
from .replication import acknowledged, execute_replicated
from .scripts import scripts_for

# fullmatch, never match + "$": "$" also matches before a final newline ("victim\n")
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")


@dataclass(frozen=True)
class Prepared:
    job_id: str
    job_name: str
    queue: str
    payload: dict
    payload_json: str
    message: bytes
    delay: float
    priority: int


def prepare(job_name: str, payload: Any, job_id: str | None = None,
            delay: float | None = None, priority: int | None = None) -> Prepared:
    """Validate everything and build the Huey message; touches no Redis. Raises PayloadError."""
    data, data_json = validated(job_name, payload)
    job_id = job_id or uuid.uuid4().hex
    _check_options(job_name, job_id, delay, priority)
    return build(job_name, data, data_json, job_id, float(delay or 0), int(priority or 0))


def build(job_name: str, data: dict, data_json: str, job_id: str, delay: float,
          priority: int) -> Prepared:
    """The Huey message of an already validated payload (the outbox's jobs were validated
    when they were accepted)."""
    queue = job_spec(job_name).queue
    task = task_wrapper(queue)((job_name, data), {}, id=job_id)
    message = frame(job_id, job_name, huey_for(queue).serialize_task(task))
    return Prepared(job_id, job_name, queue, data, data_json, message, delay, priority)


def _check_options(job_name: str, job_id: str, delay, priority) -> None:
    errors = []
    if not isinstance(job_id, str) or not JOB_ID_PATTERN.fullmatch(job_id):
        errors.append({"field": "job_id", "message": "1-200 characters of A-Z a-z 0-9 _ . : -"})
    if delay is not None and not (0 <= float(delay) <= 366 * 86400):
        errors.append({"field": "delay", "message": "seconds between 0 and one year"})
    if priority is not None and not (-10 <= int(priority) <= 10):
        errors.append({"field": "priority", "message": "an integer from -10 to 10"})
    if errors:
        raise PayloadError(job_name, errors)


def push(target, prepared: Prepared, now: float, *, created_at: float | None = None,
         into: str | None = None):
    """Run (or queue, on a pipeline) the enqueue script; it answers 1 if the job is new.

    created_at: when the job was accepted (the outbox's jobs), else now. into: the list the
    message goes to instead of its queue (a direct run's processing list)."""
    queue = prepared.queue
    storage = huey_for(queue).storage
    delayed = prepared.delay > 0
    # attempts, progress and priority default to 0 when absent (registry.decode_record)
    fields = {
        "id": prepared.job_id, "queue": queue, "job": prepared.job_name,
        "payload": prepared.payload_json, "state": "delayed" if delayed else "waiting",
        "max_attempts": queue_config(queue).attempts, "created_at": created_at or now,
        "updated_at": now,
    }
    extra = {"run_at": now + prepared.delay} if delayed else {}
    fields.update(extra, **({"priority": prepared.priority} if prepared.priority else {}))
    flat = [item for pair in fields.items() for item in pair]
    queued = event("queued", prepared.job_id, queue, prepared.job_name, fields["state"], now)
    return scripts_for(client()).enqueue(
        keys=[keys.job(prepared.job_id),
              into or (storage.schedule_key if delayed else storage.queue_key),
              keys.queue_stats(queue),
              keys.timeline(prepared.job_id)],
        args=script_args(prepared.job_id, queue, fields["state"], prepared.message, now,
                         now + prepared.delay, "1" if prepared.priority > 0 else "0", queued,
                         entry("enqueued", now, **extra), *flat),
        client=target)


def enqueue(job_name: str, payload: Any, *, job_id: str | None = None,
            delay: float | None = None, priority: int | None = None) -> str:
    """Validate and enqueue one job; return its id.

    job_id: a caller-chosen id; if a job with it exists, nothing is added and its id returns.
    delay: seconds before it may run. priority: > 0 jumps ahead of the queue's waiting jobs.
    Raises UnknownJob or PayloadError (naming each bad field) before anything touches Redis.
    In sync_direct mode the job runs before this returns, and its failure raises JobFailed;
    when Redis cannot take the job, the queue's outage policy decides (see dispatch).
    """
    outcome = dispatch(job_name, payload, job_id=job_id, delay=delay, priority=priority)
    if outcome.failed:
        raise JobFailed(outcome)
    return outcome.job_id


def dispatch(job_name: str, payload: Any, *, job_id: str | None = None,
             delay: float | None = None, priority: int | None = None):
    """Validate a job and hand it over; return its backstop.direct.Outcome: how (queued,
    outbox, ran, existing), state, and for a job run inline (sync_direct mode, or the
    `direct` outage policy) its result or error. Never raises for a handler's failure."""
    from .delivery import deliver

    return deliver(prepare(job_name, payload, job_id, delay, priority))


def submit(job_name: str, payload: Any, *, job_id: str | None = None,
           delay: float | None = None, priority: int | None = None) -> tuple[str, bool]:
    """Like enqueue, but also say whether the job is new (False: the id existed already)."""
    prepared = prepare(job_name, payload, job_id, delay, priority)
    created = acknowledged(lambda target: push(target, prepared, time.time()))
    return prepared.job_id, bool(created)


def enqueue_many(jobs: Iterable[dict]) -> list[str]:
    """Enqueue many jobs in one pipelined round trip; each dict has job, payload and options.

    Every payload is validated first: one bad payload raises PayloadError (its field names
    prefixed with the job's index) and nothing is enqueued.
    """
    prepared = [_prepare_item(index, item) for index, item in enumerate(jobs)]
    pipe = client().pipeline(transaction=False)
    now = time.time()
    for item in prepared:
        push(pipe, item, now)
    execute_replicated(pipe)
    return [item.job_id for item in prepared]


def _prepare_item(index: int, item: dict) -> Prepared:
    try:
        return prepare(item["job"], item.get("payload", {}), item.get("job_id"),
                       item.get("delay"), item.get("priority"))
    except PayloadError as exc:
        errors = [{**e, "field": f"[{index}].{e['field']}"} for e in exc.errors]
        raise PayloadError(exc.job_name, errors) from None


class Producer:
    """A typed producer for one job name: call it with the payload's fields."""

    def __init__(self, job_name: str):
        self.job_name = job_name
        self.model = job_spec(job_name).model

    def __call__(self, payload: Any = None, /, *, job_id: str | None = None,
                 delay: float | None = None, priority: int | None = None, **fields) -> str:
        return enqueue(self.job_name, payload if payload is not None else fields,
                       job_id=job_id, delay=delay, priority=priority)

    def __repr__(self) -> str:
        return f"<Producer {self.job_name} ({self.model.__name__})>"


def producer(job_name: str) -> Producer:
    return Producer(job_name)


def __getattr__(name: str) -> Producer:
    job_name = name.replace("_", ".")
    if name.startswith("__"):
        raise AttributeError(name)
    load_job_modules()
    for candidate in JOBS:
        if candidate.replace(".", "_") == name:
            return Producer(candidate)
    raise AttributeError(f"no job named like {job_name!r}")
