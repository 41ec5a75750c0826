"""The System page's kill switch, outbox and health log in a real browser: an entry appears
live, and an owner switches the mode through the confirmation. Screenshots under
artifacts/screenshots/."""

from __future__ import annotations

import json
import time

from browser_support import shot
from conftest import apply_env
from helpers import browser_sign_in
from playwright.sync_api import expect

from backstop import keys, local_store, system_log

ENTRIES = [
    ("INFO", 3600, "Health changed from degraded to healthy (score 100)",
     {"previous": "degraded", "status": "healthy", "score": 100}),
    ("WARNING", 1500, "Redis unreachable at enqueue: falling back to the outbox",
     {"queue": "email", "policy": "outbox"}),
    ("ERROR", 1490, "Circuit breaker opened after 3 failed calls",
     {"failures": 3, "error": "ConnectionError: Error 111 connecting to 127.0.0.1:6380"}),
    ("INFO", 1380, "412 jobs accepted into the outbox in the minute from 09:14 UTC",
     {"count": 412, "minute": 1_700_000_040}),
    ("INFO", 1300, "Redis is back: drained 1,204 jobs from the outbox in 2.1 s",
     {"drained": 1204, "seconds": 2.1}),
    ("SWITCH", 600, "mode switched from async_queue to sync_direct by user:olga",
     {"mode": "sync_direct", "previous": "async_queue", "actor": "user:olga"}),
]


def seed(r, now: float) -> None:
    for level, age, message, meta in ENTRIES:
        entry = system_log.make_entry(level, message, meta, t=now - age)
        member = system_log.serialized({**entry, "host": "web-1.example", "pid": 4121})
        r.zadd(keys.system_log(), {member: now - age})
        r.zadd(keys.system_log_level(level), {member: now - age})
    r.hset(keys.outbox_hosts(), mapping={
        "web-1.example": json.dumps({"depth": 37, "oldest_at": now - 95, "updated_at": now}),
        "worker-2.example": json.dumps({"depth": 0, "oldest_at": None, "updated_at": now})})


def test_the_system_page_live_and_an_owners_switch(r, tmp_path, live_server, page):
    apply_env(OUTBOX_PATH=str(tmp_path / "outbox.sqlite3"))
    seed(r, time.time())
    browser_sign_in(page, live_server, "olga", "owner")
    page.goto(live_server + "/system")
    page.wait_for_selector("#live-status[data-state=live]")
    expect(page.locator("#system-log li.event")).to_have_count(len(ENTRIES))
    system_log.write("WARNING", "Redis answered slowly: 840 ms", ping_ms=840)
    expect(page.locator("#system-log li.event").first).to_contain_text("840 ms", timeout=5000)
    shot(page, "system-kill-switch")

    page.select_option("select[name=level]", "SWITCH")
    page.wait_for_url("**/system?level=SWITCH")
    expect(page.locator("#system-log li.event")).to_have_count(1)

    page.click("#mode button")
    page.wait_for_selector("[data-confirm-button]")
    shot(page, "system-mode-confirm")
    page.click("[data-confirm-button]")
    page.wait_for_url("**/system")
    expect(page.locator("#mode")).to_have_attribute("data-mode", "sync_direct")
    assert r.hget(keys.system_mode(), "changed_by") == "user:olga"
    shot(page, "system-sync-direct")
    assert page.console_errors == []
    local_store.forget()
