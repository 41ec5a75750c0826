"""Panel users: argon2-hashed passwords, roles, and server-side sessions that can be revoked.

A session is a random id stored under its user; signing out deletes it, a password change
deletes them all, so a copied cookie stops working at once.
"""

from __future__ import annotations

import json
import re
import secrets
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from . import keys
from .connection import client
from .errors import BackstopError
from .tokens import ROLES

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@\-]{1,64}$")
MIN_PASSWORD = 10
SESSION_SECONDS = 14 * 86400
_hasher = PasswordHasher()
# Verifying against this when the user does not exist keeps both failures equally slow.
_DECOY = _hasher.hash(secrets.token_urlsafe(16))


class UserError(BackstopError):
    pass


def _check(name: str, password: str | None, role: str | None) -> None:
    if not NAME_PATTERN.match(name):
        raise UserError("a user name is 1-64 characters of letters, digits, _ . @ -")
    if password is not None and len(password) < MIN_PASSWORD:
        raise UserError(f"a password needs at least {MIN_PASSWORD} characters")
    if role is not None and role not in ROLES:
        raise UserError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")


def create(name: str, role: str, password: str) -> None:
    """Create a user. Raises UserError for a bad name, role or short password, or a clash."""
    _check(name, password, role)
    record = {"name": name, "role": role, "password": _hasher.hash(password),
              "created_at": time.time()}
    if not client().hsetnx(keys.users(), name, json.dumps(record)):
        raise UserError(f"user {name!r} exists already")


def get(name: str) -> dict | None:
    """The user's name, role and creation time (never the hash), or None."""
    raw = client().hget(keys.users(), name)
    if raw is None:
        return None
    record = json.loads(raw)
    return {k: record[k] for k in ("name", "role", "created_at")}


def listing() -> list[dict]:
    return sorted((get(n) for n in client().hkeys(keys.users())), key=lambda u: u["name"])


def authenticate(name: str, password: str) -> dict | None:
    """The user if the password is right, else None (same cost whether the user exists)."""
    raw = client().hget(keys.users(), name) if NAME_PATTERN.match(name or "") else None
    stored = json.loads(raw)["password"] if raw else _DECOY
    try:
        _hasher.verify(stored, password or "")
    except (VerificationError, InvalidHashError):
        return None
    return get(name) if raw else None


def set_password(name: str, password: str) -> None:
    """Change a password and revoke every session of the user. Raises UserError."""
    _check(name, password, None)
    raw = client().hget(keys.users(), name)
    if raw is None:
        raise UserError(f"no user {name!r}")
    record = {**json.loads(raw), "password": _hasher.hash(password)}
    client().hset(keys.users(), name, json.dumps(record))
    revoke_all(name)


def set_role(name: str, role: str) -> None:
    _check(name, None, role)
    raw = client().hget(keys.users(), name)
    if raw is None:
        raise UserError(f"no user {name!r}")
    client().hset(keys.users(), name, json.dumps({**json.loads(raw), "role": role}))


def delete(name: str) -> bool:
    revoke_all(name)
    return bool(client().hdel(keys.users(), name))


def open_session(name: str) -> str:
    """A new server-side session id for the user."""
    session_id = secrets.token_urlsafe(24)
    pipe = client().pipeline()
    pipe.hset(keys.user_sessions(name), session_id, time.time())
    pipe.expire(keys.user_sessions(name), SESSION_SECONDS)
    pipe.execute()
    return session_id


def session_valid(name: str, session_id: str) -> bool:
    return bool(client().hexists(keys.user_sessions(name), session_id))


def close_session(name: str, session_id: str) -> None:
    client().hdel(keys.user_sessions(name), session_id)


def revoke_all(name: str) -> None:
    client().delete(keys.user_sessions(name))
