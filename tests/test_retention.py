"""Retention (backstop.retention, the scheduled system.index.rebuild {"target": "retention"}):
the audit log cut to its cap and still verifiable, the DLQ archived past its cap, old DLQ hour
counts dropped, finished jobs trimmed exactly to their keep, and cancelled jobs trimmed only
once none of their messages can still be queued."""

from __future__ import annotations

import json
import os
import time

import pytest
from conftest import apply_env
from dlq_helpers import make_dead

import tests.jobs_for_tests  # noqa: F401  (the jobs these tests run)
from backstop import audit, dlq, keys, producers, registry, retention
from backstop.hueys import huey_for
from backstop.runner import WorkerProcess

KEEP = {"rate_limit": 0, "attempts": 1, "keep_completed": 3, "keep_failed": 2}


@pytest.fixture
def settings_back():
    """Put back the settings a test changes."""
    yield
    for name in ("AUDIT_MAX_ENTRIES", "DLQ_MAX_RECORDS", "DLQ_ARCHIVE_DIR"):
        os.environ.pop(name, None)
    apply_env(BACKSTOP_QUEUES="{}")


def run_system(config: dict) -> None:
    apply_env(BACKSTOP_QUEUES=json.dumps({"system": config}))
    worker = WorkerProcess(("system",))
    huey_for("system").storage.processing_key = keys.processing(worker.id, "system")
    while worker.run_next("system"):
        pass


def test_the_retention_job_cuts_the_audit_log_to_its_cap_and_it_still_verifies(
        r, settings_back):
    for n in range(30):
        audit.record("olga", "queue.pause", f"q{n}")
    apply_env(AUDIT_MAX_ENTRIES="10")
    producers.enqueue("system.index.rebuild", {"target": "retention"}, job_id="keep-tidy")
    run_system(KEEP)
    job = registry.get_job("keep-tidy")
    assert job["state"] == "completed", job.get("error")
    assert job["result"]["retention"]["audit_trimmed"] == 20
    assert r.xlen(keys.audit_log()) == 10
    assert audit.verify() == audit.Verification(True, 10, [], trimmed=20)


def test_the_dlq_past_its_cap_is_archived_and_its_alert_raised(r, tmp_path, settings_back):
    make_dead([{"cause": 2, "n": n} for n in range(5)])
    apply_env(DLQ_MAX_RECORDS="4", DLQ_ARCHIVE_DIR=str(tmp_path))
    done = retention.run()
    assert (done["dlq_archived"], done["dlq_alert_level"]) == (1, 95)
    assert dlq.count() == 4 and len(list(tmp_path.glob("*.jsonl"))) == 1


def test_old_dlq_hour_counts_are_dropped_and_recent_ones_kept(r):
    now = time.time()
    recent, old = dlq.hour_bucket(now - 3600), dlq.hour_bucket(now - 31 * 86400)
    r.hset(keys.dlq_hours(), mapping={recent: 4, old: 9, dlq.hour_bucket(now - 40 * 86400): 1})
    assert retention.run(now=now)["dlq_hours_dropped"] == 2
    assert r.hgetall(keys.dlq_hours()) == {recent: "4"}
    assert dlq.trends(6)["total"] == 4


def test_finished_jobs_are_trimmed_exactly_to_their_keep(r, settings_back):
    done = producers.enqueue_many([{"job": "test.work", "payload": {}} for _ in range(8)])
    dead = producers.enqueue_many([{"job": "test.fail", "payload": {}} for _ in range(5)])
    run_system(KEEP)  # fewer than 16 outcomes: FINISH has not trimmed yet
    assert r.zcard(keys.state_index("system", "completed")) == 8
    trimmed = retention.run()["jobs_trimmed"]
    assert trimmed == {"system.completed": 5, "system.dead": 3}
    assert [j is not None for j in registry.get_jobs(done)] == [False] * 5 + [True] * 3
    assert [j is not None for j in registry.get_jobs(dead)] == [False] * 3 + [True] * 2
    assert not r.exists(keys.timeline(done[0])) and r.exists(keys.timeline(done[-1]))
    assert retention.run()["jobs_trimmed"] == {}


def test_cancelled_jobs_are_trimmed_only_once_none_of_their_messages_can_be_queued(
        r, settings_back):
    apply_env(BACKSTOP_QUEUES=json.dumps({"email": KEEP}))
    ids = producers.enqueue_many([{"job": "email.send", "payload": {
        "to": ["a@example.com"], "subject": "s", "text": "t"}} for _ in range(5)])
    assert all(registry.cancel_job(i) for i in ids)
    later = time.time() + 2 * retention.CANCELLED_GRACE
    # Their messages still wait in the queue: a message without its record would run.
    assert retention.run(now=later)["jobs_trimmed"] == {}
    huey_for("email").storage.conn.delete(huey_for("email").storage.queue_key)  # skipped
    assert retention.run()["jobs_trimmed"] == {}  # cancelled under an hour ago
    assert retention.run(now=later)["jobs_trimmed"] == {"email.cancelled": 2}
    assert [j is not None for j in registry.get_jobs(ids)] == [False] * 2 + [True] * 3
