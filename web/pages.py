"""The panel's GET pages, each declared once in a page registry.

A Page names its template, the partials that refresh by themselves, the live topic it
follows and the one function that turns request arguments into its context. The full page,
a `?partial=` poll and a socket push all go through that function, and the context it
returns carries `page_args`: the arguments every refresh sends back, so paging and filters
survive each one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import Blueprint, abort, flash, render_template, request
from flask_babel import get_timezone
from flask_babel import gettext as _

from backstop import alerts, audit, panel, system_log
from backstop.contracts import QUEUES
from backstop.dlq import FilterError, Filters
from web.api import streamed_export
from web.auth import audited, require_role
from web.params import PAGING_ARGS, valid_cursor

bp = Blueprint("pages", __name__)
Args = dict[str, str]
LEVELS = ("", "info", "warning", "error")


@dataclass(frozen=True)
class Page:
    """One panel page: its URL rule, template, self-refreshing partials, the context builder
    (request arguments in, context with page_args out), its live topic and audit action."""

    name: str
    rule: str
    template: str
    build: Callable[[Args], dict]
    partials: tuple[str, ...] = ()
    topic: Callable[[Args], str] | None = None
    audit_action: str | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.name}_page"


def whole(value: str | None, default: int = 0) -> int:
    """A non-negative whole number from an argument; default when it is not one."""
    if value and value.isascii() and value.isdigit() and len(value) < 9:
        return int(value)
    return default


def kept(**args) -> Args:
    """The arguments worth sending back: those that differ from their defaults."""
    return {k: str(v) for k, v in args.items() if v not in (None, "", 0)}


def overview_context(args: Args) -> dict:
    level = args.get("level", "") if args.get("level", "") in LEVELS else ""
    return {**panel.overview(level=level), "page_args": kept(level=level)}


def queues_context(args: Args) -> dict:
    return {**panel.queues_page(), "page_args": {}}


def queue_context(args: Args) -> dict:
    queue = args.get("queue", "")
    if queue not in QUEUES:
        abort(404, _("There is no queue %(queue)s.", queue=queue))
    context = panel.queue_page(queue, args.get("state", "waiting"), args.get("q", ""),
                               whole(args.get("offset")), hours=whole(args.get("hours"), 1),
                               zone=str(get_timezone()))
    state, hours = context["state"], context["hours"]
    page_args = kept(state=state if state != "waiting" else "", q=context["q"],
                     offset=context["offset"], hours=hours if hours != 1 else 0)
    return {**context, "page_args": {"queue": queue, **page_args}}


def job_context(args: Args) -> dict:
    context = panel.job_page(args.get("job_id", ""))
    if context is None:
        abort(404, _("There is no job %(id)s: it was never enqueued, or retention removed it.",
                     id=args.get("job_id", "")))
    return {**context, "page_args": {"job_id": args["job_id"]}}


def dlq_context(args: Args) -> dict:
    chosen = {k: v for k, v in args.items() if k not in PAGING_ARGS and v}
    try:
        flt = Filters.parse(chosen)
    except FilterError as exc:
        flash(str(exc), "error")
        flt, chosen = Filters(), {}
    cursor = args.get("cursor") or None
    if not valid_cursor(cursor):
        abort(400, _("This page's link is damaged (cursor); open the dead-letter queue again."))
    context = panel.dlq_page(flt, cursor)
    return {**context, "args": chosen, "page_args": {**chosen, **kept(cursor=cursor)}}


def dlq_record_context(args: Args) -> dict:
    context = panel.dlq_record_page(args.get("record_id", ""))
    if context is None:
        abort(404, _("There is no dead-letter record %(id)s: it was replayed, deleted or "
                     "cleared.", id=args.get("record_id", "")))
    return {**context, "page_args": {"record_id": args["record_id"]}}


def dlq_analytics_context(args: Args) -> dict:
    context = panel.dlq_analytics_page(args.get("tab", "overview"), whole(args.get("hours"), 24))
    return {**context, "page_args": kept(tab=context["tab"], hours=context["hours"])}


def system_context(args: Args) -> dict:
    level = args.get("level", "").upper()
    level = level if level in system_log.LEVELS else ""
    return {**panel.system_page(level=level), "page_args": kept(level=level)}


def audit_context(args: Args) -> dict:
    before = args.get("before") or None
    if before is not None and not audit.STREAM_ID.fullmatch(before):
        abort(400, _("This page's link is damaged (before); open the audit log again."))
    filters = {k: args.get(k, "") for k in ("actor", "action", "target")}
    context = panel.audit_page(**filters, before=before)
    return {**context, "page_args": kept(**filters, before=before)}


def alerts_context(args: Args) -> dict:
    return {**alerts.panel_data(), "page_args": {}}


def alert_count_context(args: Args) -> dict:
    """The nav's count of firing alerts, with toasts for those fired or resolved after the
    history id the page last saw ("after")."""
    return {"badge": alerts.badge(args.get("after")), "page_args": {}}


PAGES = {page.name: page for page in [
    Page("overview", "/overview", "overview.html", overview_context,
         ("health", "pulse", "running", "events"), topic=lambda a: "all"),
    Page("queues", "/queues", "queues.html", queues_context, ("summary", "queue_rows"),
         topic=lambda a: "all"),
    Page("queue", "/queues/<queue>", "queue.html", queue_context,
         ("queue_figures", "charts", "running", "jobs"),
         topic=lambda a: f"queue:{a.get('queue', '')}"),
    Page("job", "/jobs/<job_id>", "job.html", job_context, ("job",),
         topic=lambda a: f"job:{a.get('job_id', '')}"),
    Page("dlq", "/dlq", "dlq.html", dlq_context, ("dlq_rows", "redrives"),
         topic=lambda a: "dlq"),
    Page("dlq_record", "/dlq/records/<record_id>", "dlq_record.html", dlq_record_context,
         ("dlq_record",), topic=lambda a: "dlq", audit_action="dlq.view"),
    Page("dlq_analytics", "/dlq/analytics", "dlq_analytics.html", dlq_analytics_context),
    Page("system", "/system", "system.html", system_context,
         ("mode", "outbox", "system_log", "workers", "schedules", "health_log"),
         topic=lambda a: "system"),
    Page("audit", "/audit", "audit.html", audit_context),
    Page("alerts", "/alerts", "alerts.html", alerts_context, ("alerts",),
         topic=lambda a: "all"),
    Page("alert_count", "/alerts/count", "_alert_count.html", alert_count_context),
]}


@bp.app_template_global("alert_badge")
def alert_badge() -> dict:
    """The alert count every signed-in page's nav starts with (base.html)."""
    return alerts.badge()


def page_context(page: Page, args: Args) -> dict:
    """The page's context with what its templates need to refresh it."""
    return {**page.build(args), "page_name": page.name, "page_endpoint": f"pages.{page.endpoint}"}


def render_partials(page: Page, args: Args) -> str:
    """Every live partial of a page, for one socket push."""
    context = page_context(page, args)
    return "".join(render_template(f"_{name}.html", **context) for name in page.partials)


def render_page(page: Page, args: Args, partial: str | None = None) -> str:
    """The full page, or one of its partials when htmx asks for ?partial=<name>."""
    context = page_context(page, args)
    if partial in page.partials:
        return render_template(f"_{partial}.html", **context)
    return render_template(page.template, **context)


def page_view(page: Page):
    def view(**path_args):
        args = {**request.args.to_dict(), **path_args}
        return render_page(page, args, request.args.get("partial"))

    view.__name__ = page.endpoint
    view.__doc__ = f"The {page.name} page (or one of its partials)."
    if page.audit_action:
        view = audited(page.audit_action)(view)
    return require_role("viewer")(view)


for registered in PAGES.values():
    bp.add_url_rule(registered.rule, endpoint=registered.endpoint,
                    view_func=page_view(registered))


@bp.get("/dlq/export.<fmt>")
@require_role("viewer")
@audited("dlq.export")
def export_dead_letters_panel(fmt: str):
    """The panel's export buttons: the API export, with the session's user (audited)."""
    return streamed_export(fmt)
