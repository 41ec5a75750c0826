"""The page registry: one context builder per page, and what every refresh keeps; the panel's
errors as styled, translated pages (the API's as JSON)."""

from __future__ import annotations

import html
import re

import pytest
import requests
from dlq_helpers import make_dead
from helpers import signed_in
from test_live_socket import first_frame_but_pings, handshake, plain_http, session_cookie
from test_panel import app

from backstop import producers, registry, replay
from backstop.dlq import DlqError

__all__ = ["app", "plain_http"]
MAIL = {"to": ["a@example.com"], "subject": "s", "text": "t"}


def ws_query(page: str) -> str:
    """The query string of the page's ws-connect URL (what the socket is asked for)."""
    url = html.unescape(re.search(r'ws-connect="([^"]+)"', page).group(1))
    return url.partition("?")[2]


def poll_url(page: str, element_id: str) -> str:
    """The data-poll URL of the element with this id."""
    tag = re.search(rf'<[^>]*id="{element_id}"[^>]*>', page).group(0)
    return html.unescape(re.search(r'data-poll="([^"]+)"', tag).group(1))


def job_ids(text: str, among: list[str]) -> set[str]:
    return {job_id for job_id in among if job_id in text}


def signed_in_session(base: str) -> requests.Session:
    browser = requests.Session()
    cookie = session_cookie(base)
    for part in cookie.split("; "):
        name, _, value = part.partition("=")
        browser.cookies.set(name, value)
    browser.cookie_header = cookie
    return browser


def test_page_two_of_a_queue_survives_a_poll_and_a_push(plain_http, live_server):
    ids = [producers.enqueue("email.send", MAIL) for _ in range(30)]
    browser = signed_in_session(live_server)
    page = browser.get(live_server + "/queues/email?offset=25").text
    second_page = job_ids(page, ids)
    assert len(second_page) == 5 and second_page == set(ids[:5]), "newest first: 25 per page"

    polled = browser.get(live_server + poll_url(page, "jobs")).text
    assert job_ids(polled, ids) == second_page, "a poll keeps offset=25"

    status, sock = handshake(live_server, ws_query(page), live_server, browser.cookie_header)
    assert status == 101
    producers.enqueue("email.send", MAIL)  # an event on the queue: a push is due
    _, pushed = first_frame_but_pings(sock)
    # The new job moves everything down one place: offset 25 now starts one job earlier.
    assert job_ids(pushed.decode(), ids) == set(ids[:6]), "a push keeps offset=25"
    sock.close()


def test_the_dlq_cursor_and_filters_survive_a_poll_and_a_push(plain_http, live_server):
    make_dead([{"cause": 1, "n": n} for n in range(60)])
    browser = signed_in_session(live_server)
    first = browser.get(live_server + "/dlq?queue=system").text
    older = html.unescape(re.search(r'<nav class="pager">.*?href="([^"]+)"', first, re.S).group(1))
    page = browser.get(live_server + older).text
    on_page_two = set(re.findall(r'data-record="([^"]+)"', page))
    assert len(on_page_two) == 10, "50 on the first page, the other 10 on the second"

    polled = browser.get(live_server + poll_url(page, "dlq-rows")).text
    assert set(re.findall(r'data-record="([^"]+)"', polled)) == on_page_two

    status, sock = handshake(live_server, ws_query(page), live_server, browser.cookie_header)
    assert status == 101
    producers.enqueue("email.send", MAIL)
    _, pushed = first_frame_but_pings(sock)
    assert set(re.findall(r'data-record="([^"]+)"', pushed.decode())) == on_page_two
    sock.close()


def test_the_overview_severity_filter_survives_a_poll_and_a_push(plain_http, live_server):
    calm = producers.enqueue("email.send", MAIL)  # an "enqueued" event: severity info
    browser = signed_in_session(live_server)
    page = browser.get(live_server + "/overview?level=error").text
    assert calm not in page.split('id="events"')[1]
    assert calm not in browser.get(live_server + poll_url(page, "events")).text.split(
        'id="events"')[1]

    status, sock = handshake(live_server, ws_query(page), live_server, browser.cookie_header)
    assert status == 101
    producers.enqueue("email.send", MAIL)
    _, pushed = first_frame_but_pings(sock)
    events = pushed.decode().split('id="events"')[1]
    assert calm not in events, "the push keeps level=error"
    assert 'id="events"' in pushed.decode()
    sock.close()


@pytest.mark.parametrize("path", ["/jobs/does-not-exist", "/queues/nope",
                                  "/dlq/records/nope", "/no/such/page"])
def test_a_missing_thing_is_a_styled_translated_page(plain_http, live_server, path):
    browser = signed_in_session(live_server)
    english = browser.get(live_server + path)
    assert english.status_code == 404
    assert english.headers["Content-Type"].startswith("text/html")
    assert 'class="nav"' in english.text, "the navigation is there"
    assert "Not found" in english.text and "Werkzeug" not in english.text
    browser.cookies.set("lang", "fa")
    persian = browser.get(live_server + path)
    assert persian.status_code == 404 and 'dir="rtl"' in persian.text
    assert "Not found" not in persian.text and "یافت نشد" in persian.text


def test_api_errors_stay_json(plain_http, live_server):
    missing = requests.get(live_server + "/api/v1/no-such-thing")
    assert missing.status_code == 404 and missing.json()["error"]
    unauthorised = requests.get(live_server + "/api/v1/dlq")
    assert unauthorised.status_code == 401 and "bearer" in unauthorised.json()["error"]


def test_a_refusal_names_its_real_reason(app):
    """Retrying a dead job whose record is gone says so, not "only a dead job"."""
    [job_id] = make_dead([{"cause": 1}])
    replay.delete([registry.get_job(job_id).get("dlq_id") or job_id])
    client = signed_in(app, "oscar")
    done = client.post(f"/jobs/{job_id}/retry", data={"csrf_token": client.csrf},
                       follow_redirects=True).get_data(as_text=True)
    assert "Only a dead job can be retried" not in done
    assert "no dead-letter record" in done.lower() or "not found" in done.lower(), done[-1500:]


def test_a_core_refusal_in_the_panel_is_a_page_and_in_the_api_json(app):
    from web.errors import backstop_error

    refusal = DlqError("replay limit reached (5 of 5)", code="limit", status=409)
    with app.test_request_context("/dlq/records/x/replay", method="POST"):
        page = backstop_error(refusal)
    assert page.status_code == 409 and page.mimetype == "text/html"
    assert "replay limit reached" in page.get_data(as_text=True)
    with app.test_request_context("/api/v1/dlq/x/replay", method="POST"):
        body, status = backstop_error(refusal)
    assert status == 409 and body.get_json() == {"error": "replay limit reached (5 of 5)",
                                                 "code": "limit"}


@pytest.mark.parametrize("lang, tz_cookie, zone", [("en", "Asia%2FTehran", "Asia/Tehran"),
                                                    ("fa", "UTC", "UTC")])
def test_times_follow_the_viewers_zone_language_and_calendar(app, lang, tz_cookie, zone):
    """The tz cookie may arrive encoded (Asia%2FTehran); Persian gets Solar Hijri dates."""
    from backstop.dates import format_when

    job_id = producers.enqueue("email.send", MAIL)
    client = signed_in(app, "vera")
    client.set_cookie("tz", tz_cookie)
    client.set_cookie("lang", lang)
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    shown = format_when(registry.get_job(job_id)["created_at"], lang, zone)
    assert shown in page
    if lang == "fa":
        assert any(digit in shown for digit in "۰۱۲۳۴۵۶۷۸۹") and "20" not in shown


def test_cancelling_a_redrive_keeps_the_dlq_filter(app):
    from backstop import redrive
    from backstop.dlq import Filters

    make_dead([{"cause": 1}])
    started = redrive.start("user:oscar", Filters(), 0.1)
    client = signed_in(app, "oscar")
    page = client.get("/dlq?queue=system").get_data(as_text=True)
    form = re.search(rf'action="/dlq/redrives/{started["id"]}/cancel">(.*?)</form>', page,
                     re.S).group(1)
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form))
    done = client.post(f"/dlq/redrives/{started['id']}/cancel",
                       data={k: html.unescape(v) for k, v in fields.items()})
    assert done.status_code == 302 and done.headers["Location"] == "/dlq?queue=system"
    assert redrive.progress(started["id"])["status"] == "cancelled"


@pytest.mark.parametrize("typed, said", [("[1, 2]", "must be a JSON object"),
                                         ("{not json", "Expecting property name")])
def test_an_edit_that_is_not_a_json_object_is_refused_by_name(app, typed, said):
    [job_id] = make_dead([{"cause": 1}])
    record_id = registry.get_job(job_id).get("dlq_id") or job_id
    client = signed_in(app, "oscar")
    refused = client.post(f"/dlq/records/{record_id}/edit",
                          data={"csrf_token": client.csrf, "payload": typed})
    assert refused.status_code == 422 and said in refused.get_data(as_text=True)


def test_the_trend_chart_labels_hours_in_the_viewers_zone(app):
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    make_dead([{"cause": 1}])
    client = signed_in(app, "vera")
    client.set_cookie("tz", "Asia/Tehran")  # UTC+3:30: every hour starts at :30 there
    page = client.get("/dlq/analytics?tab=trends").get_data(as_text=True)
    this_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    local = this_hour.astimezone(ZoneInfo("Asia/Tehran")).strftime("%H:%M")
    labels = re.findall(r"<span>(\d\d:\d\d)</span>", page.split('class="chart-x"')[1])
    assert labels[-1] == local and local.endswith(":30"), labels
    assert f"<bdi>{local}</bdi> (1)" in page, "the peak hour too"
