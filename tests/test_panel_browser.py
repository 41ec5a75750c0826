"""The owner panel in a real browser (Debian's chromium through Playwright), end to end with a
real worker process. Each test saves screenshots under artifacts/screenshots/."""

from __future__ import annotations

import re

import pytest
from browser_support import shot
from conftest import apply_env
from helpers import browser_sign_in
from playwright.sync_api import expect

import tests.jobs_for_tests  # noqa: F401  (the jobs the worker runs)
from backstop import producers, users

ONE_SHOT = {"system": {"attempts": 1, "rate_limit": 0, "backoff_jitter": 0}}
HOSTILE = "<script>alert(1)</script><b hx-get='/logout' hx-trigger='load'>bold</b> {{7*7}}"


def csrf_token(page) -> str:
    return page.locator('meta[name="csrf-token"]').get_attribute("content")


def test_sign_in_and_see_a_queues_numbers(live_server, page):
    for n in range(3):
        producers.enqueue("email.send", {"to": ["a@example.com"], "subject": f"s{n}",
                                         "text": "t"})
    browser_sign_in(page, live_server, "olga", "owner")
    shot(page, "overview")
    page.click("nav >> text=Queues")
    page.wait_for_url("**/queues")
    row = page.locator("#queue-rows tr", has=page.locator("th", has_text="email"))
    expect(row.locator("td").first).to_have_text("3")
    shot(page, "queues")
    page.click("#queue-rows th >> text=email")
    page.wait_for_url("**/queues/email")
    expect(page.locator("#jobs tbody tr")).to_have_count(3)
    shot(page, "queue-detail")
    page.locator("#jobs tbody tr a").first.click()
    page.wait_for_url("**/jobs/*")
    expect(page.locator("#job [data-state]")).to_have_attribute("data-state", "waiting")
    shot(page, "job")
    for path, name in (("/system", "system"), ("/audit", "audit"),
                       ("/dlq/analytics", "dlq-analytics"),
                       ("/dlq/analytics?tab=failures", "dlq-analytics-failures"),
                       ("/dlq/analytics?tab=trends", "dlq-analytics-trends"),
                       ("/dlq/analytics?tab=replays", "dlq-analytics-replays")):
        page.goto(live_server + path)
        shot(page, name)
    assert page.console_errors == []


def test_a_dead_job_appears_live_and_its_replay_completes(live_server, page, workers):
    workers.start("system", ONE_SHOT)
    browser_sign_in(page, live_server, "oscar", "operator")
    page.goto(live_server + "/dlq")
    page.wait_for_selector("#live-status[data-state=live]")
    job_id = producers.enqueue("test.flip", {"label": "invoice-7"})
    row = page.locator(f'tr[data-record="{job_id}"]')
    row.wait_for(timeout=10_000)
    assert "first run of 'invoice-7' fails" in row.inner_text()
    shot(page, "dlq")
    row.locator("a").first.click()
    page.wait_for_url("**/dlq/records/*")
    shot(page, "dlq-record")
    page.click("button[data-action=replay]")
    expect(page.locator(".touches")).to_contain_text("This touches 1 job.")
    shot(page, "confirm")
    page.click("button[data-confirm-button]")
    page.wait_for_url(re.compile(rf".*/jobs/{re.escape(job_id)}:replay1$"))
    page.wait_for_selector('[data-state="completed"]', timeout=15_000)
    shot(page, "replayed-job")
    page.goto(f"{live_server}/dlq/records/{job_id}")
    expect(page.locator("[data-status]")).to_have_attribute("data-status", "resolved")
    assert page.console_errors == []


def test_a_viewer_sees_no_mutating_buttons_and_is_refused(live_server, page):
    [job_id] = [producers.enqueue("email.send", {"to": ["a@example.com"], "subject": "s",
                                                 "text": "t"})]
    browser_sign_in(page, live_server, "vera", "viewer")
    page.goto(live_server + "/queues")
    assert page.locator("button", has_text="Pause").count() == 0
    page.goto(f"{live_server}/jobs/{job_id}")
    assert page.locator("form[method=post] button").count() == 1, "only sign out"
    shot(page, "viewer-job")
    refused = page.request.post(live_server + "/queues/email/pause",
                                headers={"X-CSRFToken": csrf_token(page)})
    assert refused.status == 403


def test_hostile_payloads_are_inert_text(live_server, page):
    job_id = producers.enqueue("email.send", {"to": ["a@example.com"], "subject": HOSTILE,
                                              "text": "t"})
    dialogs: list = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    browser_sign_in(page, live_server, "vera", "viewer")
    page.goto(f"{live_server}/jobs/{job_id}")
    payload = page.locator("pre.code").first.inner_text()
    assert "<script>alert(1)</script>" in payload and "{{7*7}}" in payload
    assert page.locator("b[hx-get]").count() == 0 and dialogs == []
    page.wait_for_timeout(500)
    assert "/jobs/" in page.url, "the hx-get in the payload must not have signed us out"
    shot(page, "hostile-payload")


def test_a_mutation_without_the_csrf_token_is_refused(live_server, page):
    browser_sign_in(page, live_server, "olga", "owner")
    refused = page.request.post(live_server + "/queues/email/pause")
    assert refused.status == 400
    page.goto(live_server + "/queues")
    expect(page.locator("#queue-rows .badge.ok")).to_have_count(6)


def test_persian_pages_are_laid_out_right_to_left(live_server, page):
    browser_sign_in(page, live_server, "olga", "owner")
    page.select_option("select[name=lang]", "fa")
    page.wait_for_selector('html[dir="rtl"]')
    assert page.evaluate("getComputedStyle(document.body).direction") == "rtl"
    assert page.locator("nav.nav a").first.inner_text() == "نمای کلی"
    shot(page, "overview-fa")
    page.click("nav.nav >> text=پیام‌های مرده")
    page.wait_for_url("**/dlq")
    expect(page.locator("html")).to_have_attribute("dir", "rtl")
    shot(page, "dlq-fa")


def test_the_panel_is_usable_on_a_phone(live_server, page):
    page.set_viewport_size({"width": 390, "height": 844})
    browser_sign_in(page, live_server, "olga", "owner")
    page.goto(live_server + "/queues")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400, f"the page scrolls sideways ({width}px)"
    shot(page, "queues-phone")


def test_a_poison_job_page_shows_the_worker_deaths_and_its_isolated_attempts(
        live_server, page, workers, r):
    from conftest import wait_for

    from backstop import dlq

    config = {"system": {"rate_limit": 0, "backoff_jitter": 0, "backoff_base": 0.3}}
    job_id = producers.enqueue("test.crash", {})
    assert workers.start("system", config).wait(15) == 13
    workers.start("system", config)
    wait_for(lambda: dlq.get_record(job_id), timeout=30, what="the DLQ record")
    browser_sign_in(page, live_server, "olga", "owner")
    page.goto(f"{live_server}/jobs/{job_id}")
    expect(page.locator("#job")).to_contain_text("Worker deaths")
    expect(page.locator("#job")).to_contain_text("killed the process running it")
    expect(page.locator("#job .timeline")).to_contain_text("stalled")
    shot(page, "poison-job")


@pytest.fixture
def quick_polls(r):
    apply_env(POLL_SECONDS="1")
    yield
    apply_env(POLL_SECONDS="5")


def test_an_open_page_goes_to_sign_in_when_its_session_ends(quick_polls, live_server, page):
    browser_sign_in(page, live_server, "olga", "owner")
    page.goto(live_server + "/dlq?queue=email")
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    users.revoke_all("olga")  # signed out everywhere (a password change does this)
    # Each polled fragment's 401 sends the page on (the first navigations may be aborted by
    # later ones): wait for where it ends up.
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fdlq%3Fqueue%3Demail$"),
                             timeout=15_000)
    expect(page.locator("input[name=password]")).to_be_visible()
    assert page.locator("#dlq-rows").count() == 0, "no fragment left on a dead session"
    shot(page, "session-ended")


def test_an_owner_sees_where_an_edit_would_send_a_secret_and_a_poison_record(
        live_server, page, tmp_path):
    import json
    import time

    from backstop import dlq
    from backstop.hueys import huey_for

    hook = {"url": "https://hooks.example/in", "event": "order.paid", "secret": "whsec-victim"}
    dlq.write_records([({"id": "wh-1", "queue": "plugins", "job": "plugins.webhook.deliver",
                         "payload": hook}, {"type": "WebhookError", "message": "500",
                                            "stack": "", "code": ""}, 1, time.time())])
    browser_sign_in(page, live_server, "olga", "owner")
    page.goto(live_server + "/dlq/records/wh-1")
    edited = {**dlq.get_record("wh-1")["payload"], "url": "https://evil.example/in"}
    page.fill("textarea[name=payload]", json.dumps(edited, indent=2))
    page.click("text=Check and show the diff")
    warning = page.locator("[data-resend]")
    expect(warning).to_contain_text("secret")
    expect(warning).to_contain_text("https://evil.example/in")
    assert "whsec-victim" not in page.content()
    shot(page, "dlq-edit-resend")
    huey_for("plugins").storage.conn.rpush(huey_for("plugins").storage.queue_key,
                                           b"not a message at all")
    from backstop.runner import WorkerProcess

    assert WorkerProcess(("plugins",)).run_next("plugins")  # START parks it, then the DLQ
    [poison] = [rec for rec in dlq.page().items if rec["id"].startswith("poison-")]
    page.goto(live_server + f"/dlq/records/{poison['id']}")
    expect(page.locator("body")).to_contain_text("PoisonMessage")
    expect(page.locator("body")).to_contain_text("not a Backstop message frame")
    expect(page.locator("[data-action=replay]")).to_have_count(0)  # nothing to replay
    expect(page.locator("text=Delete")).to_be_visible()
    shot(page, "dlq-poison")


def test_replay_selected_goes_through_its_confirmation_and_says_how_many(live_server, page):
    from dlq_helpers import make_dead

    from backstop import registry

    ids = make_dead([{"cause": 1, "n": n} for n in range(2)])
    browser_sign_in(page, live_server, "oscar", "operator")
    page.goto(live_server + "/dlq")
    for record_id in ids:
        page.check(f'input[name=ids][value="{record_id}"]')
    page.click("button[name=action][value=replay]")
    expect(page.locator(".touches")).to_contain_text("This touches 2 jobs.")
    shot(page, "dlq-bulk-confirm")
    page.click("button[data-confirm-button]")
    page.wait_for_url("**/dlq")
    expect(page.locator("#toasts .toast.ok")).to_contain_text("2 of 2 records done.")
    shot(page, "dlq-bulk-replayed")
    assert [registry.get_job(f"{i}:replay1")["state"] for i in ids] == ["waiting"] * 2
    assert page.console_errors == []
