"""Dead-letter records against a real Redis: write-time indexes, filters, search, paging,
fingerprints, analytics, trends, rebuild and capacity."""

from __future__ import annotations

import json
import os
import stat
import time

from conftest import apply_env
from dlq_helpers import make_dead

from backstop import dlq, dlq_maintenance, keys, registry
from backstop.dlq import Filters
from backstop.replay import delete


def test_a_final_failure_leaves_a_complete_redacted_record(r):
    [job_id] = make_dead([{"cause": 1, "n": 7, "api_token": "tok-secret-123",
                           "note": "see https://bob:hunter2@example.com/x"}])
    record = dlq.detail(job_id)
    assert record["error_type"] == "ValueError" and record["attempts"] == 1
    assert record["error_message"] == "order 7 could not be charged: card 4007 declined"
    assert "Traceback" in record["stack"] and "_charge" in record["stack"]
    assert record["payload"]["api_token"] == "[REDACTED]"
    assert "hunter2" not in json.dumps(record) and "tok-secret-123" not in json.dumps(record)
    assert record["first_failed_at"] <= record["last_failed_at"]
    assert record["status"] == "open" and record["replay_count"] == 0
    assert record["lineage"] == [] and record["original_job_id"] == job_id
    assert registry.get_job(job_id)["state"] == "dead"


def test_three_root_causes_collapse_into_three_fingerprints(r):
    make_dead([{"cause": 1 + n % 3, "n": n} for n in range(1000)])
    groups = dlq.fingerprints()
    assert len(groups) == 3
    assert sorted(g["count"] for g in groups) == [333, 333, 334]
    assert {g["error_type"] for g in groups} == {"ValueError", "KeyError", "TimeoutError"}
    for group in groups:
        assert group["first_seen"] <= group["last_seen"]
        assert sum(h["count"] for h in group["hourly"]) == group["count"]
        flt = Filters(fingerprint=group["fingerprint"])
        assert dlq.count_matching(flt) == group["count"]


def test_filters_use_indexes_and_compose(r):
    make_dead([{"cause": 1 + n % 3, "n": n} for n in range(30)])
    make_dead([{}], job="test.fail")
    assert dlq.count_matching(Filters(job="test.fail")) == 1
    assert dlq.count_matching(Filters(error_type="KeyError")) == 10
    both = dlq.page(Filters(job="test.flaky", error_type="ValueError"))
    assert len(both.items) == 10 and all(i["job"] == "test.flaky" for i in both.items)
    assert dlq.count_matching(Filters(queue="system")) == 31
    assert dlq.count_matching(Filters(queue="email")) == 0
    future = time.time() + 60
    assert dlq.count_matching(Filters(since=future)) == 0
    assert dlq.count_matching(Filters(until=future, min_replays=0, max_replays=0)) == 31


def test_search_finds_ids_payload_and_error_text(r):
    ids = make_dead([{"cause": 3, "n": n, "note": f"invoice INV-{n}"} for n in range(20)])
    assert [i["id"] for i in dlq.page(Filters(q="INV-17")).items] == [ids[17]]
    assert len(dlq.page(Filters(q="timed out after 5 ms")).items) == 1
    assert [i["id"] for i in dlq.page(Filters(q=ids[3])).items] == [ids[3]]


def test_paging_with_cursors_returns_everything_once_newest_first(r):
    ids = make_dead([{"cause": 2, "n": n} for n in range(45)])
    seen, cursor = [], None
    while True:
        page = dlq.page(Filters(), cursor=cursor, limit=10)
        seen += [i["id"] for i in page.items]
        cursor = page.next_cursor
        if not cursor:
            break
    assert seen == list(reversed(ids)) and page.total == 45


def test_search_over_budget_returns_a_cursor_to_continue(r):
    make_dead([{"cause": 2, "n": n} for n in range(300)])
    partial = dlq.page(Filters(q="no such text"), budget_seconds=0)
    assert not partial.complete and partial.next_cursor and partial.scanned > 0
    rest = dlq.page(Filters(q="no such text"), cursor=partial.next_cursor)
    assert rest.complete and rest.items == []


def test_analytics_and_trends_come_from_counters(r):
    make_dead([{"cause": 1 + n % 3, "n": n} for n in range(12)])
    make_dead([{}], job="test.fail")
    stats = dlq.analytics()
    assert stats["total"] == 13 and stats["by_queue"] == {"system": 13}
    assert stats["by_job"] == {"test.flaky": 12, "test.fail": 1}
    assert stats["by_error_type"]["ValueError"] == 5
    assert stats["replay_status"] == {"never": 13, "once": 0, "several": 0, "limit": 0}
    assert stats["top_jobs"][0] == {"job": "test.flaky", "count": 12}
    assert 0 <= stats["average_age_seconds"] < 60 and stats["by_status"] == {"open": 13}
    trend = dlq.trends(6)
    assert len(trend["series"]) == 6 and trend["total"] == 13
    assert trend["series"][-1]["count"] == 13 and trend["peak_count"] == 13


def test_delete_updates_every_counter_and_index(r):
    ids = make_dead([{"cause": 1 + n % 3, "n": n} for n in range(9)])
    assert delete([ids[0], ids[1], "missing"]) == 2
    stats = dlq.analytics()
    assert stats["total"] == 7 and sum(stats["by_error_type"].values()) == 7
    assert sum(g["count"] for g in dlq.fingerprints()) == 7
    assert dlq.get_record(ids[0]) is None
    assert dlq.count_matching(Filters(error_type="ValueError")) == 2


def test_rebuild_restores_the_same_indexes_and_counters(r):
    make_dead([{"cause": 1 + n % 3, "n": n} for n in range(40)])
    before = (dlq.analytics(), dlq.fingerprints(), dlq.count_matching(Filters(job="test.flaky")))
    r.delete(keys.dlq_counts(), keys.dlq_index(), keys.dlq_fingerprints())
    assert dlq.analytics()["total"] == 0
    assert dlq_maintenance.rebuild() == {"records": 40}
    after = (dlq.analytics(), dlq.fingerprints(), dlq.count_matching(Filters(job="test.flaky")))
    for field in ("total", "by_queue", "by_job", "by_error_type", "replay_status"):
        assert after[0][field] == before[0][field]
    assert [(g["fingerprint"], g["count"]) for g in after[1]] == \
        [(g["fingerprint"], g["count"]) for g in before[1]]
    assert after[2] == before[2] == 40


def test_capacity_alerts_then_archives_before_dropping(r, tmp_path):
    apply_env(DLQ_MAX_RECORDS="10", DLQ_ARCHIVE_DIR=str(tmp_path))
    try:
        ids = make_dead([{"cause": 2, "n": n} for n in range(12)])
        apply_env(DLQ_MAX_RECORDS="10", DLQ_ARCHIVE_DIR=str(tmp_path))
        assert dlq_maintenance.check_alerts() == 95
        assert dlq_maintenance.archive_overflow() == 2
        assert dlq.count() == 10 and dlq.get_record(ids[0]) is None
        archived = [json.loads(line) for f in tmp_path.glob("*.jsonl") for line in f.open()]
        assert [a["id"] for a in archived] == ids[:2]
        assert archived[0]["payload_sealed"] and archived[0]["error_type"] == "KeyError"
        alerts = [e for e in registry.recent_events(count=10_000) if e["type"] == "alert"]
        assert len(alerts) == 1 and alerts[0]["severity"] == "critical"
        assert dlq_maintenance.check_alerts() == 95
        assert len([e for e in registry.recent_events(count=10_000)
                    if e["type"] == "alert"]) == 1, "one incident, one alert"
    finally:
        apply_env(DLQ_MAX_RECORDS="100000", DLQ_ARCHIVE_DIR="var/dlq-archive")


def test_filters_name_bad_fields():
    try:
        Filters.parse({"min_replays": "9", "since": "yesterday", "colour": "red"})
    except dlq.FilterError as exc:
        assert {e["field"] for e in exc.errors} == {"min_replays", "since", "colour"}
    else:
        raise AssertionError("bad filters must be refused")


def test_written_records_are_indexed_like_final_failures(r):
    error = {"type": "OSError", "message": "disk 3 full", "stack": "", "code": "E3"}
    old = time.time() - 7200
    items = [({"id": f"imp-{n}", "queue": "email", "job": "email.send",
               "payload": {"to": ["a@example.com"]}}, error, 3, old + n / 1000) for n in range(5)]
    assert dlq.write_records(items) == 5
    stats = dlq.analytics()
    assert stats["total"] == 5 and stats["by_code"] == {"E3": 5}
    series = {s["hour"]: s["count"] for s in dlq.trends(6)["series"]}
    assert series[dlq.hour_bucket(old)] == 5 and sum(series.values()) == 5
    assert [i["id"] for i in dlq.page(Filters(queue="email")).items][0] == "imp-4"


def test_archive_files_are_private_whatever_the_umask(r, tmp_path):
    old_umask = os.umask(0o022)
    apply_env(DLQ_MAX_RECORDS="1", DLQ_ARCHIVE_DIR=str(tmp_path / "archive"))
    try:
        make_dead([{"cause": 2, "n": n} for n in range(3)])
        now = time.time()
        assert dlq_maintenance.archive_overflow(now) == 2
        (archive,) = (tmp_path / "archive").glob("*.jsonl")
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "archive").stat().st_mode) == 0o700
        archive.chmod(0o644)  # a day's file made by an older version
        apply_env(DLQ_MAX_RECORDS="0")
        assert dlq_maintenance.archive_overflow(now) == 1
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        assert len(archive.read_text().splitlines()) == 3
    finally:
        os.umask(old_umask)
        apply_env(DLQ_MAX_RECORDS="100000", DLQ_ARCHIVE_DIR="var/dlq-archive")


def test_error_text_is_redacted_where_it_is_written(r):
    hook = ("http://u:PASS1@hooks.example/hook?token=tok2&api_key=key3&sig=sig4&page=2")
    error = f"webhook {hook} answered 401: Authorization: Bearer bearer567 password=pw6"
    [job_id] = make_dead([{"url": hook, "error": error}], job="test.leak")
    secrets = ("PASS1", "tok2", "key3", "sig4", "bearer567", "pw6")
    record = dlq.detail(job_id)
    job = registry.get_job(job_id)
    written = {
        "record": json.dumps(r.hgetall(keys.dlq_record(job_id))),
        "job error": json.dumps(job["error"]),
        "timeline": json.dumps(r.lrange(keys.timeline(job_id), 0, -1)),
        "events": json.dumps(r.xrange(keys.events_stream())),
        "progress": r.hget(keys.job(job_id), "progress_message"),
        "analytics": json.dumps([dlq.analytics(), dlq.fingerprints()]),
    }
    for surface, text in written.items():
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{surface} carries {leaked}"
    assert record["error_type"] == "WebhookError" and "hooks.example/hook" in record["stack"]
    assert "page=2" in record["error_message"] and "answered 401" in record["error_message"]
    assert job["timeline"][-1]["error"] == record["error_message"]
