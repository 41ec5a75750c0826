"""The JSON API of what the panel operates: queues (figures, pause, resume, two-step purge),
jobs by state, job retry / cancel / delete (one or in bulk), workers and alert rules. Bearer
tokens with the panel's roles, its rate limits and its audit actions; the answers' shapes
are the models of web/operations_models.py."""

from __future__ import annotations

import time

from flask import Blueprint, abort, g, jsonify, request
from pydantic import BaseModel

from backstop import alerts, job_actions, queues, registry, stats, tokens
from backstop.contracts import QUEUES
from backstop.notify import shown_url
from backstop.registry import STATES
from web import operations_models as om
from web.api_models import Deleted, Limit
from web.auth import DESTROY, DESTROY_LIMIT, MUTATE, audit_note, audited, require_token, user_key
from web.extensions import csrf, limiter
from web.openapi import documented
from web.params import checked_limit, json_body, parsed, refuse, refuse_field, valid_cursor

bp = Blueprint("api_operations", __name__, url_prefix="/api/v1")
TAGS, JOBS, ALERTS = ("queues",), ("jobs",), ("alerts",)
csrf.exempt(bp)  # bearer tokens, not cookies: nothing for a forged form to ride on
LISTED_ERROR = ("type", "message", "code")  # a listing's error: no stack
ELIDED = "/…"  # how shown_url ends a URL whose path it hides



def bulk_deletes() -> bool:
    return (request.view_args or {}).get("verb") == "delete"


# Bulk delete destroys: it also counts against the destroy limit (web.auth, per token).
DESTROY_IF_DELETE = limiter.shared_limit(DESTROY_LIMIT, scope="destroy", key_func=user_key,
                                         exempt_when=lambda: not bulk_deletes())


def known_queue(queue: str) -> str:
    if queue not in QUEUES:
        abort(404, f"no queue {queue!r}; queues are {', '.join(QUEUES)}")
    return queue


# ---- queues (read: viewer; pause, resume: operator; purge: owner) ----
@bp.get("/queues")
@documented(200, om.QueueList, tags=TAGS)
@require_token("viewer")
def list_queues():
    """Every queue now (QueueList): counts by state, paused, DLQ records, the last 5
    minutes' throughput, error rate and runtime / wait percentiles, oldest waiting age,
    live workers consuming it, and all-time totals."""
    seen, totals = stats.monitor(), {row["queue"]: row["totals"] for row in
                                     stats.queue_overview()}
    items = [{**seen["queues"][q], "totals": totals[q]} for q in QUEUES]
    return jsonify(items=items, taken_at=seen["taken_at"])


@bp.get("/queues/<queue>")
@documented(200, om.QueueDetail, refusals=(404,), tags=TAGS)
@require_token("viewer")
def show_queue(queue: str):
    """One queue (QueueDetail): its row of GET /queues, paused_since and its configuration."""
    known_queue(queue)
    row = next(r for r in stats.queue_overview() if r["queue"] == queue)
    paused_since = queues.state(queue)["paused_since"]
    return jsonify({**stats.monitor()["queues"][queue], "totals": row["totals"],
                    "config": row["config"], "paused_since": paused_since})


@bp.post("/queues/<queue>/pause")
@documented(200, om.QueueState, refusals=(404,), tags=TAGS)
@require_token("operator")
@MUTATE
@audited("queue.pause")
def pause_queue(queue: str):
    """Pause a queue in every worker (nothing is dropped); answers its state (QueueState)."""
    queues.pause(known_queue(queue), actor=g.actor)
    stats.forget()
    return jsonify(queues.state(queue))


@bp.post("/queues/<queue>/resume")
@documented(200, om.QueueState, refusals=(404,), tags=TAGS)
@require_token("operator")
@MUTATE
@audited("queue.resume")
def resume_queue(queue: str):
    """Resume a paused queue; answers its state (QueueState)."""
    queues.resume(known_queue(queue), actor=g.actor)
    stats.forget()
    return jsonify(queues.state(queue))


@bp.post("/queues/<queue>/purge")
@documented(200, om.PurgeAnswer, refusals=(404, 409, 422), body=om.PurgeBody,
            body_optional=True, tags=TAGS)
@require_token("owner")
@DESTROY
@audited("queue.purge")
def purge_queue(queue: str):
    """Cancel a queue's waiting jobs in two calls (PurgeBody): without a token, the count
    and a single-use token for 60 s (PurgePreview); with it, the purge (PurgeDone). A wrong,
    spent or other queue's token is a 409 with code "token", and nothing is cancelled."""
    token = parsed(om.PurgeBody, json_body()).token
    known_queue(queue)
    if not token:
        preview = queues.purge_preview(queue, g.actor)
        audit_note(action="queue.purge.preview", count=preview["count"])
        return jsonify(preview)
    done = queues.purge(queue, g.actor, token)
    stats.forget()
    audit_note(cancelled=done["cancelled"])
    return jsonify(done)


@bp.get("/queues/<queue>/jobs")
@documented(200, om.JobPage, refusals=(400, 404, 422), query=om.JobListQuery,
            tags=TAGS)
@require_token("viewer")
def list_queue_jobs(queue: str):
    """A page of a queue's jobs in one state, newest first (JobPage): ?state= (waiting),
    ?limit= (1-500, 50), ?cursor= (the previous page's next_cursor, unchanged)."""
    known_queue(queue)
    state = request.args.get("state") or "waiting"
    if state not in STATES:
        refuse_field("state", f"state must be one of {', '.join(STATES)}, not {state!r:.40}")
    cursor = request.args.get("cursor") or None
    if not valid_cursor(cursor):
        refuse_field("cursor", "pass the next_cursor of a previous page, unchanged", 400)
    limit = checked_limit(50, 500)
    try:
        jobs, next_cursor = registry.page_jobs(queue, state, cursor, limit)
    except ValueError as exc:
        refuse_field("cursor", str(exc), 400)
    total = registry.counts((queue,))[queue][state]
    return jsonify(queue=queue, state=state, total=total, items=[listed(j) for j in jobs],
                   next_cursor=next_cursor)


def listed(job: dict) -> dict:
    """A job for a listing: no timeline or result, its error without the stack."""
    shown = {k: v for k, v in job.items() if k not in ("timeline", "result", "error")}
    if isinstance(job.get("error"), dict):
        shown["error"] = {k: job["error"].get(k) for k in LISTED_ERROR}
    return registry.redacted(shown)


# ---- jobs (retry, cancel: operator; delete: owner) ----
@bp.post("/jobs/<job_id>/retry")
@documented(202, om.JobOutcome, refusals=(404, 409), tags=JOBS)
@require_token("operator")
@MUTATE
@audited("job.retry")
def retry_job(job_id: str):
    """Retry a dead job by replaying its DLQ record (JobOutcome, with attempt_id). 404: no
    such job; 409 code not_dead, or the record's own refusal (busy, limit, resolved...)."""
    return jsonify(job_actions.retry(job_id, g.actor)), 202


@bp.post("/jobs/<job_id>/cancel")
@documented(200, om.JobOutcome, refusals=(404, 409), tags=JOBS)
@require_token("operator")
@MUTATE
@audited("job.cancel")
def cancel_job(job_id: str):
    """Cancel a job that has not started (JobOutcome). 404: no such job; 409 code state."""
    return jsonify(job_actions.cancel(job_id, g.actor))


@bp.delete("/jobs/<job_id>")
@documented(200, om.JobOutcome, refusals=(404, 409), tags=JOBS)
@require_token("owner")
@DESTROY
@audited("job.delete")
def delete_job(job_id: str):
    """Delete a finished job's record (completed, dead, cancelled) (JobOutcome). 404: no
    such job; 409 code state (not finished) or queued (cancelled, its queue not empty)."""
    return jsonify(job_actions.delete(job_id, g.actor))


@bp.post("/jobs/bulk/<any(retry, cancel, delete):verb>")
@documented(200, om.BulkAnswer, refusals=(404, 422), body=om.JobBulkBody, tags=JOBS)
@require_token("operator")
@MUTATE
@DESTROY_IF_DELETE
@audited("job.bulk")
def bulk_jobs(verb: str):
    """retry, cancel or delete (owner) each of {"ids": [...]} (JobBulkBody, at most 1000): a
    result per distinct id, done or why not (BulkAnswer)."""
    audit_note(bulk_action=verb)
    if verb == "delete" and not tokens.allows(g.token["role"], "owner"):
        abort(403, f"deleting jobs needs the owner role; the token has {g.token['role']}")
    ids = parsed(om.JobBulkBody, json_body()).ids
    results = job_actions.bulk(verb, ids, g.actor)
    done = sum(1 for r in results if r["outcome"] in ("retried", "cancelled", "deleted"))
    audit_note(target=",".join(dict.fromkeys(ids)), done=done, count=len(results))
    return jsonify(verb=verb, results=results, count=len(results), done=done)


# ---- workers ----
@bp.get("/workers")
@documented(200, om.WorkerList, tags=("workers",))
@require_token("viewer")
def list_workers():
    """Every live worker process (WorkerList): host, pid, queues, threads per queue, the
    jobs it runs now, processed and failed counts, start and last heartbeat."""
    return jsonify(items=[w for w in stats.workers() if w["alive"]])


# ---- alerts (read: viewer; rules: owner) ----
@bp.get("/alerts")
@documented(200, om.Alerts, refusals=(400,), query=Limit, tags=ALERTS)
@require_token("viewer")
def show_alerts():
    """Incidents firing now, recent alerts (?limit=, at most 1000) and the last evaluation
    (Alerts)."""
    limit = checked_limit(50, 1000)
    evaluated = alerts.last_evaluation()
    stale = evaluated is None or time.time() - evaluated["t"] > alerts.stale_after()
    return jsonify(firing=alerts.firing(), history=alerts.history(limit),
                   evaluated=evaluated, evaluation_stale=stale)


def shown_rule(rule: alerts.AlertRule) -> dict:
    """A rule as the API shows it (and the audit log keeps it): webhook paths elided."""
    return {**rule.model_dump(), "webhooks": [shown_url(u) for u in rule.webhooks]}


@bp.get("/alerts/rules")
@documented(200, om.AlertRuleList, tags=ALERTS)
@require_token("viewer")
def list_alert_rules():
    """Every alert rule (AlertRuleList)."""
    return jsonify(items=[shown_rule(rule) for rule in alerts.rules()])


@bp.get("/alerts/rules/<rule_id>")
@documented(200, om.AlertRuleShown, refusals=(404,), tags=ALERTS)
@require_token("viewer")
def show_alert_rule(rule_id: str):
    """One alert rule (AlertRuleShown)."""
    rule = alerts.get_rule(rule_id)
    if rule is None:
        abort(404, f"no alert rule {rule_id!r}")
    return jsonify(shown_rule(rule))


@bp.post("/alerts/rules")
@documented(201, om.AlertRuleShown, refusals=(422,), body=om.AlertRuleCreate,
            tags=ALERTS)
@require_token("owner")
@MUTATE
@audited("alert.rule.create")
def create_alert_rule():
    """Add a rule (AlertRuleCreate; a missing id is made from kind and queue): 201 with it."""
    data = rule_body(om.AlertRuleCreate)
    if not data.get("id"):
        queue = "all" if data.get("queue", "*") == "*" else str(data.get("queue"))
        data["id"] = f"{data.get('kind')}-{queue}".replace("_", "-")
    audit_note(target=str(data["id"]))
    rule = checked_rule(lambda: alerts.create_rule(data), str(data["id"]))
    audit_note(rule=shown_rule(rule))
    return jsonify(shown_rule(rule)), 201


@bp.put("/alerts/rules/<rule_id>")
@documented(200, om.AlertRuleShown, refusals=(404, 422),
            body=om.AlertRuleChange, tags=ALERTS)
@require_token("owner")
@MUTATE
@audited("alert.rule.update")
def update_alert_rule(rule_id: str):
    """Change a rule's fields (AlertRuleChange: only those sent; id and kind stay)."""
    changes = rule_body(om.AlertRuleChange)
    for fixed in ("id", "kind"):
        if fixed in changes:
            refuse_field(fixed, f"a rule's {fixed} cannot change; create a new rule instead")
    rule = checked_rule(lambda: alerts.update_rule(rule_id, changes), rule_id)
    audit_note(rule=shown_rule(rule))
    return jsonify(shown_rule(rule))


@bp.delete("/alerts/rules/<rule_id>")
@documented(200, Deleted, refusals=(404,), tags=ALERTS)
@require_token("owner")
@MUTATE
@audited("alert.rule.delete")
def delete_alert_rule(rule_id: str):
    """Delete a rule (its firing alerts resolve at the next evaluation)."""
    if not alerts.delete_rule(rule_id):
        abort(404, f"no alert rule {rule_id!r}")
    return jsonify(deleted=rule_id)


def rule_body(model: type[BaseModel]) -> dict:
    """The body's fields as sent (checked against model for their types); an elided webhook
    (as GET shows them) is refused rather than stored in place of the real URL."""
    body = json_body()
    hooks = body.get("webhooks") or []
    if isinstance(hooks, list) and hooks:  # the audit log keeps them elided, as the panel's
        audit_note(body={**body, "webhooks": [shown_url(u) if isinstance(u, str) else u
                                              for u in hooks]})
    parsed(model, body)
    if any(isinstance(url, str) and url.endswith(ELIDED) for url in hooks):
        refuse_field("webhooks", 'send full URLs: one ending in "/…" is an elided one, as '
                                 "GET shows them (leave webhooks out to keep them)")
    return body


def checked_rule(store, rule_id: str) -> alerts.AlertRule:
    """store()'s rule; a 404 for an unknown rule, a 422 naming each bad field."""
    try:
        return store()
    except alerts.RuleError as exc:
        if exc.status == 404:
            abort(404, f"no alert rule {rule_id!r}")
        audit_note(reason=str(exc))
        refuse(exc.status, str(exc), fields=exc.errors)
