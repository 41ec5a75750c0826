"""The enqueue hot path's own connection per thread (backstop.hot_path) against a real Redis."""

from __future__ import annotations

import os

import pytest
import redis

from backstop import hot_path, keys, producers, registry
from backstop.connection import client

MAIL = {"to": ["ops@example.com"], "subject": "Hello", "text": "Body"}


def test_an_enqueue_after_redis_closed_the_idle_connection_is_added_once(r):
    first = producers.enqueue("email.send", MAIL)
    killed = r.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    second = producers.enqueue("email.send", MAIL)
    assert registry.get_job(second)["state"] == "waiting"
    assert r.zcard(keys.state_index("email", "waiting")) == 2 and first != second


def test_an_error_reply_is_raised_after_every_reply_is_read(r):
    pool = client().connection_pool
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        hot_path.exchange(pool, [("LPUSH", "t:list", "x"), ("INCR", "t:list"), ("SET", "t:k", "v")])
    assert r.get("t:k") == "v", "the command after the error ran"
    assert hot_path.exchange(pool, [("PING",)]) == ["PONG"], "no stale reply is left behind"


def test_a_forked_child_makes_its_own_connection():
    pool = client().connection_pool
    hot_path.exchange(pool, [("PING",)])
    parent = hot_path._connection(pool)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it was handed the parent's socket
        try:
            child = hot_path._connection(pool)
            ok = child is not parent and hot_path.exchange(pool, [("PING",)]) == ["PONG"]
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
    assert hot_path.exchange(pool, [("PING",)]) == ["PONG"]


def test_a_worker_runs_its_scripts_again_after_redis_forgot_them(r):
    import tests.jobs_for_tests  # noqa: F401  (test.work)
    from backstop.hueys import huey_for
    from backstop.runner import WorkerProcess

    worker = WorkerProcess(("system",))
    huey_for("system").storage.processing_key = keys.processing(worker.id, "system")
    job_id = producers.enqueue("test.work", {})
    r.script_flush()  # a restart or a new primary: no script is known
    assert worker.run_next("system")
    assert registry.get_job(job_id)["state"] == "completed"
