"""The worker process: consumers for every queue, heartbeats, reaper, timeouts, shutdown.

Delivery is at-least-once. A consumer BLMOVEs a message into this process's processing list;
the script that records the job's outcome also removes it (the acknowledgement). A process
that dies leaves its messages there; once its heartbeat expires, any worker's reaper returns
them to their queues. A job that keeps killing its worker has its attempts counted at start
and ends in the DLQ when they run out.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import redis

from . import dlq, dlq_maintenance, keys, redrive
from .config import settings
from .connection import client
from .contracts import QUEUES, QueueConfig, queue_config
from .errors import JobTimeout, PermanentFailure, WorkerLost
from .execution import set_context
from .hueys import huey_for, unframe
from .jobs import JobContext, load_handlers
from .registry import entry, event, report_progress, script_args
from .scripts import scripts_for

log = logging.getLogger("backstop.worker")

# outcome -> (timeline entry, event type, state)
OUTCOMES = {
    "completed": ("completed", "completed", "completed"),
    "retry": ("failed", "retrying", "failed"),
    "requeue": ("requeued", "stalled", "waiting"),
    "dead": ("dead", "dead", "dead"),
}


@dataclass
class Running:
    job_id: str
    queue: str
    job_name: str
    message: bytes
    attempt: int
    deadline: float
    since: float = field(default_factory=time.time)
    timed_out: bool = False


@dataclass(frozen=True)
class QueueKeys:
    """The fixed keys one queue's hot path uses, built once per process."""

    processing: str
    queue: str
    schedule: str
    rate: str
    stats: str

    @classmethod
    def build(cls, worker_id: str, queue: str) -> QueueKeys:
        storage = huey_for(queue).storage
        return cls(keys.processing(worker_id, queue), storage.queue_key, storage.schedule_key,
                   keys.rate_window(queue), keys.queue_stats(queue))


def new_worker_id() -> str:
    host = re.sub(r"[^A-Za-z0-9.\-]", "-", socket.gethostname())[:60]
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class WorkerProcess:
    """Every consumer thread of one process, and the threads that keep them honest."""

    def __init__(self, queues: tuple[str, ...] = QUEUES, concurrency: int | None = None):
        self.id = new_worker_id()
        self.queues = queues
        self.concurrency = concurrency
        self.r = client()
        self.scripts = scripts_for(self.r)
        self.stop = threading.Event()
        self.hurry = threading.Event()
        self.done = threading.Event()
        self.paused: set[str] = set()
        self.running: dict[int, Running] = {}
        self.abandoned = False
        self.lock = threading.Lock()
        self.counts = {"processed": 0, "failed": 0}
        self.consumers: list[threading.Thread] = []
        self.started_at = time.time()
        self.keys = {queue: QueueKeys.build(self.id, queue) for queue in QUEUES}
        self.paused_key = keys.paused()

    # ---- lifecycle ----
    def start(self) -> None:
        """Beat once, reap once, then start every thread."""
        load_handlers()
        for queue in self.queues:
            huey_for(queue).storage.processing_key = self.keys[queue].processing
        self.beat()
        self.reap()
        for queue in self.queues:
            for n in range(self.concurrency or queue_config(queue).concurrency):
                self.consumers.append(self._thread(self.consume, f"{queue}-{n}", queue))
        for loop, seconds in ((self.beat, settings().float("worker_heartbeat_seconds")),
                              (self.reap, settings().float("worker_reaper_seconds")),
                              (self.refresh_paused, 0.25), (self.promote_due, 0.5),
                              (self.enforce_timeouts, 0.1), (dlq_maintenance.maintain, 30),
                              (self.drive_redrives, 0.05)):
            self._thread(self.every, loop.__name__, loop, seconds)
        log.info("worker %s consuming %s", self.id, ", ".join(self.queues))

    def _thread(self, target, name, *args) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        return thread

    def every(self, action, seconds: float) -> None:
        while not self.done.wait(seconds):
            try:
                action()
            except redis.RedisError as exc:
                log.warning("%s failed: %s", action.__name__, exc)
            except Exception:
                log.exception("%s failed", action.__name__)

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop taking jobs; let running ones finish within the timeout, else requeue them."""
        self.stop.set()
        limit = settings().float("worker_shutdown_timeout") if timeout is None else timeout
        deadline = time.monotonic() + limit
        while (any(t.is_alive() for t in self.consumers) and not self.hurry.is_set()
               and time.monotonic() < deadline):
            time.sleep(0.05)
        self._wait_for_idle_consumers()
        with self.lock:
            self.abandoned = True
            leftovers = list(self.running.values())
        for run in leftovers:
            self._retrying(lambda run=run: self._finish(
                run, "requeue", "", keep=0, note="worker shut down before the job finished"))
        for queue in self.queues:
            self.return_orphans(self.id, queue, "returned to the queue at worker shutdown")
        self.done.set()
        self.r.delete(keys.worker(self.id))
        self.r.zrem(keys.workers(), self.id)
        log.info("worker %s stopped; %d running job(s) went back to their queue",
                 self.id, len(leftovers))

    def _wait_for_idle_consumers(self) -> None:
        """Let consumers blocked in BLMOVE return, so none takes a job we are requeueing."""
        limit = time.monotonic() + huey_for(self.queues[0]).storage.read_timeout + 1
        while time.monotonic() < limit and any(
                t.is_alive() and t.ident not in self.running for t in self.consumers):
            time.sleep(0.05)

    # ---- consuming ----
    def consume(self, queue: str) -> None:
        while not self.stop.is_set():
            if queue in self.paused:
                self.stop.wait(0.2)
                continue
            try:
                started = self.take(queue)
                if started is not None:
                    self.handle(queue, *started)
            except redis.ConnectionError as exc:
                log.warning("queue %s: Redis unreachable (%s); retrying", queue, exc)
                self.stop.wait(1)
            except Exception:
                # A bug must not kill the consumer; the message stays in the processing list.
                log.exception("queue %s: unexpected error handling a message", queue)
                self.stop.wait(1)

    def take(self, queue: str) -> tuple[str, str, bytes] | None:
        """Start the next job of a queue: one script takes and starts a queued message; only
        when the queue is empty does the thread block in BLMOVE (then start what it got)."""
        started = self._start(queue, b"")
        if started[0] == "empty":
            message = huey_for(queue).storage.dequeue()
            if message is None or self.stop.is_set():
                return None
            started = self._start(queue, message)
        return started

    def _start(self, queue: str, message: bytes) -> tuple[str, str, bytes]:
        qk, config = self.keys[queue], queue_config(queue)
        # The raw (bytes) connection: the reply carries the pickled message.
        kind, value, taken = self.scripts.start(
            keys=[qk.queue, qk.processing, self.paused_key, qk.rate, keys.bad_messages(queue)],
            args=script_args(queue, repr(time.time()), config.rate_limit, self.id,
                             config.attempts, message),
            client=huey_for(queue).storage.conn)
        return kind.decode(), value.decode(), taken

    def handle(self, queue: str, kind: str, value: str, message: bytes) -> None:
        if kind == "paused":
            self.paused.add(queue)
        elif kind == "throttled":
            self.stop.wait(int(value) / 1000)
        elif kind == "bad":
            log.error("queue %s: an unframed message was moved to %s", queue,
                      keys.bad_messages(queue))
        elif kind in ("run", "exhausted"):
            self.run(queue, kind, int(value), message)

    def run(self, queue: str, kind: str, attempt: int, message: bytes) -> None:
        config = queue_config(queue)
        job_id, job_name, data = unframe(message)
        task = huey_for(queue).deserialize_task(data)
        payload = task.args[1]
        run = Running(job_id, queue, job_name, message, attempt,
                      time.monotonic() + config.timeout)
        if kind == "exhausted":
            self.fail(run, config, payload, WorkerLost(
                f"the worker running this job died {attempt} time(s); attempts exhausted"))
        else:
            self.execute(run, config, task, payload)

    def execute(self, run: Running, config: QueueConfig, task, payload: dict) -> None:
        ident = threading.get_ident()
        set_context(JobContext(
            job_id=run.job_id, job_name=run.job_name, queue=run.queue, attempt=run.attempt,
            max_attempts=config.attempts, deadline=run.deadline, redis=self.r,
            report=lambda job_id, pct, msg: report_progress(job_id, run.queue, run.job_name,
                                                            pct, msg)))
        with self.lock:
            self.running[ident] = run
        result, error = None, None
        try:
            result = task.execute()
        except JobTimeout:
            error = JobTimeout(f"ran past the {run.queue} queue's timeout of {config.timeout:g} s")
        except Exception as exc:
            error = exc
        finally:
            self._stop_tracking(ident)
            set_context(None)
        if error is None:
            self.complete(run, config, result)
        else:
            self.fail(run, config, payload, error)

    def _stop_tracking(self, ident: int) -> None:
        with self.lock:
            run = self.running.pop(ident, None)
            if run is not None and run.timed_out:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)

    # ---- outcomes ----
    def complete(self, run: Running, config: QueueConfig, result) -> None:
        self.counts["processed"] += 1
        body = json.dumps(result, default=str)
        self._retrying(lambda: self._finish(run, "completed", body, keep=config.keep_completed))

    def fail(self, run: Running, config: QueueConfig, payload: dict, exc: BaseException) -> None:
        self.counts["failed"] += 1
        error = dlq.describe_exception(exc)
        body = json.dumps({**error, "attempt": run.attempt})
        final = isinstance(exc, (PermanentFailure, WorkerLost)) or run.attempt >= config.attempts
        if not final:
            run_at = time.time() + config.retry_delay(run.attempt, random.random)
            self._retrying(lambda: self._finish(run, "retry", body, keep=0, run_at=run_at,
                                                note=error["message"]))
            return
        fields = self._dead_letter_args(run, payload, error) if config.routes_to_dlq(
            run.job_name) else []
        self._retrying(lambda: self._finish(run, "dead", body, keep=config.keep_failed,
                                            dlq_fields=fields, note=error["message"]))

    def _dead_letter_args(self, run: Running, payload: dict, error: dict) -> list:
        """[record id, hour, field pairs...]: a replay's failure updates its original record."""
        replay_of = self._retrying(lambda: self.r.hget(keys.job(run.job_id), "dlq_id"))
        job = {"id": run.job_id, "queue": run.queue, "job": run.job_name, "payload": payload}
        record = dlq.record_fields(job, error, run.attempt, existing=bool(replay_of))
        pairs = [item for pair in record.items() for item in pair]
        return [replay_of or run.job_id, dlq.hour_bucket(time.time()), *pairs]

    def _finish(self, run: Running, outcome: str, body: str, *, keep: int, run_at: float = 0.0,
                dlq_fields: list | None = None, note: str = "") -> None:
        """Acknowledge the message and record the outcome, in one script."""
        if self.abandoned and outcome != "requeue":
            return
        qk = self.keys[run.queue]
        now = time.time()
        timeline, event_text = self._outcome_json(run, outcome, now, run_at, dlq_fields, note)
        self.scripts.finish(
            keys=[keys.job(run.job_id), qk.processing, qk.stats,
                  qk.schedule if outcome == "retry" else qk.queue, keys.timeline(run.job_id)],
            args=script_args(run.job_id, run.queue, run.message, now, outcome, body, run_at,
                             keep, timeline, event_text, *(dlq_fields or [])))

    @staticmethod
    def _outcome_json(run: Running, outcome: str, now: float, run_at: float,
                      dlq_fields: list | None, note: str) -> tuple[str, str]:
        name, kind, state = OUTCOMES[outcome]
        extra: dict = {"attempt": run.attempt}
        if outcome == "retry":
            extra.update(retry_at=run_at, error=note)
        elif outcome == "dead":
            extra.update(error=note, detail="moved to the dead-letter queue" if dlq_fields
                         else "dropped: this job opts out of the dead-letter queue")
        elif outcome == "requeue":
            extra.update(detail=note)
        return (entry(name, now, **extra),
                event(kind, run.job_id, run.queue, run.job_name, state, now, **extra))

    def _retrying(self, write, seconds: float = 120.0) -> None:
        """Run a Redis write, retrying through a short outage so no outcome is lost."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                return write()
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    # ---- the helper loops ----
    def beat(self) -> None:
        """Publish this process's heartbeat: host, pid, queues, current jobs, counts."""
        now = time.time()
        with self.lock:
            current = [{"job_id": r.job_id, "queue": r.queue, "job": r.job_name,
                        "since": r.since} for r in self.running.values()]
        info = {"id": self.id, "host": socket.gethostname(), "pid": os.getpid(),
                "queues": list(self.queues), "current": current, **self.counts,
                "started_at": self.started_at, "last_beat": now}
        pipe = self.r.pipeline()
        pipe.set(keys.worker(self.id), json.dumps(info),
                 ex=max(1, int(settings().float("worker_heartbeat_ttl"))))
        pipe.zadd(keys.workers(), {self.id: now})
        pipe.execute()

    def reap(self) -> None:
        """Return the jobs of workers whose heartbeat expired to their queues.

        Needs no lock: the reap script moves a message only if it is still in the dead
        worker's list, so concurrent reapers return each job once.
        """
        cutoff = time.time() - settings().float("worker_heartbeat_ttl")
        for worker_id in self.r.zrangebyscore(keys.workers(), "-inf", cutoff):
            if worker_id == self.id or self.r.exists(keys.worker(worker_id)):
                continue
            for queue in QUEUES:
                self.return_orphans(worker_id, queue,
                                    f"worker {worker_id} stopped beating; job returned")
            self.r.zrem(keys.workers(), worker_id)

    def return_orphans(self, worker_id: str, queue: str, detail: str) -> int:
        huey = huey_for(queue)
        processing = keys.processing(worker_id, queue)
        returned = 0
        for message in huey.storage.conn.lrange(processing, 0, -1):
            try:
                job_id, job_name, _ = unframe(message)
            except ValueError:
                self.r.lmove(processing, keys.bad_messages(queue), "LEFT", "LEFT")
                continue
            now = time.time()
            returned += self.scripts.reap(
                keys=[processing, huey.storage.queue_key, keys.job(job_id), keys.timeline(job_id)],
                args=script_args(job_id, queue, message, now, entry("stalled", now, detail=detail),
                                 event("stalled", job_id, queue, job_name, "waiting", now,
                                       detail=detail)))
        if returned:
            log.warning("returned %d job(s) of %s to queue %s", returned, worker_id, queue)
        return returned

    def refresh_paused(self) -> None:
        self.paused = set(self.r.smembers(keys.paused()))

    def promote_due(self) -> None:
        """Move due delayed and retrying jobs from each schedule into its queue (atomically)."""
        now = time.time()
        for queue in self.queues:
            storage = huey_for(queue).storage
            self.scripts.promote(keys=[storage.schedule_key, storage.queue_key], args=[now, 1000])

    def drive_redrives(self) -> None:
        """Replay records of the DLQ redrives whose lease this process holds (or takes)."""
        redrive.drive(self.id)

    def enforce_timeouts(self) -> None:
        """Raise JobTimeout inside any job that ran past its queue's timeout."""
        now = time.monotonic()
        with self.lock:
            for ident, run in self.running.items():
                if not run.timed_out and now > run.deadline:
                    run.timed_out = True
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(ident), ctypes.py_object(JobTimeout))
