"""The production Redis ACL user (backstop.redis_acl) is enough for every role and refuses the
rest: a worker, the producers, the DLQ, audit, tokens and the panel all run under it while
Redis's ACL log stays empty."""

from __future__ import annotations

import json
import os
import re

import pytest
import redis
from conftest import ROOT, apply_env, wait_for
from helpers import create_panel_users, signed_in

import tests.jobs_for_tests  # noqa: F401  (the jobs the worker runs)
from backstop import (
    audit,
    connection,
    dlq,
    keys,
    producers,
    redis_acl,
    redis_server,
    registry,
    replay,
    schedules,
    tokens,
)

FAST = {"rate_limit": 0, "backoff_jitter": 0, "backoff_base": 0.05, "attempts": 2}


@pytest.fixture
def restricted(r, tmp_path):
    """A Redis of its own whose only usable user is the documented Backstop user; yields
    (its URL for that user, an administrator's client)."""
    port = redis_server.free_port()
    proc = redis_server.start(port, tmp_path / "redis", durable=False)
    setup = redis.Redis(port=port, decode_responses=True)
    setup.execute_command("ACL", "SETUSER", "admin", "on", ">admin-pw", "~*", "&*", "+@all")
    setup.execute_command("ACL", "SETUSER", "backstop", ">app-pw", *redis_acl.rules("backstop"))
    setup.execute_command("ACL", "SETUSER", "default", "off")
    admin = redis.Redis(port=port, username="admin", password="admin-pw",
                        decode_responses=True)
    admin.execute_command("ACL", "LOG", "RESET")
    url = f"redis://backstop:app-pw@127.0.0.1:{port}/0"
    shared = os.environ["REDIS_URL"]
    apply_env(REDIS_URL=url, BACKSTOP_QUEUES=json.dumps({"system": FAST}), COOKIE_SECURE="0")
    yield url, admin
    proc.terminate()
    proc.wait(10)
    apply_env(REDIS_URL=shared)  # later tests must not find this stopped server's URL


def denied(admin) -> list[str]:
    return [f"{e['reason']}: {e['object']} ({e['client-info']})"
            for e in admin.execute_command("ACL", "LOG")]


def test_the_acl_user_refuses_what_backstop_never_needs(restricted):
    url, _ = restricted
    app_client = redis.Redis.from_url(url)
    for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("MONITOR",),
                    ("ACL", "LIST"), ("DEBUG", "SLEEP", "0"), ("SET", "elsewhere", "1")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            app_client.execute_command(*command)


def test_every_role_runs_under_the_acl_user(restricted, workers):
    url, admin = restricted
    marks = {"key": "backstop:test:marks"}  # a job's own writes stay under the prefix too
    ok = producers.enqueue("test.work", marks, job_id="acl-ok")
    bad = producers.enqueue("test.fail", marks, job_id="acl-bad")
    producers.enqueue("test.nap", {}, job_id="acl-later", delay=0.3)
    log = ROOT / "var" / "acl-worker.log"
    workers.start("system", {"system": FAST}, log_to=log, REDIS_URL=url,
                  WORKER_RECONCILE_SECONDS="0.5")
    try:
        wait_for(lambda: {j["state"] for j in registry.get_jobs([ok, bad, "acl-later"])}
                 == {"completed", "dead"}, what="jobs finished")
    except AssertionError:
        raise AssertionError(f"{[j['state'] for j in registry.get_jobs([ok, bad, 'acl-later'])]}"
                             f" {denied(admin)}") from None
    attempt = replay.replay(bad, actor="olga")["attempt_id"]
    wait_for(lambda: registry.get_job(attempt)["state"] == "dead", what="the replay failed")
    assert dlq.page().items and dlq.analytics() and dlq.fingerprints() is not None
    token = tokens.create("ci", "viewer")
    assert tokens.verify(token)["role"] == "viewer"
    audit.record("olga", "acl.check", "x")
    assert audit.verify().ok
    browse_the_panel()
    use_the_api()
    listen_to_the_live_feed(url)
    assert denied(admin) == [], denied(admin)


def test_scheduled_jobs_and_retention_run_under_the_acl_user(restricted, workers):
    url, admin = restricted
    for n in range(5):
        audit.record("olga", "queue.pause", f"q{n}")
    workers.start("system", {"system": FAST}, REDIS_URL=url, SCHEDULES_ENABLED="1",
                  AUDIT_MAX_ENTRIES="2")

    def finished() -> bool:
        notes = schedules.recorded(connection.client())
        jobs = registry.get_jobs([notes.get(n, {}).get("job_id", "-")
                                  for n in ("health-check", "retention")])
        return all(job and job["state"] in ("completed", "dead") for job in jobs)

    wait_for(finished, what="the health check and retention ran")
    notes = schedules.recorded(connection.client())
    for name in ("health-check", "retention"):
        assert registry.get_job(notes[name]["job_id"])["state"] == "completed", name
    assert audit.verify() == audit.Verification(True, 2, [], trimmed=3)
    assert denied(admin) == [], denied(admin)


def listen_to_the_live_feed(url: str) -> None:
    """What the live hub of the web role does: subscribe, receive, unsubscribe."""
    pubsub = redis.Redis.from_url(url, **connection.timeouts()).pubsub()
    pubsub.subscribe(keys.events_channel())
    producers.enqueue("test.nap", {}, job_id="acl-live")
    assert wait_for(lambda: pubsub.get_message(timeout=0.1, ignore_subscribe_messages=True),
                    what="a live event")
    pubsub.close()


def browse_the_panel() -> None:
    from app import create_app

    app = create_app()
    app.testing = True
    create_panel_users(only=("olga",))
    client = signed_in(app, "olga")
    for path in ("/overview", "/queues", "/queues/system", "/jobs/acl-ok", "/dlq",
                 "/dlq/records/acl-bad", "/dlq/analytics", "/dlq/export.csv", "/system", "/audit"):
        assert client.get(path).status_code == 200, path
    response = client.post("/queues/system/pause", data={"csrf_token": client.csrf})
    assert response.status_code in (200, 302)
    page = client.get("/queues").get_data(as_text=True)
    assert re.search(r"paused", page, re.I)
    assert ROOT.exists()


def use_the_api() -> None:
    """The operations API, the event stream's count per token and a scoped token."""
    from app import create_app
    from backstop import app_events

    client = create_app().test_client()
    owner = {"Authorization": f"Bearer {tokens.create('acl-owner', 'owner')}"}
    for path in ("/api/v1/queues", "/api/v1/queues/system/jobs?state=completed",
                 "/api/v1/workers", "/api/v1/alerts/rules", "/api/v1/openapi.json"):
        assert client.get(path, headers=owner).status_code == 200, path
    assert client.delete("/api/v1/jobs/acl-ok", headers=owner).status_code == 200
    issued = client.post("/api/v1/events/tokens", headers=owner, json={"job_ids": ["acl-bad"]})
    assert issued.status_code == 201
    stream = app_events.open_stream("token:acl-owner")
    app_events.renew_stream("token:acl-owner", stream)
    app_events.close_stream("token:acl-owner", stream)
    assert app_events.scoped_reader(issued.json["token"]) is not None


def test_the_readme_shows_the_acl_line_for_the_default_prefix():
    assert redis_acl.setuser_command() in (ROOT / "README.md").read_text()
