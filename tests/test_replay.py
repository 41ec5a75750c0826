"""Replay, edit-then-replay, delete, bulk and clear against a real Redis."""

from __future__ import annotations

import json
import threading
import time

import pytest
from conftest import wait_for
from dlq_helpers import make_dead, one_shot_worker, run_pending

from backstop import dlq, keys, registry, replay
from backstop.dlq import DlqError, Filters
from backstop.errors import PayloadError
from backstop.hueys import huey_for


def queued() -> int:
    return huey_for("system").storage.queue_size()


def test_twenty_concurrent_replays_enqueue_exactly_once(r):
    [record_id] = make_dead([{"cause": 1, "n": 1}])
    outcomes: list = []
    barrier = threading.Barrier(20)

    def attempt():
        barrier.wait()
        try:
            outcomes.append(replay.replay(record_id, actor="ops"))
        except DlqError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len([o for o in outcomes if isinstance(o, dict)]) == 1
    assert set(o for o in outcomes if not isinstance(o, dict)) <= {"locked", "busy"}
    assert queued() == 1
    assert dlq.get_record(record_id)["replay_count"] == 1


def test_the_sixth_replay_is_refused_and_enqueues_nothing(r):
    [record_id] = make_dead([{"cause": 2, "n": 5}])
    worker = one_shot_worker()
    for n in range(1, 6):
        done = replay.replay(record_id, actor="ops")
        assert done["replay_count"] == n and done["attempt_id"] == f"{record_id}:replay{n}"
        run_pending(worker)
        assert dlq.get_record(record_id)["status"] == "open"
    with pytest.raises(DlqError) as refused:
        replay.replay(record_id, actor="ops")
    assert refused.value.code == "limit" and "limit is 5" in str(refused.value)
    assert queued() == 0
    record = dlq.detail(record_id)
    assert record["replay_count"] == 5 and len(record["lineage"]) == 5
    assert [a["outcome"] for a in record["lineage"]] == ["dead"] * 5
    assert dlq.analytics()["replay_status"]["limit"] == 1
    assert dlq.count() == 1, "a replay that fails again updates its record, not a new one"


def test_a_replay_that_succeeds_marks_the_record_resolved(r):
    [record_id] = make_dead([{"cause": 3, "n": 2, "api_token": "real-token"}])
    worker = one_shot_worker()
    edited = {"cause": 0, "n": 2, "api_token": "[REDACTED]"}
    done = replay.replay(record_id, actor="ops", payload=edited)
    assert done["diff"]["changes"] == [{"path": "cause", "old": 3, "new": 0}]
    run_pending(worker)
    record = dlq.detail(record_id)
    assert record["status"] == "resolved" and record["resolved_by"] == done["attempt_id"]
    attempt = registry.get_job(done["attempt_id"])
    assert attempt["state"] == "completed"
    assert attempt["result"]["api_token_seen"] is True, "the sealed secret was replayed"
    assert record["lineage"][0]["outcome"] == "completed" and record["lineage"][0]["edited"]
    with pytest.raises(DlqError) as refused:
        replay.replay(record_id, actor="ops")
    assert refused.value.code == "resolved"


def test_edit_preview_validates_and_shows_the_diff_without_committing(r):
    [record_id] = make_dead([{"cause": 1, "n": 4}])
    with pytest.raises(PayloadError) as bad:
        replay.preview_edit(record_id, {"cause": 9, "n": -1, "extra": 1})
    assert {e["field"] for e in bad.value.errors} == {"cause", "n", "extra"}
    with pytest.raises(PayloadError):
        replay.replay(record_id, actor="ops", payload={"cause": "x"})
    assert queued() == 0 and dlq.get_record(record_id)["replay_count"] == 0
    preview = replay.preview_edit(record_id, {"cause": 1, "n": 5})
    assert preview["diff"]["changes"] == [{"path": "n", "old": 4, "new": 5}]
    assert "-  \"n\": 4," in preview["diff"]["unified"]
    assert queued() == 0


def test_replay_to_another_queue(r):
    [record_id] = make_dead([{"cause": 1, "n": 3}])
    done = replay.replay(record_id, actor="ops", queue="email")
    assert done["queue"] == "email" and huey_for("email").storage.queue_size() == 1
    assert registry.get_job(done["attempt_id"])["queue"] == "email"


def test_bulk_reports_each_id_and_missing_ones(r):
    ids = make_dead([{"cause": 1, "n": n} for n in range(5)])
    results = replay.bulk("replay", actor="ops", ids=[*ids[:3], "nope"])
    assert [x["outcome"] for x in results] == ["replayed"] * 3 + ["missing"]
    assert queued() == 3
    deleted = replay.bulk("delete", actor="ops", flt=Filters(max_replays=0))
    assert sorted(x["id"] for x in deleted) == sorted(ids[3:])
    assert dlq.count() == 3


def test_clear_needs_a_fresh_single_use_token_for_the_same_actor_and_filter(r):
    make_dead([{"cause": 1 + n % 2, "n": n} for n in range(10)])
    flt = Filters(error_type="ValueError")
    preview = replay.clear_preview("owner", flt)
    assert preview["count"] == 5
    for actor, token, other_filter in (("owner", "", flt), ("owner", "made-up", flt),
                                       ("someone", preview["token"], flt)):
        with pytest.raises(DlqError):
            replay.clear(actor, other_filter, token)
    assert dlq.count() == 10, "a refused clear deletes nothing"
    second = replay.clear_preview("owner", flt)
    with pytest.raises(DlqError):
        replay.clear("owner", Filters(), second["token"])
    third = replay.clear_preview("owner", flt)
    assert replay.clear("owner", flt, third["token"]) == {"deleted": 5,
                                                          "filter": {"error_type": "ValueError"}}
    with pytest.raises(DlqError):
        replay.clear("owner", flt, third["token"])
    expired = replay.clear_preview("owner", Filters())
    r.pexpire(keys.confirmation(expired["token"]), 1)
    wait_for(lambda: not r.exists(keys.confirmation(expired["token"])), timeout=5,
             interval=0.001, what="the confirmation to expire")
    with pytest.raises(DlqError):
        replay.clear("owner", Filters(), expired["token"])
    assert dlq.count() == 5


WEBHOOK = {"url": "https://hooks.example/in", "event": "order.paid", "secret": "whsec-victim",
           "data": {"password": "pw-victim", "n": 1}}


def dead_webhook(record_id: str = "wh-1") -> str:
    """A dead webhook delivery whose payload carries a signing secret and a password."""
    error = {"type": "WebhookError", "message": "answered 500", "stack": "", "code": ""}
    dlq.write_records([({"id": record_id, "queue": "plugins", "job": "plugins.webhook.deliver",
                         "payload": WEBHOOK}, error, 1, time.time())])
    return record_id


def shown(record_id: str) -> dict:
    """The payload as the panel and the API show it (what an editor starts from)."""
    return dlq.get_record(record_id)["payload"]


def sent(attempt_id: str) -> dict:
    return registry.get_job(attempt_id)["payload"]


def test_an_edit_that_keeps_every_destination_keeps_the_sealed_secrets(r):
    record_id = dead_webhook()
    edited = {**shown(record_id), "event": "order.refunded"}
    assert edited["secret"] == "[REDACTED]"
    done = replay.replay(record_id, actor="oscar", payload=edited)
    assert sent(done["attempt_id"]) == {**WEBHOOK, "event": "order.refunded"}


@pytest.mark.parametrize("change", [{"url": "https://evil.example/in"},
                                    {"url": "https://hooks.example/in-other"},
                                    {"webhook_id": "wh_other"}])
def test_an_edit_that_moves_a_destination_must_enter_the_secrets_again(r, change):
    record_id = dead_webhook()
    moved = {**shown(record_id), **change}
    for attempt in (lambda: replay.replay(record_id, actor="oscar", payload=moved),
                    lambda: replay.preview_edit(record_id, moved, actor="oscar")):
        with pytest.raises(PayloadError) as refused:
            attempt()
        assert {e["field"] for e in refused.value.errors} == {"secret", "data.password"}
    assert huey_for("plugins").storage.queue_size() == 0
    assert dlq.get_record(record_id)["replay_count"] == 0
    entered = {**moved, "secret": "whsec-new", "data": {"password": "pw-new", "n": 1}}
    done = replay.replay(record_id, actor="oscar", payload=entered)
    assert sent(done["attempt_id"])["secret"] == "whsec-new"
    assert "pw-victim" not in json.dumps(sent(done["attempt_id"]))


def test_only_an_owners_confirmation_naming_the_destination_resends_the_secrets(r):
    record_id = dead_webhook()
    moved = {**shown(record_id), "url": "https://new.example/in"}
    preview = replay.preview_edit(record_id, moved, actor="olga", owner=True)
    resend = preview["resend"]
    assert resend["secrets"] == ["secret", "data.password"]
    assert resend["to"] == [{"path": "url", "old": "https://hooks.example/in",
                             "new": "https://new.example/in"}]
    assert "whsec-victim" not in json.dumps(preview)
    with pytest.raises(PayloadError):
        replay.replay(record_id, actor="oscar", payload=moved, resend_token=resend["token"])
    token = replay.preview_edit(record_id, moved, actor="olga", owner=True)["resend"]["token"]
    done = replay.replay(record_id, actor="olga", payload=moved, resend_token=token)
    assert sent(done["attempt_id"])["secret"] == "whsec-victim"
    with pytest.raises(PayloadError):
        replay.replay(record_id, actor="olga", payload=moved, resend_token=token)


def test_a_url_left_as_shown_keeps_its_hidden_password(r):
    error = {"type": "WebhookError", "message": "answered 500", "stack": "", "code": ""}
    hook = {**WEBHOOK, "url": "https://u:urlpw@hooks.example/in?token=qtok"}
    dlq.write_records([({"id": "wh-2", "queue": "plugins", "job": "plugins.webhook.deliver",
                         "payload": hook}, error, 1, time.time())])
    edited = {**shown("wh-2"), "event": "order.refunded"}
    assert edited["url"] == "https://u:[REDACTED]@hooks.example/in?token=[REDACTED]"
    done = replay.replay("wh-2", actor="oscar", payload=edited)
    assert sent(done["attempt_id"])["url"] == hook["url"]
