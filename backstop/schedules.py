"""Scheduled system jobs: a table of jobs to enqueue at fixed times, run by exactly one worker.

A schedule's occurrences fall every `every` seconds, `at` seconds into each period, counted
from the Unix epoch in UTC: every=60 is each minute at :00; every=3600, at=60 is each hour at
minute 1; every=86400, at=300 is each day at 00:05 UTC.

Backstop's worker runs its own consumers, not Huey's, so Huey's periodic tasks are not used:
every worker process ticks once a second (WorkerProcess.tick_schedules -> Ticker.tick). For
each schedule whose job's queue the process consumes and whose latest occurrence it has not
seen yet, it enqueues the job with the id ``sched-<name>-<occurrence>``. The enqueue script
creates a job only if its id is new, so of all the workers racing at that second exactly one
job exists per occurrence, and one worker runs it like any other job (retries, DLQ, timeline).
Then it records the occurrence in keys.schedules() (a compare-and-set: the newest wins) for the
System page. Enqueue-then-record heals itself: a worker that dies between the two leaves the
job, and the next tick of any worker finds it exists and records it.

An occurrence missed while no worker ran is not replayed in bulk: a tick only ever enqueues
the latest due occurrence, so workers back after three hours run the hourly snapshot once.
While an occurrence's job has not started (its queue paused or backed up), later occurrences
of most schedules are skipped rather than piled up behind it (Schedule.coalesce).
SCHEDULES_ENABLED=0 turns ticking off in every worker.

Applications add their own schedules with `add(Schedule(...))` in a task module
(BACKSTOP_TASK_MODULES), beside their jobs.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import redis

from . import keys
from .config import settings
from .connection import client
from .contracts import job_spec, load_job_modules, validated
from .producers import submit
from .redaction import redact, redact_text
from .registry import TIME_FIELDS

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,40}")
SUMMARY_LIMIT = 200
RECORD_FIELDS = ("state", "attempts", "started_at", "finished_at", "updated_at", "result",
                 "error")

# keys.schedules(): field = schedule name, value = JSON {slot, job_id, enqueued_at}.
# ARGV: name, slot, value. Sets the value unless a later (or the same) slot is recorded.
RECORD = """
local current = redis.call('hget', KEYS[1], ARGV[1])
if current then
  local ok, seen = pcall(cjson.decode, current)
  if ok and type(seen) == 'table' and tonumber(seen.slot) and
     tonumber(seen.slot) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('hset', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


def N_(text: str) -> str:
    """Marks a title for translation; the System page passes it to _() when shown."""
    return text


@dataclass(frozen=True)
class Schedule:
    """A job enqueued every `every` seconds, `at` seconds into each period (UTC).

    name: [a-z0-9-], part of the job ids; job: a job name; payload: a dict, or a function of
    the occurrence (a unix time) returning one; title: shown on the System page; shows: the
    result fields the System page sums up (dotted for nested ones; empty: every plain one);
    coalesce: skip an occurrence while the previous one's job has not started (a paused or
    backed-up queue then holds one health check, not one a minute), False when each
    occurrence's payload matters (the hour or day it covers).
    """

    name: str
    job: str
    every: int
    at: int = 0
    payload: dict | Callable[[float], dict] = field(default_factory=dict)
    title: str = ""
    shows: tuple[str, ...] = ()
    coalesce: bool = True

    def occurrence(self, now: float) -> int:
        """The latest occurrence at or before now (a unix time)."""
        return int((now - self.at) // self.every * self.every + self.at)

    def job_id(self, occurrence: int) -> str:
        """The one job id of an occurrence: sched-<name>-<UTC time, YYYYMMDDTHHMMSSZ>."""
        stamp = datetime.fromtimestamp(occurrence, UTC).strftime("%Y%m%dT%H%M%SZ")
        return f"sched-{self.name}-{stamp}"

    def payload_for(self, occurrence: int) -> dict:
        """The job's payload for an occurrence."""
        return self.payload(occurrence) if callable(self.payload) else dict(self.payload)


SCHEDULES: dict[str, Schedule] = {}


def add(schedule: Schedule) -> Schedule:
    """Register a schedule (replacing one of the same name) and return it.

    Raises ValueError for a bad name, period or offset, UnknownJob for an unknown job name,
    PayloadError when its payload (for the next occurrence) does not fit the job's contract.
    """
    if not NAME_PATTERN.fullmatch(schedule.name):
        raise ValueError(f"schedule name {schedule.name!r}: 1-41 characters of a-z 0-9 -")
    if schedule.every < 1 or not 0 <= schedule.at < schedule.every:
        raise ValueError(f"schedule {schedule.name!r}: every must be at least 1 second and "
                         f"at between 0 and every - 1 (got every={schedule.every}, "
                         f"at={schedule.at})")
    job_spec(schedule.job)
    validated(schedule.job, schedule.payload_for(schedule.occurrence(time.time())))
    SCHEDULES[schedule.name] = schedule
    return schedule


def _hour_before(occurrence: float) -> dict:
    """The payload of the hourly snapshot: the UTC hour the occurrence falls in."""
    hour = datetime.fromtimestamp(occurrence, UTC).replace(minute=0, second=0, microsecond=0)
    return {"hour": hour.isoformat()}


def _day_before(occurrence: float) -> dict:
    """The payload of the daily aggregate: the UTC day before the occurrence."""
    return {"day": (datetime.fromtimestamp(occurrence, UTC) - timedelta(days=1)).date()
            .isoformat()}


BUILT_IN = (
    Schedule("health-check", "system.health.check", 60, title=N_("Health check"),
             shows=("status", "score", "issues")),
    Schedule("analytics-hourly", "analytics.snapshot.hourly", 3600, 60, _hour_before,
             N_("Hourly analytics snapshot"), ("hour", "queues"), coalesce=False),
    Schedule("analytics-daily", "analytics.aggregate.daily", 86400, 300, _day_before,
             N_("Daily analytics aggregate"), ("day", "hours"), coalesce=False),
    # DLQ maintenance (archiving past the cap or age, capacity alerts) is part of retention:
    # run once per occurrence by one worker, its result visible, instead of by every worker.
    Schedule("retention", "system.index.rebuild", 300, 0, {"target": "retention"},
             N_("Retention and DLQ maintenance"), ("retention",)),
)


def enabled() -> bool:
    """Whether workers enqueue scheduled jobs (SCHEDULES_ENABLED)."""
    return settings().flag("schedules_enabled")


class Ticker:
    """Enqueues the due occurrences of the schedules whose queues a worker process consumes;
    remembers what it has seen, so a tick with nothing due touches no Redis."""

    def __init__(self, queues: tuple[str, ...]):
        self.queues = queues
        self.seen: dict[str, int] = {}

    def tick(self, now: float | None = None) -> list[str]:
        """Enqueue what is due now; return the ids of the jobs this call created."""
        if not enabled():
            return []
        now = time.time() if now is None else now
        due = [(s, s.occurrence(now)) for s in _table()
               if job_spec(s.job).queue in self.queues and self.seen.get(s.name, -1)
               < s.occurrence(now)]
        if not due:
            return []
        notes = recorded(client())
        pending = _pending(client(), [notes.get(s.name, {}).get("job_id") for s, _ in due])
        created = []
        for (schedule, occurrence), waits in zip(due, pending, strict=True):
            if (notes.get(schedule.name, {}).get("slot", -1) < occurrence
                    and not (schedule.coalesce and waits)
                    and self._enqueue(schedule, occurrence, now)):
                created.append(schedule.job_id(occurrence))
            self.seen[schedule.name] = occurrence
        return created

    def _enqueue(self, schedule: Schedule, occurrence: int, now: float) -> bool:
        job_id, new = submit(schedule.job, schedule.payload_for(occurrence),
                             job_id=schedule.job_id(occurrence))
        note = json.dumps({"slot": occurrence, "job_id": job_id, "enqueued_at": now})
        _record_script(client())(keys=[keys.schedules()],
                                 args=[schedule.name, occurrence, note])
        return new


def _pending(r: redis.Redis, job_ids: list[str | None]) -> list[bool]:
    """Whether each job has not started yet (waiting or delayed), in one round trip."""
    pipe = r.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(keys.job(job_id or ""), "state")
    return [state in ("waiting", "delayed") for state in pipe.execute()]


@lru_cache(maxsize=4)
def ticker(queues: tuple[str, ...]) -> Ticker:
    """The process's ticker for a set of queues (what it has seen lives as long as it)."""
    return Ticker(queues)


@lru_cache(maxsize=8)
def _record_script(r: redis.Redis):
    return r.register_script(RECORD)


def _table() -> list[Schedule]:
    """The built-in schedules, then those applications added (which may replace them)."""
    load_job_modules()
    return list({**{s.name: s for s in BUILT_IN}, **SCHEDULES}.values())


def recorded(r: redis.Redis) -> dict[str, dict]:
    """The latest recorded occurrence of every schedule: name -> {slot, job_id, enqueued_at}."""
    notes = {}
    for name, raw in r.hgetall(keys.schedules()).items():
        try:
            note = json.loads(raw)
            notes[str(name)] = {**note, "slot": int(note["slot"])}
        except (ValueError, TypeError, KeyError):
            continue  # not ours to judge: the next occurrence overwrites it
    return notes


def recorded_slots(r: redis.Redis) -> dict[str, int]:
    """The latest recorded occurrence of every schedule: name -> its unix time."""
    return {name: note["slot"] for name, note in recorded(r).items()}


# ---- what the System page shows ----
def listing(now: float | None = None, r: redis.Redis | None = None) -> dict:
    """Every schedule with its period, next run and last run, for the System page.

    Returns {"enabled", "schedules": [{name, title, job, queue, every, at, next_at,
    last: None | {occurrence, job_id, enqueued_at, state ("missing" once retention removed
    the job's record), attempts, started_at, finished_at, duration, summary, error}}]}.
    """
    now = time.time() if now is None else now
    r = r or client()
    table = _table()
    notes = recorded(r)
    pipe = r.pipeline(transaction=False)
    for schedule in table:
        pipe.hmget(keys.job(notes.get(schedule.name, {}).get("job_id", "")), RECORD_FIELDS)
    records = pipe.execute()
    return {"enabled": enabled(),
            "schedules": [_row(s, notes.get(s.name), dict(zip(RECORD_FIELDS, raw, strict=True)),
                               now) for s, raw in zip(table, records, strict=True)]}


def _row(schedule: Schedule, note: dict | None, record: dict, now: float) -> dict:
    latest = schedule.occurrence(now)
    done = note is not None and note["slot"] >= latest
    return {"name": schedule.name, "title": schedule.title or schedule.name,
            "job": schedule.job, "queue": job_spec(schedule.job).queue,
            "every": schedule.every, "at": schedule.at,
            "next_at": latest + schedule.every if done else latest,
            "last": _last_run(schedule, note, record) if note else None}


def _last_run(schedule: Schedule, note: dict, record: dict) -> dict:
    times = {name: float(record[name]) if record.get(name) else None
             for name in TIME_FIELDS if name in RECORD_FIELDS}
    state = record.get("state") or "missing"
    end = times["finished_at"] or (times["updated_at"] if state in ("failed", "dead") else None)
    started = times["started_at"]
    return {"occurrence": note["slot"], "job_id": note["job_id"],
            "enqueued_at": note.get("enqueued_at"), "state": state,
            "attempts": int(record.get("attempts") or 0), **times,
            "duration": round(end - started, 3) if end and started else None,
            "summary": summarise(_json(record.get("result")), schedule.shows),
            "error": _error_text(_json(record.get("error")))}


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def summarise(result: Any, shows: tuple[str, ...] = ()) -> str:
    """A job's result in one short line: "status: healthy, issues: 2" (a list counts its
    items; nested dicts are flattened with dotted names); shows picks the names, or the
    prefixes whose fields are shown relative to them. Secrets are redacted; cut to 200
    characters."""
    if result is None:
        return ""
    if not isinstance(result, dict):
        return _clip(redact_text(str(result)))
    pairs = [(_shown_name(name, shows), value) for name, value in _flatten(redact(result))]
    return _clip(", ".join(f"{name}: {value}" for name, value in pairs if name))


def _shown_name(name: str, shows: tuple[str, ...]) -> str:
    """The name a result field is shown under ("" to leave it out): within a picked prefix,
    relative to it ("retention.audit_trimmed" under "retention" is "audit_trimmed")."""
    if not shows or name in shows:
        return name
    prefix = next((s for s in shows if name.startswith(s + ".")), None)
    return name[len(prefix) + 1:] if prefix else ""


def _flatten(data: dict, prefix: str = "") -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for name, value in data.items():
        if isinstance(value, dict):
            pairs += _flatten(value, f"{prefix}{name}.")
        elif isinstance(value, list | tuple):
            pairs.append((f"{prefix}{name}", len(value)))
        else:
            pairs.append((f"{prefix}{name}", value))
    return pairs


def _error_text(error: Any) -> str:
    if not error:
        return ""
    if isinstance(error, dict):
        return _clip(redact_text(f"{error.get('type', 'Error')}: {error.get('message', '')}"))
    return _clip(redact_text(str(error)))


def _clip(text: str) -> str:
    return text if len(text) <= SUMMARY_LIMIT else text[:SUMMARY_LIMIT - 1] + "…"
