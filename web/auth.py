"""Who is asking: panel sign-in and roles, API bearer tokens, and the audit decorator."""

from __future__ import annotations

import hashlib
import json
import logging
from functools import wraps
from typing import Any
from urllib.parse import urlparse

import redis
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from flask_limiter.util import get_remote_address
from flask_login import UserMixin, current_user, login_url, login_user, logout_user
from flask_wtf import FlaskForm
from werkzeug.exceptions import HTTPException
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired

from backstop import app_events, audit, tokens, users
from backstop.config import settings
from backstop.dlq import Filters
from backstop.errors import BackstopError
from web.extensions import limiter, login_manager
from web.i18n import LANGUAGES
from web.security import safe_next

log = logging.getLogger("backstop.web")
bp = Blueprint("auth", __name__)
# Endpoints that are audited without the decorator, by the action an attempt is logged as.
AUTH_ACTIONS = {"auth.login": "auth.login", "auth.logout": "auth.logout"}


class PanelUser(UserMixin):
    def __init__(self, info: dict, session_id: str):
        self.name, self.role, self.session_id = info["name"], info["role"], session_id

    def get_id(self) -> str:
        return f"{self.name}:{self.session_id}"


@login_manager.user_loader
def load_user(key: str):
    name, _sep, session_id = key.partition(":")
    info = users.get(name)
    if not info or not users.session_valid(name, session_id, touch=not background_request()):
        return None
    return PanelUser(info, session_id)


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
                abort(403, _("This needs the %(role)s role.", role=_(role)))
            return view(*args, **kwargs)

        return wrapped

    return decorate


def require_token(role: str, scoped: str | None = None):
    """Decorator for API views: a bearer token whose role is at least role.

    scoped: the view argument naming a job that a scoped stream token (backstop.app_events)
    may also read, when the job is one of its own (a browser polling instead of streaming).
    """

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            bearer = bearer_token()
            if scoped and bearer.startswith(app_events.SCOPED_PREFIX):
                g.token = scoped_token_info(bearer, kwargs.get(scoped))
                g.actor = f"token:{g.token['name']}"
                return view(*args, **kwargs)
            info = verified_token()
            g.token = info
            g.actor = f"token:{info['name']}"
            if not tokens.allows(info["role"], role):
                message = f"this needs the {role} role; the token has {info['role']}"
                audit_refusal(403, message)
                abort(403, message)
            return view(*args, **kwargs)

        wrapped.required_role = role  # type: ignore[attr-defined]  # read by web.openapi
        return wrapped

    return decorate


def bearer_token() -> str:
    """The token of the request's Authorization header ("" without one)."""
    return request.headers.get("Authorization", "").removeprefix("Bearer ").strip()


def request_token() -> dict | None:
    """The request's API token as tokens.verify has it (None: none, or not a valid one),
    verified once per request: the rate limiter's choice of limit and the view share it.
    Raises redis.RedisError when Redis must be asked and cannot answer (nothing is kept)."""
    if "api_token" not in g:
        g.api_token = tokens.verify(bearer_token())
    return g.api_token


def verified_token(action: str | None = None) -> dict:
    """The request's API token as tokens.verify has it; a 401 otherwise (audited under
    action, or the view's, when a header was sent)."""
    info = request_token()
    if info is None:
        if request.headers.get("Authorization"):
            audit_refusal(401, "unknown or revoked bearer token", action=action)
        abort(401, "a valid bearer token is required (flask --app app tokens create)")
    return info


def verified_scoped(token: str, action: str | None = None) -> app_events.Reader:
    """What a scoped stream token may see; a 401 (audited) when it is forged, expired or
    its API token was revoked."""
    reader = app_events.scoped_reader(token)
    if reader is None:
        audit_refusal(401, "forged, expired or orphaned scoped stream token", action=action)
        abort(401, "the scoped stream token is not valid (expired, or its API token was "
                   "revoked): ask your server for a new one")
    return reader


def scoped_token_info(token: str, job_id: str | None) -> dict:
    """A scoped stream token reading one of its jobs, as a viewer; a 401 or 403 otherwise."""
    reader = verified_scoped(token)
    if job_id not in (reader.job_ids or ()):
        audit_refusal(403, f"a scoped stream token may not read job {job_id!r}")
        abort(403, "this scoped token may not read that job")
    return {"name": reader.issuer, "role": "viewer", "scoped": True}


def user_key() -> str:
    """Whom an action's limit counts: the signed-in user, the API token (a digest: the
    limiter's keys never hold the secret), or else the client address."""
    if current_user.is_authenticated:
        return f"user:{current_user.name}"
    if request.headers.get("Authorization"):
        return token_key()
    return get_remote_address()


def token_key() -> str:
    """The limiter's key of the request's bearer token: a digest, never the secret."""
    header = request.headers.get("Authorization", "")
    return "token:" + hashlib.sha256(header.encode()).hexdigest()[:32]


# ---- the default limit of every route: per valid API token, else per client address ----
API_PATHS = "/api/"  # where a bearer token is what authenticates a call


def limiting_token() -> dict | None:
    """The valid API token of an API call, or None: not the API (the panel and sign-in keep
    the address's limit whatever header comes along), no token, a wrong one (an invented
    bearer must not escape the address's limit), or Redis cannot tell now (the address's
    limit then; the view answers the outage)."""
    if not request.path.startswith(API_PATHS):
        return None
    try:
        return request_token()
    except redis.RedisError:
        return None


def caller_limit() -> str:
    """The default limit of this request: its API token's own, else API_TOKEN_RATE_LIMIT;
    RATE_LIMIT_DEFAULT without a valid token."""
    info = limiting_token()
    if info is None:
        return settings().rate_limit_default
    return info.get("rate_limit") or settings().api_token_rate_limit


def caller_key() -> str:
    """Whom the default limit counts: the valid API token (a digest), else the address."""
    return token_key() if limiting_token() is not None else get_remote_address()


def login_name_key() -> str:
    return "login:" + (request.form.get("name") or "").lower()[:64]


MUTATE_LIMIT, DESTROY_LIMIT = "60 per minute", "10 per minute"  # the panel's and the API's
MUTATE = limiter.shared_limit(MUTATE_LIMIT, scope="mutate", key_func=user_key)
DESTROY = limiter.shared_limit(DESTROY_LIMIT, scope="destroy", key_func=user_key)


# ---- the audit log: every mutation and sensitive read, and every refused attempt ----
def audited(action: str):
    """Decorator: write the request and what came of it to the audit log (inside
    require_token / require_role). A view says more with audit_note(): that it only showed a
    preview, that it answered a failure with a redirect, what it created."""

    def decorate(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            from web.errors import backstop_error

            g.audit_action, reason = action, None
            try:
                response = make_response(view(*args, **kwargs))
            except BackstopError as exc:
                response, reason = make_response(backstop_error(exc)), str(exc)
            except HTTPException as exc:
                status = exc.code or exc.get_response().status_code
                write_audit_entry(action, kwargs, status, exc.description)
                raise
            write_audit_entry(action, kwargs, response.status_code, reason)
            return response

        wrapped.audit_action = action  # type: ignore[attr-defined]  # read by audit_refusal
        return wrapped

    return decorate


def audit_note(**note) -> None:
    """Tell `audited` more than the status code can: action (a ".preview" of it), target,
    result ("failed": answered with a redirect), reason, or anything for the summary."""
    g.audit_note = {**g.get("audit_note", {}), **note}


def scope_target(ids: list[str] | None, flt: Filters | None) -> str:
    """The audit target of an action on many records: their ids, or the filter."""
    if ids:
        return ",".join(ids)
    return "filter " + json.dumps(flt.as_dict() if flt else {}, sort_keys=True)


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


def audit_refusal(status: int, reason: str, *, action: str | None = None,
                  quiet_seconds: int = 0) -> None:
    """Log an attempt refused before its view ran (role, CSRF, rate limit, origin) as
    "refused <status>" under the action it attempted, with actor, address and target.
    quiet_seconds: log it once per actor, address and action in that window (for refusals a
    client can repeat at will). An audit log Redis cannot write to does not turn the
    refusal into a 500: it is logged here instead."""
    action = action or attempted_action()
    actor, ip = refusal_actor(), request.remote_addr or ""
    fields: dict[str, Any] = {"summary": request_summary(reason), "ip": ip,
                              "result": f"refused {status}",
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


def attempted_action() -> str:
    view = current_app.view_functions.get(request.endpoint or "")
    return getattr(view, "audit_action", None) or AUTH_ACTIONS.get(
        request.endpoint or "") or f"http.{request.endpoint or 'unrouted'}"


def is_audited_endpoint() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, "audit_action", None)) or request.endpoint in AUTH_ACTIONS


def refusal_actor() -> str:
    if g.get("actor"):
        return g.actor
    if request.endpoint == "auth.login":
        return f"user:{(request.form.get('name') or '')[:64]}"
    try:
        signed_in = current_user.is_authenticated
    except redis.RedisError:
        signed_in = False
    return f"user:{current_user.name}" if signed_in else "anonymous"


def refusal_target() -> str:
    if request.endpoint == "auth.login":
        return (request.form.get("name") or "")[:64]
    return str(next(iter((request.view_args or {}).values()), ""))


# ---- sign-in, sign-out, language ----
@bp.get("/")
def index():
    """The panel's overview for a signed-in user; the sign-in page otherwise."""
    return redirect(url_for("pages.overview_page" if current_user.is_authenticated
                            else "auth.login"))


@bp.route("/login", methods=["GET", "POST"])
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


def sign_in_again():
    """No (more) session: a page goes to the sign-in page; an htmx request (a poll, a swapped
    fragment) gets a 401 whose HX-Redirect sends the whole page there, so a sign-in form is
    never swapped into a fragment."""
    if not request.headers.get("HX-Request"):
        return redirect(login_url("auth.login", next_url=request.full_path.rstrip("?")))
    page = urlparse(request.headers.get("HX-Current-URL", ""))
    back = page.path + (f"?{page.query}" if page.query else "")
    return Response(status=401, headers={"HX-Redirect": login_url("auth.login", next_url=back)})


@bp.post("/logout")
def logout():
    """Sign out and revoke this session on the server."""
    if current_user.is_authenticated:
        users.close_session(current_user.name, current_user.session_id)
        audit.record(f"user:{current_user.name}", "auth.logout", current_user.name,
                     ip=request.remote_addr or "", user_agent=request.user_agent.string)
        logout_user()
    session.clear()
    return redirect(url_for("auth.login"))


@bp.post("/lang")
def set_language():
    """Remember the chosen language (it wins over the browser's)."""
    lang = request.form.get("lang", "en")
    response = redirect(safe_next(request.form.get("next")))
    if lang in LANGUAGES:
        response.set_cookie("lang", lang, max_age=365 * 86400, samesite="Lax",
                            secure=settings().flag("cookie_secure"), httponly=True)
    return response
