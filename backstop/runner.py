"""The worker process: consumers for every queue, heartbeats, reaper, timeouts, shutdown.

Delivery is at-least-once. A consumer moves a message into this process's processing list;
the script that records the job's outcome also removes it (the acknowledgement). Nothing stays
there for ever:
- a process that dies leaves its messages there; once its heartbeat expires, any worker's
  reaper returns them to their queues (the attempt given back: see backstop.isolation for how
  a job that kills its worker is told from the jobs that ran beside it);
- a live process reconciles its own lists every few seconds: a message that no thread of it
  holds for longer than a grace period (a start whose reply was lost in a partition, a start
  refused at maxmemory, an outcome rolled back by a power loss) goes back to its queue, its
  attempt given back unless the handler ran;
- every start carries a token kept in the job's record, so a late or repeated START or FINISH
  (a retry after a timeout) changes nothing.
"""
from __future__ import annotations

import ctypes
import itertools
import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field

import redis

from . import alerts, dlq, drainer, hot_path, keys, metrics, poison, redrive, schedules
from .config import settings
from .connection import client, is_try_later
from .contracts import QUEUES, QueueConfig, queue_config
from .errors import JobTimeout, PermanentFailure, WorkerLost
from .execution import enter_job, set_context
from .hueys import BadMessage, huey_for, message_task, open_message, task_payload, unframe
from .isolation import HandlerFailed, Isolated, run_isolated, stop_children
from .jobs import load_handlers
from .outages import OutageLog
from .registry import entry, event, script_args
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
    token: str
    since: float = field(default_factory=time.time)
    timed_out: bool = False
    isolated: bool = False
    thread: str = field(default_factory=lambda: threading.current_thread().name)


@dataclass(frozen=True)
class Started:
    """What the START script answered: kind (run, exhausted, empty, paused, throttled, skip,
    bad), a number (the attempt, or ms to wait), the message, deaths seen, this start's
    token."""

    kind: str
    value: int
    message: bytes
    lost: int
    token: str


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

    def __init__(self, queues: tuple[str, ...] = QUEUES, concurrency: int | None = None, *,
                 consuming: bool = True):
        self.id = new_worker_id() + ("" if consuming else ":direct")
        self.consuming = consuming  # False: it only runs what its own process hands it
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
        # (queue, message) -> threads holding it: from the moment a thread gets it until its
        # outcome is written. Reconciliation returns what sits in a list unheld.
        self.held: Counter[tuple[str, bytes]] = Counter()
        self.unheld_since: dict[tuple[str, bytes], float] = {}
        # job id -> token of its latest start whose handler this process ran (bounded).
        self.ran: OrderedDict[str, str] = OrderedDict()
        # Start tokens: unique per process (random prefix) and per start (a counter).
        self.token_prefix = uuid.uuid4().hex[:8] + "-"
        self.starts = itertools.count(1)
        self.last_beat_ok = time.monotonic()
        self.missing: dict[str, float] = {}  # worker id -> when its heartbeat was first gone
        self.outage = OutageLog(log)
        self.metrics_args = metrics.retention_args()

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
        # The heartbeat never backs off: after an outage it must land before any reaper
        # counts this process dead.
        self._thread(self.every, "beat", self.beat,
                     settings().float("worker_heartbeat_seconds"), False)
        for loop, seconds in ((self.reap, settings().float("worker_reaper_seconds")),
                              (self.reconcile, settings().float("worker_reconcile_seconds")),
                              (self.refresh_paused, 0.25), (self.promote_due, 0.5),
                              (self.enforce_timeouts, 0.1), (self.drive_redrives, 0.05),
                              (self.tick_schedules, 1),
                              (self.evaluate_alerts, settings().float("alert_evaluate_seconds"))):
            self._thread(self.every, loop.__name__, loop, seconds)
        drainer.ensure_running()
        log.info("worker %s consuming %s", self.id, ", ".join(self.queues))

    def _thread(self, target, name, *args) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        return thread

    def every(self, action, seconds: float, back_off: bool = True) -> None:
        """Run action every so many seconds; back off (quietly) while Redis cannot take it."""
        concern = action.__name__
        wait = seconds
        while not self.done.wait(wait):
            wait = seconds
            started = time.monotonic()
            try:
                action()
                self.outage.recovered(concern, started)
            except redis.RedisError as exc:
                if not is_try_later(exc):
                    log.exception("%s failed", concern)
                pause = self.outage.failed(concern, exc)
                wait = max(seconds, pause) if back_off else seconds
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
        stop_children()
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
            if queue in self.paused or not self.beating():
                self.stop.wait(0.2)
                continue
            started = time.monotonic()
            try:
                self.take_and_run(queue)
                self.outage.recovered("consume", started)
            except redis.RedisError as exc:
                if not is_try_later(exc):
                    log.exception("queue %s: Redis refused a call", queue)
                self.stop.wait(self.outage.failed("consume", exc))
            except Exception:
                # A bug must not kill the consumer; reconciliation returns the message.
                log.exception("queue %s: unexpected error handling a message", queue)
                self.stop.wait(1)

    def beating(self) -> bool:
        """False once this process has not beaten for half the heartbeat TTL: it takes no new
        work then, as the reaper may soon count it dead."""
        limit = settings().float("worker_heartbeat_ttl") / 2
        return time.monotonic() - self.last_beat_ok < limit

    def take_and_run(self, queue: str) -> None:
        """Start the next job of a queue: one script takes and starts a queued message; only
        when the queue is empty does the thread block in BLMOVE (then start what it got).
        The message is held from the moment this thread knows it until its outcome is
        written."""
        started = self._start(queue, b"")
        if started.kind == "empty":
            message = huey_for(queue).storage.dequeue()
            if message is None:
                return
            with self.holding(queue, message):
                if self.stop.is_set():
                    return  # left in the list: shutdown returns it
                self.handle(queue, self._start(queue, message))
            return
        with self.holding(queue, started.message):
            self.handle(queue, started)

    def run_next(self, queue: str) -> bool:
        """Start and run the next queued job of a queue in this thread, without blocking;
        False when none was waiting (for tests and tools)."""
        started = self._start(queue, b"")
        with self.holding(queue, started.message):
            self.handle(queue, started)
        return started.kind != "empty"

    @contextmanager
    def holding(self, queue: str, message: bytes):
        """Mark a message as held by a thread of this process (reconciliation skips it)."""
        if not message:
            yield
            return
        with self.lock:
            self.held[(queue, message)] += 1
        try:
            yield
        finally:
            with self.lock:
                self.held[(queue, message)] -= 1
                if self.held[(queue, message)] <= 0:
                    del self.held[(queue, message)]

    def _start(self, queue: str, message: bytes) -> Started:
        qk, config = self.keys[queue], queue_config(queue)
        token = f"{self.token_prefix}{next(self.starts):x}"
        # On Huey's binary pool (the reply carries the message), on this thread's own
        # connection (backstop.hot_path: two scripts a job are a worker's hot path).
        kind, value, taken, lost = hot_path.run_script(
            huey_for(queue).storage.conn.connection_pool, self.scripts.start,
            [qk.queue, qk.processing, self.paused_key, qk.rate, keys.bad_messages(queue)],
            script_args(queue, repr(time.time()), config.rate_limit, self.id, config.attempts,
                        message, token, lost_limit(config)))
        return Started(kind.decode(), int(value), taken, int(lost), token)

    def _remember_run(self, job_id: str, token: str) -> None:
        """Note that this process runs the handler of this start (reconciliation charges it)."""
        with self.lock:
            self.ran[job_id] = token
            self.ran.move_to_end(job_id)
            while len(self.ran) > 10_000:
                self.ran.popitem(last=False)

    def handle(self, queue: str, started: Started) -> None:
        if started.kind == "paused":
            self.paused.add(queue)
        elif started.kind == "throttled":
            self.stop.wait(started.value / 1000)
        elif started.kind == "bad":
            poison.drain(huey_for(queue).storage.conn, self.id, queue)
        elif started.kind in ("run", "exhausted"):
            self.run(queue, started)

    def run(self, queue: str, started: Started) -> None:
        config = queue_config(queue)
        job_id, job_name, _ = unframe(started.message)  # START checked the frame
        run = Running(job_id, queue, job_name, started.message, started.value,
                      time.monotonic() + config.timeout, started.token,
                      isolated=started.lost > 0)
        try:
            task = message_task(queue, *open_message(started.message))
            payload = task_payload(task)
        except Exception as exc:  # noqa: BLE001  (whatever a message holds, it is parked)
            self.refuse(run, config, exc)
            return
        if started.kind == "run":
            self._remember_run(job_id, started.token)
            self.execute(run, config, task, payload)
        elif started.lost >= lost_limit(config):
            self.fail(run, config, payload, WorkerLost(
                f"a worker died while running this job {started.lost} times"), final=True)
        else:
            self.fail(run, config, payload, WorkerLost(
                f"the worker running this job died {started.value} time(s); attempts "
                "exhausted"), final=True)

    def refuse(self, run: Running, config: QueueConfig, exc: Exception) -> None:
        """Dead-letter a message that must not run (its signature fails) or cannot be decoded,
        without unpickling it; the DLQ record's payload is the job record's (JSON)."""
        reason = str(exc) if isinstance(exc, BadMessage) else (
            f"the message cannot be decoded: {type(exc).__name__}: {exc}")
        poison.refused(self.id, run.queue, run.job_id, reason, run.message)
        stored = self._retrying(lambda: self.r.hget(keys.job(run.job_id), "payload"))
        try:
            payload = json.loads(stored or "{}")
        except ValueError:
            payload = {}
        error = poison.describe(run.message, reason)
        self.fail(run, config, payload if isinstance(payload, dict) else {},
                  HandlerFailed(error, permanent=True), final=True, park=True)

    def execute(self, run: Running, config: QueueConfig, task, payload: dict):
        """Run the handler and record its outcome; return (result, error)."""
        enter_job(run.job_id, run.job_name, run.queue, run.attempt, config.attempts,
                  run.deadline, self.r)
        result, error = None, None
        try:
            with self.tracked(run):
                result = self._isolated(run, config) if run.isolated else task.execute()
        except JobTimeout:
            error = JobTimeout(f"ran past the {run.queue} queue's timeout of {config.timeout:g} s")
        except Exception as exc:
            error = exc
        finally:
            set_context(None)
        if error is None:
            self.complete(run, config, result)
        else:
            self.fail(run, config, payload, error)
        return result, error

    @staticmethod
    def _isolated(run: Running, config: QueueConfig):
        return run_isolated(Isolated(run.job_id, run.job_name, run.queue, run.attempt,
                                     config.attempts, config.timeout), run.message)

    @contextmanager
    def tracked(self, run: Running):
        """Run the block as this thread's job: shown in beats, and interrupted by JobTimeout
        past run.deadline (enforce_timeouts)."""
        ident = threading.get_ident()
        with self.lock:
            self.running[ident] = run
        try:
            yield
        finally:
            self._stop_tracking(ident)

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

    def fail(self, run: Running, config: QueueConfig, payload: dict, exc: BaseException,
             final: bool = False, park: bool = False) -> None:
        """Record a failed attempt: a retry, or (final) dead and, unless the job opts out or
        park says it must be kept anyway, a DLQ record."""
        self.counts["failed"] += 1
        if isinstance(exc, HandlerFailed):
            error, final = exc.error, final or exc.permanent
        else:
            error = dlq.describe_exception(exc)
        body = json.dumps({**error, "attempt": run.attempt})
        final = final or isinstance(exc, PermanentFailure) or run.attempt >= config.attempts
        if not final:
            run_at = time.time() + config.retry_delay(run.attempt, random.random)
            self._retrying(lambda: self._finish(run, "retry", body, keep=0, run_at=run_at,
                                                note=error["message"]))
            return
        fields = self._dead_letter_args(run, payload, error) if (
            park or config.routes_to_dlq(run.job_name)) else []
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
        """Acknowledge the message and record the outcome, in one script (a no-op when this
        start's outcome is recorded already: a retried call is harmless)."""
        if self.abandoned and outcome != "requeue":
            return
        qk = self.keys[run.queue]
        now = time.time()
        timeline, event_text = self._outcome_json(run, outcome, now, run_at, dlq_fields, note)
        hot_path.run_script(
            self.r.connection_pool, self.scripts.finish,
            [keys.job(run.job_id), qk.processing, qk.stats,
             qk.schedule if outcome == "retry" else qk.queue, keys.timeline(run.job_id)],
            script_args(run.job_id, run.queue, run.message, now, outcome, body, run_at, keep,
                        timeline, event_text, run.token, *self.metrics_args, *(dlq_fields or [])))

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

    def _retrying(self, write, seconds: float = 120.0):
        """Run a Redis write, retrying (quietly, with back-off) while Redis cannot take it, so
        no outcome is lost to a short outage. Past `seconds` it raises; the message is then
        still in the processing list and reconciliation returns it."""
        deadline = time.monotonic() + seconds
        while True:
            started = time.monotonic()
            try:
                result = write()
                self.outage.recovered("record outcomes", started)
                return result
            except redis.RedisError as exc:
                if not is_try_later(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(self.outage.failed("record outcomes", exc))

    # ---- the helper loops ----
    def beat(self) -> None:
        """Publish this process's heartbeat: host, pid, queues, current jobs, counts.

        EXPIRE goes first and alone needs no memory, so at maxmemory (noeviction) the beat
        still keeps this process alive even though its details cannot be rewritten.
        """
        now = time.time()
        with self.lock:
            current = [{"job_id": r.job_id, "queue": r.queue, "job": r.job_name,
                        "since": r.since, "thread": r.thread} for r in self.running.values()]
        queues = self.queues if self.consuming else ()
        threads = {q: self.concurrency or queue_config(q).concurrency for q in queues}
        info = {"id": self.id, "host": socket.gethostname(), "pid": os.getpid(),
                "queues": list(queues), "threads": threads, "current": current,
                "direct": not self.consuming,
                **self.counts,
                "started_at": self.started_at, "last_beat": now}
        ttl = max(1, int(settings().float("worker_heartbeat_ttl")))
        pipe = self.r.pipeline(transaction=False)
        pipe.expire(keys.worker(self.id), ttl)
        pipe.set(keys.worker(self.id), json.dumps(info), ex=ttl)
        pipe.zadd(keys.workers(), {self.id: now})
        if queues:
            pipe.hset(keys.queue_consumers(), mapping=dict.fromkeys(queues, now))  # health
        kept, written, *_ = pipe.execute(raise_on_error=False)
        if written is True or kept is True:
            self.last_beat_ok = time.monotonic()
        if isinstance(written, Exception):
            raise written

    def reap(self) -> None:
        """Return the jobs of workers whose heartbeat expired to their queues.

        Needs no lock: the stray script moves a message only if it is still in the dead
        worker's list, so concurrent reapers return each job once.
        """
        cutoff = time.time() - settings().float("worker_heartbeat_ttl")
        stale = self.r.zrangebyscore(keys.workers(), "-inf", cutoff)
        for worker_id in stale:
            if worker_id != self.id and self._confirmed_dead(worker_id):
                for queue in QUEUES:
                    self.return_orphans(worker_id, queue,
                                        f"worker {worker_id} stopped beating; job returned, "
                                        "its attempt given back")
                self.r.zrem(keys.workers(), worker_id)
        self.missing = {w: t for w, t in self.missing.items() if w in stale}

    def _confirmed_dead(self, worker_id: str) -> bool:
        """A worker whose heartbeat key is gone, still gone two beat intervals later: after a
        partition heals a live worker gets the chance to beat before its jobs are taken."""
        if self.r.exists(keys.worker(worker_id)):
            self.missing.pop(worker_id, None)
            return False
        now = time.monotonic()
        first = self.missing.setdefault(worker_id, now)
        return now - first >= 2 * settings().float("worker_heartbeat_seconds")

    def return_orphans(self, worker_id: str, queue: str, detail: str) -> int:
        """Return every message of a worker's processing list to its queue."""
        processing = keys.processing(worker_id, queue)
        returned = 0
        died = worker_id != self.id
        for message in huey_for(queue).storage.conn.lrange(processing, 0, -1):
            returned += self.return_message(worker_id, queue, message, detail, died=died)
        if returned:
            log.warning("returned %d job(s) of %s to queue %s", returned, worker_id, queue)
        return returned

    def return_message(self, worker_id: str, queue: str, message: bytes, detail: str, *,
                       died: bool) -> int:
        """Move one message from a processing list to the front of its queue (1 if moved)."""
        processing = keys.processing(worker_id, queue)
        try:
            job_id, job_name, _ = unframe(message)
        except BadMessage:
            moved = self.r.pipeline()  # MULTI: the message is never in neither list
            moved.lrem(processing, 1, message)
            moved.lpush(keys.bad_messages(queue), message)
            moved.execute()
            return 0
        ran = "" if died else self.ran.get(job_id, "")
        now = time.time()
        return self.scripts.stray(
            keys=[processing, huey_for(queue).storage.queue_key, keys.job(job_id),
                  keys.timeline(job_id)],
            args=script_args(job_id, queue, message, now, worker_id, ran, "1" if died else "0",
                             entry("stalled", now, detail=detail),
                             event("stalled", job_id, queue, job_name, "waiting", now,
                                   detail=detail)))

    def reconcile(self) -> None:
        """Return messages that sit in this process's processing lists with no thread
        holding them for longer than the grace period (see the module docstring); park
        malformed messages in the DLQ."""
        for queue in self.queues:
            poison.drain(huey_for(queue).storage.conn, self.id, queue)
        grace = reconcile_grace()
        now = time.monotonic()
        seen: set[tuple[str, bytes]] = set()
        for queue in self.queues:
            listed = huey_for(queue).storage.conn.lrange(self.keys[queue].processing, 0, -1)
            with self.lock:
                unheld = [(queue, m) for m in listed if (queue, m) not in self.held]
            for item in unheld:
                seen.add(item)
                if now - self.unheld_since.setdefault(item, now) >= grace:
                    self._return_stray(*item)
        self.unheld_since = {k: v for k, v in self.unheld_since.items() if k in seen}

    def _return_stray(self, queue: str, message: bytes) -> None:
        with self.lock:
            if (queue, message) in self.held:
                return
        if self.return_message(self.id, queue, message, "no thread of its worker held it; "
                               "returned to the queue", died=False):
            log.warning("queue %s: returned a job no thread held (%s) to the queue", queue,
                        message.split(b"\n", 1)[0].decode(errors="replace"))
        self.unheld_since.pop((queue, message), None)

    def refresh_paused(self) -> None:
        self.paused = set(self.r.smembers(keys.paused()))

    def promote_due(self) -> None:
        """Move due delayed and retrying jobs from each schedule into its queue (atomically)."""
        now = time.time()
        for queue in self.queues:
            storage = huey_for(queue).storage
            self.scripts.promote(keys=[storage.schedule_key, storage.queue_key], args=[now, 1000])

    def tick_schedules(self) -> None:
        """Enqueue the scheduled system jobs now due (of the queues this process consumes):
        one job per occurrence however many workers tick (see backstop.schedules)."""
        schedules.ticker(self.queues).tick()

    def drive_redrives(self) -> None:
        """Replay records of the DLQ redrives whose lease this process holds (or takes)."""
        redrive.drive(self.id)

    def evaluate_alerts(self) -> None:
        """Evaluate the alert rules, if this process holds (or takes) the evaluator's lease."""
        alerts.evaluate(self.id)

    def enforce_timeouts(self) -> None:
        """Raise JobTimeout inside any job that ran past its queue's timeout (an isolated job
        is killed by its own timeout instead)."""
        now = time.monotonic()
        with self.lock:
            for ident, run in self.running.items():
                if not run.timed_out and not run.isolated and now > run.deadline:
                    run.timed_out = True
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(ident), ctypes.py_object(JobTimeout))


def lost_limit(config: QueueConfig) -> int:
    """Deaths of its worker a job may be present at before it is dead as WorkerLost, even if
    isolation never caught it killing a process: its attempts plus two."""
    return config.attempts + 2


def reconcile_grace() -> float:
    """WORKER_RECONCILE_GRACE, but never shorter than a call can wait for its reply: a
    message is only a stray once no reply that would make a thread hold it can still come."""
    floor = (settings().float("redis_socket_timeout") + settings().float("redis_connect_timeout")
             + 1)
    return max(settings().float("worker_reconcile_grace"), floor)
