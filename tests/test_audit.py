"""The audit log against a real Redis: round trips, filters, paging, one chain under
concurrent writers, and every kind of tampering found at the right entry."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from conftest import ROOT, wait_for

from backstop import audit, keys


def record_many(r, n: int, **fields) -> list[str]:
    return [audit.record("alice", "dlq.replay", f"job-{i}", r=r, **fields) for i in range(n)]


def rewrite(r, change) -> None:
    """Rewrite the whole stream under the same ids, each entry's fields through change."""
    rows = r.xrange(keys.audit_log())
    r.delete(keys.audit_log())
    for position, (entry_id, fields) in enumerate(rows):
        r.xadd(keys.audit_log(), change(position, dict(fields)), id=entry_id)


def test_an_entry_round_trips_with_every_field(r):
    before = time.time()
    entry_id = audit.record("alice", "dlq.replay", "job-1", summary={"queue": "email", "n": 3},
                            ip="10.0.0.1", user_agent="Firefox/125", result="ok", r=r)
    [item] = audit.entries(r=r).items
    assert item == {"id": entry_id, "t": item["t"], "actor": "alice", "action": "dlq.replay",
                    "target": "job-1", "summary": {"queue": "email", "n": 3},
                    "ip": "10.0.0.1", "user_agent": "Firefox/125", "result": "ok"}
    assert before <= item["t"] <= time.time()
    stored = r.xrange(keys.audit_log())[0][1]
    assert stored["prev"] == audit.GENESIS and len(stored["mac"]) == 64
    assert r.get(keys.audit_head()) == stored["mac"]


def test_the_default_client_is_used_when_none_is_given(r):
    entry_id = audit.record("system", "queue.pause", "email", summary="paused by schedule")
    assert audit.entries().items[0]["id"] == entry_id
    assert audit.entries().items[0]["summary"] == "paused by schedule"
    assert audit.verify().ok


def test_entries_filter_by_actor_action_prefix_and_target(r):
    audit.record("alice", "dlq.replay", "job-1", r=r)
    audit.record("bob", "dlq.delete", "job-2", r=r)
    audit.record("alice", "auth.login", r=r)
    audit.record("alice", "dlqx.other", "job-1", r=r)

    def actions(**filters) -> list[str]:
        return [e["action"] for e in audit.entries(r=r, **filters).items]

    assert actions(actor="alice") == ["dlqx.other", "auth.login", "dlq.replay"]
    assert actions(action="dlq.") == ["dlq.delete", "dlq.replay"]
    assert actions(action="dlq") == []  # without the dot it is an exact name
    assert actions(action="auth.login") == ["auth.login"]
    assert actions(target="job-1") == ["dlqx.other", "dlq.replay"]
    assert actions(actor="alice", action="dlq.", target="job-1") == ["dlq.replay"]


def redis_clock_ms(r) -> int:
    seconds, micros = r.time()
    return seconds * 1000 + micros // 1000


def test_entries_filter_by_time_range(r):
    old_ms = int(audit.record("alice", "old", r=r).split("-")[0])
    middle_ms = old_ms + 1
    # Entry ids are Redis's clock: "new" is written once that clock has passed the middle.
    wait_for(lambda: redis_clock_ms(r) > middle_ms, timeout=5, interval=0.001,
             what="Redis's clock to pass the middle millisecond")
    new_ms = int(audit.record("alice", "new", r=r).split("-")[0])
    assert old_ms < middle_ms < new_ms
    middle = (middle_ms + 0.5) / 1000  # inside the middle millisecond, whatever the rounding
    assert [e["action"] for e in audit.entries(since=middle, r=r).items] == ["new"]
    assert [e["action"] for e in audit.entries(until=middle, r=r).items] == ["old"]
    assert audit.entries(since=middle, until=middle, r=r).items == []


def test_paging_walks_every_entry_once_newest_first(r, monkeypatch):
    monkeypatch.setattr(audit, "SCAN_CHUNK", 7)  # pages and chunks end in different places
    ids = record_many(r, 25)
    seen, before, sizes = [], None, []
    while True:
        page = audit.entries(before=before, limit=10, r=r)
        seen += [e["id"] for e in page.items]
        sizes.append(len(page.items))
        if page.next_before is None:
            break
        before = page.next_before
    assert seen == ids[::-1]
    assert sizes == [10, 10, 5]


def test_paging_with_until_and_before_uses_the_earlier_bound(r):
    ids = record_many(r, 3)
    page = audit.entries(before=ids[2], until=time.time() + 60, r=r)
    assert [e["id"] for e in page.items] == [ids[1], ids[0]]


def test_a_scan_stops_at_its_limit_and_says_where_to_go_on(r, monkeypatch):
    monkeypatch.setattr(audit, "SCAN_LIMIT", 30)
    monkeypatch.setattr(audit, "SCAN_CHUNK", 10)
    wanted = audit.record("bob", "dlq.delete", r=r)
    record_many(r, 50)
    first = audit.entries(actor="bob", r=r)
    assert first.items == [] and first.next_before is not None
    second = audit.entries(actor="bob", before=first.next_before, r=r)
    assert [e["id"] for e in second.items] == [wanted] and second.next_before is None


def test_bad_paging_arguments_are_refused(r):
    with pytest.raises(ValueError, match="stream id"):
        audit.entries(before="yesterday", r=r)
    with pytest.raises(ValueError, match="limit"):
        audit.entries(limit=0, r=r)


def test_a_dict_summary_is_stored_redacted(r):
    audit.record("alice", "users.create", "bob",
                 summary={"user": "bob", "password": "x", "db": "redis://u:hunter2@h/0"}, r=r)
    raw = r.xrange(keys.audit_log())[0][1]["summary"]
    assert "hunter2" not in raw and '"x"' not in raw and "[REDACTED]" in raw
    summary = audit.entries(r=r).items[0]["summary"]
    assert summary == {"user": "bob", "password": "[REDACTED]", "db": "redis://u:[REDACTED]@h/0"}
    assert audit.verify(r).ok


def test_long_summaries_are_cut_to_2000_characters(r):
    audit.record("alice", "dlq.edit", summary="x" * 5000, r=r)
    audit.record("alice", "dlq.edit", summary={"payload": "y" * 5000}, r=r)
    as_dict, as_text = (e["summary"] for e in audit.entries(r=r).items)
    assert len(as_text) == 2000 and as_text.endswith("…")
    assert isinstance(as_dict, str) and len(as_dict) == 2000
    assert as_dict.startswith('{"payload":"yyy')


def test_text_that_is_not_valid_unicode_is_recorded_not_raised(r):
    audit.record("\udcff", "dlq.replay", "job\udcfe", summary={"k": "\udcff"},
                 user_agent="u" * 9000, r=r)
    [item] = audit.entries(r=r).items
    assert item["actor"] == "?" and item["summary"] == {"k": "?"}
    assert len(item["user_agent"]) == audit.FIELD_LIMIT
    assert audit.verify(r).ok


def test_four_threads_of_fifty_records_form_one_verified_chain(r):
    def write(worker: int) -> list[str]:
        return [audit.record(f"w{worker}", "test.write", str(i)) for i in range(50)]

    with ThreadPoolExecutor(4) as pool:
        ids = [i for batch in pool.map(write, range(4)) for i in batch]
    assert len(set(ids)) == 200
    result = audit.verify(r)
    assert (result.ok, result.checked, result.problems) == (True, 200, [])


def test_processes_and_threads_writing_at_once_form_one_chain(r, redis_url):
    code = ("from backstop import audit\n"
            "for i in range(50): audit.record('proc', 'test.write', str(i))\n")
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env) for _ in range(2)]
    threads = [threading.Thread(target=record_many, args=(r, 50)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [proc.wait(60) for proc in procs] == [0, 0]
    result = audit.verify(r)
    assert (result.ok, result.checked) == (True, 200)


def test_verify_during_appends_reports_no_false_problems(r):
    writer = threading.Thread(target=record_many, args=(r, 300))
    writer.start()
    results = []
    while writer.is_alive():
        results.append(audit.verify(r))
    writer.join()
    assert results and all(v.ok for v in results), [v.problems for v in results if not v.ok]
    assert audit.verify(r).checked == 300


def test_an_empty_log_verifies(r):
    assert audit.verify(r) == audit.Verification(True, 0, [])


def test_rewriting_the_stream_unchanged_still_verifies(r):
    record_many(r, 5)
    rewrite(r, lambda position, fields: fields)
    assert audit.verify(r).ok


def test_an_edited_field_is_found_at_its_entry(r):
    ids = record_many(r, 5)

    def edit(position, fields):
        return {**fields, "actor": "mallory"} if position == 2 else fields

    rewrite(r, edit)
    result = audit.verify(r)
    assert not result.ok and result.checked == 5
    assert result.problems == [{"id": ids[2], "reason": audit.ALTERED}]


def test_an_entry_edited_into_invalid_utf8_is_found_and_still_listed(r, redis_url):
    ids = record_many(r, 3)
    raw = redis.Redis.from_url(redis_url)
    rows = raw.xrange(keys.audit_log())
    raw.delete(keys.audit_log())
    for position, (entry_id, fields) in enumerate(rows):
        raw.xadd(keys.audit_log(), {**fields, b"ip": b"\xff"} if position == 1 else fields,
                 id=entry_id)
    assert audit.verify(r).problems == [{"id": ids[1], "reason": audit.ALTERED}]
    assert audit.entries(r=r).items[1]["ip"] == "\ufffd"


def test_an_entry_deleted_from_the_middle_breaks_the_chain_at_the_next(r):
    ids = record_many(r, 5)
    r.xdel(keys.audit_log(), ids[2])
    result = audit.verify(r)
    assert result.problems == [{"id": ids[3], "reason": audit.CHAIN_BROKEN}]
    assert result.checked == 4


def test_the_first_entry_deleted_is_found(r):
    ids = record_many(r, 3)
    r.xdel(keys.audit_log(), ids[0])
    assert audit.verify(r).problems == [{"id": ids[1], "reason": audit.CHAIN_BROKEN}]


def test_the_last_entry_deleted_is_found_by_the_head(r):
    ids = record_many(r, 5)
    r.xdel(keys.audit_log(), ids[4])
    result = audit.verify(r)
    assert result.problems == [{"id": ids[3], "reason": audit.HEAD_MISMATCH}]


def test_swapped_entries_are_found(r):
    ids = record_many(r, 4)
    rows = [fields for _, fields in r.xrange(keys.audit_log())]
    rows[1], rows[2] = rows[2], rows[1]
    rewrite(r, lambda position, fields: rows[position])
    problems = audit.verify(r).problems
    assert problems == [{"id": ids[1], "reason": audit.CHAIN_BROKEN},
                        {"id": ids[2], "reason": audit.CHAIN_BROKEN},
                        {"id": ids[3], "reason": audit.CHAIN_BROKEN}]


def test_an_append_after_the_tail_was_cut_is_still_found(r):
    ids = record_many(r, 3)
    r.xdel(keys.audit_log(), ids[2])
    later = audit.record("alice", "dlq.replay", r=r)
    assert audit.verify(r).problems == [{"id": later, "reason": audit.CHAIN_BROKEN}]


def test_a_paging_id_with_a_line_break_is_refused(r):
    audit.record("olga", "queue.pause", "email")
    with pytest.raises(ValueError):
        audit.entries(before="1-1\n")


# ---- the cap: retention trims the oldest entries, the rest still verifies ----
def test_trimming_keeps_the_newest_entries_and_the_rest_still_verifies(r):
    ids = record_many(r, 30)
    assert audit.trim(12, r=r) == 18
    assert [i for i, _ in r.xrange(keys.audit_log())] == ids[18:]
    assert audit.verify(r) == audit.Verification(True, 12, [], trimmed=18)
    later = record_many(r, 3)
    assert audit.trim(12, r=r) == 3 and audit.trim(12, r=r) == 0
    assert audit.verify(r) == audit.Verification(True, 12, [], trimmed=21)
    assert audit.entries(r=r).items[0]["id"] == later[-1]


def test_the_cap_comes_from_audit_max_entries_and_works_in_chunks(r):
    from conftest import apply_env

    record_many(r, 2300)
    apply_env(AUDIT_MAX_ENTRIES="250")
    try:
        assert audit.trim(r=r) == 2050
    finally:
        os.environ.pop("AUDIT_MAX_ENTRIES")
        apply_env()
    result = audit.verify(r)
    assert (result.ok, result.checked, result.trimmed) == (True, 250, 2050)


def test_after_a_trim_removing_the_oldest_kept_entry_is_still_found(r):
    ids = record_many(r, 10)
    audit.trim(6, r=r)
    r.xdel(keys.audit_log(), ids[4])
    assert audit.verify(r).problems == [{"id": ids[5], "reason": audit.CHAIN_BROKEN}]


def test_an_edit_in_entries_that_retention_trims_stays_reported(r):
    ids = record_many(r, 8)
    rewrite(r, lambda position, fields: {**fields, "actor": "mallory"} if position == 1
            else fields)
    audit.trim(4, r=r)
    result = audit.verify(r)
    assert not result.ok and result.checked == 4 and result.trimmed == 4
    reason = audit.SEEN_WHEN_TRIMMED.format(reason=audit.ALTERED)
    assert result.problems == [{"id": ids[1], "reason": reason}]


def test_verify_while_appends_and_trims_run_reports_no_false_problems(r):
    record_many(r, 200)
    writer = threading.Thread(target=record_many, args=(r, 300))
    writer.start()

    def trim_while_writing():
        while writer.is_alive():
            audit.trim(20, r=r)

    trimmer = threading.Thread(target=trim_while_writing)
    trimmer.start()
    results = []
    while writer.is_alive():
        results.append(audit.verify(r))
    writer.join()
    trimmer.join()
    assert results and all(v.ok for v in results), [v.problems for v in results if not v.ok]
    audit.trim(20, r=r)
    assert audit.verify(r) == audit.Verification(True, 20, [], trimmed=480)


def test_flask_audit_verify_says_how_many_entries_retention_trimmed(r, cli):
    record_many(r, 5)
    audit.trim(2, r=r)
    result = cli("audit", "verify")
    assert result.exit_code == 0
    assert result.output.strip() == "ok: 2 entries checked (3 older ones trimmed by retention)"
