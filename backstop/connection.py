"""The Redis clients of a process: one decoded client for Backstop, raw pools for Huey."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import redis
from redis import exceptions as redis_exceptions

from .config import settings

DEFAULT_URL = "redis://127.0.0.1:6379/0"
# Where `./run` notes its embedded Redis, so commands run beside it (users, tokens) find it.
EMBEDDED_URL_FILE = Path(__file__).resolve().parent.parent / "var" / "redis-url"


def redis_url() -> str:
    """REDIS_URL; else the embedded Redis that `./run` started; else localhost:6379."""
    if settings().redis_url:
        return settings().redis_url
    if EMBEDDED_URL_FILE.exists():
        return EMBEDDED_URL_FILE.read_text().strip()
    return DEFAULT_URL


def timeouts() -> dict:
    """Socket options every Redis client of Backstop's uses (settings REDIS_*_TIMEOUT ...).

    Without a socket timeout a call during a network partition waits for the kernel's TCP
    timeout (minutes); with one it fails fast and the caller retries or reports it.
    """
    return {"socket_timeout": settings().float("redis_socket_timeout"),
            "socket_connect_timeout": settings().float("redis_connect_timeout"),
            "health_check_interval": settings().float("redis_health_check_seconds"),
            "socket_keepalive": True}


@lru_cache(maxsize=1)
def client() -> redis.Redis:
    """Backstop's Redis client (str responses), shared by every thread of the process."""
    return redis.Redis.from_url(redis_url(), decode_responses=True, max_connections=512,
                                **timeouts())


@lru_cache(maxsize=1)
def raw_pool() -> redis.ConnectionPool:
    """Binary pool for Huey's storage (messages are pickles)."""
    return redis.ConnectionPool.from_url(redis_url(), max_connections=512, **timeouts())


def reset() -> None:
    """Forget cached clients (tests point REDIS_URL elsewhere)."""
    client.cache_clear()
    raw_pool.cache_clear()


# Reply codes that mean "Redis cannot take this now; the same call may work later".
_TRY_LATER_CLASSES = (redis.ConnectionError, redis.TimeoutError, redis_exceptions.OutOfMemoryError,
                      redis_exceptions.ReadOnlyError, redis_exceptions.TryAgainError,
                      redis_exceptions.ClusterDownError)
# A script's error carries the refused command's code inside its text (Redis 6: "...: -OOM").
_TRY_LATER_CODES = re.compile(r"(?:^|-|: )(OOM|BUSY|LOADING|READONLY|MASTERDOWN|TRYAGAIN|"
                              r"NOREPLICAS|CLUSTERDOWN)\b")


def is_try_later(exc: BaseException) -> bool:
    """True when a Redis error means "unavailable for now" (unreachable, timed out, out of
    memory under noeviction, busy with a script, loading, a read-only replica, no primary),
    not a bug: the caller should back off and retry, or answer 503 with Retry-After."""
    if isinstance(exc, _TRY_LATER_CLASSES):
        return True
    return isinstance(exc, redis.ResponseError) and bool(_TRY_LATER_CODES.search(str(exc)))
