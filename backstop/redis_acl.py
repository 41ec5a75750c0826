"""A Redis ACL user for production: the commands Backstop runs, on its own keys and channels.

Everything else is refused: no CONFIG, KEYS, FLUSHALL, DEBUG, MONITOR, ACL, MODULE, SCRIPT
FLUSH, SHUTDOWN, no key outside Backstop's prefixes. COMMANDS is what Redis's commandstats
showed after the whole test suite (``BACKSTOP_COMMANDSTATS_FILE=/tmp/stats ./test -n 0``), less
what only the tests use (CONFIG, FLUSHALL, KEYS, DUMP, MSET, XDEL), plus the transaction
and pub/sub commands that end what the observed ones begin; tests/test_redis_acl.py runs
every role under this user and checks that Redis's ACL log stays empty.

    .venv/bin/python -m backstop.redis_acl [USER]   # prints the ACL SETUSER line
"""

from __future__ import annotations

import sys

from .config import settings

COMMANDS = (
    # connection, scripts (every multi-step write is one script), transactions
    "ping", "hello", "select", "client|setname", "info", "dbsize",
    "evalsha", "script|load", "script|exists", "multi", "exec", "discard", "watch", "unwatch",
    # keys, strings, hashes
    "del", "unlink", "exists", "expire", "pexpire", "persist", "ttl", "pttl", "scan",
    "get", "set", "getdel", "mget", "incr", "incrby",
    "hget", "hset", "hsetnx", "hmget", "hgetall", "hdel", "hexists", "hincrby",
    "hincrbyfloat", "hkeys", "hvals", "hlen",
    # lists (queues, processing lists, timelines), sets, sorted sets, streams, pub/sub
    "lpush", "rpush", "lrange", "lrem", "llen", "lindex", "ltrim", "lmove", "blmove",
    "sadd", "srem", "smembers", "sismember",
    "zadd", "zrem", "zcard", "zcount", "zscore", "zrange", "zrangebyscore", "zrevrange",
    "zrevrangebyscore", "zremrangebyrank", "zremrangebyscore",
    "xadd", "xlen", "xrange", "xrevrange", "xtrim",
    "publish", "subscribe", "unsubscribe",
    # REDIS_MIN_REPLICAS_ACK: an enqueue waits for its replicas (backstop.replication)
    "wait",
)


def rules(prefix: str) -> list[str]:
    """The ACL rules (after ``ACL SETUSER <user>``) for a Backstop using ``prefix``."""
    return ["on", "resetkeys", "resetchannels", f"~{prefix}:*", f"~huey.*.{prefix}_*",
            f"~LIMITS:LIMITER/{prefix}-limits/*", f"&{prefix}:*", "-@all",
            *(f"+{command}" for command in COMMANDS)]


def setuser_command(user: str = "backstop", password: str = "CHANGE-ME") -> str:
    """The ACL SETUSER line to run (in redis-cli, as an administrator) for this prefix."""
    return " ".join(["ACL SETUSER", user, f">{password}",
                     *rules(settings().backstop_prefix)])


if __name__ == "__main__":
    print(setuser_command(*sys.argv[1:2]))
