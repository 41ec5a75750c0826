"""Scheduled system jobs (backstop.schedules): real worker processes racing to enqueue each
occurrence make exactly one job, run once; missed occurrences are not replayed in bulk;
SCHEDULES_ENABLED=0 enqueues nothing; the System page shows each schedule's last run and
the health log."""

from __future__ import annotations

import calendar
import json
import re
import time
from collections import Counter

import pytest
from conftest import apply_env, wait_for
from helpers import panel_app, signed_in

import tests.schedules_for_tests  # noqa: F401  (the 2-second test-mark schedule)
from backstop import keys, producers, registry, schedules
from backstop.contracts import QUEUES
from backstop.hueys import huey_for
from backstop.runner import WorkerProcess
from tests.schedules_for_tests import MARKS, TEST_MARK

FAST = {"rate_limit": 0, "backoff_jitter": 0, "backoff_base": 0.05}
SCHEDULED = {"SCHEDULES_ENABLED": "1",
             "BACKSTOP_TASK_MODULES": "tests.jobs_for_tests,tests.schedules_for_tests"}


def scheduled_ids(r, name: str) -> list[str]:
    prefix = keys.job(f"sched-{name}-" if name else "sched-")
    return sorted(key[len(keys.job("")):] for key in r.scan_iter(match=prefix + "*"))


def starts(r) -> Counter:
    """How many times each test-mark job started (its handler marks each start)."""
    return Counter(mark.split(":")[0] for mark in r.lrange(MARKS, 0, -1)
                   if mark.split(":")[2] == "start")


def run_waiting(queue: str) -> None:
    """Run every waiting job of a queue once, in this process."""
    worker = WorkerProcess((queue,))
    huey_for(queue).storage.processing_key = keys.processing(worker.id, queue)
    while worker.run_next(queue):
        pass


@pytest.fixture
def enabled(r):
    apply_env(SCHEDULES_ENABLED="1", BACKSTOP_QUEUES=json.dumps({"system": FAST}))
    yield
    apply_env(SCHEDULES_ENABLED="1", BACKSTOP_QUEUES="{}")


def test_three_workers_make_one_job_per_occurrence_and_run_it_once(r, workers):
    began = time.time()
    for _ in range(3):
        workers.start("system", {"system": FAST}, **SCHEDULED)
    wait_for(lambda: len([j for j in scheduled_ids(r, "test-mark")
                          if (registry.get_job(j) or {}).get("state") == "completed"]) >= 4,
             timeout=30, what="four occurrences of test-mark done")
    ids = scheduled_ids(r, "test-mark")
    occurrences = [calendar.timegm(time.strptime(i[-16:], "%Y%m%dT%H%M%SZ")) for i in ids]
    assert all(b - a == 2 for a, b in zip(occurrences, occurrences[1:], strict=False)), ids
    ran = starts(r)
    finished = [i for i in ids if registry.get_job(i)["state"] == "completed"]
    assert all(ran[i] == 1 for i in finished), ran
    assert set(ran) <= set(ids)
    minutes = int(time.time() // 60 - began // 60) + 1  # the minute it began, and each since
    assert 1 <= len(scheduled_ids(r, "health-check")) <= minutes
    note = schedules.recorded(r)["test-mark"]
    assert note["job_id"] == ids[-1] and note["slot"] == occurrences[-1]


def test_schedules_disabled_enqueue_nothing(r, workers):
    workers.start("system", {"system": FAST}, **{**SCHEDULED, "SCHEDULES_ENABLED": "0"})
    wait_for(lambda: r.zcard(keys.workers()), what="the worker's first beat")
    time.sleep(3)
    assert scheduled_ids(r, "") == [] and r.hgetall(keys.schedules()) == {}
    apply_env(SCHEDULES_ENABLED="0")
    try:
        assert schedules.Ticker(QUEUES).tick() == []
    finally:
        apply_env(SCHEDULES_ENABLED="1")
    assert scheduled_ids(r, "") == []


def test_a_missed_stretch_enqueues_only_the_latest_occurrence(r, enabled):
    now = 1_800_000_000.5
    first = schedules.Ticker(("system",))
    assert TEST_MARK.job_id(1_800_000_000) in first.tick(now)
    run_waiting("system")
    # No worker ran for an hour: 1,800 occurrences of test-mark were missed.
    later = now + 3600
    created = schedules.Ticker(("system",)).tick(later)
    assert [i for i in created if "test-mark" in i] == [TEST_MARK.job_id(1_800_003_600)]
    assert len(scheduled_ids(r, "test-mark")) == 2
    assert first.tick(later) == [] and schedules.Ticker(("system",)).tick(later) == []
    assert schedules.recorded_slots(r)["test-mark"] == 1_800_003_600


def test_while_an_occurrence_waits_later_ones_are_skipped_unless_their_payload_matters(
        r, enabled):
    now = 1_800_000_000.5  # 2027-01-15 08:00:00 UTC
    schedules.Ticker(QUEUES).tick(now)  # the system queue is paused: nothing runs
    later = schedules.Ticker(QUEUES).tick(now + 7200)
    assert later == ["sched-analytics-hourly-20270115T090100Z"]  # its hour is in its payload
    run_waiting("system")
    assert "sched-health-check-20270115T100000Z" in schedules.Ticker(QUEUES).tick(now + 7200)


def test_a_worker_back_after_a_gap_runs_the_missed_occurrence_once(r, workers):
    stale = int(time.time()) - 600
    r.hset(keys.schedules(), "test-mark", json.dumps(
        {"slot": stale - stale % 2, "job_id": "sched-test-mark-old", "enqueued_at": stale}))
    workers.start("system", {"system": FAST}, **SCHEDULED)
    wait_for(lambda: starts(r), what="the first test-mark run")
    time.sleep(0.5)
    assert len(scheduled_ids(r, "test-mark")) <= 2  # the latest, and maybe the next


def test_a_worker_enqueues_only_for_the_queues_it_consumes(r, enabled):
    assert schedules.Ticker(("email",)).tick() == []
    created = schedules.Ticker(("analytics",)).tick()
    assert {registry.get_job(i)["job"] for i in created} == {
        "analytics.snapshot.hourly", "analytics.aggregate.daily"}


def test_the_scheduled_jobs_payloads_follow_their_occurrence(r, enabled):
    schedules.Ticker(QUEUES).tick(1_800_003_601.0)  # 2027-01-15 09:00:01 UTC
    jobs = {j["job"]: j for j in registry.get_jobs(scheduled_ids(r, ""))}
    assert jobs["analytics.snapshot.hourly"]["id"] == "sched-analytics-hourly-20270115T080100Z"
    assert jobs["analytics.snapshot.hourly"]["payload"] == {"hour": "2027-01-15T08:00:00Z"}
    assert jobs["analytics.aggregate.daily"]["id"] == "sched-analytics-daily-20270115T000500Z"
    assert jobs["analytics.aggregate.daily"]["payload"] == {"day": "2027-01-14"}
    assert jobs["system.index.rebuild"]["payload"] == {"target": "retention"}
    assert jobs["system.health.check"]["id"] == "sched-health-check-20270115T090000Z"


def test_a_bad_schedule_is_refused_when_added(r):
    with pytest.raises(ValueError, match="name"):
        schedules.add(schedules.Schedule("Bad Name", "test.work", 60))
    with pytest.raises(ValueError, match="every"):
        schedules.add(schedules.Schedule("zero", "test.work", 0))
    with pytest.raises(ValueError, match="at"):
        schedules.add(schedules.Schedule("late", "test.work", 60, at=60))
    with pytest.raises(Exception, match="seconds"):
        schedules.add(schedules.Schedule("bad-payload", "test.work", 60,
                                         payload={"seconds": -1}))
    assert {"zero", "late", "bad-payload"}.isdisjoint(schedules.SCHEDULES)


# ---- the System page ----
@pytest.fixture
def failing_schedule():
    schedules.add(schedules.Schedule("test-fail", "test.fail", 60, title="Test failure"))
    yield
    schedules.SCHEDULES.pop("test-fail")


def test_the_system_page_lists_each_schedule_with_its_last_run_and_result(
        r, enabled, failing_schedule):
    apply_env(BACKSTOP_QUEUES=json.dumps({"system": {**FAST, "attempts": 1}}))
    schedules.Ticker(QUEUES).tick()
    run_waiting("system")
    run_waiting("analytics")
    client = signed_in(panel_app(), "vera")
    page = client.get("/system").get_data(as_text=True)
    section = page[page.index('id="schedules"'):page.index('id="health-log"')]
    for title in ("Health check", "Hourly analytics snapshot", "Daily analytics aggregate",
                  "Retention and DLQ maintenance", "Test mark"):
        assert title in section, title
    for name, job_id in schedules_ids(r):
        assert f'href="/jobs/{job_id}"' in section, name
    assert "every minute" in section and "hourly at minute 01" in section
    assert "daily at 00:05 UTC" in section and "every 5 minutes" in section
    assert "every 2 seconds" in section
    assert section.count('class="badge completed"') == 5
    assert 'class="badge dead"' in section and "ValueError: order sched-test-fail-" in section
    assert re.search(r"status: (healthy|degraded|unhealthy), score: \d+, issues: \d+", section)
    assert "audit_trimmed: 0" in section
    partial = client.get("/system?partial=schedules").get_data(as_text=True)
    assert partial.lstrip().startswith('<section id="schedules"')
    assert "Test failure" in partial


def schedules_ids(r) -> list[tuple[str, str]]:
    return [(name, note["job_id"]) for name, note in schedules.recorded(r).items()]


def test_the_system_page_shows_the_health_log_newest_first(r, enabled):
    issue = {"severity": "critical", "code": "no_workers", "queue": "email",
             "message": "3 jobs wait on email and no live worker consumes it",
             "recommendation": "Start a worker for email"}
    r.lpush(keys.health_log(), json.dumps({"status": "unhealthy", "score": 40,
                                           "checked_at": time.time() - 120, "issues": [issue]}))
    producers.enqueue("system.health.check", {}, job_id="check-1")
    run_waiting("system")  # a real entry, between the two
    r.lpush(keys.health_log(), json.dumps({"status": "healthy", "checked_at": time.time(),
                                           "score": 97, "issues": []}))
    client = signed_in(panel_app(), "vera")
    page = client.get("/system?partial=health_log").get_data(as_text=True)
    assert page.lstrip().startswith('<section id="health-log"')
    statuses = re.findall(r'data-status="(\w+)"', page)
    assert len(statuses) == 3 and statuses[0] == "healthy" and statuses[2] == "unhealthy"
    assert "score 97" in page and "no issues" in page and "score 40" in page
    last = page[page.rindex('data-status="unhealthy"'):]
    assert '<bdi title="Start a worker for email">3 jobs wait on email' in last
    assert 'class="badge error">critical<' in last
    r.delete(keys.health_log())
    empty = client.get("/system?partial=health_log").get_data(as_text=True)
    assert "No health check has run yet" in empty


def test_the_system_page_says_when_schedules_are_off(r):
    apply_env(SCHEDULES_ENABLED="0")
    try:
        client = signed_in(panel_app(), "vera")
        page = client.get("/system").get_data(as_text=True)
    finally:
        apply_env(SCHEDULES_ENABLED="1")
    assert "Scheduled jobs are off (SCHEDULES_ENABLED=0)" in page
    assert page.count("never") >= 5


def test_the_api_lists_the_schedules_and_the_health_log(r, enabled):
    from backstop import tokens

    schedules.Ticker(("system",)).tick()
    run_waiting("system")
    client = panel_app().test_client()
    headers = {"Authorization": f"Bearer {tokens.create('bot', 'viewer')}"}
    listed = client.get("/api/v1/system/schedules", headers=headers).get_json()
    rows = {row["name"]: row for row in listed["schedules"]}
    assert listed["enabled"] is True and rows["health-check"]["every"] == 60
    assert rows["health-check"]["last"]["state"] == "completed"
    assert rows["analytics-daily"]["last"] is None  # no analytics worker here
    log = client.get("/api/v1/system/health-log?limit=5", headers=headers).get_json()
    assert len(log["items"]) == 1 and log["items"][0]["status"] in (
        "healthy", "degraded", "unhealthy")
    assert client.get("/api/v1/system/schedules").status_code == 401
