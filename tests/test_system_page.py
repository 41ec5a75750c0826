"""The System page and API for the kill switch and the health log: the mode (read by viewers,
switched by owners, confirmed and audited), each host's outbox, and the health log with its
level filter, live."""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import apply_env
from helpers import auth, confirm_token_of, panel_app, signed_in

from backstop import audit, keys, local_store, system_log
from backstop.live import Topic


@pytest.fixture
def app(r, tmp_path):
    apply_env(OUTBOX_PATH=str(tmp_path / "outbox.sqlite3"))
    yield panel_app()
    local_store.forget()


@pytest.fixture
def api(app):
    return app.test_client()


def logged(r, level: str, message: str, t: float) -> None:
    member = system_log.serialized(system_log.make_entry(level, message, {"n": 1}, t=t))
    r.zadd(keys.system_log(), {member: t})
    r.zadd(keys.system_log_level(level), {member: t})


def audited(action: str) -> list[tuple[str, str, str]]:
    return [(e["actor"], e["target"], e["result"]) for e in audit.entries(action=action).items]


# ---- the API ----
def test_the_api_lists_the_health_log_by_level_and_time(api, r):
    now = time.time()
    for n, level in enumerate(["INFO", "WARNING", "SWITCH", "WARNING", "ERROR"]):
        logged(r, level, f"{level.lower()} {n}", now - 50 + n * 10)
    viewer = auth("viewer")
    everything = api.get("/api/v1/system/logs", headers=viewer)
    assert everything.status_code == 200
    assert [i["message"] for i in everything.json["items"]] == [
        "error 4", "warning 3", "switch 2", "warning 1", "info 0"]
    assert set(everything.json["items"][0]) == {"id", "t", "level", "message", "meta",
                                                 "host", "pid"}
    warnings = api.get("/api/v1/system/logs?level=warning", headers=viewer).json["items"]
    assert [i["message"] for i in warnings] == ["warning 3", "warning 1"]
    recent = api.get(f"/api/v1/system/logs?since={now - 25}&limit=2", headers=viewer).json
    assert [i["message"] for i in recent["items"]] == ["error 4", "warning 3"]
    assert api.get("/api/v1/system/logs").status_code == 401


@pytest.mark.parametrize(("query", "field"), [
    ("level=debug", "level"), ("since=yesterday", "since"), ("since=nan", "since"),
    ("since=-5", "since"), ("level=SWITCH&since=1e999", "since")])
def test_a_bad_level_or_since_is_a_422_naming_it(api, r, query, field):
    response = api.get(f"/api/v1/system/logs?{query}", headers=auth("viewer"))
    assert response.status_code == 422, response.json
    assert [f["field"] for f in response.json["fields"]] == [field]
    assert field in response.json["error"]


def test_the_mode_is_read_by_viewers_and_switched_by_owners_only(api, r):
    viewer, operator, owner = auth("viewer"), auth("operator"), auth("owner")
    mode = api.get("/api/v1/system/mode", headers=viewer)
    assert mode.status_code == 200 and mode.json["mode"] == "async_queue"
    assert set(mode.json) == {"mode", "changed_at", "changed_by"}
    for refused in (viewer, operator):
        answer = api.post("/api/v1/system/mode", json={"mode": "sync_direct"}, headers=refused)
        assert answer.status_code == 403
    assert api.get("/api/v1/system/mode", headers=viewer).json["mode"] == "async_queue"
    switched = api.post("/api/v1/system/mode", json={"mode": "sync_direct"}, headers=owner)
    assert switched.status_code == 200
    assert (switched.json["mode"], switched.json["changed_by"]) == ("sync_direct",
                                                                    "token:owner-bot")
    assert api.get("/api/v1/system/mode", headers=viewer).json["mode"] == "sync_direct"
    assert audited("system.mode") == [("token:owner-bot", "sync_direct", "ok"),
                                      ("token:operator-bot", "", "refused 403"),
                                      ("token:viewer-bot", "", "refused 403")]
    [switch] = system_log.entries(level="SWITCH")
    assert "sync_direct" in switch["message"]


@pytest.mark.parametrize("body", [{"mode": "turbo"}, {"mode": None}, {}, {"mode": ["sync_direct"]}])
def test_any_other_mode_is_a_422_naming_mode(api, r, body):
    response = api.post("/api/v1/system/mode", json=body, headers=auth("owner"))
    assert response.status_code == 422
    assert response.json["fields"][0]["field"] == "mode"
    assert "async_queue, sync_direct" in response.json["error"]
    assert audited("system.mode") == [("token:owner-bot", "", "refused 422")]
    assert not r.exists(keys.system_mode())


# ---- the page ----
def test_the_page_shows_the_mode_the_outbox_and_the_health_log(app, r):
    now = time.time()
    r.hset(keys.outbox_hosts(), mapping={
        "web-1": json.dumps({"depth": 42, "oldest_at": now - 125, "updated_at": now - 1}),
        "web-2": json.dumps({"depth": 0, "oldest_at": None, "updated_at": now - 600})})
    logged(r, "SWITCH", "mode switched from async_queue to sync_direct by user:olga", now - 5)
    logged(r, "ERROR", "drain failed: <script>alert(1)</script>", now - 3)
    page = signed_in(app, "vera").get("/system").get_data(as_text=True)
    assert page.index('id="mode"') < page.index('id="outbox"') < page.index('id="system-log"')
    assert 'data-mode="async_queue"' in page and "Queueing" in page
    assert 'action="/system/mode"' not in page  # a viewer sees no switch
    outbox = page[page.index('id="outbox"'):page.index('id="system-log"')]
    assert "42 jobs waiting for Redis" in outbox
    assert outbox.index('data-host="web-1"') < outbox.index('data-host="web-2"')
    assert "2 minutes" in outbox and "empty" in outbox
    assert "not recent" in outbox
    log = page[page.index('id="system-log"'):page.index('id="workers"')]
    assert log.index('data-level="ERROR"') < log.index('data-level="SWITCH"')
    assert "<script>alert(1)</script>" not in log and "&lt;script&gt;" in log
    assert "<h2>Health checks</h2>" in page
    assert re.search(r'ws-connect="[a-z:/]*/ws\?page=system"', page)


def test_the_level_filter_survives_the_poll_and_the_push(app, r):
    now = time.time()
    logged(r, "INFO", "an info", now - 2)
    logged(r, "WARNING", "a warning", now - 1)
    client = signed_in(app, "vera")
    page = client.get("/system?level=warning").get_data(as_text=True)
    assert '<option value="WARNING" selected>' in page
    log = page[page.index('id="system-log"'):page.index('id="workers"')]
    assert "a warning" in log and "an info" not in log
    assert "/system?partial=system_log&amp;level=WARNING" in log
    assert "/ws?page=system&amp;level=WARNING" in page
    polled = client.get("/system?partial=system_log&level=WARNING").get_data(as_text=True)
    assert polled.lstrip().startswith('<ol id="system-log"') and "an info" not in polled
    assert "a warning" in polled
    unknown = client.get("/system?partial=system_log&level=bogus").get_data(as_text=True)
    assert "an info" in unknown and "a warning" in unknown


def test_an_owner_switches_the_mode_after_confirming(app, r):
    client = signed_in(app, "olga")
    page = client.get("/system").get_data(as_text=True)
    assert 'action="/system/mode"' in page and 'name="mode" value="sync_direct"' in page
    first = client.post("/system/mode", data={"csrf_token": client.csrf, "mode": "sync_direct"})
    assert first.status_code == 200 and "Are you sure?" in first.get_data(as_text=True)
    assert "This touches" not in first.get_data(as_text=True)
    assert not r.exists(keys.system_mode())
    done = client.post("/system/mode", data={
        "csrf_token": client.csrf, "mode": "sync_direct",
        "confirm": confirm_token_of(first.get_data(as_text=True))})
    assert done.status_code == 302 and done.headers["Location"].endswith("/system")
    assert r.hget(keys.system_mode(), "mode") == "sync_direct"
    assert r.hget(keys.system_mode(), "changed_by") == "user:olga"
    after = client.get("/system").get_data(as_text=True)
    assert 'data-mode="sync_direct"' in after and 'name="mode" value="async_queue"' in after
    assert audited("system.mode") == [("user:olga", "sync_direct", "ok")]
    actions = [e["action"] for e in audit.entries(action="system.").items]
    assert actions == ["system.mode", "system.mode.preview"]


def test_an_operator_sees_the_mode_but_cannot_switch_it(app, r):
    client = signed_in(app, "oscar")
    page = client.get("/system").get_data(as_text=True)
    assert 'data-mode="async_queue"' in page and 'action="/system/mode"' not in page
    refused = client.post("/system/mode", data={"csrf_token": client.csrf, "mode": "sync_direct"})
    assert refused.status_code == 403 and not r.exists(keys.system_mode())
    assert audited("system.mode") == [("user:oscar", "", "refused 403")]


def test_a_bad_mode_from_the_form_is_refused(app, r):
    client = signed_in(app, "olga")
    refused = client.post("/system/mode", data={"csrf_token": client.csrf, "mode": "turbo"})
    assert refused.status_code == 400 and not r.exists(keys.system_mode())


def test_the_system_page_follows_only_the_health_logs_events(app, r):
    from web.live import socket_topic
    from web.pages import PAGES

    topic = socket_topic(PAGES["system"], {})
    assert topic == Topic(system=True)
    assert topic.matches({"type": "system.log", "t": 1})
    assert not topic.matches({"type": "completed", "queue": "email", "job_id": "j"})
    assert Topic().matches({"type": "system.log"})  # the overview follows everything


def test_a_log_entry_is_announced_to_live_pages(r, tmp_path):
    apply_env(OUTBOX_PATH=str(tmp_path / "outbox.sqlite3"))
    pubsub = r.pubsub()
    pubsub.subscribe(keys.events_channel())
    pubsub.get_message(timeout=1)
    system_log.write("WARNING", "breaker opened")
    message = pubsub.get_message(timeout=2)
    assert message and message["data"].startswith("- ")
    assert json.loads(message["data"][2:])["type"] == "system.log"
    pubsub.close()
