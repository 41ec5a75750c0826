"""Running a job inline, in the caller's thread: the sync_direct mode and the `direct` outage
policy.

With Redis reachable a direct run is a worker's run without the queue: the job gets its
record, timeline, metrics and, on final failure, its DLQ record, exactly as a worker would
write them. Its message waits in a processing list of this process's DirectRunner, a worker
without consumer threads that beats like any worker: if the process dies mid-run, the reaper
returns the job to its queue and a worker runs it. The queue's timeout applies, and a paused
or rate-limited queue queues the job instead of running it.

With Redis unreachable the handler runs unrecorded (progress reports are dropped); a failure
puts the job into the host's outbox, so the workers retry it once Redis is back.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from . import dlq, registry
from .config import settings
from .connection import client, redis_url
from .contracts import queue_config
from .execution import run_current_job, set_context
from .hueys import message_task, open_message
from .isolation import HandlerFailed
from .jobs import JobContext, load_handlers
from .per_process import PerProcess
from .producers import Prepared, push
from .runner import Running, WorkerProcess


@dataclass
class Outcome:
    """What became of a job a producer handed over.

    how: "queued" (in Redis), "outbox" (kept on this host until Redis returns), "ran" (run
    inline), "existing" (its id existed: nothing was added). state: the job's state after.
    """

    job_id: str
    how: str
    state: str
    result: Any = None
    error: dict | None = None
    recorded: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.error is not None


class DirectRunner(WorkerProcess):
    """Runs jobs handed to it by its own process, in the calling thread."""

    def __init__(self):
        super().__init__(consuming=False)
        self.url = redis_url()
        self.started = self.watching = False
        self.starting = threading.Lock()

    def ensure_started(self) -> None:
        """Beat once, then keep beating, reconciling and enforcing timeouts in threads."""
        if self.started:
            return
        with self.starting:
            if self.started:
                return
            load_handlers()
            self.beat()
            self._thread(self.every, "direct-beat", self.beat,
                         settings().float("worker_heartbeat_seconds"), False)
            self._thread(self.every, "direct-reconcile", self.reconcile,
                         settings().float("worker_reconcile_seconds"))
            self.watch_timeouts()
            self.started = True

    def watch_timeouts(self) -> None:
        """Start the thread that enforces timeouts (it needs no Redis: unrecorded runs use it
        during an outage)."""
        with self.lock:
            if self.watching:
                return
            self.watching = True
        self._thread(self.every, "direct-timeouts", self.enforce_timeouts, 0.1)

    def run_recorded(self, prepared: Prepared) -> Outcome:
        """Record the job, run it here and record its outcome. Redis errors propagate
        before the handler runs; after it, outcomes are retried as a worker retries them."""
        self.ensure_started()
        queue, message = prepared.queue, prepared.message
        with self.holding(queue, message):
            if not push(client(), prepared, time.time(), into=self.keys[queue].processing):
                return existing(prepared.job_id)
            started = self._start(queue, message)
            if started.kind != "run":  # paused or throttled: START put it in its queue
                return Outcome(prepared.job_id, "queued", "waiting",
                               extra={"why": started.kind})
            self._remember_run(prepared.job_id, started.token)
            config = queue_config(queue)
            run = Running(prepared.job_id, queue, prepared.job_name, message, started.value,
                          time.monotonic() + config.timeout, started.token)
            task = _task(prepared)
            try:
                result, error = self.execute(run, config, task, prepared.payload)
            except redis.RedisError:
                # The handler ran, but Redis took no outcome for two minutes: the message
                # stays in this runner's processing list and reconciliation returns it to
                # its queue, where a worker runs it again (at least once, never lost).
                return Outcome(prepared.job_id, "queued", "waiting",
                               extra={"why": "outcome not recorded"})
        return self._outcome(prepared.job_id, result, error)

    @staticmethod
    def _outcome(job_id: str, result, error) -> Outcome:
        if error is None:
            return Outcome(job_id, "ran", "completed", result=_jsonable(result))
        job = registry.get_job(job_id) or {}
        state = job.get("state", "dead")
        # "failed" with attempts left: the workers retry it at retry_at.
        extra = {"retry_at": job["run_at"]} if state == "failed" and job.get("run_at") else {}
        if state == "dead":
            record_id = job.get("dlq_id") or job_id
            if dlq.get_record(record_id) is not None:
                extra["dlq_id"] = record_id
        return Outcome(job_id, "ran", state, error=describe(error), extra=extra)


def _task(prepared: Prepared):
    return message_task(prepared.queue, *open_message(prepared.message))


def _jsonable(result):
    return json.loads(json.dumps(result, default=str))


def describe(error: BaseException) -> dict:
    if isinstance(error, HandlerFailed):
        return dict(error.error)
    return dlq.describe_exception(error)


def existing(job_id: str) -> Outcome:
    job = registry.get_job(job_id) or {}
    return Outcome(job_id, "existing", job.get("state", "unknown"),
                   result=job.get("result"), error=job.get("error") or None)


def run_unrecorded(prepared: Prepared) -> Outcome:
    """Run the handler with no Redis at all (its progress reports go nowhere), within the
    queue's timeout, enforced as a worker's. Raises nothing: a failure is in the outcome (the
    caller keeps the job)."""
    config = queue_config(prepared.queue)
    runner = direct_runner()
    runner.watch_timeouts()
    deadline = time.monotonic() + config.timeout
    set_context(JobContext(
        job_id=prepared.job_id, job_name=prepared.job_name, queue=prepared.queue, attempt=1,
        max_attempts=config.attempts, deadline=deadline, redis=client(),
        report=lambda *args: None))
    run = Running(prepared.job_id, prepared.queue, prepared.job_name, prepared.message, 1,
                  deadline, token="")
    try:
        with runner.tracked(run):
            result = run_current_job(prepared.job_name, prepared.payload_json)
    except Exception as exc:  # noqa: BLE001  (the handler's failure is the outcome)
        return Outcome(prepared.job_id, "ran", "failed", error=describe(exc), recorded=False)
    finally:
        set_context(None)
    return Outcome(prepared.job_id, "ran", "completed", result=_jsonable(result),
                   recorded=False)


_runners: PerProcess[DirectRunner] = PerProcess(
    DirectRunner, stop=lambda runner: runner.done.set(),
    stale=lambda runner: runner.url != redis_url())


def direct_runner() -> DirectRunner:
    """This process's DirectRunner (made on first use, and again after a fork or when the
    process was pointed at another Redis)."""
    return _runners.get()


def forget() -> None:
    """Stop this process's direct runner (its beat, reconciliation and timeouts); the next
    direct run makes a new one (tests switch Redis servers)."""
    _runners.forget()
