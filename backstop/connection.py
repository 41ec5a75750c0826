"""The Redis clients of a process: one decoded client for Backstop, raw pools for Huey."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import redis

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


@lru_cache(maxsize=1)
def client() -> redis.Redis:
    """Backstop's Redis client (str responses), shared by every thread of the process."""
    return redis.Redis.from_url(
        redis_url(), decode_responses=True, health_check_interval=30,
        socket_keepalive=True, max_connections=512,
    )


@lru_cache(maxsize=1)
def raw_pool() -> redis.ConnectionPool:
    """Binary pool for Huey's storage (messages are pickles)."""
    return redis.ConnectionPool.from_url(redis_url(), max_connections=512)


def reset() -> None:
    """Forget cached clients (tests point REDIS_URL elsewhere)."""
    client.cache_clear()
    raw_pool.cache_clear()
