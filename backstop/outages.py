"""Quiet, backed-off handling of a Redis that cannot take calls for a while.

During a network partition or at maxmemory every consumer thread and helper loop of a worker
fails once a second. An OutageLog turns that into one line when the trouble begins and one
when it ends (how long, how many failed calls), and tells each caller how long to back off.
"""

from __future__ import annotations

import logging
import random
import threading
import time

FIRST_BACKOFF = 0.25
MAX_BACKOFF = 5.0


class OutageLog:
    """The state of one concern (consuming, heartbeats, reaping ...) of one process."""

    def __init__(self, logger: logging.Logger, concern: str):
        self.logger = logger
        self.concern = concern
        self.lock = threading.Lock()
        self.failures = 0
        self.began = 0.0

    def failed(self, exc: BaseException) -> float:
        """Count a failed call (logging only the first of an outage); return seconds to wait."""
        with self.lock:
            self.failures += 1
            failures = self.failures
            if failures == 1:
                self.began = time.monotonic()
        if failures == 1:
            self.logger.warning("%s: Redis cannot take calls (%s: %s); backing off, quiet "
                                "until it recovers", self.concern, type(exc).__name__, exc)
        return backoff(failures)

    def recovered(self) -> None:
        """A call succeeded: if an outage was under way, log its end once."""
        if not self.failures:
            return
        with self.lock:
            failures, began = self.failures, self.began
            self.failures = 0
        if failures:
            self.logger.warning("%s: Redis takes calls again after %.1f s (%d failed calls)",
                                self.concern, time.monotonic() - began, failures)


def backoff(failures: int) -> float:
    """Exponential back-off with jitter: 0.25 s, 0.5 s, ... capped at 5 s."""
    base = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** min(failures - 1, 8))
    return base * random.uniform(0.75, 1.0)
