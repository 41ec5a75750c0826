"""The web role: create_app() and every route, each a few lines over the core."""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

import click
import redis
from flask import (
    Flask,
    Response,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)
from flask.json.provider import DefaultJSONProvider
from flask_babel import Babel, format_datetime
from flask_babel import gettext as _
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import (
    LoginManager,
    UserMixin,
    current_user,
    login_url,
    login_user,
    logout_user,
)
from flask_sock import Sock
from flask_wtf import CSRFProtect, FlaskForm
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired

from backstop import (
    audit,
    bounded_json,
    confirm,
    dlq,
    export,
    panel,
    producers,
    queues,
    redrive,
    registry,
    replay,
    tokens,
    users,
)
from backstop.config import secret_key, settings
from backstop.connection import NO_CLIENT_INFO, is_try_later, redis_url
from backstop.contracts import QUEUES
from backstop.dlq import DlqError, FilterError, Filters
from backstop.errors import BackstopError, PayloadError, UnknownJob
from backstop.jobs import load_handlers
from backstop.live import Topic, hub

log = logging.getLogger("backstop.web")
LANGUAGES = {"en": "English", "fa": "فارسی"}
RTL = {"fa"}
login_manager = LoginManager()
csrf = CSRFProtect()
limiter = Limiter(key_func=get_remote_address, default_limits=["600 per minute"])
sock = Sock()
babel = Babel()


def create_app() -> Flask:
    load_handlers()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secret_key(), SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings().cookie_secure == "1",
        # __Host-: the browser takes it only over HTTPS, from this host, for every path.
        SESSION_COOKIE_NAME="__Host-session" if settings().cookie_secure == "1" else "session",
        WTF_CSRF_HEADERS=["X-CSRFToken"], WTF_CSRF_TIME_LIMIT=None,
        RATELIMIT_STORAGE_URI=redis_url(), RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        RATELIMIT_HEADERS_ENABLED=True,
        RATELIMIT_KEY_PREFIX=f"{settings().backstop_prefix}-limits",
        RATELIMIT_STORAGE_OPTIONS={"socket_timeout": 1, "socket_connect_timeout": 1,
                                   **NO_CLIENT_INFO},
        SOCK_SERVER_OPTIONS={"ping_interval": 20},
        MAX_CONTENT_LENGTH=settings().int("max_content_length"),
    )
    app.json = BoundedJSON(app)
    bind_extensions(app)
    app.register_error_handler(redis.RedisError, redis_error)
    for code in (400, 401, 403, 404, 405, 413):
        app.register_error_handler(code, json_error)
    app.register_error_handler(BackstopError, api_error)
    app.register_error_handler(429, too_many_requests)
    app.register_error_handler(CSRFError, csrf_refused)
    register_routes(app)
    register_dlq_routes(app)
    register_panel_routes(app)
    app.cli.add_command(tokens_cli)
    app.cli.add_command(audit_cli)
    app.cli.add_command(users_cli)
    return app


TRANSLATIONS = Path(__file__).resolve().parent / "translations"


class BoundedJSON(DefaultJSONProvider):
    """Request bodies parse with bounded nesting: too deep is a 400 that says so."""

    def loads(self, s, **kwargs):
        try:
            return bounded_json.loads(s)
        except bounded_json.TooDeep as exc:
            abort(400, f"the body is {exc}")


def compile_translations() -> None:
    """Compile each language's .po into the .mo Flask-Babel reads, when the .po is newer."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    for po in TRANSLATIONS.glob("*/LC_MESSAGES/messages.po"):
        mo = po.with_suffix(".mo")
        if not mo.exists() or mo.stat().st_mtime < po.stat().st_mtime:
            with po.open("rb") as source, mo.open("wb") as target:
                write_mo(target, read_po(source))


def bind_extensions(app: Flask) -> None:
    compile_translations()
    login_manager.init_app(app)
    login_manager.login_view = "login"
    login_manager.unauthorized_handler(sign_in_again)
    csrf.init_app(app)
    limiter.init_app(app)
    sock.init_app(app)
    babel.init_app(app, locale_selector=select_locale, timezone_selector=select_timezone)
    app.after_request(security_headers)
    app.before_request(check_socket_request)
    app.context_processor(page_globals)
    app.add_template_filter(when)
    app.add_template_filter(pretty_json)


def select_locale() -> str:
    chosen = request.cookies.get("lang")
    return chosen if chosen in LANGUAGES else request.accept_languages.best_match(
        list(LANGUAGES)) or "en"


def select_timezone() -> str:
    zone = request.cookies.get("tz", "UTC")
    try:
        ZoneInfo(zone)
    except (ValueError, KeyError, OSError):
        return "UTC"
    return zone


def when(ts) -> str:
    """A unix time in the viewer's zone and language."""
    if not ts:
        return "—"
    return format_datetime(datetime.fromtimestamp(float(ts), UTC), "medium")


def pretty_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def page_globals() -> dict:
    locale = select_locale()
    return {"languages": LANGUAGES, "locale": locale, "rtl": locale in RTL,
            "poll_seconds": settings().int("poll_seconds"),
            "htmx_url": settings().htmx_url or url_for("static",
                                                        filename="vendor/htmx-2.0.11.min.js"),
            "role": getattr(current_user, "role", None), "can": can, "live_url": live_url}


def live_url(**params) -> str:
    """The live socket's URL for a page (flask-sock names its endpoint itself)."""
    return url_for("__flask_sock.live_socket", **params)


def can(role: str) -> bool:
    """Whether the signed-in user has at least this role (templates hide what it cannot do)."""
    return current_user.is_authenticated and tokens.allows(current_user.role, role)


CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'; object-src 'none'")


def security_headers(response):
    csp = CSP
    if settings().htmx_url:
        host = urlparse(settings().htmx_url)
        csp = CSP.replace("script-src 'self'", f"script-src 'self' {host.scheme}://{host.netloc}")
    response.headers.setdefault("Content-Security-Policy", csp)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def too_many_requests(exc):
    retry_after = getattr(exc, "retry_after", None) or 60
    view = current_app.view_functions.get(request.endpoint)
    if getattr(view, "audit_action", None) or request.endpoint in AUTH_ACTIONS:
        audit_refusal(429, f"rate limit {exc.description} reached; repeats in the next "
                           f"{retry_after} s are not logged", quiet_seconds=retry_after)
    message = _("Too many requests; try again in %(seconds)s s.", seconds=retry_after)
    if request.path.startswith("/api/"):
        response = jsonify(error=message)
    else:
        response = make_response(render_template("error.html", message=message))
    response.status_code = 429
    response.headers["Retry-After"] = str(retry_after)
    return response


def api_error(exc: BackstopError):
    """A refused request as JSON: which field or which rule, and the status that fits."""
    if isinstance(exc, UnknownJob):
        return jsonify(error=str(exc), fields=[{"field": "job", "message": str(exc)}]), 422
    if isinstance(exc, (PayloadError, FilterError)):
        return jsonify(error=str(exc), fields=exc.errors), 422
    if isinstance(exc, DlqError):
        return jsonify(error=str(exc), code=exc.code), exc.status
    return jsonify(error=str(exc)), 400


def redis_error(exc: redis.RedisError):
    """Redis could not take the request: 503 (try later) when it is unreachable, out of
    memory, busy, loading or read-only; otherwise a 500 that says it was Redis."""
    if not is_try_later(exc):
        log.error("Redis refused %s %s: %s", request.method, request.path, exc)
        message = "Redis refused the request; nothing was written."
        if request.path.startswith("/api/"):
            return jsonify(error=message), 500
        return message, 500, {"Content-Type": "text/plain; charset=utf-8"}
    return redis_unavailable(exc)


def redis_unavailable(exc):
    if request.path.startswith("/api/"):
        response = jsonify(error="Redis cannot take requests right now (unreachable, out of "
                                 "memory, busy or read-only); nothing was written. "
                                 "Try again shortly.")
    else:
        # Rendered without the context processors: they would ask Redis who is signed in.
        unreachable = isinstance(exc, (redis.ConnectionError, redis.TimeoutError))
        response = make_response(current_app.jinja_env.get_template("unavailable.html").render(
            unreachable=unreachable, reason=str(exc)[:200]))
    response.status_code = 503
    response.headers["Retry-After"] = "5"
    return response


def csrf_refused(exc: CSRFError):
    """A missing or wrong CSRF token: audited as a refused attempt, then a 400."""
    audit_refusal(400, f"CSRF: {exc.description}")
    return json_error(exc)


def json_error(exc):
    if exc.code == 413:
        exc.description = (f"the request body is larger than {request.max_content_length} "
                           "bytes (MAX_CONTENT_LENGTH)")
    if not request.path.startswith("/api/"):
        return exc
    response = jsonify(error=exc.description)
    response.status_code = exc.code
    if exc.code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="backstop"'
    return response


def require_token(role: str):
    """Decorator: the request carries a bearer token whose role is at least role."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            header = request.headers.get("Authorization", "")
            info = tokens.verify(header.removeprefix("Bearer ").strip())
            if info is None:
                if header:
                    audit_refusal(401, "unknown or revoked bearer token")
                abort(401, "a valid bearer token is required (flask --app app tokens create)")
            g.token = info
            g.actor = f"token:{info['name']}"
            if not tokens.allows(info["role"], role):
                message = f"this needs the {role} role; the token has {info['role']}"
                audit_refusal(403, message)
                abort(403, message)
            return view(*args, **kwargs)

        return wrapped

    return decorate


def audited(action: str):
    """Decorator: write the request and what came of it to the audit log (inside
    require_token / require_role). A view says more with audit_note(): that it only showed a
    preview, that it answered a failure with a redirect, what it created."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            g.audit_action, reason = action, None
            try:
                response = make_response(view(*args, **kwargs))
            except BackstopError as exc:
                response, reason = make_response(api_error(exc)), str(exc)
            except HTTPException as exc:
                status = exc.code or exc.get_response().status_code
                write_audit_entry(action, kwargs, status, exc.description)
                raise
            write_audit_entry(action, kwargs, response.status_code, reason)
            return response

        wrapped.audit_action = action  # wraps() carries it out to the route's view function
        return wrapped

    return decorate


def audit_note(**note) -> None:
    """Tell `audited` more than the status code can: action (a ".preview" of it), target,
    result ("failed": answered with a redirect), reason, or anything for the summary."""
    g.audit_note = {**g.get("audit_note", {}), **note}


def write_audit_entry(action: str, kwargs: dict, status: int, reason: str | None) -> None:
    note = dict(g.pop("audit_note", {}))
    action = note.pop("action", action)
    result = note.pop("result", None) or ("ok" if status < 400 else f"refused {status}")
    target = note.pop("target", None) or str(next(iter(kwargs.values()), ""))
    summary = request_summary(note.pop("reason", reason), **note)
    audit.record(g.actor, action, target, summary=summary,
                 ip=request.remote_addr or "", user_agent=request.user_agent.string,
                 result=result)


def request_summary(reason: str | None = None, **extra) -> dict:
    try:
        body = request.get_json(silent=True) if request.is_json else None
    except HTTPException:
        body = None  # too large or nested too deep: the refusal's reason says so
    summary = {"method": request.method, "path": request.path, "args": request.args.to_dict(),
               "body": body, **extra}
    return {**summary, "reason": reason} if reason else summary


# Endpoints that are audited without the decorator, by the action an attempt is logged as.
AUTH_ACTIONS = {"login": "auth.login", "logout": "auth.logout"}


def audit_refusal(status: int, reason: str, *, action: str | None = None,
                  quiet_seconds: int = 0) -> None:
    """Log an attempt refused before its view ran (role, CSRF, rate limit, origin) as
    "refused <status>" under the action it attempted, with actor, address and target.
    quiet_seconds: log it once per actor, address and action in that window (for refusals a
    client can repeat at will). An audit log Redis cannot write to does not turn the
    refusal into a 500: it is logged here instead."""
    view = current_app.view_functions.get(request.endpoint)
    action = action or getattr(view, "audit_action", None) or AUTH_ACTIONS.get(
        request.endpoint) or f"http.{request.endpoint or 'unrouted'}"
    actor, ip = refusal_actor(), request.remote_addr or ""
    fields = {"summary": request_summary(reason), "ip": ip, "result": f"refused {status}",
              "user_agent": request.user_agent.string}
    try:
        if quiet_seconds:
            audit.record_once(f"{action}|{actor}|{ip}", quiet_seconds, actor, action,
                              refusal_target(), **fields)
        else:
            audit.record(actor, action, refusal_target(), **fields)
    except (redis.RedisError, audit.AuditError) as exc:
        log.error("refused %s %s (%s) not audited: %s", request.method, request.path,
                  reason, exc)


def refusal_actor() -> str:
    if g.get("actor"):
        return g.actor
    if request.endpoint == "login":
        return f"user:{(request.form.get('name') or '')[:64]}"
    try:
        signed_in = current_user.is_authenticated
    except redis.RedisError:
        signed_in = False
    return f"user:{current_user.name}" if signed_in else "anonymous"


def refusal_target() -> str:
    if request.endpoint == "login":
        return (request.form.get("name") or "")[:64]
    return str(next(iter((request.view_args or {}).values()), ""))


def register_routes(app: Flask) -> None:
    app.add_url_rule("/", view_func=index)
    app.add_url_rule("/api/v1/jobs", view_func=csrf.exempt(create_job), methods=["POST"])
    app.add_url_rule("/api/v1/jobs/<job_id>", view_func=show_job)


def index():
    """The panel's overview for a signed-in user; the sign-in page otherwise."""
    return redirect(url_for("overview_page" if current_user.is_authenticated else "login"))


@require_token("operator")
def create_job():
    """Enqueue a job: {"job", "payload", "job_id"?, "delay"?, "priority"?} -> 202."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("job"), str):
        abort(400, 'send a JSON object with "job" (a job name) and "payload" (an object)')
    check_option_types(body)
    job_id = body.get("job_id") or request.headers.get("Idempotency-Key")
    try:
        job_id, created = producers.submit(body["job"], body.get("payload", {}), job_id=job_id,
                                           delay=body.get("delay"), priority=body.get("priority"))
    except UnknownJob as exc:
        return jsonify(error=str(exc), fields=[{"field": "job", "message": str(exc)}]), 422
    except PayloadError as exc:
        return jsonify(error=str(exc), fields=exc.errors), 422
    location = url_for("show_job", job_id=job_id)
    return jsonify(id=job_id, created=created, location=location), 202, {"Location": location}


OPTION_TYPES = {"job_id": ((str,), "a string"), "delay": ((int, float), "a number of seconds"),
                "priority": ((int,), "an integer")}


def check_option_types(body: dict) -> None:
    """A 400 naming the field when job_id, delay or priority has the wrong JSON type."""
    for name, (types, wanted) in OPTION_TYPES.items():
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            message = f"{name} must be {wanted}, not {type(value).__name__} {value!r:.40}"
            response = jsonify(error=message, fields=[{"field": name, "message": message}])
            abort(make_response(response, 400))


@require_token("viewer")
def show_job(job_id: str):
    """The JSON record of one job."""
    job = registry.get_job(job_id)
    if job is None:
        abort(404, f"no job {job_id!r} (never enqueued, or removed by retention)")
    return jsonify(registry.redacted(job))


@click.group("tokens")
def tokens_cli():
    """Manage API tokens."""


@tokens_cli.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(tokens.ROLES), default="operator", show_default=True)
def create_token(name: str, role: str):
    """Create a token and print it once."""
    click.echo(tokens.create(name, role))


@tokens_cli.command("list")
def list_tokens():
    """List token names and roles."""
    for info in tokens.listing():
        click.echo(f"{info['name']}\t{info['role']}")


@tokens_cli.command("revoke")
@click.argument("name")
def revoke_token(name: str):
    """Revoke every token with this name."""
    click.echo(f"revoked {tokens.revoke(name)} token(s)")


# ---- the dead-letter queue API (read: viewer, manage: operator, delete: owner) ----
def register_dlq_routes(app: Flask) -> None:
    rules = [
        ("/api/v1/dlq", list_dead_letters, ["GET"]),
        ("/api/v1/dlq/analytics", dlq_analytics, ["GET"]),
        ("/api/v1/dlq/trends", dlq_trends, ["GET"]),
        ("/api/v1/dlq/fingerprints", dlq_fingerprints, ["GET"]),
        ("/api/v1/dlq/export.<fmt>", export_dead_letters, ["GET"]),
        ("/api/v1/dlq/clear", clear_dead_letters, ["POST"]),
        ("/api/v1/dlq/bulk/replay", bulk_replay, ["POST"]),
        ("/api/v1/dlq/bulk/delete", bulk_delete, ["POST"]),
        ("/api/v1/dlq/redrives", list_redrives, ["GET"]),
        ("/api/v1/dlq/redrives", start_redrive, ["POST"]),
        ("/api/v1/dlq/redrives/<redrive_id>", show_redrive, ["GET"]),
        ("/api/v1/dlq/redrives/<redrive_id>/<verb>", change_redrive, ["POST"]),
        ("/api/v1/dlq/<record_id>", show_dead_letter, ["GET"]),
        ("/api/v1/dlq/<record_id>", delete_dead_letter, ["DELETE"]),
        ("/api/v1/dlq/<record_id>/replay", replay_dead_letter, ["POST"]),
        ("/api/v1/dlq/<record_id>/preview", preview_dead_letter_edit, ["POST"]),
    ]
    for rule, view, methods in rules:
        app.add_url_rule(rule, view_func=csrf.exempt(view), methods=methods,
                         endpoint=f"{view.__name__}")


def json_body() -> dict:
    body = request.get_json(silent=True)
    if body is None and request.data:
        abort(400, "the body must be a JSON object")
    if body is not None and not isinstance(body, dict):
        abort(400, "the body must be a JSON object")
    return body or {}


def filters_from(source: dict) -> Filters:
    return Filters.parse({k: v for k, v in source.items() if k not in ("cursor", "limit")})


def body_filter(body: dict) -> Filters:
    """The "filter" of a JSON body: an object ({} or absent selects every record)."""
    value = body.get("filter") or {}
    if not isinstance(value, dict):
        abort(400, '"filter" must be a JSON object of filters')
    return Filters.parse(value)


def checked_limit(default: int = 50, most: int = 1000) -> int:
    """?limit=, a whole number from 1 to most; a 400 that says so otherwise."""
    raw = request.args.get("limit")
    whole = raw is not None and raw.isascii() and raw.isdigit() and len(raw) < 6
    limit = default if raw is None else int(raw) if whole else 0
    if not 1 <= limit <= most:
        abort(400, f"limit must be a whole number from 1 to {most}")
    return limit


CURSOR = re.compile(r"\d+(\.\d+)?(e[+-]?\d+)?:[!-~]{1,200}")  # always fullmatch


def checked_cursor(message: str) -> str | None:
    """?cursor= as given by a previous page; a 400 with message when it is not one."""
    cursor = request.args.get("cursor") or None
    if cursor is not None and not CURSOR.fullmatch(cursor):
        abort(400, message)
    return cursor


@require_token("viewer")
def list_dead_letters():
    """A page of DLQ records: filters and search in the query string, ?cursor= continues."""
    cursor = checked_cursor("cursor: pass the next_cursor of a previous page, unchanged")
    page = dlq.page(filters_from(request.args.to_dict()), cursor=cursor, limit=checked_limit())
    return jsonify(items=[_summary(i) for i in page.items], next_cursor=page.next_cursor,
                   total=page.total, complete=page.complete, scanned=page.scanned)


def _summary(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("stack", "payload")}


@require_token("viewer")
@audited("dlq.view")
def show_dead_letter(record_id: str):
    """One record with payload (redacted), stack and lineage (a sensitive read: audited)."""
    record = dlq.detail(record_id)
    if record is None:
        abort(404, f"no dead-letter record {record_id!r}")
    return jsonify(record)


@require_token("operator")
@audited("dlq.replay")
def replay_dead_letter(record_id: str):
    """Replay one record: {"queue"?, "payload"?} (an edited payload is validated)."""
    body = json_body()
    done = replay.replay(record_id, actor=g.actor, queue=body.get("queue"),
                         payload=body.get("payload"), resend_token=body.get("resend_token"))
    return jsonify(done), 202


@require_token("operator")
def preview_dead_letter_edit(record_id: str):
    """Validate an edited payload and show its diff against the original; commits nothing."""
    payload = json_body().get("payload")
    if not isinstance(payload, dict):
        abort(400, 'send {"payload": {...}}')
    owner = tokens.allows(g.token["role"], "owner")
    return jsonify(replay.preview_edit(record_id, payload, actor=g.actor, owner=owner))


@require_token("owner")
@audited("dlq.delete")
def delete_dead_letter(record_id: str):
    """Delete one record."""
    if not replay.delete([record_id]):
        abort(404, f"no dead-letter record {record_id!r}")
    return jsonify(deleted=record_id)


def _bulk(action: str):
    body = json_body()
    ids = body.get("ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        abort(400, '"ids" must be a list of record ids')
    if ids is None and not isinstance(body.get("filter"), dict):
        abort(400, 'send "ids": [...] or "filter": {...} ({} selects every record)')
    flt = None if ids is not None else Filters.parse(body["filter"])
    audit_note(target=scope_target(ids, flt))
    results = replay.bulk(action, actor=g.actor, ids=ids, flt=flt)
    return jsonify(results=results, count=len(results))


@require_token("operator")
@audited("dlq.bulk_replay")
def bulk_replay():
    """Replay selected ids or every record a filter selects; a result per id."""
    return _bulk("replay")


@require_token("owner")
@audited("dlq.bulk_delete")
def bulk_delete():
    """Delete selected ids or every record a filter selects; a result per id."""
    return _bulk("delete")


@require_token("owner")
@audited("dlq.clear")
def clear_dead_letters():
    """Clear in two calls: {"filter"} answers the count and a token; {"filter", "token"}
    clears."""
    body = json_body()
    flt = body_filter(body)
    audit_note(target=scope_target(None, flt))
    if not body.get("token"):
        audit_note(action="dlq.clear.preview")
        return jsonify(replay.clear_preview(g.actor, flt))
    return jsonify(replay.clear(g.actor, flt, body["token"]))


@require_token("viewer")
def list_redrives():
    """Recent redrives, newest first, with their progress."""
    return jsonify(items=redrive.listing())


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


@require_token("viewer")
def show_redrive(redrive_id: str):
    """A redrive's progress: replayed, refused, remaining, percent, ETA."""
    return jsonify(redrive.progress(redrive_id))


@require_token("operator")
@audited("dlq.redrive.change")
def change_redrive(redrive_id: str, verb: str):
    """Pause, resume or cancel a redrive."""
    actions = {"pause": redrive.pause, "resume": redrive.resume, "cancel": redrive.cancel}
    if verb not in actions:
        abort(404, "pause, resume or cancel")
    return jsonify(actions[verb](redrive_id, g.actor))


@require_token("viewer")
def dlq_analytics():
    """Totals by queue, job, error type, reason, code, status and replay status."""
    return jsonify(dlq.analytics())


@require_token("viewer")
def dlq_trends():
    """Failures per hour over ?hours= 1, 6, 12, 24 or 48."""
    return jsonify(dlq.trends(request.args.get("hours", 24, type=int)))


@require_token("viewer")
def dlq_fingerprints():
    """Failure groups, largest first (replay, clear or export one with filter fingerprint=)."""
    return jsonify(items=dlq.fingerprints(checked_limit()))


@require_token("viewer")
@audited("dlq.export")
def export_dead_letters(fmt: str):
    """Stream every record a filter selects as CSV or JSONL (audited)."""
    return streamed_export(fmt)


def streamed_export(fmt: str) -> Response:
    writers = {"csv": (export.csv_chunks, "text/csv; charset=utf-8"),
               "jsonl": (export.jsonl_chunks, "application/x-ndjson; charset=utf-8")}
    if fmt not in writers:
        abort(404, "export.csv or export.jsonl")
    writer, mimetype = writers[fmt]
    records = dlq.iter_records(filters_from(request.args.to_dict()))
    return Response(stream_with_context(writer(records)), mimetype=mimetype, headers={
        "Content-Disposition": f'attachment; filename="backstop-dlq.{fmt}"'})


@click.group("audit")
def audit_cli():
    """Inspect the audit log."""


@audit_cli.command("verify")
def verify_audit():
    """Check the HMAC chain of the whole audit log; exit 1 if anything was altered."""
    report = audit.verify()
    for problem in report.problems:
        click.echo(f"{problem['id']}: {problem['reason']}")
    click.echo(f"{'ok' if report.ok else 'TAMPERED'}: {report.checked} entries checked")
    raise SystemExit(0 if report.ok else 1)


# ---- the owner panel: sign-in, pages, actions ----
class PanelUser(UserMixin):
    def __init__(self, info: dict, session_id: str):
        self.name, self.role, self.session_id = info["name"], info["role"], session_id

    def get_id(self) -> str:
        return f"{self.name}:{self.session_id}"


@login_manager.user_loader
def load_user(key: str):
    name, _, session_id = key.partition(":")
    info = users.get(name)
    alive = info and users.session_valid(name, session_id, touch=not background_request())
    return PanelUser(info, session_id) if alive else None


def background_request() -> bool:
    """A refresh the page makes by itself (the live socket, a poll): not use of the session,
    so an unattended open tab still reaches the idle timeout."""
    return request.path == "/ws" or request.headers.get("X-Backstop-Refresh") == "poll"


class LoginForm(FlaskForm):
    name = StringField("name", validators=[DataRequired()])
    password = PasswordField("password", validators=[DataRequired()])


def require_role(role: str):
    """Decorator for panel views: signed in, with at least this role."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            if not current_user.is_authenticated:
                return login_manager.unauthorized()
            g.actor = f"user:{current_user.name}"
            if not tokens.allows(current_user.role, role):
                audit_refusal(403, f"this needs the {role} role; {current_user.name} has "
                                   f"{current_user.role}")
                abort(403, _("This needs the %(role)s role.", role=role))
            return view(*args, **kwargs)

        return wrapped

    return decorate


def user_key() -> str:
    return f"user:{current_user.name}" if current_user.is_authenticated else get_remote_address()


def login_name_key() -> str:
    return "login:" + (request.form.get("name") or "").lower()[:64]


MUTATE = limiter.shared_limit("60 per minute", scope="mutate", key_func=user_key)
DESTROY = limiter.shared_limit("10 per minute", scope="destroy", key_func=user_key)


def register_panel_routes(app: Flask) -> None:
    pages = [
        ("/login", login, ["GET", "POST"]), ("/logout", logout, ["POST"]),
        ("/lang", set_language, ["POST"]),
        ("/overview", overview_page, ["GET"]), ("/queues", queues_page, ["GET"]),
        ("/queues/<queue>", queue_page, ["GET"]), ("/jobs/<job_id>", job_page, ["GET"]),
        ("/dlq", dlq_page, ["GET"]), ("/dlq/analytics", dlq_analytics_page, ["GET"]),
        ("/dlq/records/<record_id>", dlq_record_page, ["GET"]),
        ("/system", system_page, ["GET"]), ("/audit", audit_page, ["GET"]),
        ("/queues/<queue>/pause", pause_queue, ["POST"]),
        ("/queues/<queue>/resume", resume_queue, ["POST"]),
        ("/queues/<queue>/purge", purge_queue, ["POST"]),
        ("/queues/<queue>/bulk", bulk_jobs, ["POST"]),
        ("/jobs/<job_id>/cancel", cancel_job, ["POST"]),
        ("/jobs/<job_id>/retry", retry_job, ["POST"]),
        ("/dlq/records/<record_id>/replay", replay_record, ["POST"]),
        ("/dlq/records/<record_id>/edit", edit_record, ["POST"]),
        ("/dlq/records/<record_id>/delete", delete_record, ["POST"]),
        ("/dlq/bulk", bulk_records, ["POST"]), ("/dlq/clear", clear_records, ["POST"]),
        ("/dlq/export.<fmt>", export_dead_letters_panel, ["GET"]),
        ("/dlq/redrives", start_redrive_panel, ["POST"]),
        ("/dlq/redrives/<redrive_id>/<verb>", change_redrive_panel, ["POST"]),
    ]
    for rule, view, methods in pages:
        app.add_url_rule(rule, view_func=view, methods=methods, endpoint=view.__name__)


def page_or_partial(template: str, context: dict, partials: tuple[str, ...] = ()):
    """The full page, or one of its partials when htmx asks for ?partial=<name>."""
    partial = request.args.get("partial")
    context = {**context, "page_endpoint": request.endpoint}
    if partial in partials:
        return render_template(f"_{partial}.html", **context)
    return render_template(template, **context)


@limiter.limit("10 per minute", methods=["POST"])
@limiter.limit("5 per minute", methods=["POST"], key_func=login_name_key)
def login():
    """Sign in; a failure says only that the name or password is wrong."""
    form = LoginForm()
    if form.validate_on_submit():
        info = users.authenticate(form.name.data, form.password.data)
        audit.record(f"user:{form.name.data}", "auth.login", form.name.data,
                     ip=request.remote_addr or "", user_agent=request.user_agent.string,
                     result="ok" if info else "refused")
        if info:
            # A fresh cookie session: the anonymous page's CSRF token (and anything planted
            # before sign-in) does not carry over.
            session.clear()
            login_user(PanelUser(info, users.open_session(info["name"])))
            return redirect(safe_next(request.args.get("next")))
        flash(_("Wrong user name or password."), "error")
    return render_template("login.html", form=form)


UNSAFE_NEXT = re.compile(r"[\x00-\x20\x7f\\]")


def sign_in_again():
    """No (more) session: a page goes to the sign-in page; an htmx request (a poll, a swapped
    fragment) gets a 401 whose HX-Redirect sends the whole page there, so a sign-in form is
    never swapped into a fragment."""
    if not request.headers.get("HX-Request"):
        return redirect(login_url("login", next_url=request.full_path.rstrip("?")))
    page = urlparse(request.headers.get("HX-Current-URL", ""))
    back = page.path + (f"?{page.query}" if page.query else "")
    return Response(status=401, headers={"HX-Redirect": login_url("login", next_url=back)})


def safe_next(target: str | None) -> str:
    """A path on this site to go on to; the overview for anything else (another site, a
    backslash browsers read as a slash, control characters that would split the header)."""
    if not target or not target.startswith("/") or UNSAFE_NEXT.search(target):
        return url_for("overview_page")
    parts = urlparse(target)
    return url_for("overview_page") if parts.netloc or parts.scheme else target


def logout():
    """Sign out and revoke this session on the server."""
    if current_user.is_authenticated:
        users.close_session(current_user.name, current_user.session_id)
        audit.record(f"user:{current_user.name}", "auth.logout", current_user.name,
                     ip=request.remote_addr or "", user_agent=request.user_agent.string)
        logout_user()
    session.clear()
    return redirect(url_for("login"))


def set_language():
    """Remember the chosen language (it wins over the browser's)."""
    lang = request.form.get("lang", "en")
    response = redirect(safe_next(request.form.get("next")))
    if lang in LANGUAGES:
        response.set_cookie("lang", lang, max_age=365 * 86400, samesite="Lax",
                            secure=settings().cookie_secure == "1", httponly=True)
    return response


@require_role("viewer")
def overview_page():
    """Health cards, the queue overview and the live event feed."""
    context = panel.overview(level=request.args.get("level", ""))
    return page_or_partial("overview.html", context, ("health", "queue_rows", "events"))


@require_role("viewer")
def queues_page():
    """Summary cards and one row per queue."""
    return page_or_partial("queues.html", panel.queues_page(), ("summary", "queue_rows"))


@require_role("viewer")
def queue_page(queue: str):
    """A queue's jobs by state, with search and paging, and its config."""
    if queue not in QUEUES:
        abort(404)
    context = panel.queue_page(queue, request.args.get("state", "waiting"),
                               request.args.get("q", ""),
                               max(0, request.args.get("offset", 0, type=int)))
    return page_or_partial("queue.html", context, ("jobs",))


@require_role("viewer")
def job_page(job_id: str):
    """A job: payload, timeline, progress, error, attempts."""
    context = panel.job_page(job_id)
    if context is None:
        abort(404)
    return page_or_partial("job.html", context, ("job",))


@require_role("viewer")
def dlq_page():
    """The DLQ with filters, search and paging."""
    args = {k: v for k, v in request.args.items() if k not in ("cursor", "partial") and v}
    try:
        flt = Filters.parse(args)
    except FilterError as exc:
        flash(str(exc), "error")
        flt = Filters()
    context = panel.dlq_page(flt, checked_cursor(_("This page's link is damaged (cursor); "
                                                   "open the dead-letter queue again.")))
    return page_or_partial("dlq.html", {**context, "args": args}, ("dlq_rows", "redrives"))


@require_role("viewer")
@audited("dlq.view")
def dlq_record_page(record_id: str):
    """A DLQ record: payload, error, stack, lineage (a sensitive read: audited)."""
    context = panel.dlq_record_page(record_id)
    if context is None:
        abort(404)
    return page_or_partial("dlq_record.html", context, ("dlq_record",))


@require_role("viewer")
def dlq_analytics_page():
    """DLQ analytics: overview, failures, trends and replays."""
    context = panel.dlq_analytics_page(request.args.get("tab", "overview"),
                                       request.args.get("hours", 24, type=int))
    return render_template("dlq_analytics.html", **context)


@require_role("viewer")
def system_page():
    """Workers, Redis and the settings in effect."""
    return page_or_partial("system.html", panel.system_page(), ("workers",))


@require_role("viewer")
def audit_page():
    """The audit log, filterable."""
    before = request.args.get("before") or None
    if before is not None and not audit.STREAM_ID.fullmatch(before):
        abort(400, _("This page's link is damaged (before); open the audit log again."))
    context = panel.audit_page(request.args.get("actor", ""), request.args.get("action", ""),
                               request.args.get("target", ""), before)
    return render_template("audit.html", **context)


# ---- panel actions: POST only, CSRF-checked, role-checked, rate-limited, audited ----
def back(default: str):
    return redirect(safe_next(request.form.get("next")) if request.form.get("next") else default)


def confirm_step(confirm_action: str, scope: dict, count: int, text: str, **hidden):
    """The first of two steps: say what this touches and carry a single-use token."""
    token = confirm.issue(g.actor, confirm_action, scope)
    audit_note(action=f"{g.audit_action}.preview", count=count)
    return render_template("confirm.html", text=text, count=count, token=token,
                           action_url=request.path, hidden=hidden, next=request.form.get("next"))


def form_filter() -> Filters:
    """The form's "filter" (JSON of DLQ filters); a 400 naming the problem when it is bad."""
    try:
        value = bounded_json.loads(request.form.get("filter") or "{}")
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return Filters.parse(value)
    except (ValueError, FilterError) as exc:
        abort(400, _("The filter is not valid: %(reason)s", reason=str(exc)))


def scope_target(ids: list[str] | None, flt: Filters | None) -> str:
    """The audit target of an action on many records: their ids, or the filter."""
    if ids:
        return ",".join(ids)
    return "filter " + json.dumps(flt.as_dict() if flt else {}, sort_keys=True)


def confirmed(action: str, scope: dict) -> bool:
    return confirm.consume(request.form.get("confirm", ""), g.actor, action, scope)


@require_role("operator")
@MUTATE
@audited("queue.pause")
def pause_queue(queue: str):
    """Pause a queue in every worker."""
    queues.pause(queue, actor=g.actor)
    flash(_("Queue %(queue)s paused.", queue=queue), "ok")
    return back(url_for("queues_page"))


@require_role("operator")
@MUTATE
@audited("queue.resume")
def resume_queue(queue: str):
    """Resume a queue."""
    queues.resume(queue, actor=g.actor)
    flash(_("Queue %(queue)s resumed.", queue=queue), "ok")
    return back(url_for("queues_page"))


@require_role("owner")
@DESTROY
@audited("queue.purge")
def purge_queue(queue: str):
    """Cancel every waiting job of a queue, after a second confirmation."""
    if queue not in QUEUES:
        abort(404)
    waiting = registry.counts((queue,))[queue]["waiting"]
    if not confirmed("queue.purge", {"queue": queue}):
        return confirm_step("queue.purge", {"queue": queue}, waiting,
                            _("Purge queue %(queue)s: cancel its waiting jobs.", queue=queue))
    done = registry.purge_waiting(queue, g.actor)
    flash(_("%(count)s jobs cancelled.", count=done), "ok")
    return redirect(url_for("queue_page", queue=queue))


@require_role("operator")
@MUTATE
@audited("job.bulk")
def bulk_jobs(queue: str):
    """Retry (dead jobs, through the DLQ) or remove (cancel) the selected jobs."""
    ids = request.form.getlist("ids")
    action = request.form.get("action")
    if action not in ("retry", "cancel") or not ids:
        flash(_("Select jobs and an action."), "error")
        return back(url_for("queue_page", queue=queue))
    if not confirmed(f"job.{action}", {"ids": sorted(ids)}):
        return confirm_step(f"job.{action}", {"ids": sorted(ids)}, len(ids),
                            _("%(action)s the selected jobs.", action=action), ids=ids,
                            action=action)
    done = sum(_job_action(action, job_id) for job_id in ids)
    audit_note(target=",".join(ids), done=done, count=len(ids))
    flash(_("%(done)s of %(count)s jobs done.", done=done, count=len(ids)), "ok")
    return redirect(url_for("queue_page", queue=queue))


def _job_action(action: str, job_id: str) -> bool:
    if action == "cancel":
        return registry.cancel_job(job_id, detail=f"cancelled by {g.actor}")
    job = registry.get_job(job_id)
    if not job or job["state"] != "dead":
        return False
    try:
        replay.replay(job.get("dlq_id") or job_id, actor=g.actor)
    except BackstopError:
        return False
    return True


@require_role("operator")
@MUTATE
@audited("job.cancel")
def cancel_job(job_id: str):
    """Cancel a job that has not started."""
    ok = registry.cancel_job(job_id, detail=f"cancelled by {g.actor}")
    if not ok:
        audit_note(result="failed", reason="only a job that has not started can be cancelled")
    flash(_("Job cancelled.") if ok else _("Only a job that has not started can be cancelled."),
          "ok" if ok else "error")
    return redirect(url_for("job_page", job_id=job_id))


@require_role("operator")
@MUTATE
@audited("job.retry")
def retry_job(job_id: str):
    """Retry a dead job by replaying its DLQ record."""
    ok = _job_action("retry", job_id)
    if not ok:
        audit_note(result="failed", reason="only a dead job can be retried")
    flash(_("Job retried.") if ok else _("Only a dead job can be retried."),
          "ok" if ok else "error")
    return redirect(url_for("job_page", job_id=job_id))


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
        audit_note(result="failed", reason=str(exc))
        flash(str(exc), "error")
        return redirect(url_for("dlq_record_page", record_id=record_id))
    flash(_("Replayed as %(attempt)s.", attempt=done["attempt_id"]), "ok")
    return redirect(url_for("job_page", job_id=done["attempt_id"]))


@require_role("operator")
@MUTATE
@audited("dlq.edit_replay")
def edit_record(record_id: str):
    """Edit-then-replay: show the diff first, replay on confirmation."""
    try:
        payload = bounded_json.loads(request.form.get("payload", ""))
        preview = replay.preview_edit(record_id, payload if isinstance(payload, dict) else None,
                                      actor=g.actor, owner=can("owner"))
    except (ValueError, TypeError, BackstopError) as exc:
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
    return redirect(url_for("job_page", job_id=done["attempt_id"]))


@require_role("owner")
@DESTROY
@audited("dlq.delete")
def delete_record(record_id: str):
    """Delete one DLQ record, after a confirmation."""
    if not confirmed("dlq.delete", {"id": record_id}):
        return confirm_step("dlq.delete", {"id": record_id}, 1,
                            _("Delete dead-letter record %(id)s.", id=record_id))
    replay.delete([record_id])
    flash(_("Record deleted."), "ok")
    return redirect(url_for("dlq_page"))


@require_role("operator")
@MUTATE
@audited("dlq.bulk")
def bulk_records():
    """Replay or delete the selected records, or everything matching the filter."""
    action = request.form.get("action")
    ids = request.form.getlist("ids") or None
    if action not in ("replay", "delete") or (action == "delete" and not can("owner")):
        abort(403)
    flt = form_filter() if not ids else None
    scope = {"action": action, "ids": sorted(ids or []), "filter": flt and flt.as_dict()}
    audit_note(target=scope_target(ids, flt), bulk_action=action)
    count = len(ids) if ids else dlq.count_matching(flt)
    if not confirmed("dlq.bulk", scope):
        return confirm_step("dlq.bulk", scope, count, _("%(action)s dead-letter records.",
                                                       action=action),
                            ids=ids or [], action=action, filter=request.form.get("filter", ""))
    results = replay.bulk(action, actor=g.actor, ids=ids, flt=flt)
    done = sum(1 for r in results if r["outcome"] in ("replayed", "deleted"))
    audit_note(done=done, count=len(results))
    flash(_("%(done)s of %(count)s records done.", done=done, count=len(results)), "ok")
    return redirect(url_for("dlq_page"))


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
                               count=preview["count"], token=preview["token"],
                               action_url=request.path,
                               hidden={"filter": request.form.get("filter", "")}, next=None)
    try:
        done = replay.clear(g.actor, flt, token)
    except BackstopError as exc:
        audit_note(result="failed", reason=str(exc))
        flash(str(exc), "error")
        return redirect(url_for("dlq_page"))
    audit_note(deleted=done["deleted"])
    flash(_("%(count)s records deleted.", count=done["deleted"]), "ok")
    return redirect(url_for("dlq_page"))


@require_role("operator")
@MUTATE
@audited("dlq.redrive.start")
def start_redrive_panel():
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
        audit_note(result="failed", reason=str(exc))
        flash(str(exc), "error")
    return redirect(url_for("dlq_page", **flt.as_dict()))


@require_role("operator")
@MUTATE
@audited("dlq.redrive.change")
def change_redrive_panel(redrive_id: str, verb: str):
    """Pause, resume or cancel a redrive."""
    actions = {"pause": redrive.pause, "resume": redrive.resume, "cancel": redrive.cancel}
    if verb not in actions:
        abort(404)
    try:
        actions[verb](redrive_id, g.actor)
        flash({"pause": _("Redrive %(id)s paused.", id=redrive_id),
               "resume": _("Redrive %(id)s resumed.", id=redrive_id),
               "cancel": _("Redrive %(id)s cancelled.", id=redrive_id)}[verb], "ok")
    except BackstopError as exc:
        audit_note(result="failed", reason=str(exc))
        flash(str(exc), "error")
    return redirect(url_for("dlq_page"))


@click.group("users")
def users_cli():
    """Manage panel users."""


@users_cli.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(tokens.ROLES), required=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=False,
              help="Read from stdin (or a hidden prompt) when not given.")
def create_user(name: str, role: str, password: str):
    """Create a user; the password is read from stdin (or a hidden prompt)."""
    try:
        users.create(name, role, password)
    except BackstopError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {name} ({role})")


@users_cli.command("passwd")
@click.argument("name")
@click.option("--password", prompt="New password", hide_input=True, confirmation_prompt=False,
              help="Read from stdin (or a hidden prompt) when not given.")
def change_password(name: str, password: str):
    """Change a password; every session of the user is revoked."""
    try:
        users.set_password(name, password)
    except BackstopError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"password changed; {name} is signed out everywhere")


@users_cli.command("list")
def list_users():
    for info in users.listing():
        click.echo(f"{info['name']}\t{info['role']}")


# ---- live updates: one socket per open page, pushing the page's partials ----
LIVE_PAGES = {
    "overview": ("overview_page", ("health", "queue_rows", "events")),
    "queues": ("queues_page", ("summary", "queue_rows")),
    "queue": ("queue_page", ("jobs",)),
    "job": ("job_page", ("job",)),
    "dlq": ("dlq_page", ("dlq_rows", "redrives")),
    "dlq_record": ("dlq_record_page", ("dlq_record",)),
}
SOCKET_ARGS = ("topic", "page", "last_id")


def live_context(page: str, args: dict) -> dict | None:
    """The context of a page's live partials (the same builders the pages use)."""
    builders = {
        "overview": lambda: panel.overview(level=args.get("level", "")),
        "queues": panel.queues_page,
        "queue": lambda: panel.queue_page(args.get("queue", ""), args.get("state", "waiting"),
                                          args.get("q", "")),
        "job": lambda: panel.job_page(args.get("job_id", "")),
        "dlq": lambda: {**panel.dlq_page(Filters.parse(args)), "args": args},
        "dlq_record": lambda: panel.dlq_record_page(args.get("record_id", "")),
    }
    return builders[page]()


def check_socket_request() -> None:
    """Before the upgrade: a signed-in viewer, from an allowed Origin."""
    if request.path != "/ws":
        return
    if not current_user.is_authenticated:
        abort(401, "sign in first")
    allowed = [o.strip() for o in settings().panel_origins.split(",") if o.strip()]
    allowed = allowed or [request.host_url.rstrip("/")]
    if request.headers.get("Origin") not in allowed:
        audit_refusal(403, f"origin {request.headers.get('Origin')!r} may not open the live "
                           "socket", action="live.connect")
        abort(403, "this origin may not open the live socket")


@sock.route("/ws", endpoint="live_socket")
def live_socket(ws):
    """Push the page's partials whenever a matching event arrives; ping when idle."""
    args = {k: v for k, v in request.args.items() if k not in SOCKET_ARGS}
    page = request.args.get("page", "overview")
    if page not in LIVE_PAGES:
        ws.close(reason=1008, message="unknown page")
        return
    subscription = hub().subscribe(socket_topic(request.args.get("topic", "all")),
                                   request.args.get("last_id"))
    watch = SessionWatch(current_user.name, current_user.session_id)
    try:
        while ws.connected and watch.alive():
            if subscription.get(timeout=1) is not None:
                _drain(subscription)
                if not watch.alive(now=True):
                    break
                ws.send(render_live(page, args))
        if ws.connected:
            ws.close(reason=1008, message="the session has ended; sign in again")
    finally:
        subscription.close()


class SessionWatch:
    """Whether a socket's session is still open, asked of Redis at most every CHECK_SECONDS
    (and whenever a push is about to go out): a sign-out, password change or timeout
    closes the socket within seconds."""

    CHECK_SECONDS = 2.0

    def __init__(self, name: str, session_id: str):
        self.name, self.session_id = name, session_id
        self.checked = time.monotonic()

    def alive(self, now: bool = False) -> bool:
        if not now and time.monotonic() - self.checked < self.CHECK_SECONDS:
            return True
        self.checked = time.monotonic()
        return users.session_valid(self.name, self.session_id)


def socket_topic(topic: str) -> Topic:
    kind, _, value = topic.partition(":")
    if kind == "queue" and value:
        return Topic(queue=value)
    if kind == "job" and value:
        return Topic(job_id=value)
    return Topic()


def _drain(subscription, seconds: float = 0.01) -> None:
    """Fold a burst of events into one push."""
    while subscription.get(timeout=seconds) is not None:
        pass


def render_live(page: str, args: dict) -> str:
    context = live_context(page, args)
    if context is None:
        return ""
    endpoint, partials = LIVE_PAGES[page]
    context = {**context, "page_endpoint": endpoint}
    return "".join(render_template(f"_{name}.html", **context) for name in partials)


@require_role("viewer")
@audited("dlq.export")
def export_dead_letters_panel(fmt: str):
    """The panel's export buttons: the API export, with the session's user (audited)."""
    return streamed_export(fmt)
