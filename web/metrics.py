"""GET /metrics: Backstop's numbers in the Prometheus text format (backstop/prometheus.py).

A bearer token with the viewer role, or no token when METRICS_PUBLIC is on. Answers in plain
text, errors too: a scraper reads no HTML page, and Redis down is a 503, never a 500.
"""

from __future__ import annotations

import logging
from functools import wraps

import redis
from flask import Blueprint, Response
from werkzeug.exceptions import HTTPException

from backstop import prometheus
from backstop.config import settings
from backstop.connection import is_try_later
from web.auth import require_token
from web.extensions import csrf

log = logging.getLogger("backstop.web")
bp = Blueprint("metrics", __name__)
csrf.exempt(bp)  # a GET with a bearer token: nothing for a forged form to ride on
# No limit of its own: flask-limiter's default (600 per minute per address) counts each route
# apart, so a scraper every 15 s (or several behind one address) never nears it, however
# busy the panel is from the same address.
TEXT = "text/plain; charset=utf-8"


def is_public() -> bool:
    """METRICS_PUBLIC: 1, true, yes or on."""
    return settings().flag("metrics_public")


def viewer_unless_public(view):
    """Decorator: require_token("viewer"), unless METRICS_PUBLIC is on."""
    guarded = require_token("viewer")(view)

    @wraps(view)
    def wrapped(*args, **kwargs):
        return (view if is_public() else guarded)(*args, **kwargs)

    return wrapped


@bp.get("/metrics")
@viewer_unless_public
def scrape():
    """Prometheus' scrape: every number read from Redis now."""
    return Response(prometheus.exposition(), content_type=prometheus.CONTENT_TYPE_LATEST)


@bp.errorhandler(redis.RedisError)
def redis_unavailable(exc: redis.RedisError):
    """Redis cannot answer: a 503 the scraper records as a failed scrape (up == 0)."""
    if not is_try_later(exc):
        log.error("Redis refused a metrics scrape: %s", exc)
    return Response("Redis cannot answer right now, so there are no metrics to read; "
                    "try again shortly.\n", 503, {"Retry-After": "5"}, content_type=TEXT)


@bp.errorhandler(429)
@bp.errorhandler(HTTPException)
def refused(exc: HTTPException):
    """A refusal (no or wrong token, role, rate limit) in one line of text."""
    response = Response(f"{exc.description}\n", exc.code or 400, content_type=TEXT)
    if exc.code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="backstop"'
    retry_after = getattr(exc, "retry_after", None)
    if exc.code == 429 and retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return response
