"""Every Redis key and channel Backstop uses, built by one function each."""

from __future__ import annotations

from .config import settings


def _p(*parts: str) -> str:
    return ":".join((settings().backstop_prefix, *parts))


def huey_name(queue: str) -> str:
    """Huey instance name of a queue; Huey derives its own list and schedule keys."""
    return f"{settings().backstop_prefix}_{queue}"


def job(job_id: str) -> str:
    return _p("job", job_id)


def job_prefix() -> str:
    return _p("job", "")


def timeline(job_id: str) -> str:
    """A job's timeline: a list of JSON entries beside its record."""
    return _p("timeline", job_id)


def timeline_prefix() -> str:
    return _p("timeline", "")


def state_index(queue: str, state: str) -> str:
    return _p("idx", queue, state)


def state_index_prefix() -> str:
    return _p("idx", "")


def queue_stats(queue: str) -> str:
    return _p("stats", queue)


def paused() -> str:
    return _p("paused")


def rate_window(queue: str) -> str:
    return _p("rate", queue)


def processing(worker_id: str, queue: str) -> str:
    return _p("processing", worker_id, queue)


def worker(worker_id: str) -> str:
    return _p("worker", worker_id)


def workers() -> str:
    return _p("workers")


def events_stream() -> str:
    return _p("events")


def events_channel() -> str:
    return _p("events", "live")


def dlq_prefix() -> str:
    """Prefix of the dead-letter keys; scripts.DLQ_FUNCS builds the same shapes in Lua."""
    return _p("dlq", "")


def dlq_record(job_id: str) -> str:
    return _p("dlq", "rec", job_id)


def dlq_index() -> str:
    return _p("dlq", "idx")


def dlq_counts() -> str:
    return _p("dlq", "counts")


def api_tokens() -> str:
    return _p("api", "tokens")


def otp(purpose: str, recipient: str) -> str:
    return _p("otp", purpose, recipient)


def cache(name: str) -> str:
    return _p("cache", name)


def cache_prefix() -> str:
    return _p("cache", "")


def webhooks() -> str:
    return _p("webhooks")


def workflow_run(run_id: str) -> str:
    return _p("workflow", run_id)


def metrics_hourly(hour: str) -> str:
    return _p("metrics", "hour", hour)


def metrics_daily(day: str) -> str:
    return _p("metrics", "day", day)


def health_log() -> str:
    return _p("health", "log")


def notifications(user: str) -> str:
    return _p("notifications", user)


def bad_messages(queue: str) -> str:
    """Messages that could not be decoded, kept for a person to inspect."""
    return _p("bad", queue)


def audit_log() -> str:
    """The audit log: a stream of HMAC-chained entries (see backstop.audit)."""
    return _p("audit", "log")


def audit_head() -> str:
    """The mac of the audit log's newest entry, moved in the same EXEC as each append."""
    return _p("audit", "head")


def dlq_dim_index(dim: str, value: str) -> str:
    """Records with one value of a dimension (queue, job, type, fp), scored by last failure."""
    return _p("dlq", "by", dim, value)


def dlq_hours() -> str:
    return _p("dlq", "hours")


def dlq_fingerprint(fp: str) -> str:
    return _p("dlq", "fp", fp)


def dlq_fingerprint_hours(fp: str) -> str:
    return _p("dlq", "fp", fp, "hours")


def dlq_fingerprints() -> str:
    return _p("dlq", "fps")


def dlq_lineage(record_id: str) -> str:
    return _p("dlq", "lineage", record_id)


def dlq_lock(record_id: str) -> str:
    return _p("dlq", "lock", record_id)


def dlq_alert_level() -> str:
    return _p("dlq", "alert-level")


def redrive(redrive_id: str) -> str:
    """A redrive's state: a hash of its settings, status, counters and timestamps."""
    return _p("redrive", redrive_id)


def redrive_pending(redrive_id: str) -> str:
    """The record ids a redrive has still to replay, snapshotted when it started (a list)."""
    return _p("redrive", redrive_id, "pending")


def redrive_inflight(redrive_id: str) -> str:
    """Ids taken from the pending list whose outcome is not counted yet (a list)."""
    return _p("redrive", redrive_id, "inflight")


def redrive_lease(redrive_id: str) -> str:
    """The id of the worker process driving a redrive (a string with a short TTL)."""
    return _p("redrive", redrive_id, "lease")


def redrive_slot(scope: str) -> str:
    """The redrive active for a queue ("*": all queues); one at a time per queue."""
    return _p("redrive-slot", scope)


def redrives() -> str:
    """Every recent redrive, scored by creation time (a sorted set)."""
    return _p("redrives")


def redrives_live() -> str:
    """Redrives a driver still has work on: running, paused, or cancelled with leftovers."""
    return _p("redrives", "live")


def users() -> str:
    """Panel users: name -> JSON {name, role, password (argon2), created_at}."""
    return _p("users")


def user_sessions(name: str) -> str:
    return _p("sessions", name)


def audit_quiet(marker: str) -> str:
    """Set while a repeated refusal (a throttled client) is not written to the audit log again;
    marker is a digest of what repeats."""
    return _p("audit", "quiet", marker)


def confirmation(token: str) -> str:
    return _p("confirm", token)


def event_streams(holder: str) -> str:
    """The open event streams of one API token (or one scoped stream token): a sorted set of
    stream ids scored by when their lease runs out."""
    return _p("streams", holder)


def metrics_prefix() -> str:
    """Prefix of the metrics the FINISH script writes: m:<queue>:<minute> and h:<queue>:<hour>
    hashes, and total (scripts.METRICS builds the same shapes in Lua)."""
    return _p("metrics", "")


def metrics_minute(queue: str, minute: int) -> str:
    """One queue's numbers for one minute (unix seconds // 60): fields <job>|<metric>."""
    return _p("metrics", "m", queue, str(minute))


def metrics_hour(queue: str, hour: int) -> str:
    """One queue's numbers for one hour (unix seconds // 3600): fields <job>|<metric>."""
    return _p("metrics", "h", queue, str(hour))


def metrics_total() -> str:
    """Every number since the start, never trimmed: fields <queue>|<job>|<metric>."""
    return _p("metrics", "total")


# ---- alerts (backstop.alerts, backstop.notify) ----
def alert_rules() -> str:
    """Alert rules: rule id -> JSON of an alerts.AlertRule."""
    return _p("alerts", "rules")


def alert_rules_seeded() -> str:
    """Set once the default rules were stored, so rules an owner deleted stay deleted."""
    return _p("alerts", "rules", "seeded")


def alert_firing() -> str:
    """Incidents firing now: "<rule>|<queue>" -> JSON of the incident."""
    return _p("alerts", "firing")


def alert_fired_at() -> str:
    """When each "<rule>|<queue>" last fired (unix s): its cool-down runs from there."""
    return _p("alerts", "fired-at")


def alert_history() -> str:
    """Every alert fired and resolved, newest last (a capped stream; field "a": JSON)."""
    return _p("alerts", "history")


def alert_deliveries() -> str:
    """The newest delivery attempts of alerts to webhooks and mail (a capped list of JSON)."""
    return _p("alerts", "deliveries")


def alert_lease() -> str:
    """The id of the worker process that evaluates alert rules (a string with a short TTL)."""
    return _p("alerts", "lease")


def alert_evaluated() -> str:
    """The last evaluation: when, by which worker, each rule's reading (JSON)."""
    return _p("alerts", "evaluated")
def schedules() -> str:
    """Scheduled system jobs: schedule name -> JSON of its latest occurrence {slot, job_id,
    enqueued_at, worker} (see backstop.schedules)."""
    return _p("schedules")


def audit_trimmed() -> str:
    """What retention trimmed from the audit log's start: count, last_id, mac (the newest
    trimmed entry's, which the oldest kept entry's prev must match), problems (JSON)."""
    return _p("audit", "trimmed")
def queue_consumers() -> str:
    """Queue -> when a worker consuming it last beat (unix s): "no worker since when"."""
    return _p("consumers")


def paused_since() -> str:
    """Queue -> when it was paused (unix s); removed when it is resumed."""
    return _p("paused", "since")


def system_mode() -> str:
    """The kill switch: "async_queue" or "sync_direct" (absent: async_queue)."""
    return _p("system", "mode")


def system_channel() -> str:
    """Pub/sub channel on which a mode switch is announced to every process."""
    return _p("system", "changes")


def system_log() -> str:
    """The health log: a sorted set of JSON entries scored by time (kept SYSTEM_LOG_DAYS)."""
    return _p("system", "log")


def outbox_hosts() -> str:
    """Host -> JSON {depth, updated_at, oldest_at} of its local outbox, written by its
    processes while Redis takes calls."""
    return _p("outbox", "hosts")


def system_log_level(level: str) -> str:
    """The health log's entries of one level (INFO, WARNING, ERROR, SWITCH): an index of
    system_log() with the same members and scores, so a level filter is one read."""
    return _p("system", "log", level.lower())
