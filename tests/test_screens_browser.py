"""Every panel page at a desk (1440 px) and on a phone (390 px), in English and Persian, in a real
browser over seeded data: screenshots under artifacts/screenshots/screen-<lang>-<width>-<page>,
and the layout promises a screenshot can only show (nothing runs off a phone's screen, a dead
letter is a short card, code reads left to right in Persian, the chart's labels fit)."""

from __future__ import annotations

import json
import os
import re
import time
from itertools import pairwise

import pytest
from browser_support import SCREENSHOTS, shot
from chart_data import seed_two_days
from conftest import apply_env
from helpers import browser_sign_in_as, create_panel_users

import tests.jobs_for_tests  # noqa: F401  (the jobs the seeding runs)
from backstop import alerts, connection, dlq, keys, notify, producers, redrive, registry, schedules
from backstop.contracts import QUEUES
from backstop.dates import format_when
from backstop.dlq import Filters
from backstop.hueys import huey_for
from backstop.runner import Running, WorkerProcess

DESK, PHONE = 1440, 390
LONG_NOTE = "customer asked twice; " * 20


def run_system_jobs(config: dict) -> None:
    """Run every waiting system job once, in this process, under the queue config given."""
    apply_env(BACKSTOP_QUEUES=json.dumps({"system": {"rate_limit": 0, **config}}))
    worker = WorkerProcess(("system",))
    huey_for("system").storage.processing_key = keys.processing(worker.id, "system")
    while worker.run_next("system"):
        pass


def seed() -> dict:
    """Jobs in several states, 24 dead letters over a day, their events; returns ids to visit."""
    create_panel_users(only=("olga",))
    producers.enqueue("email.send", {"to": ["ana@example.com"], "subject": "Hi", "text": "x"})
    producers.enqueue("email.send", {"to": ["bo@example.com"], "subject": "Later", "text": "x"},
                      delay=3600)
    done = producers.enqueue("test.work", {})
    producers.enqueue("test.fail", {})
    schedules.Ticker(QUEUES).tick()  # the System page's scheduled jobs and health log
    run_system_jobs({"attempts": 3, "backoff_base": 600})
    dead = producers.enqueue_many([{"job": "test.flaky", "payload": {"cause": 1 + n % 3, "n": n}}
                                   for n in range(3)])
    run_system_jobs({"attempts": 1})
    write_old_records(21)
    started = redrive.start("olga", Filters(queue="email"), rate=1)
    redrive.cancel(started["id"], "olga")
    seed_alerts()  # before the seeded worker: its rules see no live worker
    seed_metrics()
    return {"job": done, "dead": dead[0]}


def seed_alerts() -> None:
    """An alert that fired and resolved, one firing, and delivery attempts (recorded here: no
    target is contacted)."""
    alerts.create_rule({"id": "system-failures", "kind": "failures", "queue": "system",
                        "threshold": 1, "window_seconds": 60})
    now = time.time()
    alerts.evaluate("seed-worker", now=now)
    alerts.evaluate("seed-worker", now=now + 130)  # the failures left the window; no worker
    alerts.update_rule("system-failures", {"webhooks": ["https://hooks.example.com/T0/B0/x"],
                                           "mail_to": ["oncall@example.com"]})
    fired = alerts.history()[-1]
    notify._record(fired, "webhook", "https://hooks.example.com/…", 1, False, "answered 503",
                   time.monotonic())
    notify._record(fired, "webhook", "https://hooks.example.com/…", 2, True, "answered 200",
                   time.monotonic())
    notify._record(fired, "mail", "oncall@example.com", 1, True, "accepted", time.monotonic())


def seed_metrics() -> None:
    """Two days of metrics on the email and system queues (the charts), and a worker that
    has been running an email job for 3 h 25 min (running now; a long duration to lay out)."""
    client = connection.client()
    seed_two_days(client, "email", ("email.send", "email.otp.send"), time.time())
    seed_two_days(client, "system", ("test.work",), time.time(), seed=3)
    apply_env(WORKER_HEARTBEAT_TTL="3600")  # alive for the whole test
    worker = WorkerProcess(("email", "system"))
    job_id = producers.enqueue("email.send", {"to": ["cy@example.com"], "subject": "Hi",
                                              "text": "x"})
    worker.running[1] = Running(job_id, "email", "email.send", b"", 1, time.time() + 300, "t",
                                since=time.time() - 12_345, thread="email-2")
    worker.beat()
    os.environ.pop("WORKER_HEARTBEAT_TTL")  # the beat's key keeps its hour; later tests do not
    apply_env()


def write_old_records(count: int) -> None:
    """count dead letters spread over the last day, one with a long payload and error."""
    now = time.time()
    error = {"type": "TimeoutError", "stack": "Traceback (most recent call last):\n  ...",
             "code": "E504"}
    items = [({"id": f"order-{n:04d}-a1b2c3d4e5f6", "queue": "email", "job": "email.send",
               "payload": {"to": [f"user{n}@example.com"], "subject": "Receipt",
                           "text": LONG_NOTE if n == 0 else "Thanks"}},
              {**error, "message": f"smtp.example.com:587 timed out after {n * 250} ms"
                                   + (" " + LONG_NOTE if n == 0 else "")},
              3, now - n * 3600 - 60) for n in range(count)]
    dlq.write_records(items)


def new_page(browser, lang: str, width: int, base: str):
    context = browser.new_context(viewport={"width": width, "height": 860})
    context.set_default_timeout(15_000)
    context.add_cookies([{"name": "lang", "value": lang, "url": base}])
    return context.new_page()


def pages(ids: dict) -> list[tuple[str, str]]:
    """(name, path) of every GET page worth a screenshot."""
    return [("overview", "/overview"), ("queues", "/queues"), ("queue", "/queues/system"),
            ("queue-charts", "/queues/email"), ("queue-charts-48h", "/queues/email?hours=48"),
            ("queue-dead", "/queues/system?state=dead"), ("job", f"/jobs/{ids['job']}"),
            ("dead-job", f"/jobs/{ids['dead']}"), ("dlq", "/dlq"),
            ("dlq-record", f"/dlq/records/{ids['dead']}"),
            ("dlq-analytics", "/dlq/analytics"),
            ("dlq-analytics-failures", "/dlq/analytics?tab=failures"),
            ("dlq-analytics-trends", "/dlq/analytics?tab=trends"),
            ("dlq-analytics-replays", "/dlq/analytics?tab=replays"),
            ("system", "/system"), ("audit", "/audit"), ("alerts", "/alerts"),
            ("error", "/jobs/does-not-exist")]


def overflow(page) -> int:
    """How far the page is wider than the viewport (0 when nothing runs off the screen)."""
    return page.evaluate("document.scrollingElement.scrollWidth - window.innerWidth")


def visit_all(browser, base: str, ids: dict, lang: str, width: int) -> dict[str, int]:
    """Screenshot every page in lang at width; return each page's horizontal overflow."""
    page = new_page(browser, lang, width, base)
    prefix = f"screen-{lang}-{width}-"
    page.goto(base + "/login")
    shot(page, prefix + "login")
    browser_sign_in_as(page, base, "olga")
    overflows = {}
    for name, path in pages(ids):
        page.goto(base + path)
        shot(page, prefix + name)
        overflows[name] = overflow(page)
    page.goto(base + f"/dlq/records/{ids['dead']}")
    page.fill("textarea[name=payload]", json.dumps({"cause": 0, "n": 7}, indent=2))
    page.click("text=" + ("Check and show the diff" if lang == "en" else "بررسی و نمایش تفاوت"))
    page.wait_for_url("**/edit")
    shot(page, prefix + "dlq-edit-preview")
    overflows["dlq-edit-preview"] = overflow(page)
    page.goto(base + f"/dlq/records/{ids['dead']}")
    page.click("button[data-action=replay]")
    page.wait_for_selector("[data-confirm-button]")
    shot(page, prefix + "confirm")
    overflows["confirm"] = overflow(page)
    page.context.close()
    return overflows


def test_every_page_in_both_languages_at_a_desk_and_on_a_phone(live_server, browser):
    ids = seed()
    for lang in ("en", "fa"):
        for width in (DESK, PHONE):
            overflows = visit_all(browser, live_server, ids, lang, width)
            assert {name: px for name, px in overflows.items() if px > 0} == {}, (lang, width)


@pytest.fixture
def seeded(live_server):
    """(base URL, ids) of a live server over seeded data."""
    return live_server, seed()


@pytest.fixture
def signed_in_page(seeded, browser):
    """Open a signed-in page in a language at a width; closed before the server stops."""
    opened = []

    def open_page(lang: str, width: int):
        page = new_page(browser, lang, width, seeded[0])
        opened.append(page)
        browser_sign_in_as(page, seeded[0], "olga")
        return page

    yield open_page
    for page in opened:
        page.context.close()


def boxes(page, selector: str) -> list[dict]:
    """Bounding boxes of every element matching selector, read at one instant (a live push
    may swap the elements between two reads)."""
    return page.evaluate("""(selector) => [...document.querySelectorAll(selector)].map((el) => {
        const r = el.getBoundingClientRect();
        return {x: r.x, y: r.y, width: r.width, height: r.height};
      })""", selector)


def direction(page, selector: str) -> str:
    return page.evaluate("(s) => getComputedStyle(document.querySelector(s)).direction", selector)


def text_boxes(page, selector: str) -> list[dict]:
    """The bounding boxes of the text (not the boxes) of every element matching selector."""
    return page.evaluate("""(selector) => [...document.querySelectorAll(selector)]
        .filter((el) => el.textContent.trim()).map((el) => {
          const range = document.createRange(); range.selectNodeContents(el);
          const r = range.getBoundingClientRect();
          return {left: r.left, right: r.right, top: r.top, bottom: r.bottom};
        })""", selector)


@pytest.mark.parametrize("lang", ["en", "fa"])
def test_on_a_phone_a_dead_letter_is_a_short_card_and_no_column_is_off_screen(
        seeded, signed_in_page, lang):
    base, _ = seeded
    page = signed_in_page(lang, PHONE)
    page.goto(base + "/dlq")
    heights = [box["height"] for box in boxes(page, "tr[data-record]")]
    assert len(heights) == 24 and max(heights) < 200, heights
    for path, cells in (("/queues", "#queue-rows td, #queue-rows th"),
                        ("/overview", "#pulse td, #pulse th, #running td, #events li > *"),
                        ("/queues/email?hours=6", "#queue-figures td, #charts figure"),
                        ("/queues/system?state=dead", "#jobs td"),
                        ("/system", "#workers td, #schedules td, #health-log li > *")):
        page.goto(base + path)
        assert overflow(page) <= 0, path
        off = [b for b in boxes(page, cells) if b["x"] < 0 or b["x"] + b["width"] > PHONE + 0.5]
        assert off == [], (path, off[:3])


def test_in_persian_code_json_ids_and_errors_read_left_to_right(seeded, signed_in_page):
    base, ids = seeded
    page = signed_in_page("fa", DESK)
    page.goto(base + f"/dlq/records/{ids['dead']}")
    assert direction(page, "html") == "rtl"
    for selector in ("textarea[name=payload]", "pre[data-payload]", "#dlq-record dd.error-text",
                     "h1 code"):
        assert direction(page, selector) == "ltr", selector
    page.goto(base + "/dlq")
    assert direction(page, "tr[data-record] .error-cell") == "ltr"


def test_in_persian_units_follow_numbers_and_run_time_words_are_translated(seeded,
                                                                          signed_in_page):
    base, _ = seeded
    page = signed_in_page("fa", DESK)
    page.goto(base + "/overview")
    ping = page.locator("#health .stat").first.locator(".value").inner_text()
    assert re.fullmatch(r"[\d.]+ میلی‌ثانیه", ping), ping
    assert "(مالک)" in page.locator(".topbar").inner_text()
    events = page.locator("#events").inner_text()
    assert "اجرای گروهی لغو شد" in events and "redrive.cancelled" not in events
    page.goto(base + "/dlq/analytics?tab=trends")
    assert "24 ساعت" in page.locator(".tabs.small").inner_text()


@pytest.mark.parametrize("width", [DESK, PHONE])
def test_the_trend_chart_has_gridlines_and_every_label_inside_it(seeded, signed_in_page, width):
    base, _ = seeded
    page = signed_in_page("en", width)
    page.goto(base + "/dlq/analytics?tab=trends")
    card = page.locator("section.card", has=page.locator(".chart")).bounding_box()
    labels = text_boxes(page, ".chart-x span, .chart-y span")
    assert len(labels) >= 6
    outside = [b for b in labels if b["left"] < card["x"] or b["right"] > card["x"] + card["width"]
               or b["top"] < card["y"] or b["bottom"] > card["y"] + card["height"]]
    assert outside == []
    assert page.locator(".chart-x span").last.inner_text().endswith(":00")  # the latest hour
    assert page.locator(".chart-plot line.grid").count() == 4
    assert page.locator(".chart-y span").all_inner_texts() == ["4", "3", "2", "1", "0"]
    sizes = page.eval_on_selector_all(".chart-x span, .chart-y span",
                                      "(els) => els.map((el) => getComputedStyle(el).fontSize)")
    assert set(sizes) == {"12px"}


def button_colour(page) -> str:
    return page.eval_on_selector("[data-confirm-button]",
                                 "(el) => getComputedStyle(el).backgroundColor")


def test_only_destructive_confirmations_are_red(seeded, signed_in_page):
    base, ids = seeded
    page = signed_in_page("en", DESK)
    colours = {}
    for name, button in (("replay", "button[data-action=replay]"), ("delete", "button.danger")):
        page.goto(base + f"/dlq/records/{ids['dead']}")
        page.click(button)
        page.wait_for_selector("[data-confirm-button]")
        colours[name] = button_colour(page)
    assert colours == {"replay": "rgb(37, 99, 235)", "delete": "rgb(185, 28, 28)"}


def test_a_message_covers_no_button_and_can_be_dismissed(seeded, signed_in_page):
    base, _ = seeded
    page = signed_in_page("en", DESK)
    page.goto(base + "/queues/email")
    page.click("main button >> text=Pause")
    toast = page.locator("#toasts .toast")
    toast.wait_for()
    box = toast.bounding_box()
    covered = [b for b in boxes(page, "main button, main a.button, main input, main select")
               if b["x"] < box["x"] + box["width"] and box["x"] < b["x"] + b["width"]
               and b["y"] < box["y"] + box["height"] and box["y"] < b["y"] + b["height"]]
    assert covered == []
    toast.locator("[data-dismiss]").click()
    assert page.locator("#toasts .toast").count() == 0


def test_a_finished_search_says_how_many_matched(seeded, signed_in_page):
    base, _ = seeded
    page = signed_in_page("en", DESK)
    page.goto(base + "/dlq?q=smtp.example.com")
    summary = page.locator("#dlq-rows > form > p").inner_text()
    assert summary == "21 records match.", summary


def test_times_are_shown_in_the_browsers_time_zone(seeded, browser):
    base, ids = seeded
    context = browser.new_context(viewport={"width": DESK, "height": 860},
                                  timezone_id="Asia/Tehran")
    try:
        page = context.new_page()
        # the first page tells the server the zone, in a cookie
        browser_sign_in_as(page, base, "olga")
        assert {c["name"]: c["value"] for c in context.cookies()}["tz"] == "Asia/Tehran"
        page.goto(base + f"/jobs/{ids['job']}")
        created = registry.get_job(ids["job"])["created_at"]
        shown = page.locator("#job dt:has-text('Created') + dd").inner_text()
        assert shown == format_when(created, "en", "Asia/Tehran") != format_when(created, "en",
                                                                                   "UTC")
    finally:
        context.close()


CHART_GEOMETRY = """() => {
  const box = (el) => { const r = el.getBoundingClientRect();
                        return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; };
  return {card: box(document.querySelector('#charts')),
          figures: [...document.querySelectorAll('#charts figure.chart.series:not(.empty)')]
            .map((fig) => ({plot: box(fig.querySelector('.chart-plot')),
                            axis: box(fig.querySelector('.chart-y')),
                            times: [...fig.querySelectorAll('.chart-times text')]
                              .filter((el) => getComputedStyle(el).display !== 'none')
                              .map((el) => ({...box(el), size: getComputedStyle(el).fontSize}))}))};
}"""


@pytest.mark.parametrize("lang", ["en", "fa"])
@pytest.mark.parametrize("width", [DESK, PHONE])
def test_the_queue_charts_read_at_a_desk_and_on_a_phone_in_both_directions(
        seeded, signed_in_page, lang, width):
    """Four charts whose time labels stay inside their card without touching each other, time
    running left to right in both languages, the value axis on the reading side, text that
    keeps its size on a phone. (Read at one instant: a live push may swap the charts.)"""
    base, _ = seeded
    page = signed_in_page(lang, width)
    page.goto(base + "/queues/email?hours=6")
    seen = page.evaluate(CHART_GEOMETRY)
    card = seen["card"]
    page.screenshot(path=str(SCREENSHOTS / f"charts-{lang}-{width}.png"), full_page=True,
                    clip={"x": card["left"], "y": card["top"] + page.evaluate("scrollY"),
                          "width": card["right"] - card["left"],
                          "height": card["bottom"] - card["top"]})
    assert overflow(page) <= 0
    assert len(seen["figures"]) == 4, "the backlog was recorded every minute: four charts"
    for figure in seen["figures"]:
        on_the_right = figure["axis"]["left"] >= figure["plot"]["right"] - 1
        assert on_the_right == (lang == "fa"), "the value axis stands on the reading side"
        times = figure["times"]
        assert 3 <= len(times) <= 7, times
        assert all(a["right"] + 4 <= b["left"] for a, b in pairwise(times)), \
            "labels apart, earlier ones to the left"
        assert all(card["left"] <= b["left"] and b["right"] <= card["right"] for b in times)
        assert {b["size"] for b in times} == {"12px"}, "text does not shrink on a phone"
