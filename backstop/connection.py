"""The Redis clients of a process: one decoded client for Backstop, raw pools for Huey."""

from __future__ import annotations

import re
import socket
import struct
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import redis
from redis import exceptions as redis_exceptions
from redis.maint_notifications import MaintNotificationsConfig

from .config import settings

# Where `./run` notes its embedded Redis, so commands run beside it (users, tokens) find it.
EMBEDDED_URL_FILE = Path(__file__).resolve().parent.parent / "var" / "redis-url"


class NoRedisConfigured(RuntimeError):
    """Neither REDIS_URL nor an embedded Redis started by `./run`: never guess a server."""


def redis_url() -> str:
    """REDIS_URL; else the embedded Redis that `./run` started. Raises NoRedisConfigured
    otherwise: a guessed localhost:6379 could be someone else's Redis (or a test's)."""
    if settings().redis_url:
        return settings().redis_url
    if EMBEDDED_URL_FILE.exists():
        return EMBEDDED_URL_FILE.read_text().strip()
    raise NoRedisConfigured(
        "no Redis configured: set REDIS_URL (e.g. redis://127.0.0.1:6379/0), or start "
        "Backstop with ./run, which starts an embedded Redis and notes where it is")


class KernelTimedConnection(redis.Connection):
    """A TCP connection whose read and write timeout the kernel enforces (SO_RCVTIMEO and
    SO_SNDTIMEO on a blocking socket).

    A Python socket timeout costs a poll() before every send and receive, and two releases
    of the GIL: about 50 µs of a worker's CPU per job (15 %). The kernel's timeout costs
    nothing until it fires; then the call fails as a ConnectionError, like a dropped link.
    """

    def __init__(self, *, kernel_timeout: float | None = None, **kwargs):
        self.kernel_timeout = kernel_timeout
        super().__init__(**kwargs)

    def _connect(self):
        sock = super()._connect()
        if self.kernel_timeout:
            seconds = int(self.kernel_timeout)
            micros = int((self.kernel_timeout - seconds) * 1_000_000)
            timeval = struct.pack("ll", seconds, micros)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        return sock

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except redis.ConnectionError as exc:
            if isinstance(exc.__context__, BlockingIOError):  # the kernel's timeout fired
                raise redis.TimeoutError(f"no reply within {self.kernel_timeout:g} s "
                                         "(REDIS_SOCKET_TIMEOUT)") from exc
            raise


# redis-py would send CLIENT SETINFO and CLIENT MAINT_NOTIFICATIONS (a Redis Enterprise
# feature) on every new connection: round trips, and commands the production ACL user
# (backstop.redis_acl) need not have.
NO_CLIENT_INFO = {"driver_info": None,
                  "maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def timeouts(kernel: bool = False) -> dict:
    """Socket options every Redis client of Backstop's uses (settings REDIS_*_TIMEOUT ...).

    Without a socket timeout a call during a network partition, or to a frozen Redis, waits
    for ever; with one it fails fast and the caller retries or reports it. kernel: over plain
    TCP let the kernel enforce it (KernelTimedConnection, for the hot path's pools); over TLS
    or a unix socket Python does.
    """
    options = {"socket_timeout": socket_timeout(),
               "socket_connect_timeout": settings().float("redis_connect_timeout"),
               "health_check_interval": settings().float("redis_health_check_seconds"),
               "socket_keepalive": True, **NO_CLIENT_INFO}
    if kernel and urlsplit(redis_url()).scheme == "redis" and options["socket_timeout"]:
        options.update(connection_class=KernelTimedConnection,
                       kernel_timeout=options["socket_timeout"], socket_timeout=None)
    return options


def socket_timeout() -> float | None:
    """REDIS_SOCKET_TIMEOUT in seconds; None (wait for ever) when it is 0. (Passed on
    explicitly: redis-py's own default is 5 s.)"""
    return settings().float("redis_socket_timeout") or None


@lru_cache(maxsize=1)
def client() -> redis.Redis:
    """Backstop's Redis client (str responses), shared by every thread of the process."""
    return redis.Redis.from_url(redis_url(), decode_responses=True, max_connections=512,
                                **timeouts(kernel=True))


@lru_cache(maxsize=1)
def raw_pool() -> redis.ConnectionPool:
    """Binary pool for Huey's storage (messages are bytes)."""
    return redis.ConnectionPool.from_url(redis_url(), max_connections=512,
                                         **timeouts(kernel=True))


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
