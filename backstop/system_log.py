"""The health log: mode switches, fallbacks, the breaker, the outbox and their errors, kept
SYSTEM_LOG_DAYS (7) and shown on the System page.

An entry is JSON {id, t, level, message, meta, host, pid}, a member of the sorted set
``keys.system_log()`` scored by its time, and of its level's index ``keys.system_log_level``
(so a level filter is one read). Members are serialized with sorted keys: adding the same
entry again changes nothing, which makes a repeated flush harmless.

Writing never raises: the log must not turn an outage into a crash. While Redis cannot take
an entry (or the caller knows it cannot: ``local=True``) it goes to this host's SQLite file
(backstop.local_store); ``flush_local`` moves those into Redis when it is back, where their
scores put them in time order among everyone else's. Several processes may flush at once:
each reads the rows, adds them (identical members merge) and deletes exactly the rows it
read.

Each entry written to Redis is also published on the events channel (type "system.log") so
the System page, which follows the "system" topic, is pushed its new rows at once.

Outbox acceptances are counted, not logged one by one: ``count_outbox_acceptance`` adds to
this process's count of the current minute, and one INFO entry per minute says how many.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable

import redis

from . import keys, local_store
from .breaker import redis_breaker
from .config import settings
from .connection import client, is_try_later

log = logging.getLogger("backstop.system_log")

LEVELS = ("INFO", "WARNING", "ERROR", "SWITCH")
FLUSH_BATCH = 1_000      # local rows moved into Redis per round trip
MOST = 1_000             # entries one read returns at most
TRIM_CHUNK = 1_000       # old entries removed per round trip


def write(level: str, message: str, *, local: bool = False, **meta) -> None:
    """Add an entry to the health log; never raises.

    level: one of LEVELS (an unknown one is logged as INFO, with a warning in the process
    log). meta: JSON-able details (anything else is stored as its str()). local: write to
    this host's SQLite file without trying Redis (the caller knows Redis is down, so the
    entry costs no connect timeout); it reaches Redis at the next flush_local().
    """
    entry = make_entry(level, message, meta)
    # While this process's breaker is open Redis is known to be down: no connect timeout.
    if not local and redis_breaker().allow() and _to_redis(entry):
        return
    _to_sqlite(entry)


def make_entry(level: str, message: str, meta: dict, t: float | None = None) -> dict:
    """An entry as stored: {id, t, level, message, meta, host, pid}."""
    shown = str(level).upper()
    if shown not in LEVELS:
        log.warning("health log: unknown level %r, written as INFO: %s", level, message)
        shown = "INFO"
    return {"id": uuid.uuid4().hex, "t": time.time() if t is None else t, "level": shown,
            "message": str(message), "meta": meta, "host": socket.gethostname(),
            "pid": os.getpid()}


def serialized(entry: dict) -> str:
    """The entry's one JSON form: the same entry always gives the same member."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str)


def _to_redis(entry: dict) -> bool:
    """Add the entry and announce it in one round trip; False when Redis cannot take it."""
    try:
        pipe = client().pipeline(transaction=True)
        _add(pipe, serialized(entry), entry["t"], entry["level"])
        _announce(pipe, entry["t"])
        pipe.execute()
    except redis.RedisError as exc:
        if is_try_later(exc):
            log.info("health log: Redis cannot take entries (%s); kept on this host", exc)
        else:
            log.error("health log: Redis refused an entry (%s); kept on this host", exc)
        return False
    except Exception:  # never let the log take its caller down
        log.exception("health log: could not write to Redis; kept on this host")
        return False
    return True


def _add(pipe, member: str, t: float, level: str) -> None:
    pipe.zadd(keys.system_log(), {member: t})
    pipe.zadd(keys.system_log_level(level), {member: t})


def _announce(pipe, t: float) -> None:
    """Tell live pages (the hub's "- <json>" form: an event outside the stream)."""
    body = json.dumps({"type": "system.log", "t": t}, separators=(",", ":"))
    pipe.publish(keys.events_channel(), f"- {body}")


def _to_sqlite(entry: dict) -> None:
    try:
        with local_store.transaction() as conn:
            conn.execute("INSERT INTO system_log (t, entry) VALUES (?, ?)",
                         (entry["t"], serialized(entry)))
    except (sqlite3.Error, OSError) as exc:
        # Neither Redis nor the disk took it: the process log is all that is left.
        log.error("health log: entry lost (%s): %s %s %s", exc, entry["level"],
                  entry["message"], entry["meta"])


def flush_local() -> int:
    """Move the entries kept in this host's SQLite file into Redis, oldest first, and delete
    exactly the rows Redis accepted; returns how many moved. Safe to run in several processes
    at once (identical members merge; a row already deleted is not deleted twice).
    Raises redis.RedisError when Redis cannot take them (the rows stay for the next call),
    sqlite3.Error when the file cannot be read."""
    if not local_store.path().exists():
        return 0  # this host never kept an entry
    moved = 0
    while True:
        rows = local_store.connection().execute(
            "SELECT seq, t, entry FROM system_log ORDER BY t, seq LIMIT ?",
            (FLUSH_BATCH,)).fetchall()
        if not rows:
            return moved
        _flush_rows(rows)
        with local_store.transaction() as conn:
            conn.executemany("DELETE FROM system_log WHERE seq = ?",
                             [(seq,) for seq, _t, _entry in rows])
        moved += len(rows)
        if len(rows) < FLUSH_BATCH:
            return moved


def _flush_rows(rows: list[tuple]) -> None:
    pipe = client().pipeline(transaction=True)
    for _seq, t, member in rows:
        _add(pipe, member, t, _level_of(member))
    _announce(pipe, rows[-1][1])
    pipe.execute()


def _level_of(member: str) -> str:
    try:
        level = str(json.loads(member).get("level", "INFO"))
    except (ValueError, AttributeError):
        return "INFO"
    return level if level in LEVELS else "INFO"


def local_count() -> int:
    """How many entries wait in this host's SQLite file for Redis."""
    if not local_store.path().exists():
        return 0
    return local_store.connection().execute("SELECT count(*) FROM system_log").fetchone()[0]


def trim(now: float | None = None, r: redis.Redis | None = None) -> int:
    """Drop entries older than SYSTEM_LOG_DAYS, in Redis and in this host's SQLite file;
    returns how many went from Redis (the retention job's figure). Raises redis.RedisError;
    a SQLite failure is logged, not raised (the Redis part is what the job is for)."""
    now = time.time() if now is None else now
    cutoff = now - settings().float("system_log_days") * 86400
    r = r or client()
    removed = 0
    while old := r.zrangebyscore(keys.system_log(), "-inf", f"({cutoff}", start=0,
                                 num=TRIM_CHUNK):
        # Read, then removed from the log and every level's index (the same members).
        pipe = r.pipeline(transaction=True)
        for key in (keys.system_log(), *(keys.system_log_level(level) for level in LEVELS)):
            pipe.zrem(key, *old)
        removed += pipe.execute()[0]
    _trim_local(cutoff)
    return removed


def _trim_local(cutoff: float) -> None:
    if not local_store.path().exists():
        return
    try:
        with local_store.transaction() as conn:
            conn.execute("DELETE FROM system_log WHERE t < ?", (cutoff,))
    except (sqlite3.Error, OSError) as exc:
        log.warning("health log: could not trim this host's local entries: %s", exc)


def checked_level(level: str | None) -> str | None:
    """The level as stored (upper case), None for none; ValueError naming the levels."""
    if level is None or level == "":
        return None
    if str(level).upper() not in LEVELS:
        raise ValueError(f"unknown level {level!r}: use one of {', '.join(LEVELS)} "
                         "(any case), or none for every level")
    return str(level).upper()


def entries(level: str | None = None, since: float | None = None,
            limit: int = 50) -> list[dict]:
    """The newest entries first, at most limit (up to 1,000).

    level: one of LEVELS, any case (None: every level). since: unix seconds, only entries at
    or after it. Raises ValueError for an unknown level, redis.RedisError when Redis fails.
    An entry that is not a JSON object is left out."""
    chosen = checked_level(level)
    key = keys.system_log_level(chosen) if chosen else keys.system_log()
    low = "-inf" if since is None else since
    members = client().zrevrangebyscore(key, "+inf", low, start=0,
                                        num=max(1, min(limit, MOST)))
    rows = (_parsed(str(member)) for member in members)
    return [entry for entry in rows if entry is not None]


def _parsed(member: str) -> dict | None:
    try:
        entry = json.loads(member)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


# ---- outbox acceptances, one entry per minute ----
class Tally:
    """A count per minute of something too frequent to log one by one (outbox acceptances):
    one INFO entry per minute that had any. Thread-safe; per process."""

    def __init__(self, message: Callable[[int, str], str]):
        """message(count, minute as HH:MM UTC): the entry's message."""
        self.message = message
        self.lock = threading.Lock()
        self.minute: int | None = None
        self.count = 0

    def add(self, n: int = 1, now: float | None = None) -> None:
        """Count n now; a minute that ended meanwhile is written first."""
        minute = _minute(now)
        with self.lock:
            ended = self._take() if self.minute not in (None, minute) else None
            self.minute = minute
            self.count += n
        self._write(ended)

    def flush(self, now: float | None = None, force: bool = False) -> None:
        """Write the counted minute if it has ended (force: even if not, e.g. at exit)."""
        with self.lock:
            done = self.minute is not None and (force or self.minute != _minute(now))
            ended = self._take() if done else None
        self._write(ended)

    def forget(self) -> None:
        """Drop what was counted, unwritten (tests start each with none)."""
        with self.lock:
            self._take()

    def _take(self) -> tuple[int, int] | None:
        taken = (self.minute, self.count) if self.minute is not None and self.count else None
        self.minute, self.count = None, 0
        return taken

    def _write(self, ended: tuple[int, int] | None) -> None:
        # Outside the lock: a write may wait for Redis, and counting must not.
        if ended is None:
            return
        minute, count = ended
        shown = time.strftime("%H:%M", time.gmtime(minute))
        write("INFO", self.message(count, shown), count=count, minute=minute)


def _minute(now: float | None) -> int:
    return int((time.time() if now is None else now) // 60 * 60)


def outbox_message(count: int, minute: str) -> str:
    jobs = "1 job" if count == 1 else f"{count} jobs"
    return f"{jobs} accepted into the outbox in the minute from {minute} UTC"


outbox_tally = Tally(outbox_message)


def count_outbox_acceptance(n: int = 1) -> None:
    """Count n jobs accepted into this host's outbox (one entry per minute, not per job)."""
    outbox_tally.add(n)


def flush_tally(force: bool = False) -> None:
    """Write the outbox count of a minute that has ended (the drainer calls this every
    second); force: write the current minute's too (a process about to exit)."""
    outbox_tally.flush(force=force)
