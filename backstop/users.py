"""Panel users: argon2-hashed passwords, roles, and server-side sessions that can be revoked.

A session is a random id stored under its user with the time it was opened and last used;
signing out deletes it, a password change deletes them all, so a copied cookie stops working
at once. Each session also ends on its own: SESSION_LIFETIME_SECONDS after sign-in however
active it is (absolute timeout), and SESSION_IDLE_SECONDS after its last use (idle timeout),
both checked on the server at every request (OWASP session management cheat sheet).

Through a Redis outage a process answers from what it verified lately (backstop.auth_cache):
a session or user record read from Redis less than AUTH_CACHE_SECONDS ago still holds when
Redis cannot take the call. Closing or revoking sessions, changing a role or deleting a user
drops this process's entries at once; other processes stop trusting theirs within
AUTH_CACHE_SECONDS (a session may so outlive its timeouts by at most that much, and only
while Redis is down: otherwise every check reads Redis).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Hashable
from functools import lru_cache
from typing import Any

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from . import keys
from .auth_cache import TrustCache
from .config import settings
from .connection import client, is_try_later
from .errors import BackstopError
from .tokens import ROLES

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.@\-]{1,64}")  # always fullmatch
MIN_PASSWORD = 10
# Use is written at most this often per session (or a tenth of the idle timeout, if less):
# idle timeouts are exact to within a minute.
TOUCH_SECONDS = 60
_open_sessions = TrustCache()  # (name, session id) -> True, found open in Redis lately
_records = TrustCache()  # name -> {name, role, created_at}, read from Redis lately


def _hasher() -> PasswordHasher:
    """The argon2id hasher with the PASSWORD_HASH_* costs of the current settings."""
    current = settings()
    return _hasher_for(current.int("password_hash_time_cost"),
                       current.int("password_hash_memory_kib"),
                       current.int("password_hash_parallelism"))


@lru_cache(maxsize=4)
def _hasher_for(time_cost: int, memory_kib: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)


@lru_cache(maxsize=4)
def _decoy(hasher: PasswordHasher) -> str:
    """A hash verified when the user does not exist: both failures are equally slow."""
    return hasher.hash(secrets.token_urlsafe(16))


class UserError(BackstopError):
    pass


def _check(name: str, password: str | None, role: str | None) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise UserError("a user name is 1-64 characters of letters, digits, _ . @ -")
    if password is not None and len(password) < MIN_PASSWORD:
        raise UserError(f"a password needs at least {MIN_PASSWORD} characters")
    if role is not None and role not in ROLES:
        raise UserError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")


def create(name: str, role: str, password: str) -> None:
    """Create a user. Raises UserError for a bad name, role or short password, or a clash."""
    _check(name, password, role)
    record = {"name": name, "role": role, "password": _hasher().hash(password),
              "created_at": time.time()}
    if not client().hsetnx(keys.users(), name, json.dumps(record)):
        raise UserError(f"user {name!r} exists already")


def get(name: str) -> dict | None:
    """The user's name, role and creation time (never the hash), or None. While Redis cannot
    take the call, the record this process read less than AUTH_CACHE_SECONDS ago; raises
    redis.RedisError when there is none."""
    try:
        raw = client().hget(keys.users(), name)
    except redis.RedisError as exc:
        return dict(_remembered(_records, name, exc))
    if raw is None:
        _records.drop(name)
        return None
    record = json.loads(raw)
    info = {k: record[k] for k in ("name", "role", "created_at")}
    _records.put(name, info)
    return dict(info)


def _remembered(cache: TrustCache, key: Hashable, exc: redis.RedisError) -> Any:
    """What cache holds for key, if exc means Redis is unavailable for now; else raise exc."""
    value = cache.get(key) if is_try_later(exc) else None
    if value is None:
        raise exc
    return value


def listing() -> list[dict]:
    return sorted((get(n) for n in client().hkeys(keys.users())), key=lambda u: u["name"])


def authenticate(name: str, password: str) -> dict | None:
    """The user if the password is right, else None (same cost whether the user exists)."""
    raw = client().hget(keys.users(), name) if NAME_PATTERN.fullmatch(name or "") else None
    stored = json.loads(raw)["password"] if raw else _decoy(_hasher())
    try:
        _hasher().verify(stored, password or "")
    except (VerificationError, InvalidHashError):
        return None
    return get(name) if raw else None


def set_password(name: str, password: str) -> None:
    """Change a password and revoke every session of the user. Raises UserError."""
    _check(name, password, None)
    raw = client().hget(keys.users(), name)
    if raw is None:
        raise UserError(f"no user {name!r}")
    record = {**json.loads(raw), "password": _hasher().hash(password)}
    client().hset(keys.users(), name, json.dumps(record))
    revoke_all(name)


def set_role(name: str, role: str) -> None:
    _check(name, None, role)
    raw = client().hget(keys.users(), name)
    if raw is None:
        raise UserError(f"no user {name!r}")
    try:
        client().hset(keys.users(), name, json.dumps({**json.loads(raw), "role": role}))
    finally:  # even a write whose reply was lost may have changed the role
        _records.drop(name)


def delete(name: str) -> bool:
    revoke_all(name)
    _records.drop(name)
    return bool(client().hdel(keys.users(), name))


def open_session(name: str) -> str:
    """A new server-side session id for the user; the user's expired sessions are dropped."""
    session_id, now, key = secrets.token_urlsafe(24), time.time(), keys.user_sessions(name)
    expired = [sid for sid, raw in client().hgetall(key).items()
               if not _alive(*_times(raw), now)]
    pipe = client().pipeline()
    if expired:
        pipe.hdel(key, *expired)
    pipe.hset(key, session_id, _stamp(now, now))
    # The newest session is the last to reach its lifetime: the hash lives as long as it can.
    pipe.expire(key, settings().int("session_lifetime_seconds"))
    pipe.execute()
    return session_id


def session_valid(name: str, session_id: str, *, touch: bool = False) -> bool:
    """Whether the session is open: opened less than SESSION_LIFETIME_SECONDS ago and used
    less than SESSION_IDLE_SECONDS ago. An expired session is deleted. touch: count this
    check as a use of the session (a request its user made, not a background refresh).

    While Redis cannot take the call, a session this process found open less than
    AUTH_CACHE_SECONDS ago is still open; raises redis.RedisError for any other."""
    try:
        valid = _session_valid_in_redis(name, session_id, touch)
    except redis.RedisError as exc:
        return _remembered(_open_sessions, (name, session_id), exc)
    if valid:
        _open_sessions.put((name, session_id), True)
    else:
        _open_sessions.drop((name, session_id))
    return valid


def _session_valid_in_redis(name: str, session_id: str, touch: bool) -> bool:
    key = keys.user_sessions(name)
    raw = client().hget(key, session_id)
    if raw is None:
        return False
    now, (created, seen) = time.time(), _times(raw)
    if not _alive(created, seen, now):
        close_session(name, session_id)
        return False
    if touch and now - seen >= min(TOUCH_SECONDS, settings().int("session_idle_seconds") / 10):
        _touch(key, session_id, created, now)
    return True


def _touch(key: str, session_id: str, created: float, now: float) -> None:
    """Record a use, unless the session was closed meanwhile (never bring one back)."""
    with client().pipeline() as pipe:
        try:
            pipe.watch(key)
            if pipe.hexists(key, session_id):
                pipe.multi()
                pipe.hset(key, session_id, _stamp(created, now))
                pipe.execute()
        except redis.WatchError:
            pass  # the user's sessions changed under us; the next request records its use


def _alive(created: float, seen: float, now: float) -> bool:
    return (now - created < settings().int("session_lifetime_seconds")
            and now - seen < settings().int("session_idle_seconds"))


def _stamp(created: float, seen: float) -> str:
    return json.dumps({"created": created, "seen": seen})


def _times(raw: str) -> tuple[float, float]:
    """(opened, last used) of a stored session; a bare number is the older format (opened)."""
    try:
        value = json.loads(raw)
        if isinstance(value, dict):
            return float(value["created"]), float(value["seen"])
        return float(value), float(value)
    except (ValueError, TypeError, KeyError):
        return 0.0, 0.0  # unreadable: treated as expired


def close_session(name: str, session_id: str) -> None:
    _open_sessions.drop((name, session_id))
    client().hdel(keys.user_sessions(name), session_id)


def revoke_all(name: str) -> None:
    _open_sessions.drop_where(lambda key, _open: key[0] == name)
    client().delete(keys.user_sessions(name))
