"""Bringing back what an outage kept on this host: every process, web or worker, runs one.

Each OUTBOX_DRAIN_SECONDS it writes the minute's tally of outbox acceptances to the health
log, drains the host's outbox into Redis (one process at a time: backstop.outbox), flushes
health-log entries written locally during the outage, and notes the host's outbox depth in
Redis for the System page. A successful drain closes the enqueue breaker at once, so
producers stop falling back as soon as Redis is back. While Redis cannot take calls it stays
quiet (one log line per outage, backstop.outages).
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from . import outbox, system_log
from .breaker import redis_breaker
from .config import settings
from .connection import client, is_try_later
from .outages import OutageLog
from .per_process import PerProcess

log = logging.getLogger("backstop.drainer")
REPORT_SECONDS = 5.0


class Drainer:
    def __init__(self):
        self.outage = OutageLog(log)
        self.reported_at = 0.0
        self.stopped = threading.Event()

    def start(self) -> Drainer:
        threading.Thread(target=self._run, name="backstop-drainer", daemon=True).start()
        return self

    def _run(self) -> None:
        wait = 0.0
        while not self.stopped.wait(wait):
            wait = settings().float("outbox_drain_seconds")
            started = time.monotonic()
            try:
                self.tick()
                self.outage.recovered("drain", started)
            except redis.RedisError as exc:
                if not is_try_later(exc):
                    system_log.write("ERROR", f"outbox drain failed: {type(exc).__name__}: "
                                     f"{exc}", error=str(exc)[:300])
                wait = max(wait, self.outage.failed("drain", exc))
            except Exception as exc:  # noqa: BLE001  (a bug must not end the loop)
                log.exception("outbox drain failed")
                system_log.write("ERROR", f"outbox drain failed: {type(exc).__name__}: {exc}",
                                 local=True, error=str(exc)[:300])

    def tick(self) -> None:
        """One round: tally, probe (while the breaker is open), drain, flush, report. Redis
        errors propagate."""
        system_log.flush_tally()
        if not redis_breaker().probe(client().ping):
            return  # open, and not yet due for a probe: leave Redis alone
        waiting = outbox.depth()
        if waiting:
            self.drain(waiting)
        if system_log.flush_local():
            redis_breaker().succeeded()
        if waiting or time.monotonic() - self.reported_at >= REPORT_SECONDS:
            outbox.report()
            self.reported_at = time.monotonic()

    def drain(self, waiting: int) -> None:
        began = time.monotonic()
        moved = outbox.drain()
        if moved:
            redis_breaker().succeeded()
            system_log.write("INFO", f"drained {moved} job(s) from this host's outbox into "
                             f"Redis in {time.monotonic() - began:.2f} s", moved=moved,
                             left=outbox.depth(), seen=waiting)


_drainers: PerProcess[Drainer] = PerProcess(lambda: Drainer().start(),
                                            stop=lambda d: d.stopped.set())


def ensure_running() -> Drainer:
    """Start this process's drainer (once, and again in a forked child)."""
    return _drainers.get()


def stop() -> None:
    _drainers.forget()
