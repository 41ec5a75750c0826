"""No job stuck for ever: reconciliation of a live worker's lists, idempotent outcomes, poison
jobs that take no bystander with them, partitions and maxmemory (runner, scripts, isolation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import redis as redis_py
from chaos import OwnRedis, PartitionProxy
from conftest import ROOT, apply_env, wait_for

import tests.jobs_for_tests  # noqa: F401  (the jobs the worker runs)
from backstop import dlq, keys, producers, queues, registry, stats
from backstop.connection import is_try_later
from backstop.hueys import huey_for
from backstop.runner import WorkerProcess

FAST = {"rate_limit": 0, "backoff_jitter": 0, "keep_completed": 10_000}
# Short timeouts so a test's outage and reconciliation take seconds, not minutes.
QUICK = {"REDIS_SOCKET_TIMEOUT": "2", "REDIS_CONNECT_TIMEOUT": "1",
         "WORKER_RECONCILE_SECONDS": "0.5", "WORKER_RECONCILE_GRACE": "4"}
TERMINAL = {"completed", "dead"}


def states(job_ids) -> list[str]:
    return [job["state"] if job else "missing" for job in registry.get_jobs(list(job_ids))]


def runs(path) -> Counter:
    """How many times each job ran, from the lines test.nap appends to its runs file."""
    if not path.exists():
        return Counter()
    return Counter(line.split()[0] for line in path.read_text().splitlines())


def processing_lists(r) -> dict[str, int]:
    return {key: r.llen(key) for key in r.scan_iter(keys.processing("*", "*"))}


def live_worker_id(r) -> str:
    return wait_for(lambda: (r.zrange(keys.workers(), 0, 0) or [None])[0], what="a heartbeat")


@pytest.fixture
def in_process_worker(r):
    """A WorkerProcess of this test process for the system queue, with no threads."""
    apply_env(BACKSTOP_QUEUES=json.dumps({"system": FAST}), **QUICK)
    worker = WorkerProcess(("system",))
    huey_for("system").storage.processing_key = keys.processing(worker.id, "system")
    return worker


# ---- tokens: a repeated or late outcome changes nothing ----
def test_a_repeated_finish_is_a_no_op(r, in_process_worker):
    worker = in_process_worker
    job_id = producers.enqueue("test.nap", {})
    started = worker._start("system", b"")
    run = _running(worker, started)
    assert worker._finish(run, "completed", "{}", keep=100) is None
    timeline_before = r.llen(keys.timeline(job_id))
    # The reply of the first call was lost (a timeout): the retry must not record twice.
    assert worker.scripts.finish(**_finish_call(worker, run, "completed")) == "stale"
    assert worker.scripts.finish(**_finish_call(worker, run, "requeue")) == "stale"
    assert r.llen(keys.timeline(job_id)) == timeline_before
    assert r.hget(keys.queue_stats("system"), "completed") == "1"
    assert r.llen(huey_for("system").storage.queue_key) == 0, "no message put back"
    assert registry.get_job(job_id)["state"] == "completed"


def _running(worker, started):
    from backstop.runner import Running

    job_id, job_name, _ = started.message.split(b"\n", 2)
    return Running(job_id.decode(), "system", job_name.decode(), started.message,
                   started.value, time.monotonic() + 60, started.token)


def _finish_call(worker, run, outcome: str) -> dict:
    from backstop.registry import script_args

    qk = worker.keys["system"]
    return {"keys": [keys.job(run.job_id), qk.processing, qk.stats, qk.queue,
                     keys.timeline(run.job_id)],
            "args": script_args(run.job_id, "system", run.message, time.time(), outcome, "{}",
                                0, 100, "{}", "{}", run.token)}


def test_a_stray_whose_handler_never_ran_goes_back_without_charging_an_attempt(
        r, in_process_worker):
    worker = in_process_worker
    job_id = producers.enqueue("test.nap", {})
    # START ran in Redis but its reply never reached a thread (a partition): a foreign token.
    started = worker._start("system", b"")
    assert job_id not in worker.ran, "no handler ran under this start"
    assert registry.get_job(job_id)["attempts"] == 1
    assert worker.return_message(worker.id, "system", started.message, "test", died=False)
    job = registry.get_job(job_id)
    assert job["state"] == "waiting" and job["attempts"] == 0
    assert job["timeline"][-1]["event"] == "stalled"
    storage = huey_for("system").storage
    assert storage.conn.lrange(storage.queue_key, 0, -1) == [started.message]


def test_a_stray_whose_handler_ran_keeps_its_attempt(r, in_process_worker):
    worker = in_process_worker
    job_id = producers.enqueue("test.nap", {})
    # The handler ran, but its completion was lost (a power loss rolled it back).
    started = worker._start("system", b"")
    worker._remember_run(job_id, started.token)  # what run() notes as the handler starts
    assert worker.return_message(worker.id, "system", started.message, "test", died=False)
    assert registry.get_job(job_id)["attempts"] == 1
    assert worker.run_next("system")
    job = registry.get_job(job_id)
    assert job["state"] == "completed" and job["attempts"] == 2


def test_the_worker_notes_a_start_as_ran_only_when_its_handler_runs(r, in_process_worker):
    worker = in_process_worker
    first, second = producers.enqueue("test.nap", {}), producers.enqueue("test.nap", {})
    worker._start("system", b"")  # started in Redis; no handler ran here
    assert first not in worker.ran
    worker.run_next("system")
    assert second in worker.ran and registry.get_job(second)["state"] == "completed"


def test_a_late_finish_after_the_job_was_taken_back_changes_nothing(r, in_process_worker):
    worker = in_process_worker
    job_id = producers.enqueue("test.nap", {})
    started = worker._start("system", b"")
    worker._remember_run(job_id, started.token)  # its handler ran; only the finish is late
    run = _running(worker, started)
    worker.return_message(worker.id, "system", started.message, "test", died=False)
    worker.run_next("system")  # the job ran again and completed
    assert registry.get_job(job_id)["attempts"] == 2
    worker._finish(run, "retry", json.dumps({"message": "late"}), keep=0, run_at=time.time())
    job = registry.get_job(job_id)
    assert job["state"] == "completed" and job["attempts"] == 2
    assert r.zcard(huey_for("system").storage.schedule_key) == 0


# ---- reconciliation in a live worker ----
def test_a_forced_stray_is_back_in_its_queue_within_the_reconcile_interval_and_runs_once(
        r, workers, tmp_path):
    runs_file = tmp_path / "runs"
    queues.pause("system")
    workers.start("system", {"system": FAST}, TEST_RUNS_FILE=str(runs_file), **QUICK)
    worker_id = live_worker_id(r)
    job_id = producers.enqueue("test.nap", {})
    storage = huey_for("system").storage
    assert storage.conn.lmove(storage.queue_key, keys.processing(worker_id, "system"),
                              "RIGHT", "LEFT")
    queues.resume("system")
    pushed = time.monotonic()
    wait_for(lambda: states([job_id]) == ["completed"], timeout=15, what="the stray to run")
    waited = time.monotonic() - pushed
    assert waited < 4 + 0.5 + 2, f"grace 4 s + interval 0.5 s, took {waited:.1f} s"
    assert runs(runs_file) == {job_id: 1}
    job = registry.get_job(job_id)
    assert job["attempts"] == 1
    assert [e["event"] for e in job["timeline"]] == ["enqueued", "stalled", "started",
                                                     "completed"]
    assert r.llen(keys.processing(worker_id, "system")) == 0


def test_a_job_running_longer_than_the_grace_period_is_not_taken_back(r, workers, tmp_path):
    runs_file = tmp_path / "runs"
    workers.start("system", {"system": FAST}, TEST_RUNS_FILE=str(runs_file), **QUICK)
    # Runs past the grace (4 s, its least: socket + connect timeouts + 1) and two reconciles.
    job_id = producers.enqueue("test.nap", {"seconds": 5})
    wait_for(lambda: states([job_id]) == ["completed"], timeout=20, what="the long job")
    assert runs(runs_file) == {job_id: 1}
    assert "stalled" not in [e["event"] for e in registry.get_job(job_id)["timeline"]]


# ---- a poison job takes no bystander with it ----
def test_a_job_that_kills_its_worker_takes_no_bystander_with_it(r, workers):
    config = {"system": {**FAST, "concurrency": 4, "backoff_base": 0.5}}
    bystanders = [producers.enqueue("test.work", {"seconds": 8}) for _ in range(3)]
    first = workers.start("system", config)
    wait_for(lambda: states(bystanders) == ["active"] * 3, what="the bystanders to start")
    poison = producers.enqueue("test.crash", {})
    assert first.wait(timeout=15) == 13
    second = workers.start("system", config)
    wait_for(lambda: set(states([*bystanders, poison])) <= TERMINAL, timeout=60,
             what="every job to end")
    assert states(bystanders) == ["completed"] * 3
    assert states([poison]) == ["dead"] and dlq.count() == 1
    assert dlq.get_record(poison)["error_type"] == "WorkerLost"
    assert [registry.get_job(b)["attempts"] for b in bystanders] == [1, 1, 1]
    assert second.poll() is None


# ---- outages ----
def test_a_partition_mid_run_leaves_no_job_stuck_and_logs_quietly(r, workers, tmp_path):
    proxy = PartitionProxy(r.connection_pool.connection_kwargs["port"])
    runs_file, log = tmp_path / "runs", tmp_path / "workers.log"
    config = {"system": {**FAST, "concurrency": 4}}
    ids = producers.enqueue_many([{"job": "test.nap", "payload": {"seconds": 0.02}}
                                  for _ in range(1500)])
    for _ in range(2):
        workers.start("system", config, log_to=log, REDIS_URL=proxy.url,
                      TEST_RUNS_FILE=str(runs_file), **QUICK)
    wait_for(lambda: len(runs(runs_file)) >= 300, timeout=30, what="300 jobs done")
    lines_before, noticed = _lines(log), _said(log, OUTAGE_BEGAN)
    proxy.cut()
    wait_for(lambda: _said(log, OUTAGE_BEGAN) >= noticed + 2, timeout=30,
             what="the workers to log the partition (two outage starts)")
    # Then quiet while it lasts: watched through the back-off's climb (0.25, 0.5, 1, 2 s),
    # when a line per failed call would show dozens. The partition, about 7 s in all, also
    # outlasts the heartbeat TTL (2 s) and the reconcile grace (4 s) before it heals.
    time.sleep(5)
    lines_during = _lines(log) - lines_before
    proxy.heal()
    wait_for(lambda: set(states(ids)) <= TERMINAL, timeout=90, what="every job to end")
    wait_for(lambda: not any(processing_lists(r).values()), timeout=15,
             what="the processing lists to drain")
    done = runs(runs_file)
    assert states(ids).count("completed") == 1500
    assert set(done) == set(ids)
    duplicates = sum(n - 1 for n in done.values())
    assert lines_during <= 4, f"{lines_during} log lines during the partition"
    print(f"partition: {duplicates} duplicate runs of 1500; {lines_during} log lines")
    proxy.close()


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


OUTAGE_BEGAN = "Redis cannot take calls"  # each process logs this once per outage
OUTAGE_ENDED = "Redis takes calls again"


def _said(path, words: str) -> int:
    """How many lines of a log contain the words."""
    return sum(words in line for line in path.read_text().splitlines()) if path.exists() else 0


def test_maxmemory_mid_run_then_lifted_every_job_completes_and_the_api_keeps_its_job(
        workers, tmp_path, redis_url):
    own = OwnRedis(tmp_path / "redis")
    try:
        apply_env(REDIS_URL=own.url)
        _run_through_maxmemory(own, workers, tmp_path)
    finally:
        apply_env(REDIS_URL=redis_url)
        own.stop()


def _run_through_maxmemory(own, workers, tmp_path):
    from app import create_app
    from backstop import tokens

    api = create_app().test_client()
    headers = {"Authorization": f"Bearer {tokens.create('ops', 'operator')}"}
    ids = producers.enqueue_many([{"job": "test.nap", "payload": {"seconds": 0.05}}
                                  for _ in range(400)])
    for _ in range(2):
        workers.start("system", {"system": {**FAST, "concurrency": 2}}, REDIS_URL=own.url,
                      TEST_RUNS_FILE=str(tmp_path / "runs"), **QUICK)
    wait_for(lambda: states(ids).count("completed") >= 50, timeout=30, what="50 done")
    own.client.config_set("maxmemory", 1)
    # Longer than the heartbeat TTL (2 s) plus two beats (0.5 s): a worker whose beat failed
    # at maxmemory would have lost its key by then. Nobody may be reaped meanwhile.
    time.sleep(3)
    answer = api.post("/api/v1/jobs", json={"job": "test.nap", "payload": {}}, headers=headers)
    alive = [w for w in stats.workers() if w["alive"]]
    beating = [own.client.ttl(keys.worker(w["id"])) for w in alive]
    stuck_at = states(ids).count("completed")
    own.client.config_set("maxmemory", 0)
    # The API keeps the job in this host's outbox (202) until Redis takes writes again.
    assert answer.status_code == 202 and answer.json["outbox"] is True, answer.data[:200]
    assert len(alive) == 2, "both workers beat through maxmemory"
    assert all(0 < ttl <= 2 for ttl in beating), "their heartbeat keys are renewed"
    assert stuck_at < 400, "the jobs should still be waiting when memory ran out"
    wait_for(lambda: states(ids + [answer.json["id"]]) == ["completed"] * 401, timeout=60,
             what="all 400, and the one the outbox kept")
    assert not any(processing_lists(own.client).values())


def test_redis_frozen_then_killed_and_restarted_mid_run_every_job_completes(
        workers, tmp_path, redis_url):
    own = OwnRedis(tmp_path / "redis", durable=True)
    runs_file, log = tmp_path / "runs", tmp_path / "workers.log"
    try:
        apply_env(REDIS_URL=own.url)
        ids = producers.enqueue_many([{"job": "test.nap", "payload": {"seconds": 0.02}}
                                      for _ in range(600)])
        for _ in range(2):
            workers.start("system", {"system": {**FAST, "concurrency": 2}}, log_to=log,
                          REDIS_URL=own.url, TEST_RUNS_FILE=str(runs_file), **QUICK)
        wait_for(lambda: len(runs(runs_file)) >= 100, timeout=30, what="100 jobs done")
        recovered = _said(log, OUTAGE_ENDED)
        _outage(log, own.freeze, own.thaw, "the freeze")  # their calls time out (2 s)
        # Only once every call of both works again does the next outage log its start.
        wait_for(lambda: _said(log, OUTAGE_ENDED) >= recovered + 2, timeout=60,
                 what="both workers to take calls again")
        wait_for(lambda: len(runs(runs_file)) >= 300, timeout=60, what="300 jobs done")
        _outage(log, own.stop, own.restart, "the stop")  # their connections are refused
        wait_for(lambda: set(states(ids)) == {"completed"}, timeout=90, what="all 600")
        assert set(runs(runs_file)) == set(ids)
        assert not any(processing_lists(own.client).values())
        assert "Traceback" not in log.read_text()
    finally:
        apply_env(REDIS_URL=redis_url)
        own.stop()


def _outage(log, begin, end, what: str) -> None:
    """begin() an outage; end() it once the workers have logged two starts of an outage."""
    noticed = _said(log, OUTAGE_BEGAN)
    begin()
    wait_for(lambda: _said(log, OUTAGE_BEGAN) >= noticed + 2, timeout=30,
             what=f"the workers to log {what} (two outage starts)")
    end()


def test_a_call_to_a_frozen_redis_fails_within_the_socket_timeout(tmp_path, redis_url):
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from backstop.connection import KernelTimedConnection, timeouts

    own = OwnRedis(tmp_path / "redis")
    try:
        apply_env(REDIS_URL=own.url, REDIS_SOCKET_TIMEOUT="1")
        options = timeouts(kernel=True)
        assert options["connection_class"] is KernelTimedConnection
        client = redis_py.Redis.from_url(own.url, retry=Retry(NoBackoff(), 0), **options)
        assert client.ping()
        own.freeze()
        began = time.monotonic()
        with pytest.raises(redis_py.TimeoutError, match="no reply within 1 s"):
            client.ping()
        assert 0.9 < time.monotonic() - began < 3
        own.thaw()
        assert client.ping()
    finally:
        own.thaw()
        os.environ.pop("REDIS_SOCKET_TIMEOUT")
        apply_env(REDIS_URL=redis_url)
        own.stop()


def test_try_later_errors_are_told_from_bugs():
    errors = redis_py.exceptions
    assert is_try_later(errors.TimeoutError("timed out"))
    assert is_try_later(errors.BusyLoadingError("Redis is loading the dataset in memory"))
    assert is_try_later(errors.OutOfMemoryError("command not allowed"))
    assert is_try_later(errors.ResponseError("BUSY Redis is busy running a script"))
    assert is_try_later(errors.ResponseError(
        "Error running script (call to f_1): @user_script:5: -OOM command not allowed"))
    assert is_try_later(errors.ReadOnlyError("You can't write against a read only replica"))
    assert is_try_later(errors.MasterDownError("Link with MASTER is down"))
    assert not is_try_later(errors.ResponseError("WRONGTYPE Operation against a key"))
    assert not is_try_later(errors.ResponseError("ERR unknown command 'NOPE'"))
    assert not is_try_later(errors.ResponseError("ERR Error running script: attempt to "
                                                 "compare nil with number (BUSYNESS)"))


# ---- producers in a plain process ----
def test_a_plain_process_can_enqueue_jobs_from_backstop_task_modules(r, redis_url):
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT),
           "BACKSTOP_TASK_MODULES": "tests.jobs_for_tests"}
    code = "import backstop; print(backstop.enqueue('test.nap', {'seconds': 0}))"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert registry.get_job(job_id)["job"] == "test.nap"


def test_an_unknown_job_still_says_unknown(r):
    from backstop.errors import UnknownJob

    with pytest.raises(UnknownJob):
        producers.enqueue("nobody.knows", {})



def test_the_api_keeps_a_job_in_the_outbox_while_redis_is_busy_running_a_script(
        r, tmp_path, redis_url):
    own = OwnRedis(tmp_path / "redis")
    try:
        apply_env(REDIS_URL=own.url)
        from app import create_app
        from backstop import tokens

        api = create_app().test_client()
        headers = {"Authorization": f"Bearer {tokens.create('ops', 'operator')}"}
        assert api.get("/api/v1/jobs/none", headers=headers).status_code == 404  # verified
        own.client.config_set("lua-time-limit", 50)
        spinner = redis_py.Redis.from_url(own.url)
        spin = threading.Thread(target=_spin, args=(spinner,), daemon=True)
        spin.start()
        wait_for(lambda: _busy(own.client), timeout=10, what="the script to hold Redis")
        answer = api.post("/api/v1/jobs", json={"job": "test.nap", "payload": {}},
                          headers=headers)
        own.client.script_kill()
        spin.join(5)
        assert answer.status_code == 202 and answer.json["outbox"] is True
        accepted = api.post("/api/v1/jobs", json={"job": "test.nap", "payload": {}},
                            headers=headers)
        assert accepted.status_code == 202 and "outbox" not in accepted.json
        wait_for(lambda: registry.get_job(answer.json["id"]), timeout=10,
                 what="the kept job drained once the script was killed")
    finally:
        apply_env(REDIS_URL=redis_url)
        own.stop()


def _busy(client) -> bool:
    """Whether Redis answers BUSY: a script has run past lua-time-limit and holds it."""
    try:
        client.ping()
    except redis_py.ResponseError as exc:
        return str(exc).startswith("BUSY")
    return False


def _spin(client) -> None:
    try:
        client.eval("local i = 0 while true do i = i + 1 end", 0)
    except Exception:  # noqa: BLE001  (SCRIPT KILL ends it with an error)
        pass


def test_the_kill_9_loop_loses_nothing(redis_url):
    from bench.chaos_kill import Chaos, parse_args

    args = parse_args(["--jobs", "1000", "--seconds", "20", "--job-seconds", "0.25"])
    chaos = Chaos(args, env={"WORKER_HEARTBEAT_SECONDS": "0.5", "WORKER_HEARTBEAT_TTL": "2",
                             "WORKER_REAPER_SECONDS": "0.5"})
    try:
        result = chaos.run()
    finally:
        chaos.close()
        os.environ.pop("BACKSTOP_TASK_MODULES", None)
        apply_env(REDIS_URL=redis_url)
    assert result["kills"] >= 4
    assert result["states"] == {"completed": 1000} and result["never_ran"] == 0
    assert result["orphan_return_s"], "some killed worker had jobs in flight"
    print(f"kill -9 loop: {result['kills']} kills, {result['duplicates']} duplicate runs, "
          f"orphans back after at most {max(result['orphan_return_s']):.1f} s")
