"""How a validated job reaches its handler: queued in Redis, run inline, or kept in the outbox.

deliver() obeys the kill switch (backstop.modes): in sync_direct a job runs inline in the
caller's thread (a delayed job is still queued). In async_queue it goes to Redis through the
breaker (backstop.breaker); when Redis cannot take it, the queue's `outage` policy decides:

- outbox (default): the job is committed to this host's outbox and acknowledged (202,
  "outbox": true); every process drains the outbox into Redis when it returns.
- direct: the job runs inline at once, unrecorded; if it fails it goes to the outbox, so the
  workers retry it once Redis is back.
- refuse: the Redis error propagates (the API answers 503 with Retry-After).

The start and end of each fallback is written to the health log, once per outage and
process, with how many jobs each policy took.
"""

from __future__ import annotations

import threading
import time

import redis

from . import drainer, modes, outbox
from .breaker import BreakerOpen, redis_breaker
from .connection import is_try_later
from .contracts import queue_config
from .direct import Outcome, direct_runner, run_unrecorded
from .producers import Prepared, push
from .replication import acknowledged


def deliver(prepared: Prepared) -> Outcome:
    """Hand a prepared job over as the mode and, in an outage, the queue's policy say."""
    if modes.current() == "sync_direct" and prepared.delay == 0:
        return run_inline(prepared)
    return queue(prepared)


def queue(prepared: Prepared) -> Outcome:
    """Push the job into Redis; fall back when Redis cannot take it."""
    breaker = redis_breaker()
    try:
        breaker.check()
        created = acknowledged(lambda target: push(target, prepared, time.time()))
    except BreakerOpen as exc:
        return fall_back(prepared, exc)
    except redis.RedisError as exc:
        if not is_try_later(exc):
            raise
        breaker.failed(exc)
        return fall_back(prepared, exc)
    breaker.succeeded()
    fallbacks.ended()
    if not created:
        return Outcome(prepared.job_id, "existing", "")
    return Outcome(prepared.job_id, "queued", "delayed" if prepared.delay else "waiting")


def run_inline(prepared: Prepared) -> Outcome:
    """sync_direct: run it here, recorded when Redis takes calls, else unrecorded."""
    breaker = redis_breaker()
    try:
        breaker.check()
        outcome = direct_runner().run_recorded(prepared)
    except BreakerOpen:
        return _unrecorded(prepared)
    except redis.RedisError as exc:  # raised before the handler ran (see run_recorded)
        if not is_try_later(exc):
            raise
        breaker.failed(exc)
        return _unrecorded(prepared)
    breaker.succeeded()
    return outcome


def fall_back(prepared: Prepared, exc: redis.RedisError) -> Outcome:
    policy = queue_config(prepared.queue).outage
    fallbacks.used(policy, exc)
    drainer.ensure_running()  # it probes Redis for the breaker, and drains what is kept
    if policy == "refuse":
        raise exc
    if policy == "direct":
        return _unrecorded(prepared)
    return keep(prepared)


def _unrecorded(prepared: Prepared) -> Outcome:
    outcome = run_unrecorded(prepared)
    if outcome.failed:
        kept = keep(prepared)
        outcome.state, outcome.extra = kept.state, {"outbox": True}
    return outcome


def keep(prepared: Prepared) -> Outcome:
    """Commit the job to the outbox (durable when this returns)."""
    from . import system_log

    new = outbox.accept(prepared.job_id, prepared.queue, prepared.job_name,
                        prepared.payload_json, prepared.delay, prepared.priority, time.time())
    if not new:  # the outbox holds this id already: nothing is added
        return Outcome(prepared.job_id, "existing", "outbox", extra={"outbox": True})
    system_log.count_outbox_acceptance()
    return Outcome(prepared.job_id, "outbox", "outbox", extra={"outbox": True})


class Fallbacks:
    """This process's fallback: when it began, and what each policy took since."""

    def __init__(self):
        self.lock = threading.Lock()
        self.began = 0.0
        self.counts: dict[str, int] = {}

    def reset(self) -> None:
        """Forget a fallback in progress (tests point REDIS_URL elsewhere)."""
        with self.lock:
            self.began, self.counts = 0.0, {}

    def used(self, policy: str, exc: BaseException) -> None:
        with self.lock:
            first = not self.began
            if first:
                self.began, self.counts = time.time(), {}
            self.counts[policy] = self.counts.get(policy, 0) + 1
        if first:
            _log("WARNING", f"Redis cannot take enqueues ({type(exc).__name__}: {exc}); "
                            "falling back by each queue's outage policy", local=True,
                 error=str(exc)[:300])

    def ended(self) -> None:
        if not self.began:
            return
        with self.lock:
            began, counts, self.began = self.began, self.counts, 0.0
        if not began:
            return
        took = ", ".join(f"{n} {POLICY_WORDS[p]}" for p, n in sorted(counts.items()))
        _log("INFO", f"enqueues reach Redis again after {time.time() - began:.1f} s of "
                     f"fallback ({took})", seconds=round(time.time() - began, 1), **counts)


POLICY_WORDS = {"outbox": "kept in the outbox", "direct": "run directly", "refuse": "refused"}


def _log(level: str, message: str, **meta) -> None:
    from . import system_log

    system_log.write(level, message, **meta)


fallbacks = Fallbacks()
