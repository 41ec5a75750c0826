"""The JSON API under /api/v1: bearer tokens, JSON in and out, the same roles and audit."""

from __future__ import annotations

import redis
from flask import (
    Blueprint,
    Response,
    abort,
    g,
    jsonify,
    make_response,
    request,
    stream_with_context,
    url_for,
)

from backstop import (
    app_events,
    dlq,
    export,
    modes,
    outbox,
    producers,
    redrive,
    registry,
    replay,
    schedules,
    stats,
    system_log,
    tokens,
)
from backstop.connection import is_try_later
from backstop.dlq import Filters
from web import api_models as m
from web.auth import audit_note, audited, require_token, scope_target
from web.extensions import csrf
from web.health import health_response
from web.openapi import documented
from web.params import (
    body_filter,
    checked_cursor,
    checked_limit,
    checked_since,
    checked_whole,
    filters_from,
    json_body,
    refuse_field,
)

bp = Blueprint("api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)  # bearer tokens, not cookies: nothing for a forged form to ride on
OPTION_TYPES = {"job_id": ((str,), "a string"), "delay": ((int, float), "a number of seconds"),
                "priority": ((int,), "an integer")}
OUTBOX_POLL = 5  # seconds a poller waits while a job waits in this host's outbox
REPLAY_TYPES = {"queue": ((str,), "a queue name"), "payload": ((dict,), "an object"),
                "resend_token": ((str,), "a string")}
JOB_REQUEST = m.job_request_model()
DLQ = ("dlq",)


@bp.post("/jobs")
@documented({201: m.JobRan, 202: m.JobAnswer, 502: m.JobRanAndFailed}, body=JOB_REQUEST,
            headers=m.JobHeaders, refusals=(422,), tags=("jobs",))
@require_token("operator")
def create_job():
    """Enqueue a job: {"job", "payload", "job_id"?, "delay"?, "priority"?}.

    202: queued in Redis, or kept in this host's outbox ("outbox": true) while Redis cannot
    take it. 201: run inline (sync_direct mode or the queue's `direct` outage policy), with
    its result. 502: run inline and its handler failed (the error, and what became of it).
    """
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("job"), str):
        abort(400, 'send a JSON object with "job" (a job name) and "payload" (an object)')
    check_types(body, OPTION_TYPES)
    job_id = body.get("job_id") or request.headers.get("Idempotency-Key")
    # An unknown job or a bad payload raises: web/errors.py answers 422 naming the fields.
    outcome = producers.dispatch(body["job"], body.get("payload", {}), job_id=job_id,
                                 delay=body.get("delay"), priority=body.get("priority"))
    location = url_for("api.show_job", job_id=outcome.job_id)
    answer = {"id": outcome.job_id, "created": outcome.how != "existing", "location": location}
    if outcome.state:
        answer["state"] = outcome.state
    answer.update(outcome.extra)
    if outcome.how != "ran":
        return jsonify(answer), 202, {"Location": location}
    if outcome.failed:
        error = {k: outcome.error.get(k) for k in ("type", "message", "code")}
        answer.update(error=error, recorded=outcome.recorded)
        return jsonify(answer), 502, {"Location": location}
    answer.update(result=outcome.result, recorded=outcome.recorded)
    return jsonify(answer), 201, {"Location": location}


def check_types(body: dict, wanted_types: dict) -> None:
    """A 400 naming the field when one of the body's fields has the wrong JSON type."""
    for name, (types, wanted) in wanted_types.items():
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            message = f"{name} must be {wanted}, not {type(value).__name__} {value!r:.40}"
            response = jsonify(error=message, fields=[{"field": name, "message": message}])
            abort(make_response(response, 400))


@bp.get("/jobs/<job_id>")
@documented(200, m.JobRecord, refusals=(404,), tags=("jobs",))
@require_token("viewer", scoped="job_id")
def show_job(job_id: str):
    """The JSON record of one job; a job still in this host's outbox (Redis could not take
    it yet) is {"id", "state": "outbox"}, whether or not Redis answers now. Until the job
    has finished, Retry-After says how long a poller should wait before asking again. A
    scoped stream token may read the jobs it names."""
    try:
        job = registry.get_job(job_id)
    except redis.RedisError as exc:
        if is_try_later(exc) and outbox.holds(job_id):
            return jsonify(id=job_id, state="outbox"), {"Retry-After": str(OUTBOX_POLL)}
        raise
    if job is None:
        if outbox.holds(job_id):
            return jsonify(id=job_id, state="outbox"), {"Retry-After": str(OUTBOX_POLL)}
        abort(404, f"no job {job_id!r} (never enqueued, or removed by retention)")
    wait = app_events.poll_after(job)
    return jsonify(registry.redacted(job)), {"Retry-After": str(wait)} if wait else {}


@bp.get("/health/queues")
@documented({200: m.Health, 503: m.Unhealthy}, tags=("system",))
@require_token("viewer")
def queue_health():
    """Queue and Redis health, whole (web.health): 200 healthy or degraded, 503 unhealthy."""
    return health_response(full=True)


# ---- the dead-letter queue (read: viewer, manage: operator, delete: owner) ----
@bp.get("/dlq")
@documented(200, m.DlqPage, query=m.DlqPageQuery, refusals=(400, 422), tags=DLQ)
@require_token("viewer")
def list_dead_letters():
    """A page of DLQ records: filters and search in the query string, ?cursor= continues."""
    cursor = checked_cursor("cursor: pass the next_cursor of a previous page, unchanged")
    page = dlq.page(filters_from(request.args.to_dict()), cursor=cursor, limit=checked_limit())
    return jsonify(items=[record_summary(i) for i in page.items], next_cursor=page.next_cursor,
                   total=page.total, complete=page.complete, scanned=page.scanned)


def record_summary(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("stack", "payload")}


@bp.get("/dlq/<record_id>")
@documented(200, m.DlqRecord, refusals=(404,), tags=DLQ)
@require_token("viewer")
@audited("dlq.view")
def show_dead_letter(record_id: str):
    """One record with payload (redacted), stack and lineage (a sensitive read: audited)."""
    record = dlq.detail(record_id)
    if record is None:
        abort(404, f"no dead-letter record {record_id!r}")
    return jsonify(record)


@bp.post("/dlq/<record_id>/replay")
@documented(202, m.Replayed, body=m.ReplayBody, body_optional=True, refusals=(404, 409, 422),
            tags=DLQ)
@require_token("operator")
@audited("dlq.replay")
def replay_dead_letter(record_id: str):
    """Replay one record: {"queue"?, "payload"?} (an edited payload is validated)."""
    body = json_body()
    check_types(body, REPLAY_TYPES)
    done = replay.replay(record_id, actor=g.actor, queue=body.get("queue"),
                         payload=body.get("payload"), resend_token=body.get("resend_token"))
    return jsonify(done), 202


@bp.post("/dlq/<record_id>/preview")
@documented(200, m.EditPreview, body=m.PreviewBody, refusals=(404, 409, 422),
            tags=DLQ)
@require_token("operator")
def preview_dead_letter_edit(record_id: str):
    """Validate an edited payload and show its diff against the original; commits nothing."""
    payload = json_body().get("payload")
    if not isinstance(payload, dict):
        abort(400, 'send {"payload": {...}}')
    owner = tokens.allows(g.token["role"], "owner")
    return jsonify(replay.preview_edit(record_id, payload, actor=g.actor, owner=owner))


@bp.delete("/dlq/<record_id>")
@documented(200, m.Deleted, refusals=(404,), tags=DLQ)
@require_token("owner")
@audited("dlq.delete")
def delete_dead_letter(record_id: str):
    """Delete one record."""
    if not replay.delete([record_id]):
        abort(404, f"no dead-letter record {record_id!r}")
    return jsonify(deleted=record_id)


def bulk_records(action: str):
    ids, flt = bulk_selection(json_body())
    audit_note(target=scope_target(ids, flt))
    results = replay.bulk(action, actor=g.actor, ids=ids, flt=flt)
    return jsonify(results=results, count=len(results))


def bulk_selection(body: dict) -> tuple[list[str] | None, Filters | None]:
    """The ids, or the filter, a bulk action's body selects (a 400 unless it is one of them)."""
    ids, selector = body.get("ids"), body.get("filter")
    either = 'send either "ids": [...] or "filter": {...} ({} selects every record)'
    if ids is None:
        if not isinstance(selector, dict):
            abort(400, either)
        return None, Filters.parse(selector)
    if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        abort(400, '"ids" must be a list of record ids')
    if selector is not None:
        abort(400, either)
    return ids, None


@bp.post("/dlq/bulk/replay")
@documented(200, m.BulkResults, body=m.BulkBody, refusals=(422,), tags=DLQ)
@require_token("operator")
@audited("dlq.bulk_replay")
def bulk_replay():
    """Replay selected ids or every record a filter selects; a result per id."""
    return bulk_records("replay")


@bp.post("/dlq/bulk/delete")
@documented(200, m.BulkResults, body=m.BulkBody, refusals=(422,), tags=DLQ)
@require_token("owner")
@audited("dlq.bulk_delete")
def bulk_delete():
    """Delete selected ids or every record a filter selects; a result per id."""
    return bulk_records("delete")


@bp.post("/dlq/clear")
@documented(200, m.ClearAnswer, body=m.ClearBody, body_optional=True, refusals=(403, 422),
            tags=DLQ)
@require_token("owner")
@audited("dlq.clear")
def clear_dead_letters():
    """Clear in two calls: {"filter"} answers the count and a token; {"filter", "token"}
    clears."""
    body = json_body()
    check_types(body, {"token": ((str,), "the token the first call answered")})
    flt = body_filter(body)
    audit_note(target=scope_target(None, flt))
    if not body.get("token"):
        audit_note(action="dlq.clear.preview")
        return jsonify(replay.clear_preview(g.actor, flt))
    return jsonify(replay.clear(g.actor, flt, body["token"]))


@bp.get("/dlq/redrives")
@documented(200, m.Redrives, tags=DLQ)
@require_token("viewer")
def list_redrives():
    """Recent redrives, newest first, with their progress."""
    return jsonify(items=redrive.listing())


@bp.post("/dlq/redrives")
@documented(202, m.Redrive, body=m.RedriveBody, refusals=(409, 422), tags=DLQ)
@require_token("operator")
@audited("dlq.redrive.start")
def start_redrive():
    """Start a throttled redrive: {"filter": {...}, "rate": jobs per second, "queue"?}."""
    body = json_body()
    flt = body_filter(body)
    audit_note(target=scope_target(None, flt))
    started = redrive.start(g.actor, flt, body.get("rate"), body.get("queue"))
    audit_note(target=started["id"], filter=flt.as_dict())
    return jsonify(started), 202


@bp.get("/dlq/redrives/<redrive_id>")
@documented(200, m.Redrive, refusals=(404,), tags=DLQ)
@require_token("viewer")
def show_redrive(redrive_id: str):
    """A redrive's progress: replayed, refused, remaining, percent, ETA."""
    return jsonify(redrive.progress(redrive_id))


@bp.post("/dlq/redrives/<redrive_id>/<any(pause, resume, cancel):verb>")
@documented(200, m.Redrive, refusals=(404, 409), tags=DLQ)
@require_token("operator")
@audited("dlq.redrive.change")
def change_redrive(redrive_id: str, verb: str):
    """Pause, resume or cancel a redrive."""
    actions = {"pause": redrive.pause, "resume": redrive.resume, "cancel": redrive.cancel}
    return jsonify(actions[verb](redrive_id, g.actor))


@bp.get("/dlq/analytics")
@documented(200, m.Open, tags=DLQ)
@require_token("viewer")
def dlq_analytics():
    """Totals by queue, job, error type, reason, code, status and replay status."""
    return jsonify(dlq.analytics())


@bp.get("/dlq/trends")
@documented(200, m.Open, query=m.TrendsQuery, refusals=(422,), tags=DLQ)
@require_token("viewer")
def dlq_trends():
    """Failures per hour over ?hours= 1, 6, 12, 24 or 48."""
    return jsonify(dlq.trends(checked_whole("hours", 24)))


@bp.get("/dlq/fingerprints")
@documented(200, m.Items, query=m.Limit, refusals=(400,), tags=DLQ)
@require_token("viewer")
def dlq_fingerprints():
    """Failure groups, largest first (replay, clear or export one with filter fingerprint=)."""
    return jsonify(items=dlq.fingerprints(checked_limit()))


@bp.get("/dlq/export.<any(csv, jsonl):fmt>")
@documented(200, non_json="text/csv,application/x-ndjson", query=m.DlqFilters,
            refusals=(404, 422), tags=DLQ)
@require_token("viewer")
@audited("dlq.export")
def export_dead_letters(fmt: str):
    """Stream every record a filter selects as CSV or JSONL (audited)."""
    return streamed_export(fmt)


def streamed_export(fmt: str) -> Response:
    """The records a query's filters select, streamed as CSV or JSONL."""
    writers = {"csv": (export.csv_chunks, "text/csv; charset=utf-8"),
               "jsonl": (export.jsonl_chunks, "application/x-ndjson; charset=utf-8")}
    writer, mimetype = writers[fmt]
    records = dlq.iter_records(filters_from(request.args.to_dict()))
    return Response(stream_with_context(writer(records)), mimetype=mimetype, headers={
        "Content-Disposition": f'attachment; filename="backstop-dlq.{fmt}"'})


@bp.get("/system/schedules")
@documented(200, m.Open, tags=("system",))
@require_token("viewer")
def list_schedules():
    """The scheduled system jobs: period, next run, last run and its outcome."""
    return jsonify(schedules.listing())


@bp.get("/system/health-log")
@documented(200, m.Items, query=m.Limit, refusals=(400,), tags=("system",))
@require_token("viewer")
def health_log():
    """The health check's log, newest first (?limit=, at most 1000)."""
    return jsonify(items=stats.health_log(checked_limit(50, 1000)))


@bp.get("/system/logs")
@documented(200, m.Items, query=m.LogsQuery, refusals=(400, 422), tags=("system",))
@require_token("viewer")
def system_logs():
    """The health log, newest first: ?level= (INFO, WARNING, ERROR, SWITCH), ?since= (unix
    seconds), ?limit= (at most 1000)."""
    since, limit = checked_since(), checked_limit(50, 1000)
    try:
        items = system_log.entries(request.args.get("level"), since, limit)
    except ValueError as exc:
        refuse_field("level", str(exc))
    return jsonify(items=items)


@bp.get("/system/mode")
@documented(200, m.Mode, tags=("system",))
@require_token("viewer")
def show_mode():
    """The mode every process follows: {"mode", "changed_at", "changed_by"}."""
    return jsonify(modes.read())


@bp.post("/system/mode")
@documented(200, m.Mode, body=m.ModeBody, refusals=(422,), tags=("system",))
@require_token("owner")
@audited("system.mode")
def switch_mode():
    """Switch every process to {"mode": "async_queue" | "sync_direct"} (within 1 s)."""
    mode = json_body().get("mode")
    if mode not in modes.MODES:
        message = f"mode must be one of {', '.join(modes.MODES)}, not {mode!r:.40}"
        audit_note(reason=message)
        refuse_field("mode", message)
    audit_note(target=mode)
    return jsonify(modes.switch(str(mode), actor=g.actor))
