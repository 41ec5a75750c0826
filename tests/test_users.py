"""Panel sessions against a real Redis: each ends on its own at its absolute lifetime and after
its idle timeout, whatever the user's other sessions do. The clock users.py reads is moved
by the test; Redis is real."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager

import pytest
from conftest import apply_env

from backstop import config, keys, users

PASSWORD = "correct horse battery"
HOUR, DAY = 3600, 86400


class Clock:
    """Stands in for the time module in backstop.users."""

    def __init__(self):
        self.now = time.time()

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(r, monkeypatch) -> Clock:
    users.create("olga", "owner", PASSWORD)
    fake = Clock()
    monkeypatch.setattr(users, "time", fake)
    return fake


def test_a_session_ends_at_its_absolute_lifetime_however_active(clock, r):
    session_id = users.open_session("olga")
    for _ in range(14 * 2):
        clock.advance(12 * HOUR - 60)
        assert users.session_valid("olga", session_id, touch=True)
    clock.advance(29 * 60)  # just past 14 days since sign-in, last used 29 minutes ago
    assert not users.session_valid("olga", session_id, touch=True)
    assert not r.hexists(keys.user_sessions("olga"), session_id)


def test_a_session_ends_after_its_idle_timeout(clock, r):
    session_id = users.open_session("olga")
    clock.advance(11 * HOUR)
    assert users.session_valid("olga", session_id, touch=True)
    clock.advance(12 * HOUR - 61)
    assert users.session_valid("olga", session_id)
    clock.advance(62)
    assert not users.session_valid("olga", session_id)
    assert not r.hexists(keys.user_sessions("olga"), session_id)


def test_a_background_check_is_not_use(clock):
    session_id = users.open_session("olga")
    for _ in range(12):
        assert users.session_valid("olga", session_id, touch=False)
        clock.advance(HOUR)
    assert not users.session_valid("olga", session_id, touch=False)


@contextmanager
def settings_of(**env: str):
    """These settings for the block, then the defaults again."""
    apply_env(**env)
    try:
        yield
    finally:
        for name in env:
            os.environ.pop(name)
        config.settings.cache_clear()


def test_a_new_sign_in_does_not_extend_the_users_other_sessions(clock, r):
    with settings_of(SESSION_IDLE_SECONDS=str(30 * DAY)):
        first = users.open_session("olga")
        clock.advance(13 * DAY)
        second = users.open_session("olga")
        clock.advance(DAY + 1)
        assert not users.session_valid("olga", first)
        assert users.session_valid("olga", second)


def test_expired_sessions_are_dropped_at_the_next_sign_in(clock, r):
    stale = users.open_session("olga")
    clock.advance(13 * HOUR)
    fresh = users.open_session("olga")
    assert set(r.hkeys(keys.user_sessions("olga"))) == {fresh}
    assert stale != fresh


def test_the_settings_set_both_timeouts_even_short_ones(clock):
    with settings_of(SESSION_LIFETIME_SECONDS="100", SESSION_IDLE_SECONDS="10"):
        active, idle = users.open_session("olga"), users.open_session("olga")
        for _ in range(11):  # used every 9 s: never idle for 10 s
            clock.advance(9)
            assert users.session_valid("olga", active, touch=True)
        assert not users.session_valid("olga", idle)
        clock.advance(9)  # 108 s after sign-in
        assert not users.session_valid("olga", active, touch=True)


@pytest.mark.parametrize("name", ["admin\n", "admin\r\n", "\nadmin", "ad\nmin"])
def test_a_user_name_with_a_line_break_is_refused(r, name):
    with pytest.raises(users.UserError, match="name"):
        users.create(name, "owner", PASSWORD)
    assert r.hlen(keys.users()) == 0


# ---- password hashing costs ----
def test_production_hashes_passwords_with_the_librarys_recommended_argon2_costs():
    from argon2.profiles import RFC_9106_LOW_MEMORY

    defaults = config.Settings({})  # no environment: what production runs with
    assert (defaults.int("password_hash_time_cost"), defaults.int("password_hash_memory_kib"),
            defaults.int("password_hash_parallelism")) == (
        RFC_9106_LOW_MEMORY.time_cost, RFC_9106_LOW_MEMORY.memory_cost,
        RFC_9106_LOW_MEMORY.parallelism) == (3, 65536, 4)


def test_password_hashes_use_the_configured_argon2_costs(r):
    from argon2 import extract_parameters

    users.create("olga", "owner", PASSWORD)
    stored = r.hget(keys.users(), "olga")
    params = extract_parameters(json.loads(stored)["password"])
    assert (params.time_cost, params.memory_cost, params.parallelism) == (1, 8, 1)
    assert users.authenticate("olga", PASSWORD)["name"] == "olga"
    assert users.authenticate("nobody", PASSWORD) is None
