"""The worker process against a real Redis: delivery, retries, DLQ, pause, signals, timeouts."""

from __future__ import annotations

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import apply_env, wait_for

import tests.jobs_for_tests  # noqa: F401  (the jobs the worker runs)
from backstop import dlq, keys, producers, queues, registry

FAST = {"rate_limit": 0, "backoff_jitter": 0}


def marks(r, key="test:marks") -> list[tuple[str, int, str, float]]:
    rows = [m.rsplit(":", 3) for m in r.lrange(key, 0, -1)]
    return [(job_id, int(attempt), what, float(t)) for job_id, attempt, what, t in rows]


def states(job_ids) -> list[str]:
    return [job["state"] if job else "missing" for job in registry.get_jobs(list(job_ids))]


@pytest.fixture
def slow_webhook_server():
    """A loopback HTTP server that takes about 2 s to answer each delivery."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            time.sleep(2)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()


def test_kill_9_mid_flight_loses_no_webhook(r, workers, slow_webhook_server):
    url, received = slow_webhook_server
    config = {"plugins": {**FAST, "concurrency": 20}}
    ids = [producers.enqueue("plugins.webhook.deliver",
                             {"url": url, "event": "order.paid", "data": {"n": n}},
                             job_id=f"hook-{n}") for n in range(20)]
    first = workers.start("plugins", config, WEBHOOK_ALLOW_PRIVATE="1")  # a loopback receiver
    wait_for(lambda: len(received) >= 10, what="deliveries in flight")
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    assert "active" in states(ids), "the kill should leave jobs mid-flight"
    workers.start("plugins", config, WEBHOOK_ALLOW_PRIVATE="1")
    wait_for(lambda: states(ids) == ["completed"] * 20, timeout=40, what="all 20 completed")
    delivered = {body["delivery"] for body in received}
    assert delivered == set(ids)
    assert r.llen(keys.processing("x", "plugins")) == 0
    stalled = [e for e in registry.recent_events(count=1000) if e["type"] == "stalled"]
    assert stalled, "the reaper should have returned the killed worker's jobs"


def test_failing_job_backs_off_then_leaves_exactly_one_dlq_record(r, workers):
    job_id = producers.enqueue("test.fail", {})
    workers.start("system", {"system": {**FAST, "backoff_base": 1.0}})
    wait_for(lambda: states([job_id]) == ["dead"], timeout=20, what="the job to die")
    runs = [t for jid, _, what, t in marks(r) if what == "fail"]
    assert len(runs) == 3
    first_gap, second_gap = runs[1] - runs[0], runs[2] - runs[1]
    assert 0.9 <= first_gap < second_gap, (first_gap, second_gap)
    assert second_gap >= 1.9
    assert dlq.count() == 1
    record = dlq.get_record(job_id)
    assert record["error_type"] == "ValueError"
    assert record["error_message"] == f"order {job_id} could not be charged"
    assert "jobs_for_tests.py" in record["stack"] and record["attempts"] == 3
    job = registry.get_job(job_id)
    events = [e["event"] for e in job["timeline"]]
    assert events == ["enqueued", "started", "failed", "started", "failed", "started", "dead"]


def test_a_dlq_record_keeps_when_the_first_attempt_failed_and_when_the_last_did(r, workers):
    job_id = producers.enqueue("test.fail", {})
    workers.start("system", {"system": {**FAST, "backoff_base": 0.5}})
    wait_for(lambda: dlq.get_record(job_id), timeout=20, what="the job's DLQ record")
    runs = [t for _, _, what, t in marks(r) if what == "fail"]
    record, job = dlq.get_record(job_id), registry.get_job(job_id)
    failures = [e["t"] for e in job["timeline"] if e["event"] in ("failed", "dead")]
    assert len(runs) == len(failures) == 3
    assert runs[0] < record["first_failed_at"] < runs[1], "attempt 1's failure, not the death"
    assert record["first_failed_at"] == failures[0] == job["first_failed_at"]
    assert runs[2] < record["last_failed_at"] == failures[2] == job["finished_at"]
    assert record["last_failed_at"] - record["first_failed_at"] >= 1.4  # two back-offs


def test_a_job_that_kills_its_worker_runs_isolated_then_ends_in_the_dlq(r, workers):
    job_id = producers.enqueue("test.crash", {})
    first = workers.start("system", {"system": FAST})
    assert first.wait(timeout=15) == 13, "the poison job kills the worker that runs it"
    second = workers.start("system", {"system": FAST})
    wait_for(lambda: dlq.get_record(job_id), timeout=30, what="the poison job's DLQ record")
    assert second.poll() is None, "its later attempts ran isolated: the worker lives on"
    crashes = [m for m in marks(r) if m[2] == "crash"]
    assert [attempt for _, attempt, _, _ in crashes] == [1, 1, 2, 3]
    record = dlq.get_record(job_id)
    assert record["error_type"] == "WorkerLost" and record["attempts"] == 3
    assert "killed the process running it" in record["error_message"]
    assert registry.get_job(job_id)["state"] == "dead"


def test_pause_stops_new_starts_and_resume_runs_everything(r, workers):
    ids = [producers.enqueue("test.work", {"seconds": 0.3}) for _ in range(10)]
    workers.start("system", {"system": {**FAST, "concurrency": 2}})
    wait_for(lambda: len(marks(r)) >= 1, what="the first start")
    queues.pause("system")
    paused_at = time.time()
    time.sleep(2.0)
    late = [m for m in marks(r) if m[2] == "start" and m[3] > paused_at + 0.05]
    assert late == [], "no job may start while the queue is paused"
    assert "waiting" in states(ids)
    queues.resume("system")
    wait_for(lambda: states(ids) == ["completed"] * 10, timeout=20, what="all 10 completed")
    assert {m[0] for m in marks(r) if m[2] == "end"} == set(ids)


def test_sigterm_lets_running_jobs_finish(r, workers):
    ids = [producers.enqueue("test.work", {"seconds": 1.5}) for _ in range(4)]
    proc = workers.start("system", {"system": {**FAST, "concurrency": 2}})
    wait_for(lambda: len(marks(r)) >= 2, what="two jobs running")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert sorted(states(ids)) == ["completed", "completed", "waiting", "waiting"]
    workers.start("system", {"system": {**FAST, "concurrency": 2}})
    wait_for(lambda: states(ids) == ["completed"] * 4, timeout=20, what="the rest to run")


def test_sigterm_requeues_jobs_that_outlast_the_shutdown_timeout(r, workers):
    job_id = producers.enqueue("test.work", {"seconds": 3})
    proc = workers.start("system", {"system": FAST}, WORKER_SHUTDOWN_TIMEOUT="0.5")
    wait_for(lambda: marks(r), what="the job to start")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    job = registry.get_job(job_id)
    assert job["state"] == "waiting" and job["timeline"][-1]["event"] == "requeued"
    workers.start("system", {"system": FAST})
    wait_for(lambda: states([job_id]) == ["completed"], timeout=15, what="the rerun")
    assert registry.get_job(job_id)["attempts"] == 1


def test_a_job_past_its_timeout_fails_with_a_timeout_error(r, workers):
    job_id = producers.enqueue("test.work", {"seconds": 10})
    workers.start("system", {"system": {**FAST, "timeout": 1, "attempts": 1}})
    wait_for(lambda: states([job_id]) == ["dead"], timeout=10, what="the timeout")
    record = dlq.get_record(job_id)
    assert record["error_type"] == "JobTimeout"
    assert "timeout of 1 s" in record["error_message"]


def test_rate_limit_spaces_job_starts(r, workers):
    ids = [producers.enqueue("test.work", {}) for _ in range(10)]
    workers.start("system", {"system": {"rate_limit": 5, "concurrency": 4}})
    wait_for(lambda: states(ids) == ["completed"] * 10, timeout=20, what="all 10")
    starts = sorted(m[3] for m in marks(r) if m[2] == "start")
    assert starts[-1] - starts[0] >= 1.5, "10 jobs at 5/s take about 2 s (unlimited: ~50 ms)"


def test_progress_and_heartbeat_are_published(r, workers):
    job_id = producers.enqueue("test.work", {"seconds": 1})
    workers.start("system", {"system": FAST})
    wait_for(lambda: states([job_id]) == ["completed"], what="the job")
    progress = [e for e in registry.recent_events(count=1000)
                if e["type"] == "progress" and e["job_id"] == job_id]
    assert progress and 0 <= progress[0]["progress"] <= 100
    worker_id = r.zrange(keys.workers(), 0, 0)[0]

    def beat():
        info = json.loads(r.get(keys.worker(worker_id)))
        return info if info["processed"] >= 1 else None

    info = wait_for(beat, timeout=5, what="a heartbeat counting the job")
    assert info["queues"] == ["system"] and info["pid"] > 0 and info["host"]


def test_cancelled_job_never_runs(r, workers):
    job_id = producers.enqueue("test.work", {}, delay=0.5)
    assert registry.cancel_job(job_id)
    workers.start("system", {"system": FAST})
    time.sleep(2)
    assert states([job_id]) == ["cancelled"] and marks(r) == []


def test_configs_apply(r):
    apply_env(BACKSTOP_QUEUES=json.dumps({"email": {"attempts": 7}}))
    from backstop.contracts import queue_config

    assert queue_config("email").attempts == 7
