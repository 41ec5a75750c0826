"""This host's local SQLite file (OUTBOX_PATH): what must survive while Redis cannot take it.

It holds the outbox (jobs accepted during an outage, backstop.outbox) and the health-log
entries written meanwhile (backstop.system_log). Every web and worker process of the host
opens the same file: WAL lets readers run beside one writer, synchronous=FULL makes a commit
durable (fsync) before it returns, so a job acknowledged after its commit survives kill -9
and power loss. Connections are per thread and per process (never shared across a fork).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from .config import settings

ROOT = Path(__file__).resolve().parent.parent
BUSY_TIMEOUT_MS = 10_000
SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    job_name TEXT NOT NULL,
    payload TEXT NOT NULL,
    delay REAL NOT NULL DEFAULT 0,
    priority INTEGER NOT NULL DEFAULT 0,
    accepted_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS system_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    t REAL NOT NULL,
    entry TEXT NOT NULL
);
"""

_local = threading.local()


def path() -> Path:
    """OUTBOX_PATH, relative to the project when it is not absolute."""
    configured = Path(settings().outbox_path)
    return configured if configured.is_absolute() else ROOT / configured


def connection() -> sqlite3.Connection:
    """This thread's connection to the file (opened, and the schema made, on first use)."""
    where = path()
    key = (os.getpid(), str(where))
    held = getattr(_local, "held", None)
    if held is not None and held[0] == key:
        return held[1]
    where.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(where, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                           check_same_thread=True)
    # Switching the journal mode needs the file to itself: only the first opener does it (a
    # second process asking while another writes would be told "database is locked").
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # per connection: a commit is fsynced
    conn.executescript(SCHEMA)
    _local.held = (key, conn)
    return conn


@contextmanager
def transaction(immediate: bool = True):
    """BEGIN IMMEDIATE (take the write lock now, so two writers never deadlock) ... COMMIT;
    ROLLBACK on any error."""
    conn = connection()
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def forget() -> None:
    """Drop this thread's connection (tests point OUTBOX_PATH elsewhere)."""
    held = getattr(_local, "held", None)
    if held is not None:
        held[1].close()
        _local.held = None
