"""Chaos: kill -9 the Redis primary in the middle of 2,000 jobs, with a replica, three
Sentinels and REDIS_MIN_REPLICAS_ACK=1. Sentinel promotes the replica; the producer, two real
worker processes and the panel (gunicorn) find the new primary by themselves; every job whose
enqueue was acknowledged completes.

"Acknowledged": dispatch() returned an outcome (queued in Redis and confirmed by a replica,
or kept in this host's outbox when Redis could not confirm it). A call that raised is tried
again with the same job id, as a producer with an id of its own would.

The killed server comes back (as a supervisor would restart it) once the failover is done,
as a replica of the new primary: until then the new primary has no replica to confirm an
enqueue, and enqueues go to the outbox.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests
from browser_support import ROOT, stop, wait_for_port
from conftest import Workers, apply_env, wait_for
from sentinel_cluster import cluster_fixture  # noqa: F401
from sse_client import SseClient

import tests.jobs_for_tests  # noqa: F401  (registers the test jobs)
from backstop import keys, producers, redis_server, tokens

JOBS = 2000
KILL_AT = 800
RATE = 250  # enqueues/s: the kill lands in the middle of the run
RECOVERY_LIMIT = 30
# No rate limit; every completed record kept (by default only the newest 100 are).
QUEUES = {"system": {"rate_limit": 0, "concurrency": 4, "keep_completed": 10_000}}
QUICK = {"REDIS_MIN_REPLICAS_ACK": "1", "REDIS_REPLICA_ACK_TIMEOUT_MS": "500",
         "REDIS_SOCKET_TIMEOUT": "2", "REDIS_CONNECT_TIMEOUT": "1",
         "WORKER_RECONCILE_SECONDS": "1", "WORKER_RECONCILE_GRACE": "4",
         "BREAKER_RESET_SECONDS": "0.5", "OUTBOX_DRAIN_SECONDS": "0.5",
         "BACKSTOP_QUEUES": json.dumps(QUEUES), "BACKSTOP_TASK_MODULES": "tests.jobs_for_tests"}


@dataclass
class Producer:
    """Enqueues JOBS ledger jobs at RATE, noting each acknowledged one: when its call began
    and ended, and how it was taken (queued, outbox)."""

    ledger: Path
    acked: dict[str, tuple[float, float, str]] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)

    def run(self) -> None:
        started = time.monotonic()
        for n in range(JOBS):
            time.sleep(max(0.0, started + n / RATE - time.monotonic()))
            self.enqueue(f"chaos-{n:04d}")

    def enqueue(self, job_id: str) -> None:
        while True:
            began = time.time()
            try:
                outcome = producers.dispatch("test.ledger", {"path": str(self.ledger)},
                                             job_id=job_id)
            except Exception as exc:  # noqa: BLE001  (counted, and the same id sent again)
                self.errors[type(exc).__name__] += 1
                time.sleep(0.05)
                continue
            self.acked[job_id] = (began, time.time(), outcome.how)
            return


@dataclass
class Poller:
    """Asks the panel (a job's record, read from Redis) every 100 ms; notes each answer."""

    url: str
    headers: dict
    answers: list[tuple[float, int]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.done.is_set():
            try:
                status = requests.get(self.url, headers=self.headers, timeout=5).status_code
            except requests.RequestException:
                status = 0
            self.answers.append((time.time(), status))
            self.done.wait(0.1)


@dataclass
class LiveFeed:
    """Follows the panel's live event stream (its pub/sub) and notes when events come."""

    base: str
    headers: dict
    seen: list[float] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.done.is_set():
            try:
                stream = SseClient(self.base, "/api/v1/events", self.headers, timeout=2)
                while not self.done.is_set():
                    if stream.next().kind != "ping":
                        self.seen.append(time.time())
            except (OSError, EOFError, TimeoutError, ValueError):
                self.done.wait(0.2)


def test_a_killed_primary_loses_no_acknowledged_job(cluster, tmp_path):
    apply_env(**QUICK)
    ledger = tmp_path / "ledger.txt"
    ledger.touch()
    token = tokens.create("chaos", "viewer")
    workers = Workers(os.environ["REDIS_URL"])
    panel, base = start_panel(tmp_path / "panel.log")
    threads: list[threading.Thread] = []
    watchers: list[Poller | LiveFeed] = []
    try:
        for _ in range(2):
            workers.start("system", QUEUES, log_to=tmp_path / "workers.log")
        producer = Producer(ledger)
        bearer = {"Authorization": f"Bearer {token}"}
        poller = Poller(f"{base}/api/v1/jobs/chaos-0000", bearer)
        feed = LiveFeed(base, bearer)
        watchers = [poller, feed]
        threads = [threading.Thread(target=job.run, daemon=True)
                   for job in (producer, poller, feed)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(producer.acked) >= KILL_AT, 30, what=f"{KILL_AT} enqueues")

        old = cluster.kill_primary()
        killed_at = time.time()
        new = cluster.wait_for_failover(old, RECOVERY_LIMIT)
        promoted_at = time.time()
        cluster.start_server(old, replica_of=new)  # the supervisor restarts it
        threads[0].join(60)
        assert len(producer.acked) == JOBS, "the producer did not finish"

        states = settled(lambda: job_states(cluster.data(new), producer.acked), 45)
        runs = Counter(ledger.read_text().split())
        unfinished = describe_unfinished(cluster.data(new), producer.acked, runs)
    finally:
        for watcher in watchers:
            watcher.done.set()
        workers.stop_all()
        stop(panel)

    report = recovery(killed_at, promoted_at, producer, poller, feed, runs)
    print("\n" + json.dumps(report, indent=1))
    assert states == {"completed": JOBS}, f"some acknowledged jobs did not complete: {unfinished}"
    assert report["lost"] == 0
    assert report["first_enqueue_queued_in_redis_s"] < RECOVERY_LIMIT
    assert report["panel_200_again_s"] < RECOVERY_LIMIT
    assert report["live_events_again_s"] < RECOVERY_LIMIT


def start_panel(log: Path) -> tuple[subprocess.Popen, str]:
    port = redis_server.free_port()
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
             "--threads", "8", "--graceful-timeout", "5", "--log-level", "warning",
             "app:create_app()"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=out, stderr=out)
    wait_for_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


def settled(states, seconds: float) -> Counter:
    """The jobs' states once every one is completed, or as they are after seconds."""
    deadline = time.monotonic() + seconds
    while (found := states()).keys() != {"completed"} and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def job_states(primary, acked: dict) -> Counter:
    """How many acknowledged jobs are in each state (None: no record)."""
    pipe = primary.pipeline(transaction=False)
    for job_id in acked:
        pipe.hget(keys.job(job_id), "state")
    return Counter(pipe.execute())


def describe_unfinished(primary, acked: dict, runs: Counter) -> list[dict]:
    """What a failure message needs about each job that did not complete: its record,
    timeline, how often it ran, and every list or sorted set that holds its message."""
    found = []
    for job_id in acked:
        record = primary.hgetall(keys.job(job_id))
        if record.get("state") == "completed":
            continue
        holders = [key for key in primary.scan_iter(count=1000)
                   if primary.type(key) == "list"
                   and any(m.startswith(f"{job_id}\n") for m in primary.lrange(key, 0, -1))]
        found.append({"id": job_id, "record": record, "runs": runs[job_id], "in": holders,
                      "timeline": primary.lrange(keys.timeline(job_id), 0, -1)})
    return found


def recovery(killed_at: float, promoted_at: float, producer: Producer, poller: Poller,
             feed: LiveFeed, runs: Counter) -> dict:
    """Seconds from the kill to each recovery, jobs lost and run twice."""
    def first_after(times) -> float:
        later = [t for t in times if t > killed_at]
        return round(min(later) - killed_at, 2) if later else float("inf")

    calls = [(began, ended, how) for began, ended, how in producer.acked.values()
             if began > killed_at]
    outage = [t for t, status in poller.answers if t > killed_at and status != 200]
    return {
        "promoted_s": round(promoted_at - killed_at, 2),
        "first_enqueue_acknowledged_s": first_after(ended for _, ended, _ in calls),
        "first_enqueue_queued_in_redis_s": first_after(
            ended for _, ended, how in calls if how == "queued"),
        "longest_enqueue_s": round(max(e - b for b, e, _ in producer.acked.values()), 2),
        "kept_in_outbox": sum(1 for *_, how in producer.acked.values() if how == "outbox"),
        "producer_errors_retried": dict(producer.errors),
        "panel_200_again_s": first_after(t for t, status in poller.answers
                                         if status == 200 and t > max(outage, default=0)),
        "panel_non_200_answers": len(outage),
        "live_events_again_s": first_after(t for t in feed.seen if t > promoted_at),
        "acknowledged": len(producer.acked),
        "lost": sum(1 for job_id in producer.acked if not runs[job_id]),
        "ran_twice": sum(1 for count in runs.values() if count > 1),
    }
