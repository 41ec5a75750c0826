"""The health log (backstop.system_log): entries in Redis, kept on this host's SQLite file
while Redis is down and flushed in time order when it returns, trimmed after 7 days, read
by level and time, and outbox acceptances counted one entry per minute."""

from __future__ import annotations

import json
import threading
import time

import pytest
from chaos import OwnRedis
from conftest import apply_env

from backstop import keys, local_store, retention, system_log
from backstop.contracts import JOBS
from backstop.jobs import HANDLERS, JobContext, load_handlers
from backstop.system_log import Tally, entries, flush_local, local_count, outbox_message, write

DAY = 86400


@pytest.fixture
def local(r, tmp_path):
    """A SQLite file of this test's own (OUTBOX_PATH)."""
    apply_env(OUTBOX_PATH=str(tmp_path / "outbox.sqlite3"))
    yield tmp_path / "outbox.sqlite3"
    local_store.forget()


def someone_elses(r, level: str, message: str, t: float) -> None:
    """An entry another host wrote into Redis itself."""
    member = system_log.serialized(system_log.make_entry(level, message, {}, t=t))
    r.zadd(keys.system_log(), {member: t})
    r.zadd(keys.system_log_level(level), {member: t})


def messages(rows: list[dict]) -> list[str]:
    return [row["message"] for row in rows]


def test_an_entry_is_json_in_a_sorted_set_scored_by_its_time(r, local):
    before = time.time()
    write("warning", "breaker opened", failures=3)
    [(member, score)] = r.zrange(keys.system_log(), 0, -1, withscores=True)
    entry = json.loads(member)
    assert set(entry) == {"id", "t", "level", "message", "meta", "host", "pid"}
    assert (entry["level"], entry["message"], entry["meta"]) == ("WARNING", "breaker opened",
                                                                 {"failures": 3})
    assert before <= entry["t"] == score <= time.time() and len(entry["id"]) == 32
    assert member == json.dumps(entry, sort_keys=True, separators=(",", ":"))
    assert r.zrange(keys.system_log_level("WARNING"), 0, -1) == [member]
    assert local_count() == 0


def test_local_true_writes_to_the_sqlite_file_without_trying_redis(r, local, monkeypatch):
    monkeypatch.setattr(system_log, "client", lambda: pytest.fail("Redis was asked"))
    write("ERROR", "Redis unreachable", local=True, since=1.5)
    assert local_count() == 1 and r.zcard(keys.system_log()) == 0


def test_write_never_raises_even_when_neither_redis_nor_the_disk_takes_it(r, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    apply_env(REDIS_URL="redis://127.0.0.1:1/0", OUTBOX_PATH=str(blocked / "x.sqlite3"))
    write("INFO", "lost, but no exception")
    write("bogus", "an unknown level is written as INFO")


def test_entries_written_while_redis_is_down_are_flushed_in_time_order(tmp_path):
    own = OwnRedis(tmp_path / "redis")
    try:
        apply_env(REDIS_URL=own.url, OUTBOX_PATH=str(tmp_path / "outbox.sqlite3"))
        own.stop()
        for level, message in (("WARNING", "fallback started"), ("ERROR", "drain failed"),
                               ("SWITCH", "mode switched")):
            write(level, message)
            time.sleep(0.01)
        times = [t for (t,) in local_store.connection().execute(
            "SELECT t FROM system_log ORDER BY seq")]
        assert len(times) == 3 and times == sorted(times)
        with pytest.raises(Exception):  # noqa: B017  (any Redis error; the rows stay)
            flush_local()
        assert local_count() == 3
        own.restart()
        someone_elses(own.client, "INFO", "other host early", times[0] - 1)
        someone_elses(own.client, "INFO", "other host between", (times[1] + times[2]) / 2)
        someone_elses(own.client, "INFO", "other host later", time.time() + 1)
        assert flush_local() == 3 and local_count() == 0
        assert messages(entries()) == ["other host later", "mode switched", "other host between",
                                       "drain failed", "fallback started", "other host early"]
        assert messages(entries(level="switch")) == ["mode switched"]
        assert flush_local() == 0 and own.client.zcard(keys.system_log()) == 6
    finally:
        local_store.forget()
        own.stop()


def test_two_processes_flushing_at_once_leave_each_entry_once(r, local):
    total = system_log.FLUSH_BATCH * 2 + 300
    with local_store.transaction() as conn:
        conn.executemany("INSERT INTO system_log (t, entry) VALUES (?, ?)", [
            (entry["t"], system_log.serialized(entry))
            for entry in (system_log.make_entry("INFO", f"kept {n}", {"n": n}, t=1e9 + n)
                          for n in range(total))])
    start, moved = threading.Barrier(3), []

    def flusher():
        start.wait()
        moved.append(flush_local())
        local_store.forget()

    threads = [threading.Thread(target=flusher) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(moved) >= total and local_count() == 0
    assert r.zcard(keys.system_log()) == total == r.zcard(keys.system_log_level("INFO"))
    ns = [json.loads(m)["meta"]["n"] for m in r.zrange(keys.system_log(), 0, -1)]
    assert ns == list(range(total))


def test_entries_older_than_seven_days_are_trimmed_in_redis_and_locally(r, local):
    now = time.time()
    for age, level in ((8 * DAY, "ERROR"), (7 * DAY + 60, "SWITCH"), (6 * DAY, "WARNING"),
                       (60, "INFO")):
        someone_elses(r, level, f"{age // DAY} days old", now - age)
    with local_store.transaction() as conn:
        for age in (8 * DAY, 30):
            entry = system_log.make_entry("INFO", f"local {age // DAY}", {}, t=now - age)
            conn.execute("INSERT INTO system_log (t, entry) VALUES (?, ?)",
                         (entry["t"], system_log.serialized(entry)))
    assert retention.run(now=now)["system_log_trimmed"] == 2
    assert messages(entries(limit=10)) == ["0 days old", "6 days old"]
    assert r.zcard(keys.system_log_level("ERROR")) == r.zcard(keys.system_log_level("SWITCH")) == 0
    assert local_count() == 1
    assert flush_local() == 1 and messages(entries(limit=1)) == ["local 0"]


def test_system_log_days_is_the_window(r, local):
    now = time.time()
    someone_elses(r, "INFO", "two days old", now - 2 * DAY)
    apply_env(SYSTEM_LOG_DAYS="1")
    assert system_log.trim(now) == 1 and entries() == []


def test_entries_filter_by_level_and_time_newest_first(r, local):
    now = time.time()
    for n, level in enumerate(["INFO", "WARNING", "ERROR", "WARNING", "SWITCH"]):
        someone_elses(r, level, f"{level} {n}", now - 100 + n * 10)
    assert messages(entries(level="Warning")) == ["WARNING 3", "WARNING 1"]
    assert messages(entries(since=now - 80)) == ["SWITCH 4", "WARNING 3", "ERROR 2"]
    assert messages(entries(level="warning", since=now - 80)) == ["WARNING 3"]
    assert messages(entries(limit=2)) == ["SWITCH 4", "WARNING 3"]
    assert messages(entries(level="")) == messages(entries())
    with pytest.raises(ValueError, match="INFO, WARNING, ERROR, SWITCH"):
        entries(level="debug")


def test_a_minute_of_outbox_acceptances_is_one_entry(r, local):
    tally, minute = Tally(outbox_message), 1_700_000_040  # 22:14 UTC
    for n in range(900):
        tally.add(now=minute + n / 20)
    tally.flush(now=minute + 59)  # the minute has not ended: nothing yet
    assert entries() == []
    tally.add(3, now=minute + 60)  # the next minute: the first is written
    [entry] = entries()
    assert entry["message"] == "900 jobs accepted into the outbox in the minute from 22:14 UTC"
    assert (entry["level"], entry["meta"]) == ("INFO", {"count": 900, "minute": minute})
    tally.flush(now=minute + 200)
    assert messages(entries()) == [
        "3 jobs accepted into the outbox in the minute from 22:15 UTC", entry["message"]]
    tally.flush(now=minute + 300)
    assert len(entries()) == 2


def test_the_tally_counts_every_thread_and_flushes_on_demand(r, local):
    def accept():
        for _ in range(500):
            system_log.count_outbox_acceptance()

    system_log.flush_tally(force=True)  # nothing counted: nothing written
    assert entries() == []
    threads = [threading.Thread(target=accept) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    system_log.flush_tally(force=True)
    counts = [entry["meta"]["count"] for entry in entries()]
    assert sum(counts) == 2000 and len(counts) <= 2  # 2 if the minute turned meanwhile


def test_a_tally_filled_during_an_outage_is_kept_locally(r, local):
    apply_env(REDIS_URL="redis://127.0.0.1:1/0")
    tally = Tally(outbox_message)
    tally.add(now=120.0)
    tally.flush(now=180.0)
    assert local_count() == 1
    assert outbox_message(1, "00:02") == "1 job accepted into the outbox in the minute " \
                                         "from 00:02 UTC"


def health_check(r):
    load_handlers()
    ctx = JobContext(job_id="check", job_name="system.health.check", queue="system",
                     attempt=1, max_attempts=3, deadline=time.monotonic() + 10, redis=r)
    payload = JOBS["system.health.check"].model.model_validate({})
    return HANDLERS["system.health.check"](payload, ctx)


def test_the_health_check_logs_each_change_of_the_overall_status(r, local):
    r.zadd(keys.state_index("email", "waiting"), {"a": 1})  # waiting since 1970, no worker
    r.lpush(keys.health_log(), "not json")
    assert health_check(r)["status"] == "unhealthy"
    [entry] = entries()
    assert entry["level"] == "ERROR" and entry["meta"]["status"] == "unhealthy"
    assert entry["message"].startswith("Health changed from healthy to unhealthy (score ")
    assert "no_workers" in entry["meta"]["issues"]
    health_check(r)
    assert len(entries()) == 1  # unchanged: nothing new
    r.delete(keys.state_index("email", "waiting"))
    assert health_check(r)["status"] == "healthy"
    assert [(e["level"], e["meta"]["previous"]) for e in entries()][0] == ("INFO", "unhealthy")
    r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        assert health_check(r)["status"] == "degraded"
    finally:
        r.config_set("maxmemory-policy", "noeviction")
    assert [e["level"] for e in entries()] == ["WARNING", "INFO", "ERROR"]
    assert r.llen(keys.health_log()) == 5  # the checks' own log goes on as before
