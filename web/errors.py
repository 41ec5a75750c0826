"""Errors answered in the caller's language: JSON under /api, a styled, translated page with
the navigation in the panel. Redis trouble is a 503 (try later) wherever it strikes."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, current_app, jsonify, make_response, render_template, request
from flask_babel import gettext as _
from flask_babel import lazy_gettext
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from backstop.connection import is_try_later
from backstop.dlq import DlqError, FilterError
from backstop.errors import BackstopError, PayloadError, Refused, UnknownJob
from web.auth import audit_refusal, is_audited_endpoint

log = logging.getLogger("backstop.web")
TITLES = {
    400: lazy_gettext("This request cannot be done as sent"),
    401: lazy_gettext("Sign in first"),
    403: lazy_gettext("Your role does not allow this"),
    404: lazy_gettext("Not found"),
    405: lazy_gettext("This address does not take that method"),
    409: lazy_gettext("This conflicts with the current state"),
    413: lazy_gettext("The request is too large"),
    422: lazy_gettext("This was refused"),
    429: lazy_gettext("Too many requests"),
}
PANEL_TEXT = {
    400: lazy_gettext("The form or link was not understood. Go back and try again."),
    403: lazy_gettext("Ask an owner if you need this."),
    404: lazy_gettext("There is no such page, queue, job or record. It may have been removed."),
    405: lazy_gettext("Use the buttons in the panel rather than typing this address."),
}


def register_errors(app: Flask) -> None:
    app.register_error_handler(redis.RedisError, redis_error)
    app.register_error_handler(BackstopError, backstop_error)
    app.register_error_handler(CSRFError, csrf_refused)
    app.register_error_handler(429, too_many_requests)
    app.register_error_handler(HTTPException, http_error)


def wants_json() -> bool:
    """The API's callers read JSON; everyone else reads pages."""
    return request.blueprint == "api" or request.path.startswith("/api/")


def panel_error(status: int, message: str, headers: dict | None = None):
    """The panel's error page: what happened, in the viewer's language, with the navigation."""
    title = TITLES.get(status, _("Something stopped this"))
    response = make_response(render_template("error.html", status=status, title=title,
                                             message=message), status)
    response.headers.update(headers or {})
    return response


def http_error(exc: HTTPException):
    if exc.code is None or exc.code < 400:
        return exc
    if exc.code == 413:
        exc.description = (f"the request body is larger than {request.max_content_length} "
                           "bytes (MAX_CONTENT_LENGTH)")
    # The exception's own headers (a 405's Allow, which RFC 9110 requires), not its body's type.
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    if wants_json():
        response = jsonify(error=exc.description)
        response.status_code = exc.code
        response.headers.update(headers)
        if exc.code == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="backstop"'
        return response
    return panel_error(exc.code, panel_message(exc), headers)


def panel_message(exc: HTTPException) -> str:
    """The view's own reason when it gave one; a translated explanation otherwise."""
    default = type(exc).description
    if exc.description and exc.description != default:
        return str(exc.description)
    return str(PANEL_TEXT.get(exc.code or 0, exc.description or ""))


def backstop_error(exc: BackstopError):
    """A refusal from the core: which field or which rule, with the status that fits."""
    status, body = backstop_status(exc), dict[str, Any](error=str(exc))
    if isinstance(exc, UnknownJob):
        body["fields"] = [{"field": "job", "message": str(exc)}]
    elif isinstance(exc, (PayloadError, FilterError)):
        body["fields"] = exc.errors
    elif isinstance(exc, (DlqError, Refused)):
        body["code"] = exc.code
    if wants_json():
        return jsonify(body), status
    return panel_error(status, str(exc))


def backstop_status(exc: BackstopError) -> int:
    if isinstance(exc, (UnknownJob, PayloadError, FilterError)):
        return 422
    return exc.status if isinstance(exc, (DlqError, Refused)) else 400


def csrf_refused(exc: CSRFError):
    """A missing or wrong CSRF token: audited as a refused attempt, then a 400."""
    audit_refusal(400, f"CSRF: {exc.description}")
    if wants_json():
        return jsonify(error=exc.description), 400
    return panel_error(400, _("This form has expired or was not sent from the panel. "
                              "Reload the page and try again."))


def too_many_requests(exc):
    given = exc.response.headers.get("Retry-After", "") if exc.response is not None else ""
    retry_after = getattr(exc, "retry_after", None) or (int(given) if given.isdigit() else 60)
    if is_audited_endpoint():
        audit_refusal(429, f"rate limit {exc.description} reached; repeats in the next "
                           f"{retry_after} s are not logged", quiet_seconds=retry_after)
    message = _("Too many requests; try again in %(seconds)s s.", seconds=retry_after)
    headers = {"Retry-After": str(retry_after)}
    if wants_json():
        return jsonify(error=message), 429, headers
    return panel_error(429, message, headers)


def redis_error(exc: redis.RedisError):
    """Redis could not take the request: 503 (try later) when it is unreachable, out of
    memory, busy, loading or read-only; otherwise a 500 that says it was Redis."""
    if not is_try_later(exc):
        log.error("Redis refused %s %s: %s", request.method, request.path, exc)
        message = "Redis refused the request; nothing was written."
        if wants_json():
            return jsonify(error=message), 500
        return message, 500, {"Content-Type": "text/plain; charset=utf-8"}
    return redis_unavailable(exc)


def redis_unavailable(exc):
    if wants_json():
        response = jsonify(error="Redis cannot take requests right now (unreachable, out of "
                                 "memory, busy or read-only); nothing was written. "
                                 "Try again shortly.")
    else:
        # Rendered without the context processors: they would ask Redis who is signed in.
        unreachable = isinstance(exc, (redis.ConnectionError, redis.TimeoutError))
        response = make_response(current_app.jinja_env.get_template("unavailable.html").render(
            unreachable=unreachable, reason=str(exc)[:200]))
    response.status_code = 503
    response.headers["Retry-After"] = str(getattr(exc, "retry_after", None) or 5)
    return response
