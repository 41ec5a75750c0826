"""API tokens: random secrets shown once, each with a role.

Only a digest is stored: an HMAC-SHA256 keyed by SECRET_KEY, so a digest written into Redis
by hand (by anyone who can write to Redis but does not know the key) never verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time

from . import keys
from .config import derived_key
from .connection import client

ROLES = ("viewer", "operator", "owner")
PREFIX = "bst_"


def _digest(token: str) -> str:
    return hmac.new(derived_key(b"backstop-api-token"), token.encode(), hashlib.sha256).hexdigest()


def create(name: str, role: str) -> str:
    """Create a token for name with role; return the token (it cannot be shown again).

    Raises ValueError for an unknown role or an empty name.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    if not name.strip():
        raise ValueError("a token needs a name")
    token = PREFIX + secrets.token_urlsafe(32)
    info = {"name": name.strip(), "role": role, "created_at": time.time()}
    client().hset(keys.api_tokens(), _digest(token), json.dumps(info))
    return token


def verify(token: str) -> dict | None:
    """The token's {name, role, created_at}, or None if it is unknown or revoked."""
    if not token or not token.startswith(PREFIX):
        return None
    raw = client().hget(keys.api_tokens(), _digest(token))
    return json.loads(raw) if raw else None


def listing() -> list[dict]:
    """Every token's name, role and creation time (never the token)."""
    rows = client().hgetall(keys.api_tokens())
    return sorted((json.loads(v) for v in rows.values()), key=lambda t: t["created_at"])


def revoke(name: str) -> int:
    """Revoke every token with this name; return how many."""
    rows = client().hgetall(keys.api_tokens())
    doomed = [digest for digest, raw in rows.items() if json.loads(raw)["name"] == name]
    if doomed:
        client().hdel(keys.api_tokens(), *doomed)
    return len(doomed)


def allows(role: str, needed: str) -> bool:
    """Whether role has at least the rights of needed (viewer < operator < owner)."""
    return ROLES.index(role) >= ROLES.index(needed)
