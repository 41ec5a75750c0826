"""Callers stay authenticated through a Redis outage (backstop.auth_cache): API tokens and
panel sessions a process verified lately hold while their Redis is stopped, revocations in
the process hold at once and elsewhere within AUTH_CACHE_SECONDS, and nothing else on an API
request's path waits for the Redis that is gone. Real Redis servers, stopped by the test."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest
import redis
from chaos import OwnRedis
from conftest import apply_env
from flask import g
from flask_login import current_user
from helpers import panel_app, signed_in

from backstop import auth_cache, keys, tokens, users
from web.auth import require_role, require_token

PROBE = "/api/v1/jobs/no-such-job"  # needs Redis for the record: 503 from the view, past auth


@pytest.fixture(autouse=True)
def _nothing_trusted_yet():
    auth_cache.forget()
    yield
    auth_cache.forget()


@pytest.fixture
def own(tmp_path, redis_url):
    """A Redis of this test's own, which it may stop; short timeouts while it is down."""
    server = OwnRedis(tmp_path / "redis")
    apply_env(REDIS_URL=server.url, REDIS_CONNECT_TIMEOUT="1", REDIS_SOCKET_TIMEOUT="1")
    try:
        yield server
    finally:
        apply_env(REDIS_URL=redis_url)
        server.stop()


def api_client():
    from app import create_app

    app = create_app()
    app.add_url_rule("/api/v1/whoami", "api.whoami", require_token("viewer")(lambda: g.actor))
    return app.test_client()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def hget_calls(r: redis.Redis, verifying, times: int = 100) -> int:
    """HGETs Redis served while verifying() ran times over: the verifications' own, plus the
    few a background thread (the mode watcher's re-read) may make meanwhile."""
    r.config_resetstat()
    assert all(verifying() for _ in range(times))
    return int(r.info("commandstats").get("cmdstat_hget", {}).get("calls", 0))


# ---- API tokens ----
def test_a_verified_token_keeps_working_while_its_redis_is_stopped(own):
    api, token = api_client(), tokens.create("ci", "operator")
    assert api.get(PROBE, headers=bearer(token)).status_code == 404
    own.stop()
    assert api.get(PROBE, headers=bearer(token)).status_code == 503  # auth passed; the view
    whoami = api.get("/api/v1/whoami", headers=bearer(token))
    assert (whoami.status_code, whoami.get_data(as_text=True)) == (200, "token:ci")


def test_a_token_never_seen_before_the_outage_never_passes_during_it(own):
    api, token = api_client(), tokens.create("ci", "operator")
    own.stop()
    for path in (PROBE, "/api/v1/whoami"):
        assert api.get(path, headers=bearer(token)).status_code in (401, 503)
    assert api.get("/api/v1/whoami", headers=bearer("bst_forged")).status_code in (401, 503)


def test_within_the_ttl_a_verified_token_costs_no_redis_call(r):
    token = tokens.create("ci", "operator")
    assert tokens.verify(token)["role"] == "operator"
    assert hget_calls(r, lambda: tokens.verify(token)["name"] == "ci") < 10


def test_an_unknown_token_is_asked_of_redis_every_time(r):
    token = tokens.create("ci", "operator")
    [(digest, info)] = r.hgetall(keys.api_tokens()).items()
    r.hdel(keys.api_tokens(), digest)
    assert tokens.verify(token) is None
    r.hset(keys.api_tokens(), digest, info)  # nothing negative was kept: it works at once
    assert tokens.verify(token)["name"] == "ci"


def test_a_revocation_elsewhere_is_obeyed_once_the_ttl_has_passed(r):
    apply_env(AUTH_CACHE_SECONDS="1")
    token = tokens.create("ci", "operator")
    assert tokens.verify(token)
    r.delete(keys.api_tokens())  # as another process's tokens.revoke does
    assert tokens.verify(token), "trusted for up to AUTH_CACHE_SECONDS"
    time.sleep(1.1)
    assert tokens.verify(token) is None


def test_a_revocation_in_this_process_is_obeyed_at_once(r):
    api, token = api_client(), tokens.create("ci", "operator")
    kept = tokens.create("other", "operator")
    assert api.get("/api/v1/whoami", headers=bearer(token)).status_code == 200
    assert tokens.verify(kept)
    assert tokens.revoke("ci") == 1
    assert api.get("/api/v1/whoami", headers=bearer(token)).status_code == 401
    assert hget_calls(r, lambda: tokens.verify(kept)) < 10, "other tokens stay trusted"


def test_auth_cache_seconds_0_asks_redis_every_time(r):
    apply_env(AUTH_CACHE_SECONDS="0")
    token = tokens.create("ci", "operator")
    assert hget_calls(r, lambda: tokens.verify(token)) >= 100


# ---- panel sessions and users ----
def panel_with_probe():
    """The panel, with a page that needs a session and nothing else from Redis."""
    app = panel_app(("olga",))
    app.add_url_rule("/whoami", "whoami", require_role("viewer")(lambda: current_user.name))
    return app


def test_a_panel_session_signed_in_before_the_outage_holds_during_it(own):
    olga = signed_in(panel_with_probe(), "olga")
    assert olga.get("/whoami").get_data(as_text=True) == "olga"
    own.stop()
    whoami = olga.get("/whoami")
    assert (whoami.status_code, whoami.get_data(as_text=True)) == (200, "olga")
    overview = olga.get("/overview")  # needs Redis: an error page, not the sign-in page
    assert overview.status_code == 503 and "/login" not in overview.headers.get("Location", "")


def test_a_session_closed_in_this_process_is_refused_at_once_even_during_the_outage(own):
    olga = signed_in(panel_with_probe(), "olga")
    assert olga.get("/whoami").status_code == 200
    [session_id] = own.client.hkeys(keys.user_sessions("olga"))
    own.stop()
    with pytest.raises(redis.ConnectionError):
        users.close_session("olga", session_id)  # Redis cannot take it; this process can
    assert olga.get("/whoami").status_code == 503


@pytest.mark.parametrize("revoke", [
    lambda: users.revoke_all("olga"),
    lambda: users.set_role("olga", "viewer"),
    lambda: users.delete("olga"),
    lambda: users.set_password("olga", "another good password"),
], ids=["revoke_all", "set_role", "delete", "set_password"])
def test_revoking_in_this_process_drops_what_it_trusted(own, revoke):
    olga = signed_in(panel_with_probe(), "olga")
    assert olga.get("/whoami").status_code == 200
    revoke()
    own.stop()
    assert olga.get("/whoami").status_code == 503  # Redis must be asked, and cannot answer


def test_a_users_record_falls_back_only_while_redis_cannot_answer(own):
    users.create("olga", "owner", "correct horse battery")
    assert users.get("olga")["role"] == "owner"
    own.client.hset(keys.users(), "olga", own.client.hget(keys.users(), "olga").replace(
        '"owner"', '"viewer"'))  # changed by another process
    assert users.get("olga")["role"] == "viewer", "Redis is read while it answers"
    own.stop()
    assert users.get("olga")["role"] == "viewer"
    with pytest.raises(redis.ConnectionError):
        users.get("oscar")



def test_a_user_deleted_or_changed_here_is_not_answered_from_memory(own):
    users.create("olga", "owner", "correct horse battery")
    users.create("oscar", "operator", "correct horse battery")
    assert users.get("olga") and users.get("oscar")
    users.delete("olga")
    users.set_role("oscar", "viewer")
    own.stop()
    for name in ("olga", "oscar"):
        with pytest.raises(redis.ConnectionError):
            users.get(name)


def test_a_redis_error_that_is_no_outage_is_never_answered_from_memory(own):
    users.create("olga", "owner", "correct horse battery")
    assert users.get("olga")
    own.client.delete(keys.users())
    own.client.set(keys.users(), "not a hash")  # HGET now fails with WRONGTYPE: a bug
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        users.get("olga")


def test_a_session_found_closed_is_not_revived_by_a_later_outage(own):
    olga = signed_in(panel_with_probe(), "olga")
    assert olga.get("/whoami").status_code == 200
    own.client.delete(keys.user_sessions("olga"))  # signed out by another process
    assert olga.get("/whoami").status_code == 302
    own.stop()
    assert olga.get("/whoami").status_code != 200

# ---- nothing else on the request path waits for the Redis that is gone ----
class BlackHole:
    """Listens on a port and never accepts, its backlog full: a connection attempt gets no
    answer at all and waits for its connect timeout, as with a host that has vanished."""

    def __init__(self, port: int):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(0)
        self.fillers = [self._knock(port) for _ in range(4)]

    @staticmethod
    def _knock(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        return sock

    def close(self) -> None:
        for sock in (self.listener, *self.fillers):
            sock.close()


def timed_requests(api, headers: dict, count: int) -> list[tuple[int, float]]:
    answers = []
    for _ in range(count):
        started = time.perf_counter()
        status = api.get("/api/v1/whoami", headers=headers).status_code
        answers.append((status, time.perf_counter() - started))
        time.sleep(0.05)
    return answers


@pytest.mark.parametrize("outage", ["stopped", "vanished"])
def test_during_an_outage_api_requests_are_neither_refused_nor_slowed(own, outage):
    api, token = api_client(), tokens.create("ci", "operator")
    assert api.get("/api/v1/whoami", headers=bearer(token)).status_code == 200
    own.stop()  # connections are refused at once
    hole = BlackHole(own.port) if outage == "vanished" else None  # ... or never answered
    try:
        answers = timed_requests(api, bearer(token), 30)
    finally:
        if hole:
            hole.close()
    assert {status for status, _ in answers} == {200}, answers
    # The rate limiter pays its own 1 s timeout as it finds Redis gone, then now and then as
    # it probes whether Redis is back (after 1, 2, 4 ... s): never on every request.
    slow = [seconds for _, seconds in answers if seconds >= 0.5]
    assert len(slow) <= 3, answers


# ---- the cache itself ----
def test_the_cache_is_bounded_and_forgets_the_oldest_first(r):
    cache = auth_cache.TrustCache(max_entries=3)
    for n in range(4):
        cache.put(n, n)
    assert [cache.get(n) for n in range(4)] == [None, 1, 2, 3] and len(cache) == 3


def test_a_forked_child_trusts_nothing_its_parent_verified_and_never_deadlocks(r):
    token = tokens.create("ci", "operator")
    assert tokens.verify(token)
    held = threading.Event()
    release = threading.Event()

    def hold_the_lock():
        with tokens._verified._lock:
            held.set()
            release.wait(10)

    threading.Thread(target=hold_the_lock, daemon=True).start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: a lock held by a parent's thread would never be released here
        signal.alarm(5)
        os._exit(0 if len(tokens._verified) == 0 and tokens._verified.get("x") is None else 1)
    release.set()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(tokens._verified) == 1, "the parent keeps its own"
