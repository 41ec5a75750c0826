"""Throttled redrive against a real Redis and real worker processes: the rate holds, progress,
pause, cancel, one redrive per queue, and exact counts across a driver killed mid-redrive.

The driving workers consume only the email queue, so the replays they enqueue stay waiting in
the system queue, where the tests count them.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from conftest import wait_for
from dlq_helpers import make_dead

from backstop import dlq, keys, redrive, registry, replay
from backstop.dlq import DlqError, FilterError, Filters
from backstop.hueys import huey_for

SYSTEM = Filters(queue="system")
# How long a redrive that must stand still is watched: a dozen driver ticks (a worker drives
# every 0.05 s) and two CHECK_SECONDS; at the tests' rates a moving one replays dozens by then.
STILL_SECONDS = 0.6


def seed(n: int) -> list[str]:
    """n dead-letter records of test.fail, made through the worker's real failure path."""
    return make_dead([{}] * n, job="test.fail")


def replay_counts(ids: list[str]) -> list[int]:
    return [record["replay_count"] for record in dlq.get_records(ids)]


def replay_jobs(r, ids: list[str]) -> int:
    """How many first replay jobs exist, linked to their record; asserts there is no second."""
    pipe = r.pipeline(transaction=False)
    for record_id in ids:
        pipe.hget(keys.job(f"{record_id}:replay1"), "dlq_id")
        pipe.exists(keys.job(f"{record_id}:replay2"))
    replies = pipe.execute()
    assert not any(replies[1::2]), "a record was replayed twice"
    return sum(link == record_id for link, record_id in zip(replies[0::2], ids, strict=True))


def replay_times(r, ids: list[str], actor: str) -> list[float]:
    """When each replay by ``actor`` went out, from the records' lineage."""
    pipe = r.pipeline(transaction=False)
    for record_id in ids:
        pipe.hvals(keys.dlq_lineage(record_id))
    items = [json.loads(raw) for values in pipe.execute() for raw in values]
    return sorted(item["replayed_at"] for item in items if item["actor"] == actor)


def busiest_second(times: list[float]) -> int:
    """The most replays in any one-second window."""
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def events(kind_prefix: str = "redrive.") -> list[dict]:
    return [e for e in registry.recent_events(count=50_000) if e["type"].startswith(kind_prefix)]


def wait_status(redrive_id: str, status: str, timeout: float = 30) -> dict:
    return wait_for(lambda: (p := redrive.progress(redrive_id))["status"] == status and p,
                    timeout=timeout, interval=0.1, what=f"redrive {status}")


def test_cancel_midway_counts_exactly_and_never_exceeds_the_rate(r, workers):
    workers.start("email")
    ids = seed(1000)
    began = time.time()
    state = redrive.start("alice", SYSTEM, rate=200)
    rid = state["id"]
    assert (state["status"], state["total"], state["remaining"]) == ("running", 1000, 1000)
    # 400 at 200/s: two seconds of driving, long enough for the rate to show, then cancel.
    wait_for(lambda: redrive.progress(rid)["replayed"] >= 400, what="400 replays")
    assert redrive.cancel(rid, "alice")["status"] == "cancelled"
    wait_for(lambda: not r.sismember(keys.redrives_live(), rid), what="the driver to stop")
    elapsed = time.time() - began
    done = redrive.progress(rid)
    # Nothing moves it now (drivers only tick live redrives): a dozen ticks show that.
    time.sleep(STILL_SECONDS)
    assert redrive.progress(rid) == done, "a cancelled redrive must not move"
    replayed = done["replayed"]
    assert 400 <= replayed < 1000, replayed
    assert replayed <= 200 * elapsed + 200 * redrive.BURST_SECONDS
    counts = replay_counts(ids)
    assert counts.count(1) == replayed and set(counts) == {0, 1}
    assert replay_jobs(r, ids) == replayed == huey_for("system").storage.queue_size()
    assert done["refused"] == done["errors"] == 0 and done["remaining"] == 1000 - replayed
    times = replay_times(r, ids, f"redrive:{rid}")
    assert len(times) == replayed and busiest_second(times) <= 200
    assert [e["type"] for e in events()] == ["redrive.started", "redrive.cancelled"]
    assert not r.exists(keys.redrive_pending(rid), keys.redrive_inflight(rid),
                        keys.redrive_slot("system"))


def test_small_redrive_runs_to_done_replaying_each_record_once(r, workers):
    workers.start("email")
    ids = seed(300)
    began = time.time()
    rid = redrive.start("alice", SYSTEM, rate=100)["id"]
    done = wait_status(rid, "done")
    assert time.time() - began >= 2.0, "300 at 100/s with at most 1 s of burst take >= 2 s"
    assert (done["replayed"], done["remaining"], done["percent"]) == (300, 0, 100.0)
    assert done["eta_seconds"] is None and done["finished_at"] >= done["started_at"]
    assert replay_counts(ids) == [1] * 300 and replay_jobs(r, ids) == 300
    assert busiest_second(replay_times(r, ids, f"redrive:{rid}")) <= 100
    assert [p["id"] for p in redrive.listing()] == [rid]
    assert not r.exists(keys.redrive_pending(rid), keys.redrive_inflight(rid),
                        keys.redrive_lease(rid), keys.redrive_slot("system"))
    finished = events()[-1]
    assert finished["type"] == "redrive.finished" and finished["replayed"] == 300


def test_pause_stops_progress_and_resume_continues(r, workers):
    workers.start("email")
    ids = seed(300)
    rid = redrive.start("alice", SYSTEM, rate=100)["id"]
    wait_for(lambda: redrive.progress(rid)["replayed"] >= 50, what="some progress")
    assert redrive.pause(rid, "bob")["status"] == "paused"
    # A tick under way rereads the status within CHECK_SECONDS and puts back what it has not
    # replayed; no new take starts once paused. Nothing in flight: the tick is over.
    wait_for(lambda: r.llen(keys.redrive_inflight(rid)) == 0, what="the tick to stop")
    held = redrive.progress(rid)
    time.sleep(STILL_SECONDS)  # a few driver ticks: none may take anything
    still = redrive.progress(rid)
    assert still["replayed"] == held["replayed"] < 300 and still["status"] == "paused"
    assert still["remaining"] == 300 - still["replayed"] and still["eta_seconds"] is None
    assert redrive.resume(rid, "bob")["status"] == "running"
    wait_for(lambda: redrive.progress(rid)["replayed"] > held["replayed"], what="progress")
    done = wait_status(rid, "done")
    assert done["replayed"] == 300 and done["paused_at"] < done["resumed_at"]
    assert replay_counts(ids) == [1] * 300 and replay_jobs(r, ids) == 300


def test_one_redrive_per_queue_and_clear_refusals(r):
    seed(20)
    first = redrive.start("alice", SYSTEM, rate=5)
    with pytest.raises(DlqError) as running:
        redrive.start("bob", Filters(), rate=5, queue="system")
    assert running.value.code == "running" and running.value.redrive_id == first["id"]
    assert first["id"] in str(running.value)
    redrive.pause(first["id"], "alice")
    with pytest.raises(DlqError, match=first["id"]):
        redrive.start("bob", SYSTEM, rate=5)
    assert redrive.cancel(first["id"], "alice")["status"] == "cancelled"
    second = redrive.start("bob", SYSTEM, rate=5)
    assert [p["id"] for p in redrive.listing()] == [second["id"], first["id"]]
    with pytest.raises(DlqError) as final:
        redrive.resume(first["id"], "alice")
    assert final.value.code == "state" and "cancelled" in str(final.value)
    with pytest.raises(DlqError) as missing:
        redrive.pause("nope", "alice")
    assert (missing.value.code, missing.value.status) == ("missing", 404)
    for rate in (0.05, 5000, "fast"):
        with pytest.raises(FilterError) as bad:
            redrive.start("bob", Filters(queue="email"), rate=rate)
        assert [e["field"] for e in bad.value.errors] == ["rate"]
    with pytest.raises(FilterError, match="queue"):
        redrive.start("bob", Filters(queue="email"), rate=5, queue="nowhere")
    for _ in range(2):  # an empty selection is refused and does not keep the slot
        with pytest.raises(DlqError) as empty:
            redrive.start("bob", Filters(queue="email"), rate=5)
        assert empty.value.code == "empty"


def test_a_killed_driver_is_replaced_and_nothing_is_replayed_twice(r, workers):
    first = workers.start("email")
    ids = seed(400)
    rid = redrive.start("alice", SYSTEM, rate=100)["id"]
    wait_for(lambda: redrive.progress(rid)["replayed"] >= 100, what="the first driver")
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    assert redrive.progress(rid)["replayed"] < 400
    workers.start("email")
    done = wait_status(rid, "done", timeout=40)
    assert done["replayed"] == done["total"] == 400 and done["leases"] >= 2
    assert replay_counts(ids) == [1] * 400 and replay_jobs(r, ids) == 400
    assert len(replay_times(r, ids, f"redrive:{rid}")) == 400


def test_takeover_counts_what_a_dead_driver_replayed_and_replays_the_rest(r):
    ids = seed(10)
    rid = redrive.start("alice", SYSTEM, rate=1000)["id"]
    # A driver took five ids, replayed three of them, and died before counting any.
    for _ in range(5):
        r.lmove(keys.redrive_pending(rid), keys.redrive_inflight(rid), "LEFT", "RIGHT")
    for record_id in r.lrange(keys.redrive_inflight(rid), 0, 2):
        replay.replay(record_id, actor=f"redrive:{rid}")
    r.set(keys.redrive_lease(rid), "dead-worker", px=50)
    wait_for(lambda: not r.exists(keys.redrive_lease(rid)), timeout=5, interval=0.01,
             what="the dead driver's lease to lapse")

    def heir_done():
        redrive.drive("heir")
        return redrive.progress(rid)["status"] == "done"

    wait_for(heir_done, timeout=10, interval=0.05, what="the heir to finish")
    done = redrive.progress(rid)
    assert (done["replayed"], done["refused"], done["driver"]) == (10, 0, "heir")
    assert replay_counts(ids) == [1] * 10 and replay_jobs(r, ids) == 10
