"""A circuit breaker for Redis at enqueue: an outage must not add a timeout to every request.

Closed: calls go to Redis. After BREAKER_FAILURES failed calls in a row that mean "Redis
cannot take this now" (connection refused, timeout, read-only replica, OOM refusal ...), it
opens: every call is refused at once and the caller falls back (the outbox, a direct run or a
503). After BREAKER_RESET_SECONDS it half-opens: the process's drainer thread (which also
drains the outbox) makes one probe call; its success closes the breaker, its failure opens it
again for another BREAKER_RESET_SECONDS. So no request ever waits for a probe's timeout.

Why not pybreaker: its CircuitBreaker.call holds one lock across the wrapped call, which
would serialize every enqueue of a process's threads. Here the closed path takes no lock:
allow() reads one attribute and succeeded() returns at once unless something failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis

from .config import settings

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class BreakerOpen(redis.ConnectionError):
    """The breaker refused the call without trying Redis; retry_after: seconds until it
    probes again. (A ConnectionError: whoever cannot fall back answers 503 as for any
    unreachable Redis.)"""

    def __init__(self, retry_after: float, cause: str):
        self.retry_after = max(1, round(retry_after))
        super().__init__(f"Redis is unavailable ({cause}); the breaker is open, next probe in "
                         f"{retry_after:.1f} s")


class Breaker:
    def __init__(self, failures: int, reset_seconds: float,
                 on_change: Callable[[str, str, str], None] | None = None):
        self.threshold = max(1, failures)
        self.reset_seconds = reset_seconds
        self.on_change = on_change  # (old state, new state, why)
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.last_error = ""
        self.lock = threading.Lock()

    def allow(self) -> bool:
        """Whether a call may try Redis: only while closed. No caller ever waits for a
        probe: the process's drainer thread makes it (probe())."""
        return self.state == CLOSED

    def probe(self, call: Callable[[], object]) -> bool:
        """Half-open: when the breaker has been open BREAKER_RESET_SECONDS, try call() once;
        success closes it, a failure opens it again (and raises). True when it is closed."""
        with self.lock:
            if self.state == CLOSED:
                return True
            if time.monotonic() - self.opened_at < self.reset_seconds:
                return False
            self._move(HALF_OPEN, "probing Redis with one call")
        try:
            call()
        except redis.RedisError as exc:
            self.failed(exc)
            raise
        self.succeeded()
        return True

    def check(self) -> None:
        """Raise BreakerOpen unless this call may try Redis."""
        if not self.allow():
            raise BreakerOpen(self.retry_after(), self.last_error or "it failed repeatedly")

    def retry_after(self) -> float:
        return max(0.0, self.opened_at + self.reset_seconds - time.monotonic())

    def succeeded(self) -> None:
        if self.state == CLOSED and not self.failures:
            return
        with self.lock:
            self.failures = 0
            self._move(CLOSED, "Redis took a call again")

    def failed(self, exc: BaseException) -> None:
        with self.lock:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            if self.state == HALF_OPEN or (self.state == CLOSED
                                           and self.failures >= self.threshold):
                self.opened_at = time.monotonic()
                self._move(OPEN, self.last_error)

    def _move(self, state: str, why: str) -> bool:
        """Change state (under the lock); tell on_change in a thread of its own, since it
        writes the health log and must not hold up the callers."""
        old, self.state = self.state, state
        if old != state and self.on_change is not None:
            threading.Thread(target=self.on_change, args=(old, state, why), daemon=True,
                             name="breaker-log").start()
        return True


_breaker: Breaker | None = None


def redis_breaker() -> Breaker:
    """The process's breaker in front of Redis at enqueue (settings read once)."""
    global _breaker
    if _breaker is None:
        _breaker = Breaker(settings().int("breaker_failures"),
                           settings().float("breaker_reset_seconds"), _log_change)
    return _breaker


def reset() -> None:
    """Forget the process's breaker (tests change its settings)."""
    global _breaker
    _breaker = None


def _log_change(old: str, new: str, why: str) -> None:
    from . import system_log

    if new == OPEN:
        system_log.write("ERROR", f"breaker opened: enqueues fall back without trying Redis "
                         f"({why})", breaker=new, previous=old)
    elif new == CLOSED:
        system_log.write("INFO", "breaker closed: enqueues go to Redis again", breaker=new,
                         previous=old)
