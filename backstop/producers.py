"""Producers: validate, dedupe, record and push a job in one round trip.

``enqueue("email.send", {...})`` returns the job id. A typed producer exists per job name:
``producers.email_send(to=[...], subject=..., text=...)``.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import hot_path, keys, replication
from .config import settings
from .connection import client
from .contracts import JOBS, job_spec, load_job_modules, queue_config, validated_json
from .errors import JobFailed, PayloadError
from .hueys import frame, huey_for
from .scripts import scripts_for

# fullmatch, never match + "$": "$" also matches before a final newline ("victim\n")
JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")


# enqueue_many records this many jobs per script: enough to spread the script's own cost thin,
# few enough that one script never holds Redis for long (about 5 ms).
MANY_PER_SCRIPT = 500


@dataclass(frozen=True, slots=True)
class Prepared:
    job_id: str
    job_name: str
    queue: str
    payload_json: str
    message: bytes
    delay: float
    priority: int

    @property
    def payload(self) -> dict:
        return json.loads(self.payload_json)


def prepare(job_name: str, payload: Any, job_id: str | None = None,
            delay: float | None = None, priority: int | None = None) -> Prepared:
    """Validate everything and build the Huey message; touches no Redis. Raises PayloadError."""
    payload_json = validated_json(job_name, payload)
    return build(job_name, payload_json, *_options(job_name, job_id, delay, priority))


def _options(job_name: str, job_id: str | None, delay, priority) -> tuple[str, float, int]:
    """(job id, delay, priority) checked; a new random id (32 hex digits) when none is given.
    Raises PayloadError naming each bad option."""
    if not job_id and delay is None and priority is None:
        return os.urandom(16).hex(), 0.0, 0
    job_id = job_id or os.urandom(16).hex()
    _check_options(job_name, job_id, delay, priority)
    return job_id, float(delay or 0), int(priority or 0)


def build(job_name: str, payload_json: str, job_id: str, delay: float,
          priority: int) -> Prepared:
    """The Huey message of an already validated payload (the outbox's jobs were validated
    when they were accepted). The message carries the payload as its JSON text
    (hueys.message_task)."""
    queue = job_spec(job_name).queue
    message = frame(job_id, job_name, payload_json.encode())
    return Prepared(job_id, job_name, queue, payload_json, message, delay, priority)


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


def enqueue_script(prepared: Prepared, now: float, created_at: float | None = None,
                   into: str | None = None) -> tuple[list, list]:
    """The keys and arguments of the enqueue script (scripts.ENQUEUE) for a prepared job.

    created_at: when the job was accepted (the outbox's jobs), else now. into: the list the
    message goes to instead of its queue (a direct run's processing list)."""
    job_id, queue, job_name = prepared.job_id, prepared.queue, prepared.job_name
    storage = huey_for(queue).storage
    delayed, state, how = _placement(prepared)
    run_at = now + prepared.delay
    # attempts, progress and priority default to 0 when absent (registry.decode_record)
    fields = ["id", job_id, "queue", queue, "job", job_name, "payload", prepared.payload_json,
              "state", state, "max_attempts", queue_config(queue).attempts,
              "created_at", created_at or now, "updated_at", now]
    if delayed:
        fields += ["run_at", run_at]
    if prepared.priority:
        fields += ["priority", prepared.priority]
    target = into or (storage.schedule_key if delayed else storage.queue_key)
    # stored for a delayed job only (scripts.ENQUEUE)
    entry = f'{{"t":{now!r},"event":"enqueued","run_at":{run_at!r}}}' if delayed else ""
    return ([keys.job(job_id), target, keys.state_index(queue, state), keys.queue_stats(queue),
             keys.timeline(job_id), keys.events_stream()],
            [keys.events_channel(), settings().backstop_events_maxlen, job_id, prepared.message,
             now, run_at, how, _queued_event(prepared, state, now), entry, *fields])


def _placement(prepared: Prepared) -> tuple[bool, str, str]:
    """(delayed, the job's first state, how its message is pushed: 'delay' into the
    schedule, 'front' of its queue for a priority above 0, else 'back')."""
    if prepared.delay > 0:
        return True, "delayed", "delay"
    return False, "waiting", "front" if prepared.priority > 0 else "back"


def _queued_event(prepared: Prepared, state: str, now: float) -> str:
    """The "queued" event as JSON (registry.event's shape, built directly: ids and names are
    plain [A-Za-z0-9_.:-], JOB_ID_PATTERN and contracts.register_job, so nothing needs
    escaping)."""
    return (f'{{"type":"queued","job_id":"{prepared.job_id}","queue":"{prepared.queue}",'
            f'"job":"{prepared.job_name}","state":"{state}","t":{now!r}}}')


def push(target, prepared: Prepared, now: float, *, created_at: float | None = None,
         into: str | None = None):
    """Run (or queue, on a pipeline) the enqueue script; it answers 1 if the job is new."""
    script_keys, args = enqueue_script(prepared, now, created_at, into)
    return scripts_for(client()).enqueue(keys=script_keys, args=args, client=target)


def push_now(prepared: Prepared, now: float) -> int:
    """push() on the hot path (backstop.hot_path): 1 if the job is new."""
    script_keys, args = enqueue_script(prepared, now)
    return _run_scripts("enqueue", [(len(script_keys), *script_keys, *args)])[0]


def _run_scripts(name: str, calls: Iterable[tuple]) -> list:
    """Run a script once per call (numkeys, keys, args) in one round trip on this thread's
    connection (backstop.hot_path), then (REDIS_MIN_REPLICAS_ACK) WAIT for the replicas on
    that connection. Raises replication.NotReplicated when too few replicas confirmed."""
    needed = replication.min_replicas()
    replies = hot_path.run_scripts(client().connection_pool, getattr(scripts_for(client()), name),
                                   calls, then=replication.wait_command(needed) if needed else None)
    if needed:
        replication.require(replies.pop(), needed)
    return replies


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
    created = push_now(prepared, time.time())
    return prepared.job_id, bool(created)


def enqueue_many(jobs: Iterable[dict]) -> list[str]:
    """Enqueue many jobs; each dict has job, payload and options (job_id, delay, priority).

    Every payload is validated first: one bad payload raises PayloadError (its field names
    prefixed with the job's index) and nothing is enqueued. Then each batch of jobs is one
    script (scripts.ENQUEUE_MANY), every job in it recorded, indexed, counted and announced
    with its push; the batches go out as they are built and Redis runs one while the next is
    built.
    """
    checked = [_checked_item(index, item) for index, item in enumerate(jobs)]
    now = time.time()
    batches = (checked[start:start + MANY_PER_SCRIPT]
               for start in range(0, len(checked), MANY_PER_SCRIPT))
    _run_scripts("enqueue_many", (_many_command(batch, now) for batch in batches))
    return [job_id for _, _, job_id, _, _ in checked]


def _checked_item(index: int, item: dict) -> tuple[str, str, str, float, int]:
    """(job name, payload JSON, id, delay, priority) of one item of enqueue_many."""
    job_name = item["job"]
    try:
        return (job_name, validated_json(job_name, item.get("payload", {})),
                *_options(job_name, item.get("job_id"), item.get("delay"), item.get("priority")))
    except PayloadError as exc:
        errors = [{**e, "field": f"[{index}].{e['field']}"} for e in exc.errors]
        raise PayloadError(exc.job_name, errors) from None


def _many_command(batch: list[tuple[str, str, str, float, int]], now: float) -> tuple:
    """The ENQUEUE_MANY call of a batch of checked jobs."""
    header = [keys.events_channel(), settings().backstop_events_maxlen, keys.job_prefix(),
              keys.state_index_prefix(), keys.timeline_prefix(), now]
    values = [value for job in batch for value in _many_fields(build(*job), now)]
    return (1, keys.events_stream(), *header, *values)


def _many_fields(prepared: Prepared, now: float) -> tuple:
    """One job's ARGV group of scripts.ENQUEUE_MANY."""
    queue = prepared.queue
    storage = huey_for(queue).storage
    delayed, state, how = _placement(prepared)
    return (prepared.job_id, queue, prepared.job_name, prepared.payload_json, state,
            queue_config(queue).attempts, now, now + prepared.delay if delayed else "",
            prepared.priority or "", prepared.message,
            storage.schedule_key if delayed else storage.queue_key, how,
            _queued_event(prepared, state, now), keys.queue_stats(queue))


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
