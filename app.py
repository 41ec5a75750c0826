"""The web role's entry: create_app() wires config, extensions, blueprints, error handlers
and commands. The routes live in web/, one blueprint module per concern."""

from __future__ import annotations

import threading

from flask import Flask, abort
from flask.json.provider import DefaultJSONProvider

from backstop import bounded_json, drainer
from backstop.config import secret_key, settings
from backstop.connection import limiter_storage
from backstop.jobs import load_handlers
from web import (
    actions,
    api,
    api_operations,
    auth,
    events,
    health,
    live,
    metrics,
    openapi,
    pages,
)
from web.cli import register_cli
from web.errors import register_errors
from web.extensions import bind_extensions
from web.security import register_security
from web.templating import register_templating

BLUEPRINTS = (auth.bp, api.bp, api_operations.bp, events.bp, openapi.bp, health.bp, pages.bp,
              actions.bp, live.bp, metrics.bp)


def create_app(test_config: dict | None = None) -> Flask:
    """The web app: the panel, the JSON API and the live socket."""
    load_handlers()
    app = Flask(__name__)
    app.config.update(base_config(), **(test_config or {}))
    app.json = BoundedJSON(app)
    bind_extensions(app)
    register_security(app)
    register_templating(app)
    register_errors(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    register_cli(app)
    events.end_streams_on_shutdown()
    start_background()
    app.before_request(start_background)  # a forked server process starts its own
    return app


def start_background() -> None:
    """The threads every web process runs beside its requests: the outbox drainer (which
    also flushes the health log kept locally during an outage). Started in the process that
    serves, after any fork."""
    drainer.ensure_running()


class SocketReaderThread(threading.Thread):
    """simple_websocket's reader thread of one socket, as a daemon: after its socket closes
    it may sit in select() for up to ping_interval, and must not hold a stopping worker."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, daemon=True, **kwargs)


def base_config() -> dict:
    """Flask and extension settings, from Backstop's settings."""
    secure = settings().flag("cookie_secure")
    storage_uri, storage_options = limiter_storage()
    return dict(
        SECRET_KEY=secret_key(), SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure,
        # __Host-: the browser takes it only over HTTPS, from this host, for every path.
        SESSION_COOKIE_NAME="__Host-session" if secure else "session",
        WTF_CSRF_HEADERS=["X-CSRFToken"], WTF_CSRF_TIME_LIMIT=None,
        RATELIMIT_STORAGE_URI=storage_uri, RATELIMIT_IN_MEMORY_FALLBACK_ENABLED=True,
        # A request whose limit check failed while another thread was switching the limiter
        # to its in-memory fallback (Redis just went away) passes instead of answering 503.
        RATELIMIT_SWALLOW_ERRORS=True,
        RATELIMIT_HEADERS_ENABLED=True,
        # flask-limiter would set Retry-After on every answer (to the window's reset, raising
        # any the view set): a 200 would say "come back in 60 s" and a 503's 5 s would become
        # 60. Its figure goes in its own header; Retry-After is the view's (and a 429's).
        RATELIMIT_HEADER_RETRY_AFTER="X-RateLimit-Retry-After",
        RATELIMIT_KEY_PREFIX=f"{settings().backstop_prefix}-limits",
        # Sentinel's redis+sentinel:// storage follows a failover, as every other client does.
        RATELIMIT_STORAGE_OPTIONS=storage_options,
        SOCK_SERVER_OPTIONS={"ping_interval": 20, "thread_class": SocketReaderThread},
        MAX_CONTENT_LENGTH=settings().int("max_content_length"),
    )


class BoundedJSON(DefaultJSONProvider):
    """Request bodies parse with bounded nesting: too deep is a 400 that says so."""

    def loads(self, s, **kwargs):
        try:
            return bounded_json.loads(s)
        except bounded_json.TooDeep as exc:
            abort(400, f"the body is {exc}")
