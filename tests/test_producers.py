"""Producers against a real Redis: validation before writes, dedupe, batches, delays."""

from __future__ import annotations

import json

import pytest

import tests.jobs_for_tests  # noqa: F401  (test.work)
from backstop import keys, producers, registry
from backstop.errors import PayloadError, UnknownJob
from backstop.hueys import huey_for, message_task, unframe

MAIL = {"to": ["ops@example.com"], "subject": "Hello", "text": "Body"}


def queued(queue: str) -> int:
    return huey_for(queue).storage.queue_size()


def test_bad_payload_names_each_field_and_writes_nothing(r):
    with pytest.raises(PayloadError) as caught:
        producers.enqueue("email.send", {"to": ["not-an-address"], "subject": "", "colour": 1})
    fields = {e["field"] for e in caught.value.errors}
    assert fields == {"to", "subject", "text", "colour"}
    assert "to:" in str(caught.value) and "colour" in str(caught.value)
    assert r.dbsize() == 0


def test_unknown_job_name_is_refused_before_redis(r):
    with pytest.raises(UnknownJob):
        producers.enqueue("email.sned", MAIL)
    assert r.dbsize() == 0


def test_a_repeated_job_id_returns_the_first_job(r):
    first = producers.enqueue("email.send", MAIL, job_id="welcome-42")
    again = producers.enqueue("email.send", {**MAIL, "subject": "Other"}, job_id="welcome-42")
    assert first == again == "welcome-42"
    assert queued("email") == 1
    assert registry.get_job("welcome-42")["payload"]["subject"] == "Hello"
    assert registry.counts(("email",))["email"]["waiting"] == 1


def test_record_timeline_and_event_are_written_with_the_push(r):
    job_id = producers.enqueue("email.send", MAIL)
    job = registry.get_job(job_id)
    assert job["state"] == "waiting" and job["queue"] == "email" and job["max_attempts"] == 3
    assert [e["event"] for e in job["timeline"]] == ["enqueued"]
    events = registry.recent_events()
    assert events[-1]["type"] == "queued" and events[-1]["job_id"] == job_id


def test_events_resume_after_a_given_id(r):
    ids = [producers.enqueue("email.send", MAIL) for _ in range(3)]
    events = registry.recent_events()
    later = registry.recent_events(after=events[0]["id"])
    assert [e["job_id"] for e in later] == ids[1:]


def test_batch_enqueue_is_all_or_nothing(r):
    good = [{"job": "email.send", "payload": MAIL} for _ in range(50)]
    bad = good[:3] + [{"job": "email.send", "payload": {**MAIL, "to": []}}]
    with pytest.raises(PayloadError) as caught:
        producers.enqueue_many(bad)
    assert caught.value.errors[0]["field"] == "[3].to"
    assert r.dbsize() == 0
    ids = producers.enqueue_many(good)
    assert len(set(ids)) == 50 and queued("email") == 50


def test_a_batch_records_each_job_as_a_single_enqueue_would(r):
    producers.enqueue("email.send", MAIL, job_id="exists")
    before = int(r.hget(keys.queue_stats("email"), "enqueued"))
    ids = producers.enqueue_many([
        {"job": "email.send", "payload": MAIL, "job_id": "first"},
        {"job": "email.send", "payload": MAIL, "job_id": "exists"},  # already there
        {"job": "email.send", "payload": MAIL, "job_id": "later", "delay": 60},
        {"job": "email.send", "payload": MAIL, "job_id": "urgent", "priority": 5},
        {"job": "test.work", "payload": {}, "job_id": "elsewhere"},
        {"job": "email.send", "payload": MAIL, "job_id": "first"},  # twice in the batch
        {"job": "email.send", "payload": MAIL, "job_id": "last"},
    ])
    assert ids == ["first", "exists", "later", "urgent", "elsewhere", "first", "last"]
    jobs = {job["id"]: job for job in registry.get_jobs(["first", "later", "urgent", "last",
                                                          "elsewhere"])}
    assert {i: j["state"] for i, j in jobs.items()} == {
        "first": "waiting", "later": "delayed", "urgent": "waiting", "last": "waiting",
        "elsewhere": "waiting"}
    assert jobs["urgent"]["priority"] == 5 and jobs["elsewhere"]["queue"] == "system"
    assert jobs["later"]["run_at"] == jobs["later"]["created_at"] + 60
    assert jobs["later"]["timeline"][0]["run_at"] == jobs["later"]["run_at"]
    assert int(r.hget(keys.queue_stats("email"), "enqueued")) == before + 4
    assert int(r.hget(keys.queue_stats("system"), "enqueued")) == 1
    assert set(r.zrange(keys.state_index("email", "waiting"), 0, -1)) == {
        "exists", "first", "last", "urgent"}
    assert huey_for("email").storage.schedule_size() == 1
    storage = huey_for("email").storage
    storage.processing_key = keys.processing("test", "email")
    order = [unframe(storage.dequeue())[0] for _ in range(4)]
    assert order == ["urgent", "exists", "first", "last"]
    queued_events = [e["job_id"] for e in registry.recent_events() if e["type"] == "queued"]
    assert queued_events[-5:] == ["first", "later", "urgent", "elsewhere", "last"]


def test_a_batch_larger_than_one_script_keeps_its_order(r):
    count = producers.MANY_PER_SCRIPT * 2 + 7
    ids = producers.enqueue_many([{"job": "email.send", "payload": MAIL}] * count)
    assert len(set(ids)) == count and queued("email") == count
    storage = huey_for("email").storage
    storage.processing_key = keys.processing("test", "email")
    assert [unframe(storage.dequeue())[0] for _ in range(count)] == ids


def test_typed_producer_and_delay(r):
    job_id = producers.email_send(to=["a@example.com"], subject="Hi", text="x", delay=30)
    job = registry.get_job(job_id)
    assert job["state"] == "delayed" and job["run_at"] >= job["created_at"] + 29
    assert huey_for("email").storage.schedule_size() == 1 and queued("email") == 0
    with pytest.raises(AttributeError):
        producers.producer_for_a_typo = producers.email_sned


def test_a_job_gets_a_timeline_list_only_once_it_starts_but_shows_when_it_was_enqueued(r):
    now_id = producers.enqueue("email.send", MAIL)
    later_id = producers.enqueue("email.send", MAIL, delay=60)
    assert not r.exists(keys.timeline(now_id)), "an enqueue touches no timeline list"
    job = registry.get_job(now_id)
    assert job["timeline"] == [{"t": job["created_at"], "event": "enqueued"}]
    later = registry.get_job(later_id)
    assert later["timeline"] == [{"t": later["created_at"], "event": "enqueued",
                                  "run_at": later["run_at"]}]


def test_the_queued_event_is_valid_json_with_every_field(r):
    job_id = producers.enqueue("email.send", MAIL, job_id="a.b:c-d_e")
    body = r.xrevrange(keys.events_stream(), count=1)[0][1]["e"]
    event = json.loads(body)
    assert event == {"type": "queued", "job_id": job_id, "queue": "email", "job": "email.send",
                     "state": "waiting", "t": registry.get_job(job_id)["created_at"]}


def test_priority_jumps_the_queue(r):
    producers.enqueue("email.send", MAIL, job_id="normal")
    producers.enqueue("email.send", MAIL, job_id="urgent", priority=5)
    storage = huey_for("email").storage
    storage.processing_key = keys.processing("test", "email")
    job_id, job_name, data = unframe(storage.dequeue())
    assert job_id == "urgent" and job_name == "email.send"
    task = message_task("email", job_id, job_name, data)
    assert task.id == "urgent" and task.args == ("email.send", producers.prepare(
        "email.send", MAIL).payload_json)


def test_bad_options_are_field_errors(r):
    with pytest.raises(PayloadError) as caught:
        producers.enqueue("email.send", MAIL, job_id="has spaces", delay=-1, priority=99)
    assert {e["field"] for e in caught.value.errors} == {"job_id", "delay", "priority"}
    assert r.dbsize() == 0


LINE_BREAKS = ("\n", "\r", "\r\n")


@pytest.mark.parametrize("tail", LINE_BREAKS)
def test_a_job_id_with_a_line_break_is_refused_naming_the_field(r, tail):
    for job_id in (f"victim{tail}", f"{tail}victim", f"vic{tail}tim"):
        with pytest.raises(PayloadError) as caught:
            producers.enqueue("email.send", MAIL, job_id=job_id)
        assert [e["field"] for e in caught.value.errors] == ["job_id"]
        with pytest.raises(PayloadError) as caught:
            producers.enqueue_many([{"job": "email.send", "payload": MAIL, "job_id": job_id}])
        assert [e["field"] for e in caught.value.errors] == ["[0].job_id"]
    assert r.dbsize() == 0


@pytest.mark.parametrize("tail", LINE_BREAKS)
@pytest.mark.parametrize(("job", "payload", "field"), [
    ("email.send", {**MAIL, "to": ["ops@example.com", "a@b.c{}"]}, "to"),
    ("email.send", {**MAIL, "reply_to": "a@b.c{}"}, "reply_to"),
    ("email.send", {**MAIL, "subject": "Hi{}Bcc: spy@example.com"}, "subject"),
    ("email.otp.send", {"to": "a@b.c{}"}, "to"),
    ("email.otp.send", {"to": "a@b.c", "purpose": "login{}"}, "purpose"),
    ("email.notification.dispatch", {"user_id": "u", "title": "t{}", "body": "b",
                                     "channels": ["inbox"]}, "title"),
    ("email.notification.dispatch", {"user_id": "u", "title": "t", "body": "b",
                                     "channels": ["email"], "email": "a@b.c{}"}, "email"),
    ("plugins.execute", {"plugin": "echo{}"}, "plugin"),
    ("workflows.dispatch", {"name": "w", "steps": [{"job": "system.health.check{}"}]},
     "steps.0.job"),
])
def test_a_line_break_in_an_address_or_name_is_refused_naming_the_field(r, job, payload,
                                                                        field, tail):
    filled = json.loads(json.dumps(payload).replace("{}", json.dumps(tail)[1:-1]))
    with pytest.raises(PayloadError) as caught:
        producers.enqueue(job, filled)
    assert [e["field"] for e in caught.value.errors] == [field]
    assert r.dbsize() == 0
