"""Health (backstop.health) and GET /health/queues: each issue from a real Redis state, the
scores and statuses, who sees what, 200/503, and real workers stopping and starting."""

from __future__ import annotations

import json
import os
import re
import threading
import time

import pytest
from conftest import apply_env, wait_for
from dlq_helpers import make_dead
from helpers import panel_app, signed_in

import tests.jobs_for_tests  # noqa: F401  (registers the test jobs)
from backstop import health, keys, metrics, producers, queues, redis_server, stats, tokens
from backstop.hueys import huey_for
from backstop.runner import WorkerProcess
from web.health import POLL_LIMIT

SYSTEM = {"system": {"attempts": 1, "rate_limit": 0, "backoff_base": 0, "concurrency": 2}}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def env(r):
    """apply_env for one test (stats not cached); the environment is restored afterwards."""
    saved = dict(os.environ)
    apply_env(STATS_CACHE_SECONDS="0", BACKSTOP_QUEUES=json.dumps(SYSTEM))
    stats.forget()
    yield apply_env
    os.environ.clear()
    os.environ.update(saved)
    apply_env()


def consumer(queue: str = "system") -> WorkerProcess:
    """An in-process worker that has beaten once (a live consumer of the queue), not started."""
    worker = WorkerProcess((queue,))
    huey_for(queue).storage.processing_key = keys.processing(worker.id, queue)
    worker.beat()
    return worker


def enqueue(n: int, job: str = "test.work", **payload) -> list[str]:
    return producers.enqueue_many([{"job": job, "payload": payload}] * n)


def found(assessment: dict, queue: str | None = "system") -> set[tuple[str, str]]:
    """(code, severity) of the issues about a queue (None: Redis and the system)."""
    return {(i["code"], i["severity"]) for i in assessment["issues"] if i["queue"] == queue}


def only_issue(assessment: dict, code: str) -> dict:
    issues = [i for i in assessment["issues"] if i["code"] == code]
    assert len(issues) == 1, assessment["issues"]
    assert issues[0]["message"] and issues[0]["recommendation"]
    return issues[0]


# ---- the assessment ----
def test_a_quiet_system_is_healthy_with_every_score_at_100(env):
    consumer()
    a = health.assess()
    assert a["status"] == "healthy" and a["score"] == 100 and a["issues"] == []
    assert [q["score"] for q in a["queues"].values()] == [100] * 6
    assert a["redis"]["reachable"] and a["redis"]["maxmemory_policy"] == "noeviction"
    assert a["redis"]["used_memory"] > 0 and a["redis"]["peak_memory"] >= 0
    assert a["summary"]["healthy"] == 6 and a["summary"]["unhealthy"] == 0
    assert len(a["workers"]) == 1 and a["queues"]["system"]["threads"] == 2


def test_an_old_waiting_job_degrades_then_fails_its_queue_and_scores_drop(env):
    consumer()
    enqueue(2)
    now = time.time()
    assert found(health.assess(now + 250)) == set()
    degraded = health.assess(now + 301)
    assert found(degraded) == {("oldest_waiting", "warning")}
    assert degraded["status"] == "degraded" and degraded["queues"]["system"]["score"] == 80
    unhealthy = health.assess(now + 1801)
    issue = only_issue(unhealthy, "oldest_waiting")
    assert issue["severity"] == "critical" and "30 min" in issue["message"]
    assert unhealthy["status"] == "unhealthy" and unhealthy["queues"]["system"]["score"] == 50
    # 6 queues, Redis and the system: min 50, mean (50 + 7 * 100) / 8; the score is between
    assert unhealthy["score"] == round((50 + 750 / 8) / 2)
    assert unhealthy["queues"]["email"]["status"] == "healthy"
    assert unhealthy["summary"]["unhealthy"] == 1 and unhealthy["summary"]["healthy"] == 5


def test_waiting_jobs_without_a_consumer_degrade_at_once_and_fail_after_the_limit(env):
    env(HEALTH_NO_WORKER_SECONDS="60")
    enqueue(3)
    now = time.time()
    first = health.assess(now)
    issue = only_issue(first, "no_workers")
    assert issue["severity"] == "warning" and issue["queue"] == "system"
    assert "3 jobs wait on system" in issue["message"] and "none has ever run" in issue["message"]
    assert "worker.py --queues system" in issue["recommendation"]
    assert only_issue(health.assess(now + 61), "no_workers")["severity"] == "critical"
    worker = consumer()
    assert found(health.assess()) == set(), "a live consumer: no issue"
    # It stops beating: once its heartbeat expired the clock runs from its last beat.
    worker.r.delete(keys.worker(worker.id))
    beat = float(worker.r.hget(keys.queue_consumers(), "system"))
    later = only_issue(health.assess(beat + 30), "no_workers")
    assert later["severity"] == "warning" and "the last one beat 30 s ago" in later["message"]
    assert only_issue(health.assess(beat + 61), "no_workers")["severity"] == "critical"


def test_a_queue_paused_for_long_is_reported_and_a_paused_queue_owes_no_workers(env, r):
    enqueue(2)
    queues.pause("system", actor="test")
    assert float(r.hget(keys.paused_since(), "system")) == pytest.approx(time.time(), abs=5)
    assert found(health.assess(time.time() + 3000)) == set(), "paused on purpose, not long"
    r.hset(keys.paused_since(), "system", time.time() - 3700)
    issue = only_issue(health.assess(), "paused")
    assert issue["severity"] == "warning" and "paused for 61 min" in issue["message"]
    queues.pause("system", actor="test")
    assert float(r.hget(keys.paused_since(), "system")) < time.time() - 3600, "first pause"
    queues.resume("system", actor="test")
    assert not r.hexists(keys.paused_since(), "system")


def test_a_high_error_rate_degrades_or_fails_a_queue_once_enough_attempts_ran(env):
    env(HEALTH_ERROR_RATE_MIN_ATTEMPTS="10")
    worker = consumer()
    enqueue(8)
    enqueue(1, "test.fail")
    while worker.run_next("system"):
        pass
    assert found(health.assess()) == set(), "9 attempts: too few to judge"
    enqueue(10)
    enqueue(1, "test.fail")
    while worker.run_next("system"):
        pass
    warned = only_issue(health.assess(), "error_rate")
    assert warned["severity"] == "warning" and "(2 of 20)" in warned["message"]
    enqueue(5, "test.fail")
    while worker.run_next("system"):
        pass
    failed = only_issue(health.assess(), "error_rate")
    assert failed["severity"] == "critical" and "28%" in failed["message"]


def test_jobs_active_past_their_timeout_are_stuck(env):
    env(BACKSTOP_QUEUES=json.dumps({"system": {**SYSTEM["system"], "concurrency": 1}}))
    worker = consumer()
    enqueue(1, seconds=1)
    running = threading.Thread(target=worker.run_next, args=("system",))
    running.start()
    try:
        wait_for(lambda: health.assess()["queues"]["system"]["counts"]["active"], what="start")
        timeout = 60 + health.stuck_grace()
        assert found(health.assess(time.time() + timeout - 5)) == set()
        issue = only_issue(health.assess(time.time() + timeout + 1), "stuck_jobs")
        assert issue["severity"] == "critical", "its one thread is stuck: nothing runs"
        assert "the queue's timeout is 60 s" in issue["message"]
    finally:
        running.join()


def test_a_backlog_growing_faster_than_it_is_processed_is_reported(env, r):
    env(HEALTH_BACKLOG_GROWTH="10")
    consumer()
    now = time.time()
    pipe = r.pipeline()
    metrics.record_backlog(pipe, "system", 3, now - 300)
    pipe.execute()
    enqueue(12)
    assert found(health.assess(now)) == set(), "grew by 9: below HEALTH_BACKLOG_GROWTH"
    enqueue(1)
    issue = only_issue(health.assess(now), "backlog_growth")
    assert "from 3 to 13 waiting jobs in 5 minutes" in issue["message"]
    assert health.assess(now)["queues"]["system"]["backlog_before"] == {"waiting": 3,
                                                                         "minutes": 5}


def test_a_dlq_near_its_cap_is_a_system_issue(env):
    env(DLQ_MAX_RECORDS="10")
    make_dead([{"cause": 1, "n": n} for n in range(7)])
    assert found(health.assess(), None) == set()
    make_dead([{"cause": 1, "n": 7}])
    a = health.assess()
    issue = only_issue(a, "dlq_capacity")
    assert issue["queue"] is None and "80%" in issue["message"]
    assert a["dlq"] == {"count": 8, "cap": 10, "ratio": 0.8} and a["status"] == "degraded"


def test_an_eviction_policy_other_than_noeviction_degrades_redis(env, r):
    consumer()
    r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        a = health.assess()
    finally:
        r.config_set("maxmemory-policy", "noeviction")
    assert found(a, None) == {("eviction_policy", "warning")}
    assert a["redis"]["status"] == "degraded" and a["redis"]["score"] == 80
    assert a["status"] == "degraded" and health.http_status(a) == 200


def test_redis_memory_near_or_past_maxmemory(env, r):
    env(HEALTH_REDIS_MEMORY_RATIO="0.5")
    consumer()
    used = r.info("memory")["used_memory"]
    try:
        r.config_set("maxmemory", int(used * 1.6))
        near = health.assess()
        r.config_set("maxmemory", int(used / 2))
        past = health.assess()
    finally:
        r.config_set("maxmemory", 0)
    assert found(near, None) == {("redis_memory", "warning")}
    assert found(past, None) == {("redis_memory", "critical")}
    assert past["redis"]["status"] == "unhealthy" and past["status"] == "unhealthy"


def test_a_slow_redis_is_reported_from_its_ping_time(env, r):
    consumer()
    asleep = threading.Thread(target=r.execute_command, args=("DEBUG", "SLEEP", "0.3"))
    asleep.start()
    time.sleep(0.05)
    try:
        a = health.assess()
    finally:
        asleep.join()
    issue = only_issue(a, "redis_latency")
    assert issue["severity"] == "warning" and a["redis"]["ping_ms"] >= 200


def test_redis_that_does_not_answer_is_an_unhealthy_assessment_not_an_error(env):
    env(REDIS_URL=f"redis://127.0.0.1:{redis_server.free_port()}/0")
    a = health.assess()
    assert a["status"] == "unhealthy" and a["score"] == 0 and a["queues"] == {}
    issue = only_issue(a, "redis_unreachable")
    assert issue["severity"] == "critical" and "REDIS_URL" in issue["recommendation"]
    body = health.as_json(a)
    assert body["redis"]["connectionStatus"] == "disconnected" and body["queues"] == []


# ---- GET /health/queues and GET /api/v1/health/queues ----
@pytest.fixture
def app(env):
    return panel_app(("vera",))


def bearer(role: str) -> dict:
    return {"Authorization": f"Bearer {tokens.create(f'{role}-health', role)}"}


def test_anyone_gets_the_status_alone_and_a_viewer_everything(app):
    consumer()
    enqueue(2)
    client = app.test_client()
    anonymous = client.get("/health/queues")
    assert anonymous.status_code == 200 and anonymous.headers["Cache-Control"] == "no-store"
    assert set(anonymous.json) == {"status", "timestamp"}
    assert anonymous.json["status"] == "healthy" and ISO.match(anonymous.json["timestamp"])
    wrong = client.get("/health/queues", headers={"Authorization": "Bearer bst_wrong"})
    assert wrong.status_code == 200 and set(wrong.json) == {"status", "timestamp"}
    for headers in (bearer("viewer"), bearer("owner")):
        body = client.get("/health/queues", headers=headers).json
        assert_full_body(body)
    session = signed_in(app, "vera").get("/health/queues")
    assert session.status_code == 200
    assert_full_body(session.json)


def assert_full_body(body: dict) -> None:
    assert {"status", "timestamp", "score", "redis", "queues", "summary", "issues",
            "workers"} <= set(body)
    redis_ = body["redis"]
    assert redis_["status"] == "healthy" and redis_["connectionStatus"] == "connected"
    assert redis_["memory"]["used"] and redis_["memory"]["peak"] and redis_["clients"] >= 1
    assert redis_["responseTime"] >= 0 and redis_["uptime"] >= 0 and redis_["issues"] == []
    system = next(q for q in body["queues"] if q["queueName"] == "system")
    assert system["stats"] == {"waiting": 2, "active": 0, "completed": 0, "failed": 0,
                               "delayed": 0, "dead": 0, "paused": 0}
    details = system["details"]
    assert details["isRunning"] is True and details["isPaused"] is False
    assert details["processingCapacity"] == 2 and details["lastJobProcessed"] is None
    assert set(system["percentiles"]) == {"runtime", "wait"} and system["score"] == 100
    assert body["summary"]["totalQueues"] == 6 and body["summary"]["healthyQueues"] == 6
    assert body["summary"]["totalJobs"]["waiting"] == 2
    assert body["workers"][0]["queues"] == ["system"] and ISO.match(body["workers"][0]["lastBeat"])


def test_unhealthy_is_503_for_everyone_and_degraded_is_200(app, env):
    env(HEALTH_NO_WORKER_SECONDS="0")
    enqueue(1)
    client, viewer = app.test_client(), bearer("viewer")
    for path, headers in (("/health/queues", {}), ("/health/queues", viewer),
                          ("/api/v1/health/queues", viewer)):
        response = client.get(path, headers=headers)
        assert response.status_code == 503 and response.json["status"] == "unhealthy"
    body = client.get("/api/v1/health/queues", headers=viewer).json
    assert [(i["code"], i["queue"]) for i in body["issues"]] == [("no_workers", "system")]
    env(HEALTH_NO_WORKER_SECONDS="60")
    degraded = client.get("/health/queues")
    assert degraded.status_code == 200 and degraded.json["status"] == "degraded"


def test_the_api_route_needs_a_token(app):
    client = app.test_client()
    assert client.get("/api/v1/health/queues").status_code == 401
    wrong = client.get("/api/v1/health/queues", headers={"Authorization": "Bearer bst_no"})
    assert wrong.status_code == 401
    assert "queues" in client.get("/api/v1/health/queues", headers=bearer("viewer")).json


def test_without_redis_the_endpoint_answers_503_in_json(app, env):
    client = app.test_client()
    env(REDIS_URL=f"redis://127.0.0.1:{redis_server.free_port()}/0")
    for headers in ({}, {"Authorization": "Bearer bst_any"}):
        response = client.get("/health/queues", headers=headers)
        assert response.status_code == 503
        assert response.json["status"] == "unhealthy" and set(response.json) == {
            "status", "timestamp"}


def test_an_uptime_checker_is_not_refused_but_a_flood_is(app, env):
    env(STATS_CACHE_SECONDS="3")
    limit = int(POLL_LIMIT.split()[0])
    client = app.test_client()
    answers = [client.get("/health/queues").status_code for _ in range(limit)]
    assert set(answers) == {200}
    assert client.get("/health/queues").status_code == 429


# ---- the headline: real workers stop, the endpoint says so, one starts, it recovers ----
def test_stopping_every_worker_makes_it_503_and_starting_one_brings_200(app, env, workers):
    no_worker_seconds, ttl = 3, 2  # the workers fixture's heartbeat TTL is 2 s
    queue_config = {"system": {"concurrency": 1, "rate_limit": 0, "timeout": 120}}
    env(HEALTH_NO_WORKER_SECONDS=str(no_worker_seconds), BACKSTOP_QUEUES=json.dumps(queue_config))
    client, viewer = app.test_client(), bearer("viewer")

    def health_of() -> tuple[int, dict]:
        response = client.get("/health/queues", headers=viewer)
        return response.status_code, response.json

    workers.start("system", queue_config)
    wait_for(lambda: health_of()[1]["queues"][-1]["details"]["isRunning"], what="a worker")
    enqueue(3, seconds=20)  # one runs, two wait
    wait_for(lambda: health_of()[1]["summary"]["totalJobs"]["active"] == 1, what="a start")
    status, body = health_of()
    assert status == 200 and body["status"] == "healthy", body["issues"]

    workers.stop_all()  # SIGKILL
    stopped = time.monotonic()
    wait_for(lambda: health_of()[0] == 503, timeout=no_worker_seconds + ttl + 3, interval=0.2,
             what="503")
    assert time.monotonic() - stopped <= no_worker_seconds + ttl + 1
    issue = only_issue(health_of()[1], "no_workers")
    assert issue["queue"] == "system" and issue["severity"] == "critical"
    assert "2 jobs wait on system" in issue["message"] and "worker.py" in issue["recommendation"]
    assert client.get("/health/queues").status_code == 503

    workers.start("system", queue_config)
    wait_for(lambda: health_of()[0] == 200, timeout=15, interval=0.2, what="200 again")
    assert health_of()[1]["status"] == "healthy"
