"""API tokens: random secrets shown once, each with a role.

Only a digest is stored: an HMAC-SHA256 keyed by SECRET_KEY, so a digest written into Redis
by hand (by anyone who can write to Redis but does not know the key) never verifies.

A token verified in Redis is trusted by the process for AUTH_CACHE_SECONDS without asking
again (backstop.auth_cache): an API call costs no round trip for it, and keeps working
through a Redis outage. revoke() drops the token from this process's cache at once; every
other process refuses it within AUTH_CACHE_SECONDS.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time

import limits

from . import keys
from .auth_cache import TrustCache
from .config import derived_key
from .connection import client

ROLES = ("viewer", "operator", "owner")
PREFIX = "bst_"
_verified = TrustCache()  # digest -> {name, role, created_at}, verified in Redis lately


def _digest(token: str) -> str:
    return hmac.new(derived_key(b"backstop-api-token"), token.encode(), hashlib.sha256).hexdigest()


def create(name: str, role: str, rate_limit: str | None = None) -> str:
    """Create a token for name with role; return the token (it cannot be shown again).

    rate_limit: the requests it may make to each route, in flask-limiter notation ("20000 per
    minute", "100/second; 5000/minute"), instead of API_TOKEN_RATE_LIMIT.
    Raises ValueError for an unknown role, an empty name or a rate limit that does not parse.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    if not name.strip():
        raise ValueError("a token needs a name")
    token = PREFIX + secrets.token_urlsafe(32)
    info = {"name": name.strip(), "role": role, "created_at": time.time()}
    if rate_limit:
        info["rate_limit"] = checked_rate_limit(rate_limit)
    client().hset(keys.api_tokens(), _digest(token), json.dumps(info))
    return token


def checked_rate_limit(text: str) -> str:
    """text, stripped, when it is a rate limit flask-limiter reads; ValueError otherwise."""
    try:
        items = limits.parse_many(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a rate limit: write e.g. \"20000 per minute\" or "
                         f"\"100/second; 5000/minute\"") from None
    if any(item.amount < 1 for item in items):
        raise ValueError(f"{text!r} allows no request at all: revoke the token instead")
    return text.strip()


def verify(token: str) -> dict | None:
    """The token's {name, role, created_at, rate_limit?}, or None if it is unknown or revoked.

    A token found in Redis less than AUTH_CACHE_SECONDS ago is answered from this process's
    memory, without a Redis call; an unknown one is asked of Redis every time. So a token
    revoked by another process works here until AUTH_CACHE_SECONDS after it was last
    verified. Raises redis.RedisError when Redis must be asked and cannot answer.
    """
    if not token or not token.startswith(PREFIX):
        return None
    digest = _digest(token)
    info = _verified.get(digest)
    if info is None:
        raw = client().hget(keys.api_tokens(), digest)
        if not raw:
            return None
        info = json.loads(raw)
        _verified.put(digest, info)
    return dict(info)


def listing() -> list[dict]:
    """Every token's name, role, creation time and own rate limit if any (never the token)."""
    rows = client().hgetall(keys.api_tokens())
    return sorted((json.loads(v) for v in rows.values()), key=lambda t: t["created_at"])


def revoke(name: str) -> int:
    """Revoke every token with this name; return how many. This process refuses them at
    once; every other process within AUTH_CACHE_SECONDS (see verify)."""
    rows = client().hgetall(keys.api_tokens())
    doomed = [digest for digest, raw in rows.items() if json.loads(raw)["name"] == name]
    if doomed:
        client().hdel(keys.api_tokens(), *doomed)
    # By name, not by the digests found: one another process revoked first is dropped too.
    _verified.drop_where(lambda _key, info: info["name"] == name)
    return len(doomed)


def allows(role: str, needed: str) -> bool:
    """Whether role has at least the rights of needed (viewer < operator < owner)."""
    return ROLES.index(role) >= ROLES.index(needed)
