"""What the panel's pages say, read as a person would: causes, counts and settings.
(The sign-in helper comes from test_panel.)"""

from __future__ import annotations

import html
import json
import re
import time

import pytest
from conftest import apply_env
from helpers import panel_app, signed_in

import tests.jobs_for_tests  # noqa: F401  (the jobs the in-process worker runs)
from backstop import PermanentFailure, dlq, keys, producers, replay, stats
from backstop.hueys import huey_for
from backstop.runner import WorkerProcess

TWO_TRIES = {"system": {"attempts": 2, "rate_limit": 0, "backoff_base": 0}}


@pytest.fixture
def app(r):
    """The panel app with olga (owner) and vera (viewer)."""
    return panel_app(only=("olga", "vera"))


def text_of(page: str) -> str:
    """A page's visible text: tags dropped, entities decoded, white space collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def dead_letter(job_id: str, exc: BaseException) -> None:
    try:
        raise exc
    except BaseException as raised:  # noqa: BLE001  (described, as the worker would)
        error = dlq.describe_exception(raised)
    dlq.write_records([({"id": job_id, "queue": "system", "job": "test.fail", "payload": {}},
                        error, 1, time.time())])


def test_a_fingerprints_cause_names_its_error_type_once(app):
    dead_letter("no-handler", PermanentFailure("no handler is registered for 'x.y'"))
    page = signed_in(app, "vera").get("/dlq/analytics?tab=failures").get_data(as_text=True)
    groups = text_of(page).split("Fingerprint Cause Count")[1]  # the fingerprints table
    assert "PermanentFailure no handler is registered for" in groups, groups
    assert groups.count("PermanentFailure") == 1, groups


def run_everything(worker: WorkerProcess) -> None:
    """Run the system queue's jobs in-process, retries included, until none is left."""
    while worker.run_next("system"):
        worker.promote_due()
    worker.promote_due()
    if worker.run_next("system"):
        run_everything(worker)


def in_process_worker() -> WorkerProcess:
    apply_env(BACKSTOP_QUEUES=json.dumps(TWO_TRIES))
    worker = WorkerProcess(("system",))
    huey_for("system").storage.processing_key = keys.processing(worker.id, "system")
    return worker


def system_row(page: str) -> list[str]:
    """The system queue's cells on the queues table: name, six states, processed, DLQ, ..."""
    row = re.search(r"<tr>\s*<th[^>]*><a [^>]*>system</a></th>(.*?)</tr>", page, re.S).group(1)
    return [text_of(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def test_processed_counts_every_finished_attempt_and_dead_jobs_differ_from_dlq_records(app):
    worker = in_process_worker()
    producers.enqueue_many([{"job": "test.work", "payload": {}}] * 2
                           + [{"job": "test.fail", "payload": {}}])
    run_everything(worker)  # 2 completed; 1 failed attempt, then dead
    record_id = dlq.page().items[0]["id"]
    replay.replay(record_id, actor="olga")
    run_everything(worker)  # the replay fails twice too: one more dead job, the same record
    row = next(r for r in stats.queue_overview() if r["queue"] == "system")
    assert row["totals"]["processed"] == 2 + 2 + 2
    assert (row["counts"]["completed"], row["counts"]["dead"], row["dead_letters"]) == (2, 2, 1)
    page = signed_in(app, "vera").get("/queues").get_data(as_text=True)
    completed, dead, processed, in_dlq = (system_row(page)[i] for i in (3, 5, 6, 7))
    assert (completed, dead, processed, in_dlq) == ("2", "2", "6", "1")
    assert "a replay that dies again is one more dead job but the same record" in page


def test_the_system_page_shows_settings_in_words_not_python_values(app):
    client = signed_in(app, "vera")
    system = text_of(client.get("/system").get_data(as_text=True))
    for said in ("Answering yes", "Append-only file no", "Memory limit no limit",
                 " ms", "Up for ", "Eviction policy noeviction",
                 "PANEL_ORIGINS (empty)",
                 "AI_API_KEY (empty)", "REDIS_URL (set)", "COOKIE_SECURE no", "PORT 8000"):
        assert said in system, (said, system)
    assert re.search(r"Ping \d+\.\d+ ms", system), system  # a figure in ms, not a float repr
    config = text_of(client.get("/queues/system").get_data(as_text=True))
    assert "dlq_drop_jobs none" in config and "backoff_base 2 " in config, config
    for python in ("True", "False", "()", "None", "2.0", "ping_ms", "uptime_seconds"):
        assert python not in system + config, python
