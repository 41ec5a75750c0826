"""Context builders for the owner panel: one per page, shared by the full page, its polled
fragment and its websocket push. Plain data only; no Flask here."""

from __future__ import annotations

import json

from . import audit, dlq, redrive, registry, stats
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
    return {"queues": rows, "summary": stats.summary(rows), "redis": _redis_or_error(),
            "workers_alive": sum(1 for w in workers if w["alive"]),
            "workers_gone": sum(1 for w in workers if not w["alive"]),
            "dlq": dlq.capacity(), "paused": [r["queue"] for r in rows if r["paused"]],
            "events": recent_feed(level), "level": level}


def _redis_or_error() -> dict:
    try:
        return stats.redis_health()
    except Exception as exc:  # the panel shows Redis trouble instead of failing
        return {"ok": False, "error": str(exc)}


def queues_page() -> dict:
    rows = stats.queue_overview()
    return {"queues": rows, "summary": stats.summary(rows), "states": STATES}


def queue_page(queue: str, state: str = "waiting", q: str = "", offset: int = 0,
               limit: int = 25) -> dict:
    """A queue's jobs in one state (newest first), optionally searched by id or payload (the
    redacted payload: a search must not find a job by its secret)."""
    state = state if state in STATES else "waiting"
    listed = registry.list_jobs(queue, state, offset, limit if not q else 500)
    # A listing shows neither errors nor timelines: leave them out rather than redact them.
    jobs = [registry.redacted({k: v for k, v in j.items() if k not in UNLISTED}) for j in listed]
    if q:
        needle = q.lower()
        jobs = [j for j in jobs if needle in j["id"].lower()
                or needle in json.dumps(j.get("payload", {})).lower()][:limit]
    row = next(r for r in stats.queue_overview() if r["queue"] == queue)
    return {"queue": queue, "state": state, "q": q, "jobs": jobs, "offset": offset,
            "limit": limit, "row": row, "states": STATES,
            "config": shown_config(queue), "more": len(jobs) == limit}


def job_page(job_id: str) -> dict | None:
    job = registry.get_job(job_id)
    if job is None:
        return None
    record = dlq.get_record(job.get("dlq_id") or job_id) if job["state"] == "dead" else None
    return {"job": registry.redacted(job), "dlq_record": record}


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


def system_page() -> dict:
    values = {s.name: shown_setting(s.name, getattr(settings(), s.name.lower()))
              for s in SETTINGS}
    return {"workers": stats.workers(), "redis": shown_redis(_redis_or_error()),
            "settings": values, "help": {s.name: s.help for s in SETTINGS},
            "configs": {q: shown_config(q) for q in QUEUES}}


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
