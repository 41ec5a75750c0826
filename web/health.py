"""GET /health/queues: queue and Redis health for load balancers and uptime checkers (the
status alone, 200 or 503) and for people (everything, with a viewer token or a session)."""

from __future__ import annotations

import redis
from flask import Blueprint, jsonify, request
from flask_login import current_user

from backstop import health, tokens
from web.extensions import csrf, limiter

bp = Blueprint("health", __name__)
csrf.exempt(bp)  # read-only GETs
# Per address: an uptime checker or a load balancer polling every second stays far below;
# more costs little anyway, since the assessment is cached for STATS_CACHE_SECONDS.
POLL_LIMIT = "300 per minute"


@bp.get("/health/queues")
@limiter.limit(POLL_LIMIT)
def queue_health():
    """200 when healthy or degraded, 503 when unhealthy; the details only for a viewer."""
    return health_response(full=may_see_details())


def health_response(full: bool):
    """The assessment as JSON (all of it, or only status and timestamp) with its status."""
    assessment = health.assess()
    body = health.as_json(assessment) if full else health.brief(assessment)
    return jsonify(body), health.http_status(assessment), {"Cache-Control": "no-store"}


def may_see_details() -> bool:
    """A bearer token with at least the viewer role, or a signed-in panel session. A wrong
    token, or Redis too sick to check one, gets the status alone (never an error)."""
    header = request.headers.get("Authorization", "")
    try:
        if header:
            info = tokens.verify(header.removeprefix("Bearer ").strip())
            return info is not None and tokens.allows(info["role"], "viewer")
        return bool(current_user.is_authenticated)
    except redis.RedisError:
        return False
