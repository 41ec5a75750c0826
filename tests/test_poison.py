"""Redis as a trust boundary: signed queue messages, poison messages parked in the DLQ (never
unpickled, never left in a processing list, never touching another job's record), token
digests keyed by SECRET_KEY (hueys, poison, runner, tokens)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import pytest
from conftest import apply_env, wait_for

import tests.jobs_for_tests  # noqa: F401  (the jobs the worker runs)
from backstop import audit, dlq, keys, producers, registry, replay, tokens
from backstop.config import secret_key
from backstop.dlq import DlqError
from backstop.hueys import BadMessage, frame, huey_for, open_message
from backstop.runner import WorkerProcess

FAST = {"rate_limit": 0, "backoff_jitter": 0, "keep_completed": 10_000}


class Evil:
    """A pickle that runs a shell command when loaded (what a Redis writer would push)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture
def worker(r):
    """A WorkerProcess of this test process for the system queue, with no threads."""
    apply_env(BACKSTOP_QUEUES=json.dumps({"system": FAST}))
    process = WorkerProcess(("system",))
    huey_for("system").storage.processing_key = keys.processing(process.id, "system")
    return process


def queue_key() -> str:
    return huey_for("system").storage.queue_key


def processing_lists(r) -> int:
    return sum(r.llen(key) for key in r.scan_iter(keys.processing("*", "*")))


def push_raw(message: bytes) -> None:
    """What anyone who can write to Redis can do: put bytes at the head of a queue."""
    huey_for("system").storage.conn.rpush(queue_key(), message)


def refusals(r) -> list[dict]:
    return audit.entries(action="queue.message.refused").items


def forged(job_id: str, path, *, key: str = "not-the-secret-key") -> bytes:
    """A well-framed message carrying a code-running pickle, signed with another key."""
    data = pickle.dumps(Evil(path))
    old = os.environ.get("SECRET_KEY", "")
    apply_env(SECRET_KEY=key)
    secret_key.cache_clear()
    try:
        return frame(job_id, "test.work", data)
    finally:
        apply_env(SECRET_KEY=old)
        secret_key.cache_clear()


def test_every_message_is_signed_and_a_changed_byte_fails_the_check(r):
    producers.enqueue("test.nap", {}, job_id="signed")
    message = huey_for("system").storage.conn.lindex(queue_key(), 0)
    assert open_message(message)[0] == "signed"
    tampered = message[:-1] + bytes([message[-1] ^ 1])
    with pytest.raises(BadMessage, match="signature does not verify"):
        open_message(tampered)
    with pytest.raises(BadMessage, match="not a Backstop message frame"):
        open_message(b"signed\ntest.nap\n" + message.split(b"\n", 3)[3])


def test_a_forged_pickle_never_runs_and_its_job_is_parked_in_the_dlq(r, worker, tmp_path):
    marker = tmp_path / "pwned"
    producers.enqueue("test.work", {"seconds": 0.05}, job_id="victim")
    r.delete(queue_key())  # the real message is gone; the forged one stands in for it
    push_raw(forged("victim", marker))
    assert worker.run_next("system")
    assert not marker.exists(), "the forged pickle ran"
    assert processing_lists(r) == 0
    assert registry.get_job("victim")["state"] == "dead"
    record = dlq.get_record("victim")
    assert record["error_type"] == "PoisonMessage"
    assert "signature does not verify" in record["error_message"]
    assert "system" in record["error_message"], "the pickle's text is shown, not run"
    assert record["payload"]["seconds"] == 0.05, "the payload comes from the job's record"
    entry = refusals(r)[0]
    assert (entry["target"], entry["result"]) == ("victim", "refused")


def test_a_refused_job_replays_as_a_freshly_signed_message(r, worker, tmp_path):
    producers.enqueue("test.work", {"seconds": 0.05}, job_id="victim")
    r.delete(queue_key())
    push_raw(forged("victim", tmp_path / "pwned"))
    worker.run_next("system")
    new_id = replay.replay("victim", actor="olga")["attempt_id"]
    assert worker.run_next("system")
    assert registry.get_job(new_id)["state"] == "completed"


def test_a_newline_in_a_frame_id_touches_no_record_and_is_parked(r, worker):
    producers.enqueue("test.work", {"key": "test:bystander"}, job_id="victim")
    before = r.hgetall(keys.job("victim"))
    data = huey_for("system").serialize_task(_task("test.work", {"key": "test:x"}))
    push_raw(frame("victim\n", "test.work", data))  # what "victim\n" made before full matches
    assert worker.run_next("system")
    assert r.hgetall(keys.job("victim")) == before, "another job's record was touched"
    assert processing_lists(r) == 0
    assert r.llen(keys.bad_messages("system")) == 0, "drained into the DLQ"
    poison = [rec for rec in dlq.page().items if rec["id"].startswith("poison-")]
    assert len(poison) == 1 and poison[0]["job"] == "(unreadable)"
    assert "not a Backstop message frame" in dlq.get_record(poison[0]["id"])["error_message"]
    assert refusals(r)[0]["target"] == poison[0]["id"]
    with pytest.raises(DlqError, match="no job to replay"):
        replay.replay(poison[0]["id"], actor="olga")
    assert worker.run_next("system"), "the real job still runs"
    assert registry.get_job("victim")["state"] == "completed"


def _task(job_name: str, payload: dict):
    from backstop.hueys import task_wrapper

    return task_wrapper("system")((job_name, payload), {}, id="victim")


def test_a_signed_message_that_cannot_be_unpickled_is_dead_not_stuck(r, worker):
    producers.enqueue("test.work", {}, job_id="garbled")
    r.delete(queue_key())
    push_raw(frame("garbled", "test.work", b"\x80\x05not a pickle"))
    assert worker.run_next("system")
    assert processing_lists(r) == 0
    assert registry.get_job("garbled")["state"] == "dead"
    assert "cannot be decoded" in dlq.get_record("garbled")["error_message"]


def test_a_message_carries_its_payload_as_json_never_a_pickle(r, worker):
    producers.enqueue("test.work", {"key": "test:json"}, job_id="plain")
    message = huey_for("system").storage.conn.lindex(queue_key(), 0)  # as bytes
    assert message.endswith(b'\n{"key":"test:json","seconds":0.0}')
    assert b"\x80" not in message  # no pickle protocol marker anywhere
    assert worker.run_next("system")
    assert registry.get_job("plain")["state"] == "completed"


def test_a_signed_message_of_an_earlier_version_a_huey_pickle_still_runs(r, worker):
    producers.enqueue("test.work", {"key": "test:old"}, job_id="victim")
    r.delete(queue_key())
    data = huey_for("system").serialize_task(_task("test.work", {"key": "test:old"}))
    push_raw(frame("victim", "test.work", data))
    assert worker.run_next("system")
    assert registry.get_job("victim")["state"] == "completed"
    assert processing_lists(r) == 0


def test_a_running_worker_drains_bad_messages_into_the_dlq(r, workers, tmp_path):
    marker = tmp_path / "pwned"
    push_raw(b"no frame at all " + pickle.dumps(Evil(marker)))
    push_raw(forged("ghost", marker))
    workers.start("system", {"system": FAST})
    wait_for(lambda: dlq.count() == 2, what="both messages parked in the DLQ")
    assert not marker.exists()
    wait_for(lambda: processing_lists(r) == 0, what="empty processing lists")
    assert r.llen(keys.bad_messages("system")) == 0
    assert len(refusals(r)) == 2


# ---- API token digests ----
def test_a_token_digest_written_by_hand_does_not_verify(r):
    token = tokens.PREFIX + "minted-by-a-redis-writer"
    info = json.dumps({"name": "intruder", "role": "owner", "created_at": 0})
    r.hset(keys.api_tokens(), hashlib.sha256(token.encode()).hexdigest(), info)
    assert tokens.verify(token) is None
    real = tokens.create("ci", "operator")
    assert tokens.verify(real)["role"] == "operator"
    assert hashlib.sha256(real.encode()).hexdigest() not in r.hkeys(keys.api_tokens())


def test_the_raw_bytes_shown_of_a_refused_message_are_redacted(r, worker):
    data = pickle.dumps({"password": "hunter2", "url": "http://u:pw9@hooks.example/x",
                         "max_tokens": 77})
    old = os.environ.get("SECRET_KEY", "")
    apply_env(SECRET_KEY="another-key")
    secret_key.cache_clear()
    message = frame("leaky", "test.work", data)
    apply_env(SECRET_KEY=old)
    secret_key.cache_clear()
    push_raw(message)
    assert worker.run_next("system")
    shown = dlq.get_record("leaky")["error_message"]
    assert "hunter2" not in shown and "pw9" not in shown
    assert "hooks.example" in shown and "max_tokens" in shown
