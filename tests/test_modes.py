"""The kill switch across processes: a switch made in one process is obeyed by a web process
within a second, whether it hears the announcement or only re-reads the mode."""

from __future__ import annotations

import json
import time

import pytest
import requests
from conftest import apply_env

from backstop import keys, modes, tokens

pytestmark = pytest.mark.usefixtures("unthrottled")


@pytest.fixture
def unthrottled(r):
    apply_env(BACKSTOP_QUEUES=json.dumps({"system": {"rate_limit": 0}}))


def seconds_until_obeyed(base: str, headers: dict, status: int, limit: float = 3.0) -> float:
    """Post jobs until the server answers with status; how long that took."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        answer = requests.post(f"{base}/api/v1/jobs", headers=headers, timeout=10,
                               json={"job": "test.nap", "payload": {}})
        if answer.status_code == status:
            return time.monotonic() - began
        time.sleep(0.02)
    return float("inf")


def test_a_switch_in_one_process_is_obeyed_by_the_web_process_within_1_s(r, live_server):
    headers = {"Authorization": f"Bearer {tokens.create('ops', 'operator')}"}
    assert requests.post(f"{live_server}/api/v1/jobs", headers=headers,
                         json={"job": "test.nap"}).status_code == 202
    modes.switch("sync_direct", "test")  # this process; the server is another
    to_sync = seconds_until_obeyed(live_server, headers, 201)
    answer = requests.post(f"{live_server}/api/v1/jobs", headers=headers,
                           json={"job": "test.nap", "payload": {"seconds": 0.01}})
    assert answer.json()["result"] == {"slept": 0.01}
    modes.switch("async_queue", "test")
    to_async = seconds_until_obeyed(live_server, headers, 202)
    print(f"obeyed after {to_sync * 1000:.0f} ms (sync_direct), {to_async * 1000:.0f} ms (async)")
    assert to_sync < 1 and to_async < 1, (to_sync, to_async)


def test_a_missed_announcement_is_caught_by_the_re_read_within_1_s(r, live_server):
    headers = {"Authorization": f"Bearer {tokens.create('ops', 'operator')}"}
    assert requests.post(f"{live_server}/api/v1/jobs", headers=headers,
                         json={"job": "test.nap"}).status_code == 202
    r.hset(keys.system_mode(), "mode", "sync_direct")  # written, never published
    took = seconds_until_obeyed(live_server, headers, 201)
    r.delete(keys.system_mode())
    print(f"obeyed after {took * 1000:.0f} ms without the announcement")
    assert took < 1, took


def test_an_unknown_mode_is_refused_and_nothing_changes(r):
    with pytest.raises(ValueError, match="unknown mode 'fast'"):
        modes.switch("fast", "test")
    assert modes.read()["mode"] == "async_queue"


def test_a_switch_is_recorded_with_who_and_when(r):
    before = time.time()
    state = modes.switch("sync_direct", "user:olga")
    assert state["mode"] == "sync_direct" and state["changed_by"] == "user:olga"
    assert state["changed_at"] >= before
    modes.switch("async_queue", "user:olga")
