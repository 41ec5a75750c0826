"""Context builders for the owner panel: one per page, shared by the full page, its polled
fragment and its websocket push. Plain data only; no Flask here."""

from __future__ import annotations

import json
import time

from . import (
    audit,
    charts,
    dlq,
    health,
    modes,
    outbox,
    redrive,
    registry,
    schedules,
    stats,
    system_log,
)
from .config import SETTINGS, TRUE_WORDS, settings
from .contracts import QUEUES, queue_config
from .dlq import Filters
from .poison import UNREADABLE
from .redaction import redact
from .registry import STATES

SEVERITY = {"dead": "error", "alert": "error", "retrying": "warning", "stalled": "warning",
            "paused": "warning", "failed": "warning", "cancelled": "info"}
UNLISTED = ("error", "result", "timeline")
SECRET_SETTINGS = ("SECRET_KEY", "AI_API_KEY", "WEBHOOK_SECRET", "ALERT_WEBHOOK_SECRET",
                   "REDIS_URL", "SMTP_URL")


def severity(event: dict) -> str:
    if event.get("type") == "alert":
        return event.get("severity", "error")
    return SEVERITY.get(event.get("type", ""), "info")


def recent_feed(level: str = "", count: int = 50) -> list[dict]:
    """The newest events first, each with its severity; level filters (info/warning/error)."""
    rows = [{**redact(e), "severity": severity(e)} for e in registry.latest_events(count)]
    return [e for e in rows if not level or e["severity"] == level]


def overview(level: str = "") -> dict:
    rows = stats.queue_overview()
    workers = stats.workers()
    judged = health.assess()
    return {"queues": rows, "summary": stats.summary(rows), "redis": _redis_or_error(),
            "workers_alive": sum(1 for w in workers if w["alive"]),
            "workers_gone": sum(1 for w in workers if not w["alive"]),
            "dlq": dlq.capacity(), "paused": [r["queue"] for r in rows if r["paused"]],
            "events": recent_feed(level), "level": level,
            "pulse": pulse(judged),
            "running": running_now(judged["workers"], judged["checked_at"])}


def pulse(judged: dict) -> list[dict]:
    """One row per queue for the overview: its health (status, score, issues) and last 5
    minutes' figures (health.assess), and the last hour's processed and failed per minute as
    a sparkline."""
    sparks = stats.cached("sparklines", lambda: charts.sparklines(QUEUES))
    return [{**judged["queues"][q], "spark": sparks[q]} for q in QUEUES]


def running_now(workers: list[dict], now: float, queue: str | None = None) -> list[dict]:
    """Every job the live workers (stats.monitor's "workers") are running, of one queue if
    given, the longest running first: job id and name, queue, host, pid, worker id, thread
    and seconds elapsed at now."""
    rows = [{**job, "host": w.get("host"), "pid": w.get("pid"), "worker": w.get("id"),
             "elapsed": max(now - float(job.get("since") or 0), 0.0)}
            for w in workers for job in w.get("current") or []
            if queue is None or job.get("queue") == queue]
    return sorted(rows, key=lambda row: -row["elapsed"])


def job_timing(job: dict, now: float) -> dict:
    """How long a job waited for its last start and how long that run took, in seconds
    (None where it does not apply): an active job's run so far, a waiting job's wait so
    far ("running" / "waiting" say so). The wait runs from when the job was due (enqueued,
    or its delay or retry ran out) to its start, as the metrics count it."""
    state, started = job.get("state"), job.get("started_at")
    due = max(job.get("created_at") or 0.0, job.get("run_at") or 0.0)
    if state == "waiting":
        return {"wait": max(now - due, 0.0) if due else None, "duration": None,
                "waiting": True, "running": False}
    ended = {"active": now, "completed": job.get("finished_at"), "dead": job.get("finished_at"),
             "failed": job.get("updated_at")}.get(state or "")
    ran = ended - started if started and ended and ended >= started else None
    wait = started - due if started and due and due <= started else None
    return {"wait": wait, "duration": ran, "waiting": False, "running": state == "active"}


def _redis_or_error() -> dict:
    try:
        return stats.redis_health()
    except Exception as exc:  # the panel shows Redis trouble instead of failing
        return {"ok": False, "error": str(exc)}


def queues_page() -> dict:
    rows = stats.queue_overview()
    return {"queues": rows, "summary": stats.summary(rows), "states": STATES}


def queue_page(queue: str, state: str = "waiting", q: str = "", offset: int = 0,
               limit: int = 25, hours: int = charts.DEFAULT_WINDOW, zone: str = "UTC") -> dict:
    """A queue's jobs in one state (newest first), optionally searched by id or payload (the
    redacted payload: a search must not find a job by its secret), each with its wait and
    duration; the queue's last 5 minutes' figures (per job name too), its charts over the
    window of ``hours`` (time labels on round times of ``zone``) and its running jobs."""
    state = state if state in STATES else "waiting"
    listed = registry.list_jobs(queue, state, offset, limit if not q else 500)
    # A listing shows neither errors nor timelines: leave them out rather than redact them.
    jobs = [registry.redacted({k: v for k, v in j.items() if k not in UNLISTED}) for j in listed]
    if q:
        needle = q.lower()
        jobs = [j for j in jobs if needle in j["id"].lower()
                or needle in json.dumps(j.get("payload", {})).lower()][:limit]
    row = next(r for r in stats.queue_overview() if r["queue"] == queue)
    now, seen, judged = time.time(), stats.monitor(), health.assess()
    for job in jobs:
        job["timing"] = job_timing(job, now)
    hours = charts.window(hours).hours
    return {"queue": queue, "state": state, "q": q, "jobs": jobs, "offset": offset,
            "limit": limit, "row": row, "states": STATES,
            "config": shown_config(queue), "more": len(jobs) == limit,
            "figures": {**seen["queues"][queue], **judged["queues"][queue]},
            "running": running_now(seen["workers"], seen["taken_at"], queue),
            "hours": hours, "windows": list(charts.WINDOWS),
            "charts": charts.queue_charts(queue, hours, zone)}


def job_page(job_id: str) -> dict | None:
    job = registry.get_job(job_id)
    if job is None:
        return None
    record = dlq.get_record(job.get("dlq_id") or job_id) if job["state"] == "dead" else None
    shown = registry.redacted(job)
    shown["timeline"] = with_gaps(shown.get("timeline") or [])
    return {"job": shown, "dlq_record": record, "timing": job_timing(job, time.time())}


RUN_ENDINGS = ("completed", "failed", "dead", "requeued", "stalled")


def with_gaps(timeline: list[dict]) -> list[dict]:
    """Timeline entries with "gap": seconds since the entry before (None on the first), and
    "gap_kind": "ran" on the entry that ends a run (since its start), "waited" on a start that
    followed an enqueue (the wait), else "after"."""
    out, previous = [], None
    for item in timeline:
        t = float(item.get("t") or 0)
        event, before = item.get("event"), previous.get("event") if previous else None
        kind = ("ran" if event in RUN_ENDINGS and before == "started"
                else "waited" if event == "started" and before in ("enqueued", "requeued")
                else "after")
        gap = t - float(previous.get("t") or 0) if previous else None
        out.append({**item, "gap": gap, "gap_kind": kind})
        previous = item
    return out


def dlq_page(flt: Filters, cursor: str | None = None) -> dict:
    page = dlq.page(flt, cursor=cursor, limit=50)
    return {"page": page, "filters": flt, "capacity": dlq.capacity(), "queues": QUEUES,
            "redrives": redrive.listing(10)}


def dlq_record_page(record_id: str) -> dict | None:
    record = dlq.detail(record_id)
    if record is None:
        return None
    return {"record": record, "replayable": record["job"] != UNREADABLE}


def dlq_analytics_page(tab: str = "overview", hours: int = 24) -> dict:
    hours = hours if hours in dlq.TREND_WINDOWS else 24
    return {"tab": tab, "hours": hours, "analytics": dlq.analytics(),
            "trends": dlq.trends(hours), "fingerprints": dlq.fingerprints(20),
            "windows": dlq.TREND_WINDOWS}


class Word(str):
    """A value shown as a word the template translates (``_(value) if value.word``)."""

    word = True


def N_(text: str) -> str:
    """Marks a word for translation that templates pass to _() at run time."""
    return text


YES, NO, NONE = Word(N_("yes")), Word(N_("no")), Word(N_("none"))
EMPTY, SET, NO_LIMIT = Word(N_("(empty)")), Word(N_("(set)")), Word(N_("no limit"))
OUTBOX_STALE_SECONDS = 60
FLAG_SETTINGS = ("COOKIE_SECURE", "WEBHOOK_ALLOW_PRIVATE", "METRICS_PUBLIC", "SCHEDULES_ENABLED")


def shown(value) -> str:
    """A setting, config or Redis value as a person reads it: yes/no for booleans, "none"
    for nothing or an empty list, a list joined with commas, 2.0 as 2, "" as "(empty)"."""
    if isinstance(value, bool):
        return YES if value else NO
    if value is None:
        return NONE
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(sorted(map(str, value))) if value else NONE
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) if str(value).strip() else EMPTY


def shown_setting(name: str, value: str) -> str:
    """A setting's value for the System page: secrets only as set or empty, flags yes/no."""
    if name in SECRET_SETTINGS:
        return SET if value else EMPTY
    if name in FLAG_SETTINGS:
        return YES if value.strip().lower() in TRUE_WORDS else NO
    return shown(value)


def shown_redis(health: dict) -> dict:
    """Redis health for people: maxmemory 0 is no limit."""
    return {name: NO_LIMIT if name == "max_memory" and value == "0B" else shown(value)
            for name, value in health.items()}


def system_page(level: str = "") -> dict:
    """The System page: the mode, each host's outbox, the health log (level: one of
    system_log.LEVELS or "" for all), workers, schedules, health checks, Redis, settings."""
    values = {s.name: shown_setting(s.name, getattr(settings(), s.name.lower()))
              for s in SETTINGS}
    return {"mode": modes.read(), "process_mode": modes.current(),
            "outbox_hosts": outbox_rows(time.time()),
            "system_log": system_log.entries(level or None, limit=50), "log_level": level,
            "log_days": settings().int("system_log_days"),
            "workers": stats.workers(), "redis": shown_redis(_redis_or_error()),
            "settings": values, "help": {s.name: s.help for s in SETTINGS},
            "configs": {q: shown_config(q) for q in QUEUES},
            "schedules": scheduled_jobs(), "health_log": stats.health_log(20)}


def outbox_rows(now: float) -> list[dict]:
    """Each host's outbox as last reported, deepest first: host, depth, oldest_age (seconds
    the oldest job has waited, None when empty), updated_at, stale (not reported for
    OUTBOX_STALE_SECONDS: the host's processes may be gone, or Redis unreachable there)."""
    rows = [{"host": host, "depth": int(row.get("depth") or 0),
             "oldest_age": now - row["oldest_at"] if row.get("oldest_at") else None,
             "updated_at": row.get("updated_at"),
             "stale": now - float(row.get("updated_at") or 0) > OUTBOX_STALE_SECONDS}
            for host, row in outbox.host_depths().items()]
    return sorted(rows, key=lambda row: (-row["depth"], row["host"]))


def scheduled_jobs() -> dict:
    """The scheduled system jobs (schedules.listing), each with its period as words the
    template translates: {"kind": seconds | minutes | hourly | daily, "n", "at"}."""
    listing = schedules.listing()
    rows = [{**row, "period": period_words(row["every"], row["at"])}
            for row in listing["schedules"]]
    return {**listing, "schedules": rows}


def period_words(every: int, at: int) -> dict:
    """How often a schedule runs, as the System page says it: every N seconds or minutes,
    hourly at a minute, daily at a UTC time."""
    if every == 86400:
        return {"kind": "daily", "n": 1, "at": f"{at // 3600:02d}:{at % 3600 // 60:02d}"}
    if every == 3600 and at % 60 == 0:
        return {"kind": "hourly", "n": 1, "at": f"{at // 60:02d}"}
    if every % 60 == 0 and at == 0 and every < 86400:
        return {"kind": "minutes", "n": every // 60, "at": ""}
    return {"kind": "seconds", "n": every, "at": ""}


def shown_config(queue: str) -> dict:
    """A queue's config, each value as shown()."""
    return {name: shown(value) for name, value in queue_config(queue).model_dump().items()}


def audit_page(actor: str = "", action: str = "", target: str = "",
               before: str | None = None) -> dict:
    page = audit.entries(actor=actor or None, action=action or None, target=target or None,
                         before=before, limit=50)
    return {"entries": page.items, "next_before": page.next_before,
            "filters": {"actor": actor, "action": action, "target": target}}


STATE_WORDS = [
    N_("waiting"), N_("delayed"), N_("active"), N_("completed"), N_("failed"), N_("dead"),
    N_("cancelled"), N_("queued"), N_("started"), N_("progress"), N_("retrying"), N_("replayed"),
    N_("stalled"), N_("paused"), N_("resumed"), N_("alert"), N_("enqueued"), N_("requeued"),
    N_("open"), N_("replaying"), N_("resolved"), N_("pending"), N_("never"), N_("once"),
    N_("several"), N_("limit"), N_("dlq.archived"), N_("info"), N_("warning"), N_("error"),
    N_("critical"), N_("running"), N_("done"), N_("deleted"), N_("missing"), N_("ok"),
    N_("owner"), N_("operator"), N_("viewer"), N_("redrive.started"), N_("redrive.finished"),
    N_("redrive.paused"), N_("redrive.resumed"), N_("redrive.cancelled"),
]
