"""Quiet, backed-off handling of a Redis that cannot take calls for a while.

During a network partition or at maxmemory every consumer thread and helper loop of a worker
fails about once a second. An OutageLog turns that into one line when the trouble begins
(the first concern to fail: consuming, heartbeats, reaping ...) and one when it ends (the last
failing concern recovered: how long, how many failed calls), and tells each caller how long
to back off.

Several threads share a concern (every consumer thread is "consume"), so a call that began
before the latest failure of its concern and succeeded does not end the outage: it proves
only that Redis took calls before the trouble, and counting it made the log flap (a
"recovered" line 60 ms after the first failure at maxmemory, then a second "cannot take").
"""

from __future__ import annotations

import logging
import random
import threading
import time

FIRST_BACKOFF = 0.25
MAX_BACKOFF = 5.0


class OutageLog:
    """The Redis trouble of one process, counted per concern."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self.lock = threading.Lock()
        self.failing: dict[str, int] = {}  # concern -> failed calls in a row
        self.last_failure: dict[str, float] = {}  # concern -> when it last failed (monotonic)
        self.began = 0.0
        self.calls = 0

    def failed(self, concern: str, exc: BaseException) -> float:
        """Count a failed call (logging only the first of an outage); return seconds to wait."""
        with self.lock:
            first = not self.failing
            if first:
                self.began, self.calls = time.monotonic(), 0
            self.failing[concern] = in_a_row = self.failing.get(concern, 0) + 1
            self.last_failure[concern] = time.monotonic()
            self.calls += 1
        if first:
            self.logger.warning("Redis cannot take calls (%s, in %s: %s); backing off, quiet "
                                "until it recovers", type(exc).__name__, concern, exc)
        return backoff(in_a_row)

    def recovered(self, concern: str, started: float) -> None:
        """A call of this concern that began at ``started`` (time.monotonic()) succeeded; when
        the last failing concern recovers, log the end. A call that began before the concern's
        latest failure proves nothing and is ignored."""
        if concern not in self.failing:
            return
        with self.lock:
            if started <= self.last_failure.get(concern, 0.0):
                return
            if self.failing.pop(concern, None) is None or self.failing:
                return
            seconds, calls = time.monotonic() - self.began, self.calls
        self.logger.warning("Redis takes calls again after %.1f s (%d failed calls)", seconds,
                            calls)


def backoff(failures: int) -> float:
    """Exponential back-off with jitter: 0.25 s, 0.5 s, ... capped at 5 s."""
    base = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(failures - 1, 8))
    return base * random.uniform(0.75, 1.0)
