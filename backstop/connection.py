"""The Redis clients of a process: one decoded client for Backstop, raw pools for Huey.

Every client and pool is made here. With REDIS_SENTINELS set they find the primary through
redis-py's Sentinel support: a connection asks the Sentinels for the primary whenever it
(re)connects, so after a failover a dropped connection, or one the demoted primary answers
READONLY, reconnects to the new one. REDIS_URL then gives only the password, database and
TLS. The kernel's socket timeouts (KernelTimedConnection) are kept under Sentinel too
(SentinelKernelTimedConnection): the hot path's saving does not depend on where the primary is.
"""

from __future__ import annotations

import copy
import inspect
import re
import socket
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from redis import exceptions as redis_exceptions
from redis.connection import SSLConnection, parse_url
from redis.maint_notifications import MaintNotificationsConfig
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from .config import settings

# Where `./run` notes its embedded Redis, so commands run beside it (users, tokens) find it.
EMBEDDED_URL_FILE = Path(__file__).resolve().parent.parent / "var" / "redis-url"


class NoRedisConfigured(RuntimeError):
    """Neither REDIS_URL nor an embedded Redis started by `./run`: never guess a server."""


class BadSentinelSetting(ValueError):
    """REDIS_SENTINELS (or a setting that goes with it) cannot be used; the text says which."""


def redis_url() -> str:
    """Where Backstop's data is: REDIS_URL; else the embedded Redis that `./run` started.
    Raises NoRedisConfigured otherwise: a guessed localhost:6379 could be someone else's
    Redis (or a test's).

    Under Sentinel (REDIS_SENTINELS set) a ``redis+sentinel://`` URL naming the Sentinels,
    the service and the database, for messages and to tell one setup from another: connect
    only through client(), raw_pool() or dedicated(), which follow a failover.
    """
    if sentinels():
        hosts = ",".join(f"{host}:{port}" for host, port in sentinels())
        return f"redis+sentinel://{hosts}/{sentinel_service()}/{data_options().get('db', 0)}"
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


class SentinelPrimaryConnection(SentinelManagedConnection):
    """A connection to the primary that Sentinel names: it asks Sentinel for the primary
    whenever it (re)connects, and a READONLY reply (the server was demoted to a replica)
    drops it as a lost connection, so the retry finds the new primary.

    redis-py does that for a READONLY reply to a command; a script's write refused by a
    demoted primary comes back inside a script error (Redis 6: "ERR Error running script
    ... -READONLY ..."), which it would keep sending to the demoted server."""

    def read_response(self, *args, **kwargs):
        try:
            return super().read_response(*args, **kwargs)
        except redis.ResponseError as exc:
            if self.connection_pool.is_master and _DEMOTED.search(str(exc)):
                self.disconnect()
                raise redis.ConnectionError(f"the primary was demoted to a replica: {exc}") \
                    from exc
            raise


class SentinelKernelTimedConnection(KernelTimedConnection, SentinelPrimaryConnection):
    """SentinelPrimaryConnection with the kernel's timeouts (KernelTimedConnection)."""


_DEMOTED = re.compile(r"(?:^|-|: )READONLY\b")


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
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout(),
        "socket_connect_timeout": settings().float("redis_connect_timeout"),
        "health_check_interval": settings().float("redis_health_check_seconds"),
        "socket_keepalive": True, **NO_CLIENT_INFO}
    if kernel and _plain_tcp() and options["socket_timeout"]:
        kernel_class = SentinelKernelTimedConnection if sentinels() else KernelTimedConnection
        options.update(connection_class=kernel_class,
                       kernel_timeout=options["socket_timeout"], socket_timeout=None)
    elif sentinels() and _plain_tcp():
        options.update(connection_class=SentinelPrimaryConnection)
    return options


def _plain_tcp() -> bool:
    if sentinels():
        return data_options().get("connection_class") is not SSLConnection
    return urlsplit(redis_url()).scheme == "redis"


def socket_timeout() -> float | None:
    """REDIS_SOCKET_TIMEOUT in seconds; None (wait for ever) when it is 0. (Passed on
    explicitly: redis-py's own default is 5 s.)"""
    return settings().float("redis_socket_timeout") or None


@lru_cache(maxsize=1)
def client() -> redis.Redis:
    """Backstop's Redis client (str responses), shared by every thread of the process."""
    return _client(decode_responses=True, max_connections=512, **timeouts(kernel=True))


@lru_cache(maxsize=1)
def raw_pool() -> redis.ConnectionPool:
    """Binary pool for Huey's storage (messages are bytes)."""
    options = {"max_connections": 512, **timeouts(kernel=True)}
    if sentinels():
        return SentinelConnectionPool(sentinel_service(), sentinel(), **_sentinel_data(options))
    return redis.ConnectionPool.from_url(redis_url(), **options)


def dedicated(**options) -> redis.Redis:
    """A client with a pool of its own (a pub/sub subscriber, a named connection), with
    Backstop's timeouts; options (client_name, retry ...) go to redis-py. The caller closes
    it."""
    return _client(decode_responses=True, **{**timeouts(), **options})


def _client(**options) -> redis.Redis:
    if sentinels():
        # master_for makes the pool itself: give its connections the retries that
        # redis.Redis gives a client it makes (a few quick ones, for a dropped connection).
        options.setdefault("retry", copy.deepcopy(REDIS_DEFAULT_RETRY))
        return sentinel().master_for(sentinel_service(), **_sentinel_data(options))
    return redis.Redis.from_url(redis_url(), **options)


REDIS_DEFAULT_RETRY = inspect.signature(redis.Redis.__init__).parameters["retry"].default


# ---- Sentinel: REDIS_SENTINELS, REDIS_SENTINEL_SERVICE, REDIS_SENTINEL_PASSWORD ----

@lru_cache(maxsize=1)
def sentinels() -> tuple[tuple[str, int], ...]:
    """The Sentinels of REDIS_SENTINELS as (host, port) pairs; () when it is empty.
    Raises BadSentinelSetting naming the setting and the part it cannot read."""
    text = settings().redis_sentinels.strip()
    if not text:
        return ()
    found = tuple(_host_port(part.strip()) for part in text.split(","))
    sentinel_service()  # a service name is required with Sentinels: say so at once
    return found


def _host_port(part: str) -> tuple[str, int]:
    host, _, port = part.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:26379
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadSentinelSetting(
            f"REDIS_SENTINELS: {part!r} is not host:port; give every Sentinel, comma-"
            "separated, e.g. REDIS_SENTINELS=10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379")
    return host, int(port)


def sentinel_service() -> str:
    """REDIS_SENTINEL_SERVICE: the name the Sentinels monitor the primary under."""
    name = settings().redis_sentinel_service.strip()
    if not name:
        raise BadSentinelSetting(
            "REDIS_SENTINEL_SERVICE is empty: with REDIS_SENTINELS set, name the primary as "
            "the Sentinels monitor it (`sentinel monitor <name> ...`), e.g. backstop")
    return name


@lru_cache(maxsize=1)
def sentinel() -> Sentinel:
    """The process's Sentinel manager: it asks the Sentinels (in turn) which server is the
    primary, whenever a pool opens a connection."""
    sentinel_options = {"password": settings().redis_sentinel_password or None,
                        "socket_timeout": socket_timeout(),
                        "socket_connect_timeout": settings().float("redis_connect_timeout"),
                        "socket_keepalive": True, **NO_CLIENT_INFO}
    return Sentinel(sentinels(), sentinel_kwargs=sentinel_options)


def data_options() -> dict:
    """What REDIS_URL says besides the server, under Sentinel: username, password, database,
    TLS. Raises BadSentinelSetting for a unix socket URL (Sentinel names TCP servers)."""
    if not settings().redis_url:
        return {}
    options = parse_url(settings().redis_url)
    if "path" in options:
        raise BadSentinelSetting("REDIS_URL is a unix socket, but REDIS_SENTINELS is set: "
                                 "Sentinel names a TCP server; use redis:// or rediss://")
    options.pop("host", None)
    options.pop("port", None)
    return options


def _sentinel_data(options: dict) -> dict:
    """Options of a pool of the primary: REDIS_URL's credentials and database, then the
    caller's; TLS (rediss://) picks redis-py's Sentinel TLS connection."""
    data = data_options()
    if data.pop("connection_class", None) is SSLConnection:
        data["ssl"] = True
    return {**data, **options}


def limiter_storage() -> tuple[str, dict]:
    """flask-limiter's storage URI and options: the same Redis as every other client, through
    the Sentinels when they are set (the `limits` library's redis+sentinel:// storage)."""
    options = {"socket_timeout": 1, "socket_connect_timeout": 1, **NO_CLIENT_INFO}
    if not sentinels():
        return redis_url(), options
    data = data_options()
    auth = {key: data[key] for key in ("username", "password") if data.get(key)}
    hosts = ",".join(f"{host}:{port}" for host, port in sentinels())
    return (f"redis+sentinel://{hosts}/{sentinel_service()}",
            {**options, **auth, "db": data.get("db", 0), "use_replicas": False,
             "sentinel_kwargs": {"password": settings().redis_sentinel_password or None,
                                 "socket_timeout": 1, "socket_connect_timeout": 1,
                                 **NO_CLIENT_INFO}})


def reset() -> None:
    """Forget cached clients (tests point REDIS_URL elsewhere)."""
    client.cache_clear()
    raw_pool.cache_clear()
    sentinels.cache_clear()
    sentinel.cache_clear()


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
