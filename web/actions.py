"""The panel's mutations: POST only, CSRF-checked, role-checked, rate-limited, audited.
Those that touch much or cannot be undone ask first: a confirmation page with a single-use
token, then the same POST with it."""

from __future__ import annotations

import re

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext, ngettext

from backstop import (
    alerts,
    bounded_json,
    confirm,
    dlq,
    modes,
    queues,
    redrive,
    registry,
    replay,
)
from backstop.contracts import QUEUES
from backstop.dlq import FilterError, Filters
from backstop.errors import BackstopError
from backstop.notify import shown_url
from web.auth import DESTROY, MUTATE, audit_note, audited, require_role, scope_target
from web.pages import PAGES, page_context
from web.security import safe_next
from web.templating import can

bp = Blueprint("actions", __name__)


def back(default: str):
    """Back to the form's "next" page when it is on this site; default otherwise."""
    return redirect(safe_next(request.form.get("next")) if request.form.get("next") else default)


def confirm_step(confirm_action: str, scope: dict, count: int | None, text: str, *,
                 danger: bool = False, **hidden):
    """The first of two steps: say what this touches (count jobs; None: not jobs) and carry
    a single-use token."""
    token = confirm.issue(g.actor, confirm_action, scope)
    audit_note(action=f"{g.audit_action}.preview", count=count)
    return render_template("confirm.html", text=text, count=count, token=token,
                           action_url=request.path, hidden=hidden, danger=danger,
                           next=request.form.get("next"))


def confirmed(confirm_action: str, scope: dict) -> bool:
    return confirm.consume(request.form.get("confirm", ""), g.actor, confirm_action, scope)


def form_filter() -> Filters:
    """The form's "filter" (JSON of DLQ filters); a 400 naming the problem when it is bad."""
    try:
        value = bounded_json.loads(request.form.get("filter") or "{}")
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return Filters.parse(value)
    except (ValueError, FilterError) as exc:
        abort(400, _("The filter is not valid: %(reason)s", reason=str(exc)))


def failed(exc: BackstopError) -> None:
    """Say why an action did not happen, in the audit log and to the user."""
    audit_note(result="failed", reason=str(exc))
    flash(str(exc), "error")


def known_queue(queue: str) -> str:
    if queue not in QUEUES:
        abort(404, _("There is no queue %(queue)s.", queue=queue))
    return queue


# ---- queues and jobs ----
@bp.post("/queues/<queue>/pause")
@require_role("operator")
@MUTATE
@audited("queue.pause")
def pause_queue(queue: str):
    """Pause a queue in every worker."""
    queues.pause(known_queue(queue), actor=g.actor)
    flash(_("Queue %(queue)s paused.", queue=queue), "ok")
    return back(url_for("pages.queues_page"))


@bp.post("/queues/<queue>/resume")
@require_role("operator")
@MUTATE
@audited("queue.resume")
def resume_queue(queue: str):
    """Resume a queue."""
    queues.resume(known_queue(queue), actor=g.actor)
    flash(_("Queue %(queue)s resumed.", queue=queue), "ok")
    return back(url_for("pages.queues_page"))


@bp.post("/queues/<queue>/purge")
@require_role("owner")
@DESTROY
@audited("queue.purge")
def purge_queue(queue: str):
    """Cancel every waiting job of a queue, after a second confirmation."""
    waiting = registry.counts((known_queue(queue),))[queue]["waiting"]
    if not confirmed("queue.purge", {"queue": queue}):
        return confirm_step("queue.purge", {"queue": queue}, waiting,
                            _("Purge queue %(queue)s: cancel its waiting jobs.", queue=queue),
                            danger=True)
    done = registry.purge_waiting(queue, g.actor)
    flash(ngettext("%(num)s job cancelled.", "%(num)s jobs cancelled.", done), "ok")
    return redirect(url_for("pages.queue_page", queue=queue))


BULK_JOB_TEXT = {
    "retry": lazy_gettext("Retry the selected dead jobs (each through its dead-letter record)."),
    "cancel": lazy_gettext("Remove the selected jobs that have not started."),
}


@bp.post("/queues/<queue>/bulk")
@require_role("operator")
@MUTATE
@audited("job.bulk")
def bulk_jobs(queue: str):
    """Retry (dead jobs, through the DLQ) or remove (cancel) the selected jobs."""
    ids = request.form.getlist("ids")
    action = request.form.get("action", "")
    known_queue(queue)
    if action not in BULK_JOB_TEXT or not ids:
        flash(_("Select jobs and an action."), "error")
        return back(url_for("pages.queue_page", queue=queue))
    scope = {"ids": sorted(ids)}
    if not confirmed(f"job.{action}", scope):
        return confirm_step(f"job.{action}", scope, len(ids), str(BULK_JOB_TEXT[action]),
                            danger=action == "cancel", ids=ids, action=action)
    outcomes = [job_action(action, job_id) for job_id in ids]
    done = sum(1 for reason in outcomes if reason is None)
    audit_note(target=",".join(ids), done=done, count=len(ids))
    refusals = "".join(f" {job_id}: {reason}."
                       for job_id, reason in zip(ids, outcomes, strict=True) if reason)
    flash(_("%(done)s of %(count)s jobs done.", done=done, count=len(ids)) + refusals,
          "ok" if done == len(ids) else "error")
    return redirect(url_for("pages.queue_page", queue=queue))


def job_action(action: str, job_id: str) -> str | None:
    """Cancel or retry one job; None when done, else why not (for the person who asked)."""
    if action == "cancel":
        if registry.cancel_job(job_id, detail=f"cancelled by {g.actor}"):
            return None
        return _("only a job that has not started can be cancelled")
    job = registry.get_job(job_id)
    if not job or job["state"] != "dead":
        return _("only a dead job can be retried")
    try:
        replay.replay(job.get("dlq_id") or job_id, actor=g.actor)
    except BackstopError as exc:
        return str(exc)
    return None


@bp.post("/jobs/<job_id>/cancel")
@require_role("operator")
@MUTATE
@audited("job.cancel")
def cancel_job(job_id: str):
    """Cancel a job that has not started."""
    return job_verdict(job_id, job_action("cancel", job_id), _("Job cancelled."))


@bp.post("/jobs/<job_id>/retry")
@require_role("operator")
@MUTATE
@audited("job.retry")
def retry_job(job_id: str):
    """Retry a dead job by replaying its DLQ record."""
    return job_verdict(job_id, job_action("retry", job_id), _("Job retried."))


def job_verdict(job_id: str, refusal: str | None, success: str):
    """Back to the job's page, saying it was done or exactly why not."""
    if refusal:
        audit_note(result="failed", reason=refusal)
        flash(refusal[:1].upper() + refusal[1:], "error")
    else:
        flash(success, "ok")
    return redirect(url_for("pages.job_page", job_id=job_id))


# ---- dead letters ----
@bp.post("/dlq/records/<record_id>/replay")
@require_role("operator")
@MUTATE
@audited("dlq.replay")
def replay_record(record_id: str):
    """Replay one DLQ record, after a confirmation."""
    if not confirmed("dlq.replay", {"id": record_id}):
        return confirm_step("dlq.replay", {"id": record_id}, 1,
                            _("Replay dead-letter record %(id)s.", id=record_id))
    try:
        done = replay.replay(record_id, actor=g.actor)
    except BackstopError as exc:
        failed(exc)
        return redirect(url_for("pages.dlq_record_page", record_id=record_id))
    flash(_("Replayed as %(attempt)s.", attempt=done["attempt_id"]), "ok")
    return redirect(url_for("pages.job_page", job_id=done["attempt_id"]))


@bp.post("/dlq/records/<record_id>/edit")
@require_role("operator")
@MUTATE
@audited("dlq.edit_replay")
def edit_record(record_id: str):
    """Edit-then-replay: show the diff first, replay on confirmation."""
    try:
        payload = edited_payload()
        preview = replay.preview_edit(record_id, payload, actor=g.actor, owner=can("owner"))
    except (ValueError, BackstopError) as exc:
        message = getattr(exc, "errors", None) or str(exc)
        if not request.form.get("confirm"):
            audit_note(action="dlq.edit_replay.preview")
        return render_template("dlq_edit.html", record_id=record_id, error=message,
                               payload=request.form.get("payload", "")), 422
    scope = {"id": record_id, "payload": preview["payload"]}
    if not confirmed("dlq.edit_replay", scope):
        token = confirm.issue(g.actor, "dlq.edit_replay", scope)
        audit_note(action="dlq.edit_replay.preview")
        return render_template("dlq_edit.html", record_id=record_id, preview=preview,
                               token=token, payload=request.form.get("payload", ""))
    done = replay.replay(record_id, actor=g.actor, payload=payload,
                         resend_token=request.form.get("resend_token"))
    flash(_("Replayed with the edited payload as %(attempt)s.", attempt=done["attempt_id"]), "ok")
    return redirect(url_for("pages.job_page", job_id=done["attempt_id"]))


def edited_payload() -> dict:
    """The edit box's JSON object; a ValueError saying what is wrong otherwise."""
    payload = bounded_json.loads(request.form.get("payload", ""))
    if not isinstance(payload, dict):
        raise ValueError(_("The payload must be a JSON object: {\"field\": value, ...}."))
    return payload


@bp.post("/dlq/records/<record_id>/delete")
@require_role("owner")
@DESTROY
@audited("dlq.delete")
def delete_record(record_id: str):
    """Delete one DLQ record, after a confirmation."""
    if not confirmed("dlq.delete", {"id": record_id}):
        return confirm_step("dlq.delete", {"id": record_id}, 1,
                            _("Delete dead-letter record %(id)s.", id=record_id), danger=True)
    replay.delete([record_id])
    flash(_("Record deleted."), "ok")
    return redirect(url_for("pages.dlq_page"))


BULK_RECORD_TEXT = {"replay": lazy_gettext("Replay these dead-letter records."),
                    "delete": lazy_gettext("Delete these dead-letter records.")}


@bp.post("/dlq/bulk")
@require_role("operator")
@MUTATE
@audited("dlq.bulk")
def bulk_records():
    """Replay or delete the selected records, or everything matching the filter."""
    action = request.form.get("action", "")
    ids = request.form.getlist("ids") or None
    if action not in BULK_RECORD_TEXT:
        abort(400, _("Choose replay or delete."))
    if action == "delete" and not can("owner"):
        abort(403, _("This needs the %(role)s role.", role=_("owner")))
    flt = form_filter() if not ids else None
    scope = {"action": action, "ids": sorted(ids or []), "filter": flt and flt.as_dict()}
    audit_note(target=scope_target(ids, flt), bulk_action=action)
    count = dlq.count_matching(flt) if flt is not None else len(ids or [])
    if not confirmed("dlq.bulk", scope):
        return confirm_step("dlq.bulk", scope, count, str(BULK_RECORD_TEXT[action]),
                            danger=action == "delete", ids=ids or [], action=action,
                            filter=request.form.get("filter", ""))
    results = replay.bulk(action, actor=g.actor, ids=ids, flt=flt)
    done = sum(1 for r in results if r["outcome"] in ("replayed", "deleted"))
    audit_note(done=done, count=len(results))
    flash(_("%(done)s of %(count)s records done.", done=done, count=len(results)), "ok")
    return redirect(url_for("pages.dlq_page", **(flt.as_dict() if flt else {})))


@bp.post("/dlq/clear")
@require_role("owner")
@DESTROY
@audited("dlq.clear")
def clear_records():
    """Clear the DLQ (all, or what the filter selects), after a confirmation."""
    flt = form_filter()
    token = request.form.get("confirm")
    audit_note(target=scope_target(None, flt))
    if not token:
        preview = replay.clear_preview(g.actor, flt)
        audit_note(action="dlq.clear.preview", count=preview["count"])
        return render_template("confirm.html", text=_("Clear the dead-letter queue."),
                               count=preview["count"], token=preview["token"], danger=True,
                               action_url=request.path,
                               hidden={"filter": request.form.get("filter", "")}, next=None)
    try:
        done = replay.clear(g.actor, flt, token)
    except BackstopError as exc:
        failed(exc)
        return redirect(url_for("pages.dlq_page"))
    audit_note(deleted=done["deleted"])
    flash(ngettext("%(num)s record deleted.", "%(num)s records deleted.", done["deleted"]), "ok")
    return redirect(url_for("pages.dlq_page"))


@bp.post("/dlq/redrives")
@require_role("operator")
@MUTATE
@audited("dlq.redrive.start")
def start_redrive():
    """Start a throttled redrive of what the filter selects, after a confirmation."""
    flt = form_filter()
    rate = request.form.get("rate", type=float)
    scope = {"filter": flt.as_dict(), "rate": rate}
    audit_note(target=scope_target(None, flt), rate=rate)
    if not confirmed("dlq.redrive", scope):
        return confirm_step("dlq.redrive", scope, dlq.count_matching(flt),
                            _("Redrive at %(rate)s jobs/s.", rate=rate),
                            filter=request.form.get("filter", ""), rate=str(rate))
    try:
        started = redrive.start(g.actor, flt, rate)
        audit_note(target=started["id"], filter=flt.as_dict())
        flash(_("Redrive %(id)s started.", id=started["id"]), "ok")
    except BackstopError as exc:
        failed(exc)
    return redirect(url_for("pages.dlq_page", **flt.as_dict()))


REDRIVE_CHANGED = {"pause": lazy_gettext("Redrive %(id)s paused."),
                   "resume": lazy_gettext("Redrive %(id)s resumed."),
                   "cancel": lazy_gettext("Redrive %(id)s cancelled.")}


@bp.post("/dlq/redrives/<redrive_id>/<verb>")
@require_role("operator")
@MUTATE
@audited("dlq.redrive.change")
def change_redrive(redrive_id: str, verb: str):
    """Pause, resume or cancel a redrive."""
    actions = {"pause": redrive.pause, "resume": redrive.resume, "cancel": redrive.cancel}
    if verb not in actions:
        abort(404, _("A redrive can be paused, resumed or cancelled."))
    try:
        actions[verb](redrive_id, g.actor)
        flash(str(REDRIVE_CHANGED[verb]) % {"id": redrive_id}, "ok")
    except BackstopError as exc:
        failed(exc)
    return back(url_for("pages.dlq_page"))


# ---- alert rules (owner) ----
RULE_LISTS = ("webhooks", "mail_to")
RULE_FIELDS = ("queue", "threshold", "window_seconds", "cooldown_seconds")


def rule_form(creating: bool) -> dict:
    """A rule's fields as the form sent them: the lists one per line (or comma-separated),
    enabled a checkbox; id and kind only when creating (a blank id is made from the kind)."""
    form = request.form
    data: dict = {name: form.get(name, "").strip() for name in RULE_FIELDS}
    data["enabled"] = form.get("enabled") == "on"
    for name in RULE_LISTS:
        data[name] = [item for item in re.split(r"[\s,]+", form.get(name, "")) if item]
    if creating:
        data["kind"] = form.get("kind", "")
        queue = "all" if data["queue"] == "*" else data["queue"]
        data["id"] = form.get("id", "").strip() or f"{data['kind']}-{queue}".replace("_", "-")
    return data


def audited_rule(rule: alerts.AlertRule) -> dict:
    """A rule as the audit log keeps it: webhook URLs without their (secret) paths."""
    return {**rule.model_dump(), "webhooks": [shown_url(u) for u in rule.webhooks]}


def rule_refused(exc: alerts.RuleError, editing: str):
    """The Alerts page again, the form as sent, each bad field named."""
    if exc.status == 404:
        abort(404, _("There is no alert rule %(id)s.", id=editing))
    audit_note(reason=str(exc))
    context = page_context(PAGES["alerts"], {})
    errors = {e["field"].split(".")[0]: e["message"] for e in exc.errors}
    return render_template("alerts.html", **context, form_errors=errors, editing=editing,
                           form_values=request.form), exc.status


@bp.post("/alerts/rules")
@require_role("owner")
@MUTATE
@audited("alert.rule.create")
def create_alert_rule():
    """Add an alert rule."""
    data = rule_form(creating=True)
    audit_note(target=data["id"])
    try:
        rule = alerts.create_rule(data)
    except alerts.RuleError as exc:
        return rule_refused(exc, "new")
    audit_note(rule=audited_rule(rule))
    flash(_("Alert rule %(id)s added.", id=rule.id), "ok")
    return redirect(url_for("pages.alerts_page") + "#rules")


@bp.post("/alerts/rules/<rule_id>")
@require_role("owner")
@MUTATE
@audited("alert.rule.update")
def update_alert_rule(rule_id: str):
    """Change an alert rule's threshold, window, cool-down, targets or enabled flag."""
    try:
        rule = alerts.update_rule(rule_id, rule_form(creating=False))
    except alerts.RuleError as exc:
        return rule_refused(exc, rule_id)
    audit_note(rule=audited_rule(rule))
    flash(_("Alert rule %(id)s saved.", id=rule.id), "ok")
    return redirect(url_for("pages.alerts_page") + "#rules")


@bp.post("/alerts/rules/<rule_id>/delete")
@require_role("owner")
@MUTATE
@audited("alert.rule.delete")
def delete_alert_rule(rule_id: str):
    """Delete an alert rule (its firing alerts resolve at the next evaluation)."""
    if not alerts.delete_rule(rule_id):
        abort(404, _("There is no alert rule %(id)s.", id=rule_id))
    flash(_("Alert rule %(id)s deleted.", id=rule_id), "ok")
    return redirect(url_for("pages.alerts_page") + "#rules")


# ---- the kill switch (owner) ----
MODE_TEXT = {
    "sync_direct": lazy_gettext(
        "Switch every process to direct execution (sync_direct): jobs are no longer queued; "
        "each enqueue runs its handler at once, in the process that enqueued it, and answers "
        "with its result. Jobs already queued stay in their queues."),
    "async_queue": lazy_gettext(
        "Switch every process back to queueing (async_queue): jobs go into their queues "
        "again and workers run them."),
}
MODE_SWITCHED = {"sync_direct": lazy_gettext("Switched to direct execution (sync_direct)."),
                 "async_queue": lazy_gettext("Switched to queueing (async_queue).")}


@bp.post("/system/mode")
@require_role("owner")
@DESTROY
@audited("system.mode")
def switch_mode():
    """Switch the mode of every process (within a second), after a confirmation."""
    mode = request.form.get("mode", "")
    if mode not in modes.MODES:
        abort(400, _("Choose a mode: %(modes)s.", modes=", ".join(modes.MODES)))
    audit_note(target=mode)
    if not confirmed("system.mode", {"mode": mode}):
        return confirm_step("system.mode", {"mode": mode}, None, str(MODE_TEXT[mode]),
                            danger=mode == "sync_direct", mode=mode)
    modes.switch(mode, actor=g.actor)
    flash(str(MODE_SWITCHED[mode]), "ok")
    return redirect(url_for("pages.system_page"))
