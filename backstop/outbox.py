"""The outbox: jobs accepted while Redis cannot take them, kept durably on this host.

accept() commits a validated job to the host's SQLite file (backstop.local_store: WAL,
synchronous=FULL) before the caller acknowledges it, so it survives kill -9 of the process
and a power cut. drain() moves the jobs into Redis when it takes calls again: in acceptance
order, keeping each job's id, priority and delay (counted from when it was accepted), and its
acceptance time as the record's creation time.

Exactly one job per id: one drainer at a time holds an exclusive lock on a file beside the
database (the kernel releases it when its process dies), and rows are deleted only after
Redis took them. A drain interrupted between the two pushes the same rows again next time,
and the enqueue script adds nothing for an id that exists.
"""

from __future__ import annotations

import fcntl
import json
import socket
import time
from contextlib import contextmanager

from . import keys, local_store
from .connection import client

BATCH = 500


def accept(job_id: str, queue: str, job_name: str, payload_json: str, delay: float,
           priority: int, accepted_at: float) -> bool:
    """Keep a job durably; True once committed, False when the outbox held its id already."""
    with local_store.transaction() as conn:
        cursor = conn.execute(
            "INSERT OR IGNORE INTO outbox (job_id, queue, job_name, payload, delay, priority, "
            "accepted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job_id, queue, job_name, payload_json, delay, priority, accepted_at))
    return cursor.rowcount == 1


def depth() -> int:
    """Jobs waiting in this host's outbox."""
    return local_store.connection().execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


def oldest_at() -> float | None:
    row = local_store.connection().execute("SELECT MIN(accepted_at) FROM outbox").fetchone()
    return row[0]


def holds(job_id: str) -> bool:
    row = local_store.connection().execute("SELECT 1 FROM outbox WHERE job_id = ?",
                                           (job_id,)).fetchone()
    return row is not None


@contextmanager
def drain_lock():
    """Yield True while this process alone drains the host's outbox, False if another does."""
    path = local_store.path().with_suffix(".drain.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def drain(batch: int = BATCH) -> int:
    """Move every job of the outbox into Redis, oldest first; return how many moved (0 when
    another process is draining). Redis errors propagate; what was not moved stays."""
    moved = 0
    with drain_lock() as mine:
        if not mine:
            return 0
        while rows := _oldest(batch):
            _push_rows(rows)
            with local_store.transaction() as conn:
                conn.executemany("DELETE FROM outbox WHERE seq = ?", [(r[0],) for r in rows])
            moved += len(rows)
    return moved


def _oldest(batch: int) -> list[tuple]:
    return local_store.connection().execute(
        "SELECT seq, job_id, queue, job_name, payload, delay, priority, accepted_at FROM outbox "
        "ORDER BY seq LIMIT ?", (batch,)).fetchall()


def _push_rows(rows: list[tuple]) -> None:
    """Enqueue rows in one pipelined round trip, in order (each id at most once)."""
    from .producers import build, push
    from .replication import execute_replicated

    now = time.time()
    pipe = client().pipeline(transaction=False)
    for _seq, job_id, _queue, job_name, payload, delay, priority, accepted_at in rows:
        left = max(0.0, accepted_at + delay - now)
        prepared = build(job_name, payload, job_id, left, priority)
        push(pipe, prepared, now, created_at=accepted_at)
    execute_replicated(pipe)


def report() -> None:
    """Note this host's outbox depth in Redis, for the System page of every host."""
    info = {"depth": depth(), "oldest_at": oldest_at(), "updated_at": time.time()}
    client().hset(keys.outbox_hosts(), socket.gethostname(), json.dumps(info))


def host_depths() -> dict[str, dict]:
    """Host -> {depth, oldest_at, updated_at} as each host last reported it."""
    rows: dict[str, str] = client().hgetall(keys.outbox_hosts())  # type: ignore[assignment]
    found: dict[str, dict] = {}
    for host, raw in sorted(rows.items()):
        try:
            found[host] = json.loads(raw)
        except ValueError:
            continue
    return found
