"""Metrics written where jobs finish: counts by outcome, runtime and wait histograms, and the
percentiles read back from them (backstop.metrics, scripts.METRICS)."""

from __future__ import annotations

import json
import time

import pytest
from conftest import apply_env
from helpers import system_worker

import tests.jobs_for_tests  # noqa: F401  (the jobs the in-process worker runs)
from backstop import keys, metrics, producers, stats
from backstop.contracts import QUEUES
from backstop.metrics import BOUNDS, Histogram
from backstop.registry import get_jobs
from backstop.runner import WorkerProcess

NO_RETRY_WAIT = {"system": {"attempts": 2, "rate_limit": 0, "backoff_base": 0,
                            "concurrency": 1}}


def bucket_index(seconds: float) -> int:
    return next((i for i, bound in enumerate(BOUNDS) if seconds <= bound), len(BOUNDS))


def within_one_bucket(estimate_ms: float, truth_s: float) -> bool:
    return abs(bucket_index(estimate_ms / 1000) - bucket_index(truth_s)) <= 1


@pytest.fixture
def worker(r):
    return system_worker(NO_RETRY_WAIT)


def run_all(worker: WorkerProcess) -> None:
    while worker.run_next("system"):
        worker.promote_due()
    time.sleep(0.01)  # a retry's due time (backoff 0) is now; promote it and run it
    worker.promote_due()
    if worker.run_next("system"):
        run_all(worker)


def test_quantiles_interpolate_inside_the_bucket_that_holds_them():
    hist = Histogram()
    hist.counts[bucket_index(0.02)] = 10  # (10 ms, 25 ms]
    hist.counts[bucket_index(0.2)] = 10   # (100 ms, 250 ms]
    assert hist.quantile(0.25) == pytest.approx(0.0175)  # halfway into the first bucket
    assert hist.quantile(0.75) == pytest.approx(0.175)
    assert hist.quantile(1.0) == pytest.approx(0.25)
    assert Histogram().quantile(0.5) is None
    above = Histogram()
    above.counts[-1] = 3
    assert above.quantile(0.99) == BOUNDS[-1], "above every bound: the highest bound"


def measured(ids: list[str], sleeps: list[float]) -> tuple[list[float], dict[str, float]]:
    """The truth about 20 jobs: each one's runtime from its own record (started_at to
    finished_at), sorted, and their p50/p95/p99 (ranks 10, 19 and 19.8 of 20). Each ran at
    least its sleep; on a busy machine a 20 ms sleep may take longer, so the sleeps alone are
    not the truth."""
    ran = sorted(float(j["finished_at"]) - float(j["started_at"]) for j in get_jobs(ids))
    assert len(ran) == 20
    assert all(took >= sleep for took, sleep in zip(ran, sorted(sleeps), strict=True))
    return ran, {"p50": ran[9], "p95": ran[18], "p99": ran[19]}


def test_known_durations_give_percentiles_within_one_bucket(worker):
    sleeps = [0.02] * 10 + [0.05] * 8 + [0.2] * 2
    ids = producers.enqueue_many([{"job": "test.work", "payload": {"seconds": s}}
                                  for s in sleeps])
    run_all(worker)
    figures = metrics.read(worker.r, lambda pipe: metrics.recent(pipe, ["system"]))[0]
    runtime = figures["system"]["jobs"]["test.work"].runtime.percentiles()
    assert runtime["count"] == 20
    ran, truth = measured(ids, sleeps)
    for name, seconds in truth.items():
        assert within_one_bucket(runtime[name], seconds), (name, runtime, ran)
    assert runtime["mean"] == pytest.approx(sum(ran) / 20 * 1000, abs=0.01), (runtime, ran)
    assert figures["system"]["all"].processed == 20


def test_outcomes_are_counted_per_job_and_in_the_never_trimmed_totals(worker):
    producers.enqueue_many([{"job": "test.work", "payload": {}}] * 3
                           + [{"job": "test.fail", "payload": {}}] * 2)
    run_all(worker)
    recent, totals = metrics.read(worker.r, lambda p: metrics.recent(p, ["system"]),
                                  metrics.totals)
    work, fail = recent["system"]["jobs"]["test.work"], recent["system"]["jobs"]["test.fail"]
    assert (work.ok, work.retry, work.dead) == (3, 0, 0)
    assert (fail.ok, fail.retry, fail.dead) == (0, 2, 2), "two attempts each: one retry, dead"
    assert fail.error_rate() == 1.0 and recent["system"]["all"].failed == 4
    assert totals[("system", "test.fail")].dead == 2
    assert totals[("system", "test.work")].runtime.count == 3


def test_wait_runs_from_enqueue_to_start(worker):
    producers.enqueue("test.work", {})
    time.sleep(0.3)
    run_all(worker)
    wait = metrics.read(worker.r, lambda p: metrics.recent(p, ["system"]))[0][
        "system"]["all"].wait
    assert wait.count == 1
    assert 0.3 <= wait.total < 1.0, wait.total
    assert wait.counts[bucket_index(wait.total)] == 1


def test_minute_buckets_expire_after_their_retention_and_the_totals_never(worker):
    apply_env(BACKSTOP_QUEUES=json.dumps(NO_RETRY_WAIT), METRICS_MINUTE_HOURS="1")
    worker.metrics_args = metrics.retention_args()
    producers.enqueue("test.work", {})
    run_all(worker)
    minute_ttl = worker.r.ttl(keys.metrics_minute("system", metrics.minute_of(time.time())))
    assert 3600 <= minute_ttl <= 3600 + 120
    assert worker.r.ttl(keys.metrics_total()) == -1


def test_finished_hours_roll_up_once_from_their_minutes(r):
    apply_env(METRICS_MINUTE_HOURS="3", METRICS_HOURLY_DAYS="2")
    hour = 500_000
    two = metrics.fields_for("email.send", "ok", 0.02, 0.001, count=2)
    for minute, backlog in ((hour * 60, 4), (hour * 60 + 59, 9)):
        r.hset(keys.metrics_minute("email", minute), mapping={**two, "backlog": backlog})
    now = (hour + 1) * 3600 + 30
    assert metrics.roll_up_hours(r, now) == 3 * len(QUEUES), "every queue, 3 kept hours"
    rolled = r.hgetall(keys.metrics_hour("email", hour))
    assert rolled == {"email.send|ok|3|1": "4", "email.send|rs": "80000",
                      "email.send|ws": "4000", "backlog": "9"}
    assert 2 * 86400 <= r.ttl(keys.metrics_hour("email", hour)) <= 2 * 86400 + 7200
    assert r.hgetall(keys.metrics_hour("email", hour - 1)) == {"n": "0"}
    r.hset(keys.metrics_minute("email", hour * 60 + 1), "email.send|ok|3|1", 100)
    assert metrics.roll_up_hours(r, now) == 0, "an hour is rolled up once"
    assert r.hget(keys.metrics_hour("email", hour), "email.send|ok|3|1") == "4"
    assert not r.exists(keys.metrics_hour("email", hour + 1)), "the current hour is not done"


def test_a_series_merges_minutes_into_steps(r):
    now = 1_800_000_000.0
    pipe = r.pipeline()
    for back in range(10):
        key = keys.metrics_minute("email", metrics.minute_of(now) - back)
        pipe.hset(key, mapping=metrics.fields_for("email.send", "ok", 0.02, 0.001))
    pipe.hset(keys.metrics_minute("email", metrics.minute_of(now)), "backlog", 7)
    pipe.execute()
    points = metrics.read(r, lambda p: metrics.series(p, "email", 10, points=5, now=now))[0]
    assert [p["figures"].processed for p in points] == [2, 2, 2, 2, 2]
    assert points[-1]["backlog"] == 7 and points[0]["backlog"] is None
    assert points[-1]["t"] == (metrics.minute_of(now) - 1) * 60


def test_monitor_reads_counts_age_workers_and_recent_figures_together(worker):
    producers.enqueue_many([{"job": "test.work", "payload": {}}] * 2
                           + [{"job": "test.fail", "payload": {}}])
    run_all(worker)
    producers.enqueue("test.work", {})
    worker.beat()
    later = time.time() + 2
    seen = stats.monitor(now=later)
    system = seen["queues"]["system"]
    assert system["counts"]["waiting"] == 1 and system["counts"]["dead"] == 1
    assert 2 <= system["oldest_waiting_age"] < 4
    assert system["workers"] == 1 and system["threads"] == 1
    assert system["processed"] == 4 and system["failed"] == 2 and system["error_rate"] == 0.5
    assert system["jobs"]["test.fail"]["dead"] == 1
    assert system["dead_letters"] == 1
    assert seen["queues"]["email"]["oldest_waiting_age"] is None
    assert seen["queues"]["email"]["workers"] == 0, "the worker consumes only the system queue"


def test_one_field_counts_the_outcome_and_both_histograms(worker):
    job_id = producers.enqueue("test.work", {"seconds": 0.03})
    run_all(worker)
    raw = worker.r.hgetall(keys.metrics_minute("system", metrics.minute_of(time.time())))
    combos = [name for name in raw if name.count("|") == 3]
    job = get_jobs([job_id])[0]  # the truth: a busy machine may stretch the 30 ms sleep
    ran = float(job["finished_at"]) - float(job["started_at"])
    waited = float(job["started_at"]) - float(job["created_at"])
    expected = f"test.work|ok|{metrics.bucket_number(ran)}|{metrics.bucket_number(waited)}"
    assert combos == [expected], raw
    parsed = metrics.parse(raw)[("test.work",)]
    assert (parsed.ok, parsed.runtime.count, parsed.wait.count) == (1, 1, 1)
    assert 0.03 <= parsed.runtime.total < 0.2
