"""The kill switch: every web and worker process enqueues (async_queue) or runs jobs inline
(sync_direct), as an owner chose.

The mode lives in Redis (a hash: mode, changed_at, changed_by). A switch is announced on a
pub/sub channel, and each process also re-reads the hash every REFRESH_SECONDS, so every
process obeys a switch within a second even when it missed the announcement. current() never
calls Redis: a watcher thread keeps the process's view, and while Redis is unreachable the
process keeps the last mode it knew.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import redis

from . import keys
from .connection import client, dedicated
from .per_process import PerProcess

MODES = ("async_queue", "sync_direct")
DEFAULT = "async_queue"
REFRESH_SECONDS = 0.5
log = logging.getLogger("backstop.modes")


class Watcher:
    """This process's view of the mode, kept fresh by one daemon thread."""

    def __init__(self):
        self.pid = os.getpid()
        self.mode = DEFAULT
        self.known = False  # read from Redis at least once
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="backstop-mode", daemon=True)

    def start(self) -> Watcher:
        self.refresh()
        self.thread.start()
        return self

    def refresh(self) -> None:
        """Re-read the mode; keep the last one known when Redis does not answer."""
        try:
            self.mode = _valid(client().hget(keys.system_mode(), "mode"))
            self.known = True
        except redis.RedisError:
            pass

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._listen()
            except (redis.RedisError, OSError, TypeError, AttributeError):
                # Redis went away, or the pool under the subscription was closed (a socket
                # gone mid-read surfaces from redis-py as TypeError): subscribe again.
                self.stopped.wait(REFRESH_SECONDS)
            except Exception:
                log.exception("mode watcher failed; restarting it")
                self.stopped.wait(1)

    def _listen(self) -> None:
        # A client of its own, named so that CLIENT LIST tells it from the live hub's.
        subscriber = dedicated(client_name=f"backstop-mode-{self.pid}")
        pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(keys.system_channel())
            next_read = 0.0
            while not self.stopped.is_set():
                message = pubsub.get_message(timeout=REFRESH_SECONDS)
                if message is not None:
                    self.mode = _valid(message["data"])
                if time.monotonic() >= next_read:
                    self.refresh()
                    next_read = time.monotonic() + REFRESH_SECONDS
        finally:
            pubsub.close()
            subscriber.close()


def _valid(mode) -> str:
    return mode if mode in MODES else DEFAULT


_watchers: PerProcess[Watcher] = PerProcess(lambda: Watcher().start(),
                                            stop=lambda w: w.stopped.set())


def watcher() -> Watcher:
    """The process's watcher (started on first use, again in a forked child)."""
    return _watchers.get()


def current() -> str:
    """The mode this process obeys now (no Redis call)."""
    return watcher().mode


def read() -> dict:
    """The mode as Redis holds it: {mode, changed_at, changed_by}."""
    raw = client().hgetall(keys.system_mode())
    return {"mode": _valid(raw.get("mode")),
            "changed_at": float(raw["changed_at"]) if raw.get("changed_at") else None,
            "changed_by": raw.get("changed_by")}


def switch(mode: str, actor: str) -> dict:
    """Switch every process to mode; log it (SWITCH). Raises ValueError for an unknown mode."""
    from . import system_log

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; modes are {', '.join(MODES)}")
    before = read()["mode"]
    now = time.time()
    pipe = client().pipeline()
    pipe.hset(keys.system_mode(), mapping={"mode": mode, "changed_at": now, "changed_by": actor})
    pipe.publish(keys.system_channel(), mode)
    pipe.execute()
    watcher().mode = mode
    system_log.write("SWITCH", f"mode switched from {before} to {mode} by {actor}",
                     mode=mode, previous=before, actor=actor)
    return read()


def forget() -> None:
    """Back to the default until the watcher next reads Redis (tests switch Redis)."""
    running = _watchers.peek()
    if running is not None:
        running.mode = DEFAULT


def stop() -> None:
    """Stop the watcher (tests)."""
    _watchers.forget()
