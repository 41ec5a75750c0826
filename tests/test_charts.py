"""The panel's monitoring views: chart geometry from known metric hashes in a real Redis
(backstop.charts), the queue page's window through polls and pushes, its figures, waits and
durations of jobs, the timeline's gaps, the overview's sparklines and the running-now list."""

from __future__ import annotations

import html
import os
import re
import threading
import time
from itertools import pairwise

import pytest
from chart_data import minute_fields, write
from conftest import wait_for
from helpers import panel_app, signed_in, system_worker
from markupsafe import escape
from test_live_socket import first_frame_but_pings, handshake, plain_http
from test_metrics import run_all
from test_pages import poll_url, signed_in_session, ws_query

import tests.jobs_for_tests  # noqa: F401  (the jobs the in-process worker runs)
from backstop import charts, health, keys, metrics, panel, producers, registry, stats

__all__ = ["plain_http"]
NOW = 1_800_000_030.0  # 30 s into a minute
LAST = metrics.minute_of(NOW)
MAIL = {"to": ["a@example.com"], "subject": "s", "text": "t"}
QUICK = {"system": {"attempts": 2, "rate_limit": 0, "backoff_base": 0, "concurrency": 1}}


@pytest.fixture
def app(r):
    return panel_app()


@pytest.fixture
def worker(r):
    """A worker process of the system queue, run in this process (run_next, beat)."""
    return system_worker(QUICK)


def slot_of(chart: dict, minute: int) -> int:
    """The index of the step that holds a minute (one-minute steps)."""
    first = chart["bars"][0]["t"] // 60 if "bars" in chart else chart["columns"][0]["t"] // 60
    return int(minute - first)


def row_of(page: str, text: str) -> str:
    """The table row of a page that holds text."""
    return next(row for row in re.findall(r"<tr>.*?</tr>", page, re.S) if text in row)


def points_of(segment: str) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in segment.split()]


# ---- geometry ----
def test_bar_heights_are_proportional_to_counts_and_a_minute_without_jobs_is_zero(r):
    write(r, "email", LAST - 5, minute_fields("email.send", ok=40, retry=10))
    write(r, "email", LAST - 3, minute_fields("email.send", ok=20))
    write(r, "email", LAST, minute_fields("email.otp.send", ok=5, dead=5))
    chart = charts.queue_charts("email", 1, now=NOW)["throughput"]
    bars = chart["bars"]
    assert len(bars) == 60 and bars[-1]["t"] == LAST * 60, "the last step is this minute"
    assert [t["value"] for t in chart["ticks_y"]] == [80, 60, 40, 20, 0], "peak 50: top 80"
    five, three, now = (bars[slot_of(chart, LAST - k)] for k in (5, 3, 0))
    assert (five["processed"], five["failed"], five["h"], five["failed_h"]) == (50, 10, 62.5, 12.5)
    assert three["h"] / five["h"] == pytest.approx(20 / 50) and three["failed_h"] == 0
    assert (now["h"], now["failed_h"]) == (12.5, 6.25)
    assert five["y"] == 100 - five["h"] and five["failed_y"] == 100 - five["failed_h"]
    quiet = [b for b in bars if b not in (five, three, now)]
    assert len(quiet) == 57 and {(b["h"], b["failed_h"]) for b in quiet} == {(0, 0)}
    assert (chart["total"], chart["failed"]) == (80, 15)


def test_percentile_lines_sit_at_their_values_and_break_where_nothing_ran(r):
    fast = minute_fields("email.send", ok=100, runtime=0.02)      # (10 ms, 25 ms]
    mixed = {**minute_fields("email.send", ok=50, runtime=0.02),
             **minute_fields("email.otp.send", ok=50, runtime=0.2)}  # half in (100, 250]
    write(r, "email", LAST - 10, fast)
    write(r, "email", LAST - 9, mixed)
    write(r, "email", LAST - 7, fast)  # LAST - 8: nothing ran
    chart = charts.queue_charts("email", 1, now=NOW)["runtime"]
    top = chart["ticks_y"][0]["value"]
    assert chart["unit"] == "ms" and top == 400, "p99 of the mixed minute: 247 ms"
    expected = {name: metrics.total_of(metrics.parse(mixed)).runtime.quantile(q) * 1000
                for name, q in charts.QUANTILES}
    centre = {k: chart["columns"][slot_of(chart, LAST - k)] for k in (10, 9, 7)}
    for line in chart["lines"]:
        runs = [points_of(s) for s in line["segments"]]
        assert len(runs) == 2, "broken at the minute without jobs, not dropped to 0"
        first_run, lone = runs
        assert [x for x, _ in first_run] == pytest.approx(
            [centre[k]["x"] + centre[k]["w"] / 2 for k in (10, 9)], abs=0.01)
        assert first_run[1][1] == pytest.approx(100 - expected[line["name"]] / top * 100, abs=0.01)
        assert lone[0] == lone[1], "a lone minute is a dot (a zero-length segment)"
    heights = {line["name"]: points_of(line["segments"][0])[1][1] for line in chart["lines"]}
    assert heights["p50"] > heights["p95"] >= heights["p99"], "a higher percentile sits higher"
    assert chart["columns"][slot_of(chart, LAST - 8)]["values"] == {
        "p50": None, "p95": None, "p99": None}


def test_a_six_hour_window_merges_five_minutes_per_step_on_the_clock(r):
    step_start = LAST - LAST % 5 - 10  # two steps back
    for minute in range(step_start, step_start + 5):
        write(r, "email", minute, minute_fields("email.send", ok=10))
    result = charts.queue_charts("email", 6, now=NOW)
    bars = result["throughput"]["bars"]
    assert len(bars) == 72 and all(b["t"] % 300 == 0 for b in bars)
    [busy] = [b for b in bars if b["processed"]]
    assert busy["t"] == step_start * 60 and busy["processed"] == 50 and busy["per_minute"] == 10
    assert result["step_minutes"] == 5 and result["to"] == bars[-1]["end"]


def test_the_long_windows_read_the_hourly_roll_ups_and_the_current_hour_from_its_minutes(r):
    hour = int(NOW // 3600)
    r.hset(keys.metrics_hour("email", hour - 3),
           mapping={**minute_fields("email.send", ok=600), "backlog": 12})
    r.hset(keys.metrics_hour("email", hour - 2), "n", 0)  # an idle hour, rolled up
    write(r, "email", (hour - 2) * 60 + 5, minute_fields("email.send", ok=999), hourly=False)
    write(r, "email", LAST, minute_fields("email.send", ok=30), backlog=7, hourly=False)
    result = charts.queue_charts("email", 24, now=NOW)
    bars = result["throughput"]["bars"]
    assert len(bars) == 24 and bars[-1]["t"] == hour * 3600
    by_hour = {b["t"] // 3600: b for b in bars}
    assert by_hour[hour - 3]["processed"] == 600 and by_hour[hour - 3]["per_minute"] == 10
    assert by_hour[hour - 2]["processed"] == 0, "a rolled-up hour's minutes are not read"
    assert by_hour[hour]["processed"] == 30, "this hour has no roll-up yet: its minutes"
    backlog = {c["t"] // 3600: c["values"]["backlog"] for c in result["backlog"]["columns"]}
    assert {h: v for h, v in backlog.items() if v is not None} == {hour - 3: 12, hour: 7}
    assert len(charts.queue_charts("email", 48, now=NOW)["throughput"]["bars"]) == 48


def test_a_finished_hour_without_its_roll_up_is_read_from_its_minutes(r):
    hour = int(NOW // 3600) - 5  # the hourly analytics job has not rolled it up
    write(r, "email", hour * 60 + 1, minute_fields("email.send", ok=40), hourly=False)
    write(r, "email", hour * 60 + 59, minute_fields("email.send", ok=20, dead=2), backlog=3,
          hourly=False)
    bars = charts.queue_charts("email", 48, now=NOW)["throughput"]["bars"]
    [busy] = [b for b in bars if b["processed"]]
    assert (busy["t"], busy["processed"], busy["failed"]) == (hour * 3600, 62, 2)
    metrics.roll_up_hours(r, now=NOW)  # what the hourly job writes gives the same chart
    assert charts.queue_charts("email", 48, now=NOW)["throughput"]["bars"] == bars


@pytest.mark.parametrize("hours, commands", [(1, 60), (6, 71 * 5 + LAST % 5 + 1),
                                             (24, 23 + LAST % 60 + 1), (48, 47 + LAST % 60 + 1)])
def test_a_window_is_a_bounded_number_of_reads(r, hours, commands):
    """48 hours of minute hashes (2,880 HGETALLs) would take ~1 s: long windows read the
    hourly roll-ups of the finished hours and the minutes of the current one."""
    pipe = r.pipeline()
    charts.steps(pipe, "email", charts.window(hours), NOW)
    assert len(pipe) == commands


@pytest.mark.parametrize("peak, least, step", [(0, 1, 1), (7, 1, 2), (50, 1, 20), (101, 1, 50),
                                               (9000, 1, 2500), (0.37, 0.001, 0.1)])
def test_the_value_axis_has_four_round_steps(peak, least, step):
    got, top = charts.nice_scale(peak, least)
    assert got == pytest.approx(step) and top == pytest.approx(4 * step) and top >= peak


def test_time_labels_fall_on_round_times_of_the_viewers_zone():
    start = 1_800_000_000.0 - 6 * 3600
    ticks = charts.time_ticks(start, start + 6 * 3600, 60, "Asia/Tehran")  # UTC+3:30
    assert len(ticks) == 6 and all(t["t"] % 3600 == 1800 for t in ticks), "local :00 is :30 UTC"
    minor = [t["minor"] for t in ticks]
    assert all(a != b for a, b in pairwise(minor)), "a phone leaves out every other one"
    day = charts.time_ticks(start, start + 48 * 3600, 480, "UTC")
    midnights = [t for t in day if t["day"]]
    assert len(midnights) == 2 and not any(t["minor"] for t in midnights)
    edges = charts.time_ticks(0, 3600, 10, "UTC")
    assert (edges[0]["anchor"], edges[-1]["anchor"], edges[3]["anchor"]) == (
        "start", "end", "middle"), "labels at the edges stay inside the chart"


# ---- the queue page ----
def page_of(client, path: str) -> str:
    response = client.get(path)
    assert response.status_code == 200, response.get_data(as_text=True)[-2000:]
    return response.get_data(as_text=True)


def test_the_queue_page_draws_its_charts_and_figures_without_inline_style(app, worker):
    producers.enqueue_many([{"job": "test.work", "payload": {}}] * 3
                           + [{"job": "test.fail", "payload": {}}])
    run_all(worker)
    page = page_of(signed_in(app, "vera"), "/queues/system")
    charts_html = page.split('id="charts"')[1].split("</section>")[0]
    minutes = charts_html.count('class="bar"')  # 1, or 2 if the jobs ran across a minute
    assert minutes in (1, 2) and charts_html.count('class="bar failed"') in (1, 2)
    assert charts_html.count('class="line p95"') == 2, "runtime and wait: one run each"
    assert 'class="line backlog"' not in charts_html
    assert "No data yet" in charts_html, "no health check has recorded a backlog"
    assert re.search(r'aria-label="Processed per minute: 5 processed, 2 failed"', charts_html)
    figures = page.split('id="queue-figures"')[1]
    assert "test.work" in figures and "test.fail" in figures
    assert re.search(r"Error rate</span><span class=\"value\"><bdi class=\"figure\">40%", page)
    assert " style=" not in page and "<style" not in page, "the CSP allows no inline style"
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "nor inline script"


def test_the_window_is_chosen_by_link_and_kept_by_the_other_links(app):
    page = page_of(signed_in(app, "vera"), "/queues/email?hours=48&state=dead")
    active = re.search(r'<a class="active" aria-current="true" href="([^"]+)">48 h</a>', page)
    assert active and "hours=48" in active.group(1) and "state=dead" in active.group(1)
    assert page.count('class="slot"') == 48 and 'name="hours" value="48"' in page
    assert 'href="/queues/email?state=failed&amp;hours=48"' in page, "the state tabs keep it"
    fallback = page_of(signed_in(app, "vera"), "/queues/email?hours=5")
    assert fallback.count('class="slot"') == 60, "an unknown window is the hour"


def test_the_window_survives_a_poll_and_a_push(plain_http, live_server):
    browser = signed_in_session(live_server)
    page = browser.get(live_server + "/queues/email?hours=6").text
    assert page.split('id="charts"')[1].count('class="slot"') == 72
    polled = browser.get(live_server + poll_url(page, "charts")).text
    assert polled.startswith('<section id="charts"') and polled.count('class="slot"') == 72
    assert "hours=6" in poll_url(page, "jobs") and "hours=6" in ws_query(page)

    status, sock = handshake(live_server, ws_query(page), live_server, browser.cookie_header)
    assert status == 101
    producers.enqueue("email.send", MAIL)  # an event on the queue: a push is due
    _, pushed = first_frame_but_pings(sock)
    charts_part = pushed.decode().split('id="charts"')[1].split("</section>")[0]
    assert charts_part.count('class="slot"') == 72, "a push keeps hours=6"
    assert re.search(r'class="active" aria-current="true" href="[^"]*hours=6', charts_part)
    sock.close()


def test_in_persian_the_page_is_right_to_left_and_the_charts_run_old_to_new(app, r):
    write(r, "email", metrics.minute_of(time.time()), minute_fields("email.send", ok=3),
          backlog=4)
    client = signed_in(app, "vera")
    client.set_cookie("lang", "fa")
    page = page_of(client, "/queues/email?hours=24")
    assert '<html lang="fa" dir="rtl">' in page and "در گذر زمان" in page
    figures = re.findall(r'<figure class="chart series"( dir="ltr")?', page)
    assert figures and all(figures), "the charts keep time running left to right"
    assert '<span class="key backlog"></span>در انتظار' in page and "انباشت صف" in page
    times = page.split('class="chart-times"')[1].split("</svg>")[0]
    assert re.search(r">\u2067\d+ [^<\d]+\u2069</text>", times), "a day label, isolated RTL"


# ---- durations ----
def test_a_jobs_wait_and_duration_follow_its_state():
    base = {"created_at": 100.0, "run_at": 0.0}
    timing = panel.job_timing
    assert timing({**base, "state": "waiting"}, 130.0) == {
        "wait": 30.0, "duration": None, "waiting": True, "running": False}
    active = timing({**base, "state": "active", "started_at": 110.0}, 112.5)
    assert (active["wait"], active["duration"], active["running"]) == (10.0, 2.5, True)
    done = timing({**base, "state": "completed", "started_at": 110.0, "finished_at": 111.25},
                  999)
    assert (done["wait"], done["duration"]) == (10.0, 1.25)
    retrying = timing({**base, "state": "failed", "started_at": 110.0, "updated_at": 110.5,
                       "run_at": 140.0}, 120)
    assert (retrying["wait"], retrying["duration"]) == (None, 0.5), "due again: wait unknown"
    retried = timing({**base, "state": "completed", "started_at": 150.0, "run_at": 140.0,
                      "finished_at": 151.0}, 999)
    assert retried["wait"] == 10.0, "the wait runs from when the retry was due"
    assert timing({**base, "state": "cancelled"}, 200)["duration"] is None


def test_job_lists_and_the_timeline_show_durations(app, worker):
    job_id = producers.enqueue("test.work", {"seconds": 0.3})
    time.sleep(0.2)
    worker.run_next("system")
    job = registry.get_job(job_id)
    ran = job["finished_at"] - job["started_at"]
    client = signed_in(app, "vera")
    listing = page_of(client, "/queues/system?state=completed").split('id="jobs"')[1]
    row = row_of(listing, job_id)
    assert re.search(r'data-label="Wait"><bdi class="figure">2\d\d ms</bdi>', row), row
    assert f'data-label="Duration"><bdi class="figure">{round(ran * 1000)} ms' in row, row
    detail = page_of(client, f"/jobs/{job_id}")
    timeline = detail.split('class="timeline"')[1].split("</ol>")[0]
    gaps = re.findall(r'class="gap" data-kind="(\w+)">([^<]+)<', timeline)
    assert [kind for kind, _ in gaps] == ["waited", "ran"], "enqueued, started, completed"
    assert re.fullmatch(r"waited 2\d\d ms", gaps[0][1]), gaps
    assert gaps[1][1] == f"ran {round(ran * 1000)} ms"
    assert f"<dt>Duration</dt><dd><bdi>{round(ran * 1000)} ms</bdi>" in detail


@pytest.mark.parametrize("seconds, shown", [(0.0042, "4.2 ms"), (0.25, "250 ms"),
                                            (2.44, "2.44 s"), (12.5, "12.5 s"),
                                            (185, "3 min 5 s"), (7800, "2 h 10 min"),
                                            (90000, "1 d 1 h"), (None, "—")])
def test_a_span_reads_as_exactly_as_a_job_needs(app, seconds, shown):
    from web.templating import span

    with app.test_request_context("/"):
        assert span(seconds) == shown


# ---- the overview ----
def test_the_overview_has_a_sparkline_per_queue(app, r):
    now = time.time()
    write(r, "email", metrics.minute_of(now) - 2, minute_fields("email.send", ok=30, retry=6))
    write(r, "email", metrics.minute_of(now) - 1, minute_fields("email.send", ok=15))
    page = page_of(signed_in(app, "vera"), "/overview")
    rows = re.findall(r'<tr data-queue="([a-z]+)">(.*?)</tr>', page, re.S)
    assert [q for q, _ in rows] == ["ai", "workflows", "analytics", "email", "plugins", "system"]
    email = dict(rows)["email"]
    heights = [float(h) for h in re.findall(r'<rect class="bar" [^>]*height="([\d.]+)"', email)]
    failed = re.findall(r'<rect class="bar failed" [^>]*height="([\d.]+)"', email)
    assert heights == [100.0, pytest.approx(100 * 15 / 36, abs=0.01)]
    assert failed == [str(round(6 / 36 * 100, 2))]
    assert "51 processed, 6 failed" in email
    assert 'class="bar"' not in dict(rows)["ai"] and "No job finished in the last hour." in \
        dict(rows)["ai"]


def test_running_now_lists_each_running_job_with_its_worker_and_elapsed_time(app, worker):
    job_id = producers.enqueue("test.work", {"seconds": 1.5})
    runner = threading.Thread(target=worker.run_next, args=("system",))
    runner.start()
    try:
        wait_for(lambda: registry.get_job(job_id)["state"] == "active", what="the job runs")
        time.sleep(0.3)
        worker.beat()
        stats.forget()
        client = signed_in(app, "vera")
        running = page_of(client, "/overview").split('id="running"')[1].split("</section>")[0]
        row = row_of(running, job_id)
        [beat] = stats.workers()
        [current] = beat["current"]
        assert "test.work" in row and ">system</a>" in row
        assert f"<bdi>{beat['host']}</bdi>" in row and f"pid {os.getpid()}" in row
        assert f"<bdi>{current['thread']}</bdi>" in row
        assert re.search(r'data-label="Elapsed"><bdi>(\d{3} ms|1\.\d+ s)</bdi>', row), row
        assert job_id in page_of(client, "/queues/system?partial=running")
        assert job_id not in page_of(client, "/queues/email?partial=running")
    finally:
        runner.join(10)
    worker.beat()
    stats.forget()
    idle = page_of(signed_in(app, "vera"), "/overview?partial=running")
    assert "No job is running." in idle


def test_running_now_is_refreshed_by_markup_while_the_socket_is_up(app):
    page = page_of(signed_in(app, "vera"), "/overview")
    tag = re.search(r'<section id="running"[^>]*>', page, re.S).group(0)
    assert 'hx-trigger="every 10s"' in tag and 'hx-swap="outerHTML"' in tag
    assert html.unescape(re.search(r'hx-get="([^"]+)"', tag).group(1)) == \
        "/overview?partial=running"


def test_the_timeline_names_the_time_between_its_entries():
    entries = [{"t": 10.0, "event": "enqueued"}, {"t": 10.5, "event": "started"},
               {"t": 12.0, "event": "failed"}, {"t": 42.0, "event": "started"},
               {"t": 42.25, "event": "completed"}]
    shown = [(e["gap"], e["gap_kind"]) for e in panel.with_gaps(entries)]
    assert shown == [(None, "after"), (0.5, "waited"), (1.5, "ran"), (30.0, "after"),
                     (0.25, "ran")], "the retry's back-off is not a wait in the queue"


def test_the_overview_and_the_queue_page_show_each_queues_health(app):
    producers.enqueue("email.send", MAIL)  # waiting, and no worker consumes email
    client = signed_in(app, "vera")
    judged = health.assess()["queues"]["email"]
    [issue] = judged["issues"]
    assert issue["code"] == "no_workers" and judged["status"] != "healthy"
    rows = dict(re.findall(r'<tr data-queue="([a-z]+)">(.*?)</tr>', page_of(client, "/overview"),
                           re.S))
    assert re.search(rf'data-status="{judged["status"]}">\w+ <bdi>{judged["score"]}</bdi>',
                     rows["email"])
    assert re.search(r'<span class="issue \w+" title="[^"]+">no worker</span>', rows["email"])
    assert re.search(r'data-status="healthy">healthy <bdi>100</bdi>', rows["ai"])
    assert 'class="issue' not in rows["ai"]
    figures = page_of(client, "/queues/email?partial=queue_figures")
    assert f'data-status="{judged["status"]}"' in figures and f"score {judged['score']}" in figures
    listed = figures.split('class="issue-list"')[1].split("</ul>")[0]
    assert "no worker" in listed and str(escape(issue["message"])) in listed
    assert str(escape(issue["recommendation"])) in listed


def test_the_charts_move_on_every_minute_while_the_socket_is_up(app):
    page = page_of(signed_in(app, "vera"), "/queues/email?hours=24")
    tag = re.search(r'<section id="charts"[^>]*>', page, re.S).group(0)
    assert 'hx-trigger="every 60s"' in tag and "X-Backstop-Refresh" in tag
    assert html.unescape(re.search(r'hx-get="([^"]+)"', tag).group(1)) == \
        "/queues/email?partial=charts&hours=24"
