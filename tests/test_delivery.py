"""The kill switch and the fallback, in one process against real Redis: sync_direct runs and
records jobs inline, the breaker stops trying a Redis that fails, each outage policy, and the
outbox keeps ids, order, delays and priorities through a drain."""

from __future__ import annotations

import json
import multiprocessing
import time

import pytest
from chaos import OwnRedis, PartitionProxy
from conftest import apply_env, wait_for

import tests.jobs_for_tests  # noqa: F401  (the jobs the tests run)
from backstop import (
    breaker,
    direct,
    dlq,
    drainer,
    keys,
    local_store,
    modes,
    outbox,
    producers,
    registry,
    system_log,
    tokens,
)
from backstop.errors import JobFailed
from backstop.hueys import huey_for, unframe

NO_RETRY = json.dumps({"system": {"attempts": 1, "rate_limit": 0}})
UNTHROTTLED = json.dumps({"system": {"rate_limit": 0}})


@pytest.fixture
def api(r):
    from app import create_app

    app = create_app()
    app.testing = True
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tokens.create('ops', 'operator')}"
    return client


@pytest.fixture
def sync_mode(r):
    apply_env(BACKSTOP_QUEUES=UNTHROTTLED)  # a throttled job is queued, not run inline
    modes.switch("sync_direct", "test")
    yield
    modes.switch("async_queue", "test")


@pytest.fixture
def own(r, tmp_path, redis_url):
    """A Redis of this test's own (durable, so a restart keeps its data)."""
    server = OwnRedis(tmp_path / "redis", durable=True)
    apply_env(REDIS_URL=server.url, BREAKER_RESET_SECONDS="0.5", REDIS_CONNECT_TIMEOUT="1",
              REDIS_SOCKET_TIMEOUT="1")
    yield server
    apply_env(REDIS_URL=redis_url)
    server.stop()


@pytest.fixture
def own_api(own):
    """The API client, its token in the test's own Redis (verified once, before any outage)."""
    from app import create_app

    client = create_app().test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tokens.create('ops', 'operator')}"
    assert client.get("/api/v1/jobs/none").status_code == 404
    return client


def queue_ids(queue: str = "system") -> list[str]:
    """Job ids in a queue's list, in the order workers take them (oldest first)."""
    messages = huey_for(queue).storage.conn.lrange(huey_for(queue).storage.queue_key, 0, -1)
    return [unframe(m)[0] for m in reversed(messages)]


# ---- sync_direct ----
def test_sync_direct_answers_201_with_the_handlers_result_and_records_the_run(api, sync_mode,
                                                                             r):
    answer = api.post("/api/v1/jobs", json={"job": "test.work", "payload": {"key": "marks"}})
    assert answer.status_code == 201, answer.json
    assert answer.json["result"] == {"attempt": 1} and answer.json["state"] == "completed"
    assert answer.json["recorded"] is True
    job = registry.get_job(answer.json["id"])
    assert job["state"] == "completed" and job["result"] == {"attempt": 1}
    assert [e["event"] for e in job["timeline"]] == ["enqueued", "started", "completed"]
    assert len(r.lrange("marks", 0, -1)) == 2, "the handler ran once, here"
    assert queue_ids() == [], "nothing was left for a worker"
    assert not [k for k in r.keys(keys.processing("*", "*")) if r.llen(k)]


def test_a_failing_handler_in_sync_mode_answers_its_error_and_leaves_a_dlq_record(api, r):
    apply_env(BACKSTOP_QUEUES=NO_RETRY)
    modes.switch("sync_direct", "test")
    answer = api.post("/api/v1/jobs", json={"job": "test.fail", "job_id": "order-7"})
    modes.switch("async_queue", "test")
    assert answer.status_code == 502, answer.json
    assert answer.json["error"]["type"] == "ValueError"
    assert "order order-7 could not be charged" in answer.json["error"]["message"]
    assert answer.json["state"] == "dead" and answer.json["dlq_id"] == "order-7"
    record = dlq.get_record("order-7")
    assert record["error_type"] == "ValueError" and record["job"] == "test.fail"


def test_a_failure_with_attempts_left_is_retried_by_the_workers(api, sync_mode):
    answer = api.post("/api/v1/jobs", json={"job": "test.fail"})
    assert answer.status_code == 502 and answer.json["state"] == "failed"
    assert answer.json["retry_at"] > time.time()
    assert huey_for("system").storage.conn.zcard(huey_for("system").storage.schedule_key) == 1


def test_enqueue_in_sync_mode_runs_the_job_and_raises_its_failure(sync_mode):
    job_id = producers.enqueue("test.work", {"key": "marks"})
    assert registry.get_job(job_id)["state"] == "completed"
    with pytest.raises(JobFailed) as caught:
        producers.enqueue("test.fail", {})
    assert caught.value.outcome.error["type"] == "ValueError"
    outcome = producers.dispatch("test.work", {"key": "marks"})
    assert (outcome.how, outcome.result) == ("ran", {"attempt": 1})


def test_sync_mode_runs_a_job_past_its_timeout_into_a_timeout_failure(api, sync_mode):
    apply_env(BACKSTOP_QUEUES=json.dumps({"system": {"timeout": 0.3, "attempts": 1,
                                                      "rate_limit": 0}}))
    started = time.monotonic()
    answer = api.post("/api/v1/jobs", json={"job": "test.work", "payload": {"seconds": 5}})
    assert answer.status_code == 502 and answer.json["error"]["type"] == "JobTimeout"
    assert time.monotonic() - started < 3


def test_sync_mode_queues_a_delayed_job_and_a_paused_queues_job(api, sync_mode, r):
    delayed = api.post("/api/v1/jobs", json={"job": "test.work", "delay": 60})
    assert delayed.status_code == 202 and delayed.json["state"] == "delayed"
    r.sadd(keys.paused(), "system")
    paused = api.post("/api/v1/jobs", json={"job": "test.work"})
    assert paused.status_code == 202 and paused.json["state"] == "waiting"
    assert queue_ids() == [paused.json["id"]]


def test_a_repeated_id_in_sync_mode_does_not_run_again(api, sync_mode, r):
    first = api.post("/api/v1/jobs", json={"job": "test.work", "job_id": "once",
                                           "payload": {"key": "marks"}})
    again = api.post("/api/v1/jobs", json={"job": "test.work", "job_id": "once",
                                           "payload": {"key": "marks"}})
    assert first.status_code == 201 and again.status_code == 202
    assert again.json["created"] is False
    assert len(r.lrange("marks", 0, -1)) == 2


def test_the_mode_is_kept_while_redis_is_unreachable(own):
    modes.switch("sync_direct", "test")
    own.stop()
    time.sleep(2 * modes.REFRESH_SECONDS + 0.2)
    assert modes.current() == "sync_direct"
    outcome = producers.dispatch("test.nap", {})
    assert (outcome.how, outcome.state, outcome.recorded) == ("ran", "completed", False)
    assert outcome.result == {"slept": 0}
    own.restart()
    modes.switch("async_queue", "test")


# ---- the breaker and the outage policies ----
def test_an_enqueue_during_an_outage_is_kept_in_the_outbox_and_drained_after(own, own_api):
    own.stop()
    answer = own_api.post("/api/v1/jobs", json={"job": "test.work", "job_id": "kept-1"})
    assert answer.status_code == 202 and answer.json["outbox"] is True
    assert outbox.holds("kept-1")
    again = own_api.post("/api/v1/jobs", json={"job": "test.work", "job_id": "kept-1"})
    assert again.status_code == 202 and again.json["created"] is False
    polled = own_api.get("/api/v1/jobs/kept-1")
    assert polled.status_code == 200 and polled.json == {"id": "kept-1", "state": "outbox"}
    own.restart()
    # the drain pushes, then deletes what it pushed from the outbox
    wait_for(lambda: registry.get_job("kept-1") and outbox.depth() == 0, timeout=10,
             what="the drain")
    assert queue_ids() == ["kept-1"]


def test_the_breaker_opens_so_an_outage_costs_no_timeout_per_enqueue(own, tmp_path):
    proxy = PartitionProxy(own.port)
    apply_env(REDIS_URL=proxy.url, BREAKER_FAILURES="2", BREAKER_RESET_SECONDS="30")
    producers.enqueue("test.work", {})  # connections open before the cut
    proxy.cut()
    took = []
    for _ in range(6):
        started = time.monotonic()
        assert producers.dispatch("test.work", {}).how == "outbox"
        took.append(time.monotonic() - started)
    proxy.close()
    assert all(t >= 0.9 for t in took[:2]), f"the first calls wait for the timeout: {took}"
    assert all(t < 0.2 for t in took[2:]), f"then the breaker answers at once: {took}"
    assert breaker.redis_breaker().state == breaker.OPEN


def test_the_drainer_probes_the_open_breaker_and_closes_it_when_redis_is_back(own):
    own.stop()
    for _ in range(3):
        producers.dispatch("test.work", {})
    assert breaker.redis_breaker().state == breaker.OPEN
    assert producers.dispatch("test.work", {}).how == "outbox", "no request probes"
    own.restart()
    wait_for(lambda: breaker.redis_breaker().state == breaker.CLOSED, timeout=6,
             what="the drainer's probe to close the breaker")
    assert producers.dispatch("test.work", {}).how == "queued"


def test_the_direct_policy_runs_the_job_at_once_and_answers_201(own, own_api):
    apply_env(BACKSTOP_QUEUES=json.dumps({"system": {"outage": "direct"}}))
    own.stop()
    answer = own_api.post("/api/v1/jobs", json={"job": "test.nap", "payload": {}})
    assert answer.status_code == 201, answer.json
    assert answer.json["recorded"] is False and answer.json["state"] == "completed"
    assert outbox.depth() == 0
    failed = own_api.post("/api/v1/jobs", json={"job": "test.fail", "job_id": "try-later"})
    assert failed.status_code == 502 and failed.json["outbox"] is True
    assert outbox.holds("try-later"), "a failed direct run is kept for the workers to retry"
    own.restart()


def test_a_direct_run_during_an_outage_keeps_its_queues_timeout(own, own_api):
    apply_env(BACKSTOP_QUEUES=json.dumps({"system": {"outage": "direct", "timeout": 0.3}}))
    own.stop()
    answer = own_api.post("/api/v1/jobs", json={"job": "test.nap", "job_id": "slow",
                                                "payload": {"seconds": 1}})
    assert answer.status_code == 502 and answer.json["error"]["type"] == "JobTimeout"
    assert answer.json["recorded"] is False and outbox.holds("slow")
    own.restart()


def test_the_refuse_policy_answers_503_with_retry_after(own, own_api):
    apply_env(BACKSTOP_QUEUES=json.dumps({"system": {"outage": "refuse"}}))
    own.stop()
    answer = own_api.post("/api/v1/jobs", json={"job": "test.work"})
    assert answer.status_code == 503 and int(answer.headers["Retry-After"]) >= 1
    assert outbox.depth() == 0
    own.restart()


def test_fallback_and_breaker_are_written_to_the_health_log_in_order(own):
    own.stop()
    for _ in range(4):
        producers.dispatch("test.work", {})
    time.sleep(0.2)  # the breaker writes its entry from a thread of its own
    own.restart()
    wait_for(lambda: outbox.depth() == 0 and system_log.local_count() == 0, timeout=10,
             what="the drain and the log's flush")
    system_log.flush_tally(force=True)
    messages = [e["message"] for e in reversed(system_log.entries(limit=50))]
    began = next(i for i, m in enumerate(messages) if m.startswith("Redis cannot take enqueues"))
    opened = next(i for i, m in enumerate(messages) if m.startswith("breaker opened"))
    drained = next(i for i, m in enumerate(messages) if m.startswith("drained 4 job(s)"))
    assert began < opened < drained
    assert any("accepted into the outbox" in m for m in messages)


# ---- the outbox ----
def test_the_drain_keeps_order_ids_priorities_and_delays_from_acceptance(r, no_drainer):
    accepted = time.time() - 30
    rows = [("a", 0, 0), ("b", 0, 0), ("urgent", 0, 5), ("later", 60, 0), ("due", 10, 0)]
    for job_id, delay, priority in rows:
        outbox.accept(job_id, "system", "test.work", "{}", delay, priority, accepted)
    assert outbox.drain() == 5 and outbox.depth() == 0
    assert queue_ids() == ["urgent", "a", "b", "due"], "priority first, then in order"
    later = registry.get_job("later")
    assert later["state"] == "delayed" and abs(later["run_at"] - (accepted + 60)) < 0.01
    assert registry.get_job("due")["state"] == "waiting", "its delay ran out while kept"
    assert abs(registry.get_job("a")["created_at"] - accepted) < 0.01


def test_an_interrupted_drain_pushes_again_without_a_second_job(r, no_drainer):
    for n in range(5):
        outbox.accept(f"j{n}", "system", "test.work", "{}", 0, 0, time.time())
    outbox._push_rows(outbox._oldest(10))  # pushed, then "killed" before the delete
    assert outbox.drain() == 5
    assert sorted(queue_ids()) == [f"j{n}" for n in range(5)]


def _drain_in_a_process(redis_url: str, outbox_path: str, locked: bool, start, moved) -> None:
    import os

    os.environ.update(REDIS_URL=redis_url, OUTBOX_PATH=outbox_path,
                      BACKSTOP_TASK_MODULES="tests.jobs_for_tests")
    from backstop import outbox as box

    start.wait()
    if not locked:  # as two drains would if the lock failed: every row, at once
        box._push_rows(box._oldest(10_000))
        moved.put(0)
        return
    total = 0
    while box.depth():
        total += box.drain(batch=50)
    moved.put(total)


def fill_outbox(count: int) -> None:
    with local_store.transaction() as conn:
        conn.executemany(
            "INSERT INTO outbox (job_id, queue, job_name, payload, accepted_at) "
            "VALUES (?, 'system', 'test.work', '{}', ?)",
            [(f"job-{n}", time.time()) for n in range(count)])


def drain_in_two_processes(redis_url: str, locked: bool) -> int:
    context = multiprocessing.get_context("spawn")
    start, moved = context.Event(), context.Queue()
    procs = [context.Process(target=_drain_in_a_process,
                             args=(redis_url, str(local_store.path()), locked, start, moved))
             for _ in range(2)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(60)
    return moved.get(timeout=5) + moved.get(timeout=5)


@pytest.fixture
def no_drainer():
    """This test process's own drainer stopped: only the processes a test starts drain."""
    drainer.stop()
    yield
    drainer.ensure_running()


def test_two_processes_draining_one_outbox_make_one_job_per_id(r, redis_url, no_drainer):
    fill_outbox(2_000)
    assert drain_in_two_processes(redis_url, locked=True) == 2_000
    assert outbox.depth() == 0
    ids = queue_ids()
    assert ids == [f"job-{n}" for n in range(2_000)], "each once, in acceptance order"
    assert int(r.hget(keys.queue_stats("system"), "enqueued")) == 2_000


def test_even_two_unlocked_drains_at_once_make_one_job_per_id(r, redis_url, no_drainer):
    fill_outbox(2_000)
    drain_in_two_processes(redis_url, locked=False)
    ids = queue_ids()
    assert len(ids) == len(set(ids)) == 2_000
    assert int(r.hget(keys.queue_stats("system"), "enqueued")) == 2_000


def test_host_depths_are_reported_for_the_system_page(r, no_drainer):
    outbox.accept("x", "system", "test.work", "{}", 0, 0, 1000.0)
    outbox.report()
    (host, info), = outbox.host_depths().items()
    assert info["depth"] == 1 and info["oldest_at"] == 1000.0


def test_the_breaker_opens_after_its_threshold_and_a_failed_probe_opens_it_again():
    import redis as redis_py

    changes = []
    guard = breaker.Breaker(3, 0.2, lambda old, new, why: changes.append(new))
    refused = redis_py.ConnectionError("refused")
    for _ in range(2):
        guard.failed(refused)
    assert guard.allow(), "two failures in a row stay under the threshold"
    guard.succeeded()
    for _ in range(3):
        guard.failed(refused)
    assert not guard.allow() and guard.state == breaker.OPEN
    assert guard.probe(lambda: None) is False, "not before BREAKER_RESET_SECONDS"
    time.sleep(0.25)
    with pytest.raises(redis_py.ConnectionError):
        guard.probe(lambda: (_ for _ in ()).throw(refused))
    assert guard.state == breaker.OPEN and not guard.allow()
    time.sleep(0.25)
    assert guard.probe(lambda: None) is True and guard.allow()
    # Each change is told from a thread of its own: compare them as a multiset.
    wait_for(lambda: sorted(changes) == ["closed", "half_open", "half_open", "open", "open"],
             timeout=2, what="every transition told")


def test_a_process_running_jobs_inline_beats_as_a_worker_of_no_queue(api, sync_mode, r):
    from helpers import panel_app, signed_in

    assert api.post("/api/v1/jobs", json={"job": "test.nap"}).status_code == 201
    runner = r.get(keys.worker(direct.direct_runner().id))
    assert json.loads(runner)["direct"] is True and json.loads(runner)["queues"] == []
    assert not r.hget(keys.queue_consumers(), "system"), "it consumes no queue"
    viewer = signed_in(panel_app(), "vera")
    card = viewer.get("/system?partial=workers").get_data(as_text=True)
    assert "runs jobs inline" in card
