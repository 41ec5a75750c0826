"""The application event stream over real HTTP (gunicorn): SSE and WebSocket clients follow a
job's progress with an API token or a scoped token, resume from Last-Event-ID, are counted
per token, and end when their token does."""

from __future__ import annotations

import json
import os
import time

import pytest
import requests
from conftest import apply_env, wait_for
from sse_client import SseClient
from test_live_socket import read_text_frame, upgrade

import tests.jobs_for_tests  # noqa: F401  (registers the test jobs)
from backstop import app_events, audit, keys, producers, registry, tokens

STEPS = [0, 25, 50, 75, 100]


@pytest.fixture
def stream_env(r):
    """Quick pings (so a test sees idleness and closed clients within a second) and no token
    cache (so a revocation reaches the server at once)."""
    apply_env(EVENTS_PING_SECONDS="1", AUTH_CACHE_SECONDS="0", EVENT_STREAMS_PER_TOKEN="2")


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def ws_events(sock, until, seconds: float = 20.0) -> list[dict]:
    """JSON messages (pings left out) until until(event) holds for one."""
    found, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        event = json.loads(read_text_frame(sock))
        if event["type"] == "ping":
            continue
        found.append(event)
        if until(event):
            return found
    raise AssertionError(f"no event ended the wait: {found}")


def completed(event) -> bool:
    data = event.data if hasattr(event, "data") else event
    return data.get("type") == "completed"


def test_sse_and_websocket_clients_follow_a_job_from_0_to_100(stream_env, live_server, workers):
    token = tokens.create("shop", "viewer")
    job_id = producers.enqueue("test.steps", {"steps": 4, "pause": 0.05})
    sse = SseClient(live_server, f"/api/v1/events?job_id={job_id}", bearer(token))
    status, sock = upgrade(live_server, f"/api/v1/events/ws?job_id={job_id}",
                                bearer(token))
    assert (sse.status, status) == (200, 101)
    assert sse.headers["Content-Type"].startswith("text/event-stream")
    snapshot = sse.next()
    assert snapshot.kind == "snapshot" and snapshot.data["state"] == "waiting"
    assert json.loads(read_text_frame(sock))["type"] == "snapshot"
    workers.start()
    seen = sse.events(completed)
    pushed = ws_events(sock, completed)
    for events in ([m.data for m in seen], pushed):
        progress = [e["progress"] for e in events if e["type"] == "progress"]
        assert progress == STEPS, events
        assert [e["type"] for e in events][0] == "started"
        assert events[-1]["result"] == {"steps": 4} and events[-1]["state"] == "completed"
        assert {e["job_id"] for e in events} == {job_id} and events[2]["message"] == "step 1 of 4"
        assert all(e["queue"] == "system" and e["job"] == "test.steps" for e in events)
    assert [m.id for m in seen] == [e["id"] for e in pushed]  # stream ids, the same for both
    sse.close()
    sock.close()


def test_a_reconnect_with_last_event_id_receives_exactly_what_it_missed(stream_env, live_server):
    token = tokens.create("shop", "viewer")
    first = SseClient(live_server, "/api/v1/events", bearer(token))
    first.until_ping()  # connected: nothing to replay without a last id
    seen = [producers.enqueue("test.work", {}) for _ in range(2)]
    got = first.events(lambda m: m.data["job_id"] == seen[-1])
    assert [m.data["job_id"] for m in got] == seen
    first.close()
    missed = [producers.enqueue("test.work", {}) for _ in range(3)]
    resumed = SseClient(live_server, "/api/v1/events",
                        {**bearer(token), "Last-Event-ID": first.last_id})
    replayed = resumed.until_ping()
    assert [(m.data["job_id"], m.data["type"]) for m in replayed] == [
        (job_id, "queued") for job_id in missed]
    assert [m.id for m in replayed] == [
        e["id"] for e in registry.recent_events(after=first.last_id)]
    socket_token = tokens.create("shop-socket", "viewer")  # its own count of 2 streams
    status, sock = upgrade(live_server, f"/api/v1/events/ws?last_event_id={first.last_id}",
                           bearer(socket_token))
    assert status == 101
    assert [e["id"] for e in ws_events(sock, lambda e: e["job_id"] == missed[-1])] == [
        m.id for m in replayed]  # the socket resumes the same way
    later = producers.enqueue("test.work", {})
    assert resumed.events(lambda m: True)[0].data["job_id"] == later  # then live, no gap
    assert ws_events(sock, lambda e: True)[0]["job_id"] == later
    resumed.close()
    sock.close()


def test_a_scoped_token_sees_its_job_and_no_other(stream_env, live_server):
    api_token = tokens.create("shop", "viewer")
    mine, other = (producers.enqueue("test.work", {}) for _ in range(2))
    issued = requests.post(live_server + "/api/v1/events/tokens", headers=bearer(api_token),
                           json={"job_ids": [mine], "ttl_seconds": 60})
    assert issued.status_code == 201 and issued.json()["job_ids"] == [mine]
    scoped = issued.json()["token"]
    sse = SseClient(live_server, f"/api/v1/events?token={scoped}")
    status, sock = upgrade(live_server, f"/api/v1/events/ws?token={scoped}")
    assert (sse.status, status) == (200, 101)
    assert sse.next().data["job_id"] == mine  # the snapshot of its one job
    assert json.loads(read_text_frame(sock))["job_id"] == mine
    for percent in (10, 20):
        registry.report_progress(other, "system", "test.work", percent, "not yours")
        registry.report_progress(mine, "system", "test.work", percent, "yours")
    # Written in the order other 10, mine 10, other 20, mine 20: up to mine 20, nothing else.
    assert [(m.data["job_id"], m.data["progress"]) for m in sse.events(
        lambda m: m.data["progress"] == 20)] == [(mine, 10), (mine, 20)]
    assert [(e["job_id"], e["progress"]) for e in ws_events(
        sock, lambda e: e["progress"] == 20)] == [(mine, 10), (mine, 20)]
    sse.close()
    sock.close()
    holder = app_events.scoped_reader(scoped).holder  # both counted against the scoped token
    wait_for(lambda: app_events.open_streams(holder) == 0, 5, what="both streams released")
    # What the scoped token may not do.
    asked = {f"job_id={other}": 403, "queue=system": 403, "": 200}
    for query, expected in asked.items():
        attempt = SseClient(live_server, f"/api/v1/events?token={scoped}&{query}")
        assert attempt.status == expected, query
        attempt.close()
    assert requests.get(f"{live_server}/api/v1/jobs/{mine}",
                        headers=bearer(scoped)).status_code == 200
    assert requests.get(f"{live_server}/api/v1/jobs/{other}",
                        headers=bearer(scoped)).status_code == 403
    assert requests.get(f"{live_server}/api/v1/dlq", headers=bearer(scoped)).status_code == 401
    forged = scoped[:-2] + ("aa" if not scoped.endswith("aa") else "bb")
    assert SseClient(live_server, f"/api/v1/events?token={forged}").status == 401
    in_url = SseClient(live_server, f"/api/v1/events?token={api_token}")
    assert in_url.status == 400 and "Authorization header" in in_url.body()["error"]
    assert audit.entries(action="events.token").items[0]["target"] == mine


def test_streams_are_counted_per_token_and_a_closed_one_frees_its_place(stream_env,
                                                                        live_server):
    token, other = tokens.create("shop", "viewer"), tokens.create("crm", "viewer")
    held = [SseClient(live_server, "/api/v1/events", bearer(token)) for _ in range(2)]
    assert [c.status for c in held] == [200, 200]
    refused = SseClient(live_server, "/api/v1/events", bearer(token))
    assert refused.status == 429 and refused.headers["Retry-After"] == "5"
    status, _sock = upgrade(live_server, "/api/v1/events/ws", bearer(token))
    assert status == 429  # one count for both kinds of stream
    assert SseClient(live_server, "/api/v1/events", bearer(other)).status == 200
    held.pop().close()
    assert app_events.open_streams("token:shop") == 2  # the server has not noticed yet
    wait_for(lambda: app_events.open_streams("token:shop") == 1, 5,
             what="the server to notice the closed stream (at its next ping)")
    again = SseClient(live_server, "/api/v1/events", bearer(token))
    assert again.status == 200


def test_a_stream_ends_when_its_token_is_revoked(stream_env, live_server):
    api_token = tokens.create("shop", "viewer")
    job_id = producers.enqueue("test.work", {})
    scoped = app_events.issue_scoped("shop", [job_id], 60)["token"]
    direct = SseClient(live_server, "/api/v1/events", bearer(api_token))
    through_scope = SseClient(live_server, f"/api/v1/events?token={scoped}")
    assert (direct.status, through_scope.status) == (200, 200)
    tokens.revoke("shop")
    for client in (direct, through_scope):
        with pytest.raises(EOFError):
            for _ in range(10):
                client.next()
    assert SseClient(live_server, f"/api/v1/events?token={scoped}").status == 401


def test_an_expired_scoped_token_is_refused(r):
    job_id = "j1"
    issued = app_events.issue_scoped("shop", [job_id], 5)
    tokens.create("shop", "viewer")
    assert app_events.scoped_reader(issued["token"]).job_ids == {job_id}
    assert app_events.scoped_reader(issued["token"], now=time.time() + 6) is None
    with pytest.raises(app_events.ScopeError):
        app_events.issue_scoped("shop", [], 60)
    with pytest.raises(app_events.ScopeError):
        app_events.issue_scoped("shop", ["a"], 0)


def test_polling_says_how_long_to_wait_until_the_job_ends(api, r):
    token = bearer(tokens.create("shop", "viewer"))
    job_id = producers.enqueue("test.work", {})
    assert api.get(f"/api/v1/jobs/{job_id}", headers=token).headers["Retry-After"] == "2"
    r.hset(keys.job(job_id), "state", "active")
    assert api.get(f"/api/v1/jobs/{job_id}", headers=token).headers["Retry-After"] == "1"
    r.hset(keys.job(job_id), mapping={"state": "failed", "run_at": time.time() + 10})
    assert api.get(f"/api/v1/jobs/{job_id}", headers=token).headers["Retry-After"] in ("9",
                                                                                       "10")
    r.hset(keys.job(job_id), "state", "completed")
    finished = api.get(f"/api/v1/jobs/{job_id}", headers=token).headers
    assert "Retry-After" not in finished  # flask-limiter's reset time goes in its own header
    assert int(finished["X-RateLimit-Retry-After"]) > 0


def test_stream_refusals_name_their_reason(api):
    token = bearer(tokens.create("shop", "viewer"))
    assert api.get("/api/v1/events").status_code == 401
    bad_queue = api.get("/api/v1/events?queue=nope", headers=token)
    assert bad_queue.status_code == 422 and bad_queue.json["fields"][0]["field"] == "queue"
    too_many = "&".join(f"job_id=j{n}" for n in range(101))
    assert api.get(f"/api/v1/events?{too_many}", headers=token).status_code == 422
    for body, field in (({"job_ids": "j1"}, "job_ids"), ({"job_ids": []}, "job_ids"),
                        ({"job_ids": ["j1"], "ttl_seconds": 10**9}, "ttl_seconds"),
                        ({"job_ids": ["j1"], "ttl_seconds": "60"}, "ttl_seconds")):
        refused = api.post("/api/v1/events/tokens", headers=token, json=body)
        assert refused.status_code == 422 and refused.json["fields"][0]["field"] == field
    assert app_events.open_streams("token:shop") == 0  # refused before taking a place


def test_a_stream_asked_for_while_redis_is_down_is_a_503_to_retry(api, r):
    token = bearer(tokens.create("shop", "viewer"))
    assert api.get("/api/v1/jobs/none", headers=token).status_code == 404  # token now cached
    apply_env(REDIS_URL="redis://127.0.0.1:1/0", AUTH_CACHE_SECONDS="60")
    answer = api.get("/api/v1/events", headers=token)
    assert answer.status_code == 503 and answer.headers["Retry-After"]



def test_a_stopping_web_process_ends_its_streams_at_once(stream_env):
    """SIGTERM closes the process's streams, so gunicorn's graceful stop (30 s here) does
    not wait for clients that would never leave."""
    import subprocess
    import sys

    from browser_support import ROOT, wait_for_port

    from backstop import redis_server

    port = redis_server.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--threads", "8", "--graceful-timeout", "30", "--log-level", "warning",
         "app:create_app()"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_for_port(port, proc)
        base = f"http://127.0.0.1:{port}"
        token = tokens.create("shop", "viewer")
        sse = SseClient(base, "/api/v1/events", bearer(token), timeout=40)
        status, sock = upgrade(base, "/api/v1/events/ws", bearer(token))
        assert (sse.status, status) == (200, 101)
        asked = time.monotonic()
        proc.terminate()
        with pytest.raises(EOFError):
            while True:
                sse.next()
        assert proc.wait(20) == 0
        assert time.monotonic() - asked < 10, "the streams held the graceful stop"
        sock.close()
    finally:
        if proc.poll() is None:
            proc.kill()
