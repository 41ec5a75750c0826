"""Alerts against real peers: Redis, a webhook sink and an SMTP server on loopback, real jobs
failing in real worker processes (the headline of issue 10), and the panel's Alerts page.

The failures window is whole minutes (metrics' minute buckets), so the parts that need time to
pass (a window that clears, a cool-down that ends) evaluate in-process at an explicit `now`;
one end-to-end run goes through worker.py processes, where the window is cleared by removing
the minute buckets the failures were counted in, as their aging out would."""

from __future__ import annotations

import contextlib
import email
import json
import os
import threading
import time
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import test_redis_acl
from aiosmtpd.controller import Controller
from conftest import apply_env, wait_for
from helpers import flashes, panel_app, signed_in, system_worker

import tests.jobs_for_tests  # noqa: F401  (the jobs the in-process worker runs)
from backstop import alerts, audit, keys, notify, producers
from backstop.config import derived_key
from backstop.redis_server import free_port
from backstop.runner import WorkerProcess
from backstop.tasks.plugins import verify_signature

acl_restricted = test_redis_acl.restricted  # a Redis whose only user is the ACL user (fixture)
ONE_ATTEMPT = {"system": {"attempts": 1, "rate_limit": 0, "concurrency": 1}}


@pytest.fixture(autouse=True)
def restored_environment():
    """Whatever settings a test applies are undone after it (other modules run after us)."""
    saved = dict(os.environ)
    yield
    notify.wait(30)
    os.environ.clear()
    os.environ.update(saved)
    apply_env()


# ---- peers on loopback ----
class Sink:
    """A webhook receiver: every request it got, and the status it answers with next."""

    def __init__(self):
        self.requests: list[dict] = []
        self.statuses: list[int] = []  # answered in turn; 200 once they run out

    def bodies(self) -> list[dict]:
        return [json.loads(req["body"]) for req in self.requests]

    def events(self) -> list[str]:
        return [body["event"] for body in self.bodies()]


def _sink_handler(sink: Sink):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            sink.requests.append({"path": self.path, "headers": dict(self.headers),
                                  "body": body, "t": time.time()})
            status = sink.statuses.pop(0) if sink.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


@contextlib.contextmanager
def serve_sink():
    sink = Sink()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _sink_handler(sink))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    sink.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/alerts-s3cret-path"
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()


class Mailbox:
    """An aiosmtpd handler keeping every message."""

    def __init__(self):
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 Message accepted"

    def messages(self) -> list:
        return [email.message_from_bytes(e.content, policy=policy.default)
                for e in self.envelopes]

    def subjects(self) -> list[str]:
        return [m["Subject"] for m in self.messages()]


@pytest.fixture
def sink():
    with serve_sink() as receiver:
        yield receiver


@pytest.fixture
def mailbox():
    box = Mailbox()
    box.port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    yield box
    controller.stop()


@pytest.fixture
def targets(r, sink, mailbox):
    """Every alert goes to the sink and the mailbox (the default targets, from settings)."""
    env = {"ALERT_WEBHOOK_URLS": sink.url, "ALERT_MAIL_TO": "oncall@backstop.test",
           "WEBHOOK_ALLOW_PRIVATE": "1", "SMTP_URL": f"smtp://127.0.0.1:{mailbox.port}",
           "MAIL_FROM": "alerts@backstop.test", "ALERT_WEBHOOK_SECRET": "",
           "PANEL_ORIGINS": "https://ops.example.com"}
    apply_env(**env)
    yield env
    notify.wait(30)


# ---- real state, made by real jobs ----
@pytest.fixture
def worker(r):
    """An in-process worker for the system queue: one attempt per job, no rate limit."""
    return system_worker(ONE_ATTEMPT)


def fail_jobs(worker: WorkerProcess, n: int) -> list[str]:
    """Run n test.fail jobs to their (one, failed) attempt; each leaves a dead letter."""
    ids = [producers.enqueue("test.fail", {}) for _ in range(n)]
    while worker.run_next("system"):
        pass
    return ids


def only(*rules: dict) -> None:
    """Store exactly these rules (the defaults are marked as stored, not added)."""
    alerts.client().set(keys.alert_rules_seeded(), "1")
    for rule in rules:
        alerts.create_rule({"cooldown_seconds": 600, **rule})


def evaluate(now: float | None = None, worker_id: str = "evaluator-1") -> list[dict]:
    done = alerts.evaluate(worker_id, now=now)
    assert done is not None, "this evaluator should hold the lease"
    notify.wait(30)
    return done


def actions(done: list[dict]) -> list[str]:
    return [step["action"] for step in done]


def alert_events(r) -> list[dict]:
    return [json.loads(fields["e"]) for _, fields in r.xrange(keys.events_stream())
            if json.loads(fields["e"])["type"] == "alert"]


# ---- rules ----
def test_a_bad_rule_is_refused_naming_each_field(r):
    with pytest.raises(alerts.RuleError) as refused:
        alerts.parse_rule({"id": "Bad Id!", "kind": "failures", "queue": "nope",
                           "threshold": 0, "window_seconds": 7200, "cooldown_seconds": -1,
                           "webhooks": ["ftp://x"], "mail_to": ["not-an-address"]})
    fields = {e["field"] for e in refused.value.errors}
    assert fields == {"id", "queue", "threshold", "window_seconds", "cooldown_seconds",
                      "webhooks", "mail_to"}
    window = next(e for e in refused.value.errors if e["field"] == "window_seconds")
    assert "at most 3600" in window["message"]
    with pytest.raises(alerts.RuleError) as kind:
        alerts.parse_rule({"id": "x", "kind": "cpu", "threshold": 1})
    assert [e["field"] for e in kind.value.errors] == ["kind"]
    with pytest.raises(alerts.RuleError) as unhealthy:
        alerts.parse_rule({"id": "x", "kind": "unhealthy", "threshold": 2})
    assert [e["field"] for e in unhealthy.value.errors] == ["threshold"]


def test_the_defaults_come_from_the_settings_once_and_a_deleted_rule_stays_deleted(r):
    apply_env(ALERT_FAILURES="7", ALERT_FAILURES_WINDOW="120", ALERT_COOLDOWN_SECONDS="60",
              ALERT_OLDEST_WAITING_SECONDS="90", ALERT_DLQ_GROWTH="5",
              HEALTH_NO_WORKER_SECONDS="30")
    stored = {rule.id: rule for rule in alerts.rules()}
    assert set(stored) == {"failures", "dlq-growth", "oldest-waiting", "no-workers",
                           "unhealthy"}
    assert (stored["failures"].threshold, stored["failures"].window_seconds) == (7, 120)
    assert stored["failures"].queue == "*" and stored["failures"].cooldown_seconds == 60
    assert stored["oldest-waiting"].threshold == 90 and stored["no-workers"].threshold == 30
    assert stored["dlq-growth"].threshold == 5
    assert alerts.delete_rule("dlq-growth")
    assert "dlq-growth" not in {rule.id for rule in alerts.rules()}
    apply_env(ALERT_FAILURES="99")
    assert alerts.get_rule("failures").threshold == 7, "stored rules win over the settings"


def test_a_rule_is_created_changed_and_deleted(r):
    only()
    alerts.create_rule({"id": "email-fails", "kind": "failures", "queue": "email",
                        "threshold": 3, "window_seconds": 120,
                        "webhooks": ["https://hooks.example.com/a"]})
    with pytest.raises(alerts.RuleError) as taken:
        alerts.create_rule({"id": "email-fails", "kind": "failures", "threshold": 1})
    assert taken.value.errors[0]["field"] == "id"
    changed = alerts.update_rule("email-fails", {"threshold": 5, "kind": "dlq_growth",
                                                 "enabled": False})
    assert (changed.threshold, changed.kind, changed.enabled) == (5, "failures", False)
    assert alerts.get_rule("email-fails").webhooks == ["https://hooks.example.com/a"]
    with pytest.raises(alerts.RuleError) as missing:
        alerts.update_rule("nobody", {"threshold": 1})
    assert missing.value.status == 404
    assert alerts.delete_rule("email-fails") and not alerts.delete_rule("email-fails")


# ---- one incident: fires once, silent while it lasts, resolves once ----
def test_failures_fire_once_stay_silent_and_resolve_once(targets, worker, sink, mailbox, r):
    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 10,
          "window_seconds": 120})
    fail_jobs(worker, 9)
    assert evaluate() == [], "9 failures are under the threshold"
    fail_jobs(worker, 1)
    fired = evaluate()
    assert actions(fired) == ["fire"]
    assert sink.events() == ["fired"] and len(mailbox.envelopes) == 1
    fail_jobs(worker, 20)
    assert actions(evaluate()) == ["update"], "still firing: its value moves, nothing is sent"
    assert actions(evaluate()) == []
    assert len(sink.requests) == 1 and len(mailbox.envelopes) == 1
    assert alerts.firing()[0]["value"] == 30
    later = time.time() + 180  # the two minute buckets have left the window
    assert actions(evaluate(later)) == ["resolve"]
    assert actions(evaluate(later + 10)) == []
    assert sink.events() == ["fired", "resolved"]
    assert [s.split(":")[0] for s in mailbox.subjects()] == ["[Backstop] FIRING",
                                                            "[Backstop] RESOLVED"]
    assert alerts.firing() == []
    assert [e["event"] for e in alerts.history()] == ["resolved", "fired"]
    feed = alert_events(r)
    assert [(e["event"], e["severity"], e["queue"]) for e in feed] == [
        ("fired", "error", "system"), ("resolved", "info", "system")]


def test_the_webhook_is_signed_and_says_what_fired(targets, worker, sink, r):
    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 2,
          "window_seconds": 60})
    fail_jobs(worker, 2)
    evaluate()
    request = sink.requests[0]
    headers = request["headers"]
    key = derived_key(b"backstop-alert-webhook").hex()  # no ALERT_WEBHOOK_SECRET: derived
    assert verify_signature(key, headers["X-Backstop-Signature"], request["body"])
    assert not verify_signature("another key", headers["X-Backstop-Signature"],
                                request["body"])
    assert headers["X-Backstop-Signature"].startswith(f"t={headers['X-Backstop-Timestamp']},")
    assert headers["X-Backstop-Event"] == "alert.fired"
    assert request["path"] == "/hooks/alerts-s3cret-path"
    body = sink.bodies()[0]
    assert {k: body[k] for k in ("event", "rule", "kind", "queue", "value", "threshold",
                                 "resolved_at")} == {
        "event": "fired", "rule": "fails", "kind": "failures", "queue": "system",
        "value": 2, "threshold": 2, "resolved_at": None}
    assert "2 failed attempts on queue system" in body["message"]
    assert body["links"] == {"alerts": "https://ops.example.com/alerts",
                             "queue": "https://ops.example.com/queues/system"}
    assert time.time() - body["started_at"] < 30


def test_alert_webhook_secret_signs_when_set(targets, worker, sink, r):
    apply_env(ALERT_WEBHOOK_SECRET="whsec-test")
    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 1,
          "window_seconds": 60})
    fail_jobs(worker, 1)
    evaluate()
    request = sink.requests[0]
    assert verify_signature("whsec-test", request["headers"]["X-Backstop-Signature"],
                            request["body"])


def test_a_star_rule_is_one_incident_per_queue(targets, sink, r):
    only({"id": "waiting", "kind": "oldest_waiting", "queue": "*", "threshold": 60})
    producers.enqueue("email.send", {"to": ["a@example.com"], "subject": "s", "text": "t"})
    producers.enqueue("test.work", {})
    fired = evaluate(time.time() + 120)
    assert sorted(step["entry"]["queue"] for step in fired) == ["email", "system"]
    assert sorted(body["queue"] for body in sink.bodies()) == ["email", "system"]


def test_disabling_or_deleting_a_firing_rule_resolves_its_alert(targets, worker, r):
    with serve_sink() as own:
        only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 1,
              "window_seconds": 60, "webhooks": [own.url]},
             {"id": "gone", "kind": "failures", "queue": "system", "threshold": 1,
              "window_seconds": 60})
        fail_jobs(worker, 1)
        assert actions(evaluate()) == ["fire", "fire"]
        alerts.update_rule("fails", {"enabled": False})
        alerts.delete_rule("gone")
        assert actions(evaluate()) == ["resolve", "resolve"]
        assert own.events() == ["fired", "resolved"], "a disabled rule's own targets hear it"
        assert own.bodies()[1]["message"].startswith(
            "resolved fails on queue system: its rule was disabled or deleted")
    assert alerts.firing() == []


# ---- cool-down ----
def test_the_cool_down_holds_back_a_second_firing_until_it_ends(targets, worker, sink, r):
    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 1,
          "window_seconds": 60, "cooldown_seconds": 600})
    fail_jobs(worker, 1)
    start = time.time()
    assert actions(evaluate(start)) == ["fire"]
    assert actions(evaluate(start + 130)) == ["resolve"]
    fail_jobs(worker, 1)  # now: a new failure, in the current minute again
    assert actions(evaluate()) == [], "within the cool-down since it fired: held back"
    assert alerts.last_evaluation()["held_back"] == ["fails|system"]
    assert sink.events() == ["fired", "resolved"]
    # Once the cool-down is over (and with a window that still holds that failure):
    alerts.update_rule("fails", {"window_seconds": 3600})
    assert actions(evaluate(start + 601)) == ["fire"]
    assert sink.events() == ["fired", "resolved", "fired"]


# ---- one evaluator ----
def test_one_process_holds_the_lease_and_only_it_evaluates(r):
    only()
    assert alerts.evaluate("worker-a") == []
    assert alerts.evaluate("worker-b") is None, "worker-a holds the lease"
    assert alerts.evaluate("worker-a") == [], "its holder renews it"
    assert 0 < r.pttl(keys.alert_lease()) <= alerts.lease_ms()
    r.delete(keys.alert_lease())  # as if worker-a died and its lease ran out
    assert alerts.evaluate("worker-b") == []
    assert r.get(keys.alert_lease()) == "worker-b"


def test_evaluators_racing_fire_once(targets, worker, sink, mailbox, r):
    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 3,
          "window_seconds": 60})
    fail_jobs(worker, 3)
    results: list = []
    # Five rounds; in each, the lease is free and four evaluators go for it at once.
    barrier = threading.Barrier(4, action=lambda: r.delete(keys.alert_lease()))

    def race(name: str) -> None:
        for _ in range(5):
            barrier.wait()
            results.append((name, alerts.evaluate(name)))

    threads = [threading.Thread(target=race, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    notify.wait(30)
    assert sum(done is not None for _, done in results) == 5, "one evaluator per round"
    fired = [step for _, done in results if done for step in done if step["action"] == "fire"]
    assert len(fired) == 1
    assert sink.events() == ["fired"] and len(mailbox.envelopes) == 1


def test_a_process_that_lost_the_lease_writes_and_sends_nothing(targets, worker, sink, r):
    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 1,
          "window_seconds": 60})
    fail_jobs(worker, 1)
    assert alerts.hold_lease("slow-worker")
    rule = alerts.get_rule("fails")
    step = alerts._fire("fails|system", rule, "system", 1.0, time.time())
    r.set(keys.alert_lease(), "another-worker")  # the slow worker's lease expired meanwhile
    assert not alerts._commit(r, "slow-worker", step, time.time())
    assert r.hlen(keys.alert_firing()) == 0 and r.xlen(keys.alert_history()) == 0


# ---- end to end: real worker processes ----
FAST = {"ALERT_EVALUATE_SECONDS": "0.5", "ALERT_FAILURES": "10", "ALERT_FAILURES_WINDOW": "120",
        "ALERT_COOLDOWN_SECONDS": "600"}


def dead_count(r) -> int:
    return r.zcard(keys.state_index("system", "dead"))


def clear_failure_window(r) -> None:
    """Remove the minute buckets the failures were counted in, as their aging out would."""
    now_minute = int(time.time() // 60)
    r.delete(*[keys.metrics_minute("system", m) for m in range(now_minute - 5, now_minute + 1)])


def test_ten_failures_alert_once_twenty_more_nothing_then_one_resolved(targets, workers, sink,
                                                                      mailbox, r):
    apply_env(**FAST)  # the default rules, made from these settings
    workers.start("system", ONE_ATTEMPT)
    producers.enqueue_many([{"job": "test.fail", "payload": {}} for _ in range(10)])
    wait_for(lambda: dead_count(r) == 10, what="10 failed attempts")
    tenth = time.monotonic()
    wait_for(lambda: sink.requests and mailbox.envelopes, timeout=15, what="the alert")
    assert time.monotonic() - tenth < 15
    assert sink.events() == ["fired"] and sink.bodies()[0]["rule"] == "failures"
    assert mailbox.subjects() == ["[Backstop] FIRING: failures on system"]
    producers.enqueue_many([{"job": "test.fail", "payload": {}} for _ in range(20)])
    wait_for(lambda: dead_count(r) == 30, what="20 more failed attempts")
    seen = alerts.last_evaluation()["t"]
    wait_for(lambda: alerts.last_evaluation()["t"] > seen + 2, what="4 more evaluations")
    assert len(sink.requests) == 1 and len(mailbox.envelopes) == 1, "within the cool-down"
    assert alerts.firing()[0]["value"] == 30
    clear_failure_window(r)
    wait_for(lambda: len(sink.requests) == 2 and len(mailbox.envelopes) == 2, timeout=15,
             what="the resolved messages")
    assert sink.events() == ["fired", "resolved"]
    assert mailbox.subjects()[1] == "[Backstop] RESOLVED: failures on system"
    seen = alerts.last_evaluation()["t"]
    wait_for(lambda: alerts.last_evaluation()["t"] > seen + 2, what="4 more evaluations")
    assert len(sink.requests) == 2 and len(mailbox.envelopes) == 2


def test_two_worker_processes_deliver_once_and_the_other_takes_over(targets, workers, sink,
                                                                   mailbox, r):
    apply_env(**FAST)  # the default rules, made from these settings
    procs = [workers.start("system", ONE_ATTEMPT) for _ in range(2)]
    wait_for(lambda: r.get(keys.alert_lease()), what="an evaluator")
    producers.enqueue_many([{"job": "test.fail", "payload": {}} for _ in range(12)])
    wait_for(lambda: sink.requests and mailbox.envelopes, timeout=20, what="the alert")
    time.sleep(2)  # four evaluations more
    assert sink.events() == ["fired"] and len(mailbox.envelopes) == 1
    holder = r.get(keys.alert_lease())
    pid = int(holder.split(":")[1])
    victim = next(p for p in procs if p.pid == pid)
    victim.kill()
    victim.wait(10)
    clear_failure_window(r)
    wait_for(lambda: r.get(keys.alert_lease()) not in (None, holder), timeout=15,
             what="the other process taking the lease")
    wait_for(lambda: len(sink.requests) == 2 and len(mailbox.envelopes) == 2, timeout=15,
             what="the resolved messages")
    time.sleep(1.5)
    assert sink.events() == ["fired", "resolved"] and len(mailbox.envelopes) == 2


# ---- each default kind on a real Redis state ----
def kind_rule(kind: str, **extra) -> dict:
    return {"id": kind.replace("_", "-"), "kind": kind, "queue": "*", **extra}


def fired_pairs(done: list[dict]) -> list[tuple[str, str]]:
    return [(s["entry"]["rule"], s["entry"]["queue"]) for s in done if s["action"] == "fire"]


def test_dlq_growth_fires_on_new_dead_letters_within_its_window(targets, worker, r):
    only(kind_rule("dlq_growth", threshold=3, window_seconds=300))
    fail_jobs(worker, 2)
    assert evaluate() == []
    fail_jobs(worker, 1)
    assert fired_pairs(evaluate()) == [("dlq-growth", "system")]
    assert alerts.firing()[0]["value"] == 3
    assert actions(evaluate(time.time() + 301)) == ["resolve"], "they left the window"


def test_oldest_waiting_fires_on_an_old_job_and_not_on_a_paused_queue(targets, r):
    from backstop import queues

    only(kind_rule("oldest_waiting", threshold=600))
    producers.enqueue("email.send", {"to": ["a@example.com"], "subject": "s", "text": "t"})
    assert evaluate(time.time() + 60) == []
    queues.pause("email")
    assert evaluate(time.time() + 700) == [], "a paused queue's jobs wait on purpose"
    queues.resume("email")
    assert fired_pairs(evaluate(time.time() + 700)) == [("oldest-waiting", "email")]
    assert alerts.firing()[0]["value"] >= 700


def test_no_workers_fires_once_waiting_jobs_had_no_worker_for_its_threshold(targets, workers,
                                                                           sink, r):
    only(kind_rule("no_workers", threshold=60))
    producers.enqueue("email.send", {"to": ["a@example.com"], "subject": "s", "text": "t"})
    start = time.time()
    assert evaluate(start) == [], "the clock starts at the first evaluation that sees it"
    assert evaluate(start + 30) == []
    assert alerts.last_evaluation()["values"]["no-workers|email"] == 30
    assert fired_pairs(evaluate(start + 61)) == [("no-workers", "email")]
    assert "no live worker for 61 s" in sink.bodies()[0]["message"]
    workers.start("email", {"email": {"concurrency": 1}}, SMTP_URL="smtp://127.0.0.1:9")
    wait_for(lambda: any("email" in w["queues"] for w in alerts.stats.workers()
                         if w["alive"]), what="an email worker")
    assert actions(evaluate(start + 70)) == ["resolve"], "a worker consumes the queue"


def test_unhealthy_fires_while_health_calls_a_queue_unhealthy(targets, worker, sink, r):
    only(kind_rule("unhealthy", threshold=1))
    fail_jobs(worker, 9)  # (an explicit now: health read afresh, not cached for a few s)
    assert evaluate(time.time()) == [], "too few attempts for health to judge the error rate"
    fail_jobs(worker, 1)
    assert fired_pairs(evaluate(time.time())) == [("unhealthy", "system")]
    body = sink.bodies()[0]
    assert body["message"] == ("unhealthy: queue system is unhealthy: 100% of system's "
                               "attempts failed in the last 5 minutes (10 of 10)")
    assert actions(evaluate(time.time() + 400)) == ["resolve"], "its last 5 minutes are calm"
    assert sink.events() == ["fired", "resolved"]


def test_one_incident_is_one_alert_a_failures_rule_watches_the_error_rate(targets, worker, r):
    only(kind_rule("unhealthy", threshold=1),
         {"id": "fails", "kind": "failures", "queue": "system", "threshold": 10,
          "window_seconds": 300})
    fail_jobs(worker, 10)
    assert fired_pairs(evaluate(time.time())) == [("fails", "system")]
    alerts.update_rule("fails", {"queue": "email"})  # now nothing watches system's failures
    assert fired_pairs(evaluate(time.time())) == [("unhealthy", "system")]


# ---- delivery: retries, refusals, every attempt recorded ----
@pytest.fixture
def quick_retries(monkeypatch):
    monkeypatch.setattr(notify, "RETRY_DELAYS", (0.1, 0.2, 0.3))


def test_a_failing_webhook_is_retried_and_every_attempt_recorded(targets, worker, sink, mailbox,
                                                                 quick_retries, r, caplog):
    caplog.set_level("INFO", logger="backstop.alerts")
    sink.statuses = [503, 500]
    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 1,
          "window_seconds": 60})
    fail_jobs(worker, 1)
    evaluate()
    assert sink.events() == ["fired"] * 3
    stamps = [req["headers"]["X-Backstop-Timestamp"] for req in sink.requests]
    assert all(verify_signature(derived_key(b"backstop-alert-webhook").hex(),
                                req["headers"]["X-Backstop-Signature"], req["body"])
               for req in sink.requests), stamps
    hooks = [d for d in alerts.deliveries() if d["channel"] == "webhook"]
    assert [(d["attempt"], d["ok"], d["detail"]) for d in reversed(hooks)] == [
        (1, False, "answered 503"), (2, False, "answered 500"), (3, True, "answered 200")]
    assert {d["target"] for d in hooks} == {sink.url.split("/hooks/")[0] + "/…"}
    assert "s3cret" not in json.dumps(alerts.deliveries())
    mail = [d for d in alerts.deliveries() if d["channel"] == "mail"]
    assert [(d["ok"], d["target"]) for d in mail] == [(True, "oncall@backstop.test")]
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "backstop.alerts"]
    assert len([m for m in logged if "webhook" in m]) == 1, "once per target, not per attempt"
    assert any("delivered (attempt 3)" in m for m in logged)
    assert "s3cret" not in "\n".join(logged)


def test_a_webhook_to_an_internal_address_is_refused_once_and_not_retried(targets, worker, sink,
                                                                          quick_retries, r):
    apply_env(WEBHOOK_ALLOW_PRIVATE="0", WEBHOOK_ALLOWED_HOSTS="")
    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 1,
          "window_seconds": 60})
    fail_jobs(worker, 1)
    evaluate()
    assert sink.requests == []
    hooks = [d for d in alerts.deliveries() if d["channel"] == "webhook"]
    assert len(hooks) == 1 and not hooks[0]["ok"]
    assert "loopback" in hooks[0]["detail"] and "refused" in hooks[0]["detail"]
    apply_env(WEBHOOK_ALLOWED_HOSTS="127.0.0.1")
    alerts.update_rule("fails", {"threshold": 100})
    evaluate()  # resolves: the allowed host gets the resolved message
    assert sink.events() == ["resolved"]


def test_mail_that_cannot_be_sent_is_retried_then_recorded_as_failed(targets, worker, sink,
                                                                     quick_retries, r):
    apply_env(SMTP_URL=f"smtp://127.0.0.1:{free_port()}")  # nothing listens there
    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 1,
          "window_seconds": 60, "mail_to": ["team@backstop.test"]})
    fail_jobs(worker, 1)
    evaluate()
    mail = [d for d in alerts.deliveries() if d["channel"] == "mail"]
    assert [d["attempt"] for d in reversed(mail)] == [1, 2, 3, 4]
    assert not any(d["ok"] for d in mail)
    assert mail[0]["target"] == "oncall@backstop.test, team@backstop.test"
    assert "ConnectionRefusedError" in mail[0]["detail"]
    assert sink.events() == ["fired"], "the webhook is not held up by the mail"


def test_a_rules_own_targets_are_added_to_the_defaults(targets, worker, sink, mailbox, r):
    with serve_sink() as own:
        only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 1,
              "window_seconds": 60, "webhooks": [own.url, sink.url],
              "mail_to": ["team@backstop.test", "oncall@backstop.test"]})
        fail_jobs(worker, 1)
        evaluate()
        assert own.events() == ["fired"] and sink.events() == ["fired"], "each URL once"
    assert len(mailbox.envelopes) == 1
    assert sorted(mailbox.envelopes[0].rcpt_tos) == ["oncall@backstop.test",
                                                      "team@backstop.test"]


# ---- the panel: the Alerts page, its forms, the nav's count and toasts ----

@pytest.fixture
def app(r):
    return panel_app()


def post(client, path: str, form: dict):
    return client.post(path, data={"csrf_token": client.csrf, **form})


RULE_FORM = {"id": "email-fails", "kind": "failures", "queue": "email", "threshold": "5",
             "window_seconds": "120", "cooldown_seconds": "300", "enabled": "on",
             "webhooks": "https://hooks.example.com/T0/B1/secretpath\nhttps://b.example.com/x",
             "mail_to": "team@example.com, lead@example.com"}


def audit_of(action: str) -> list[dict]:
    return audit.entries(action=action).items


def test_an_owner_adds_a_rule_and_it_is_stored_audited_and_listed(app, r):
    only()
    client = signed_in(app, "olga")
    response = post(client, "/alerts/rules", RULE_FORM)
    assert response.status_code == 302 and response.headers["Location"] == "/alerts#rules"
    assert ("ok", "Alert rule email-fails added.") in flashes(client)
    rule = alerts.get_rule("email-fails")
    assert (rule.kind, rule.queue, rule.threshold, rule.window_seconds, rule.cooldown_seconds,
            rule.enabled) == ("failures", "email", 5, 120, 300, True)
    assert rule.webhooks == ["https://hooks.example.com/T0/B1/secretpath",
                             "https://b.example.com/x"]
    assert rule.mail_to == ["team@example.com", "lead@example.com"]
    [entry] = audit_of("alert.rule.create")
    assert (entry["actor"], entry["target"], entry["result"]) == ("user:olga", "email-fails",
                                                                   "ok")
    assert "secretpath" not in json.dumps(entry), "webhook paths are secrets"
    page = client.get("/alerts").get_data(as_text=True)
    assert 'id="rule-email-fails"' in page and "At least 5 failed attempts within" in page
    assert "https://hooks.example.com/…" in page
    assert client.get("/alerts", headers={}).status_code == 200


def test_a_bad_rule_is_refused_with_the_form_again_naming_the_field(app, r):
    only()
    client = signed_in(app, "olga")
    bad = {**RULE_FORM, "threshold": "0", "window_seconds": "abc",
           "mail_to": "team@example.com nobody"}
    response = post(client, "/alerts/rules", bad)
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "The new rule was not added" in page
    for name in ("threshold", "window_seconds", "mail_to"):
        assert f'id="error-{name}"' in page, name
    assert "greater than 0" in page and "&#39;nobody&#39; is not an e-mail address" in page
    assert 'value="email-fails"' in page, "what was typed is kept"
    assert alerts.get_rule("email-fails") is None
    [entry] = audit_of("alert.rule.create")
    assert entry["result"] == "refused 422" and "threshold" in json.dumps(entry["summary"])


def test_an_owner_edits_and_deletes_a_rule(app, r):
    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 10,
          "window_seconds": 300, "webhooks": ["https://a.example.com/hook"]})
    client = signed_in(app, "olga")
    response = post(client, "/alerts/rules/fails", {
        "queue": "*", "threshold": "3", "window_seconds": "60", "cooldown_seconds": "0",
        "webhooks": "", "mail_to": "a@example.com", "kind": "no_workers"})
    assert response.status_code == 302
    rule = alerts.get_rule("fails")
    assert (rule.kind, rule.queue, rule.threshold, rule.window_seconds, rule.cooldown_seconds,
            rule.enabled, rule.webhooks, rule.mail_to) == (
        "failures", "*", 3, 60, 0, False, [], ["a@example.com"])
    assert audit_of("alert.rule.update")[0]["result"] == "ok"
    refused = post(client, "/alerts/rules/fails", {"threshold": "3", "window_seconds": "60",
                                                   "cooldown_seconds": "-5", "queue": "*"})
    page = refused.get_data(as_text=True)
    assert refused.status_code == 422 and 'id="error-cooldown_seconds"' in page
    assert "This rule was not saved" in page and alerts.get_rule("fails").cooldown_seconds == 0
    assert post(client, "/alerts/rules/nobody", {"threshold": "1"}).status_code == 404
    deleted = post(client, "/alerts/rules/fails/delete", {})
    assert deleted.status_code == 302 and alerts.get_rule("fails") is None
    assert ("ok", "Alert rule fails deleted.") in flashes(client)
    assert audit_of("alert.rule.delete")[0]["target"] == "fails"
    assert post(client, "/alerts/rules/fails/delete", {}).status_code == 404


@pytest.mark.parametrize("user", ["vera", "oscar"])
def test_below_owner_the_page_is_read_only_and_every_post_is_403(app, r, user):
    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 10,
          "webhooks": ["https://hooks.example.com/T0/B1/secretpath"]})
    client = signed_in(app, user)
    page = client.get("/alerts").get_data(as_text=True)
    assert 'id="rule-fails"' in page
    assert "Add a rule" not in page and "/alerts/rules" not in page
    assert "secretpath" not in page, "only an owner's edit form shows a webhook's path"
    before = r.hgetall(keys.alert_rules())
    for path, form in (("/alerts/rules", RULE_FORM), ("/alerts/rules/fails", {"threshold": "1"}),
                       ("/alerts/rules/fails/delete", {})):
        assert post(client, path, form).status_code == 403, path
    assert r.hgetall(keys.alert_rules()) == before
    refusals = audit.entries(actor=f"user:{user}").items
    assert sorted(e["action"] for e in refusals if e["result"] == "refused 403") == [
        "alert.rule.create", "alert.rule.delete", "alert.rule.update"]


def test_a_post_without_its_csrf_token_changes_nothing(app, r):
    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 10})
    client = signed_in(app, "olga")
    response = client.post("/alerts/rules/fails/delete", data={})
    assert response.status_code == 400 and alerts.get_rule("fails") is not None


def test_the_page_lists_firing_alerts_history_and_deliveries(targets, worker, app, sink, r):
    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 2,
          "window_seconds": 60})
    client = signed_in(app, "vera")
    page = client.get("/alerts").get_data(as_text=True)
    assert "No worker has evaluated the alert rules yet" in page
    fail_jobs(worker, 2)
    evaluate()
    page = client.get("/alerts").get_data(as_text=True)
    assert "Rules last evaluated" in page and "evaluator-1" in page
    firing = page.split('id="alerts-firing"')[1].split("</table>")[0]
    assert "<code>fails</code>" in firing and ">system</a>" in firing
    history = page.split('id="alerts-history"')[1].split("</table>")[0]
    assert history.count("<tr>") == 2  # the header and one alert
    deliveries = page.split('id="alerts-deliveries"')[1].split("</table>")[0]
    assert deliveries.count('data-delivery="ok"') == 2  # the webhook and the mail
    assert "/hooks/" not in deliveries and "oncall@backstop.test" in deliveries
    r.set(keys.alert_evaluated(), json.dumps({"t": time.time(), "worker": "<b>host</b>:1",
                                              "values": {}, "held_back": []}))
    partial = client.get("/alerts?partial=alerts").get_data(as_text=True)
    assert 'id="alerts-live"' in partial.split(">")[0]
    assert '<bdi dir="ltr">&lt;b&gt;host&lt;/b&gt;:1</bdi>' in partial


def test_the_nav_counts_firing_alerts_and_a_new_one_becomes_a_toast(targets, worker, app, r):
    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 1,
          "window_seconds": 60})
    client = signed_in(app, "vera")
    page = client.get("/queues").get_data(as_text=True)
    count = page.split('id="alert-count"')[1].split("</span>")[0]
    assert count.endswith(">") and "after=0-0" in count, "nothing firing: an empty count"
    fail_jobs(worker, 1)
    [fired] = evaluate()
    seen = client.get("/alerts/count?after=0-0").get_data(as_text=True)
    assert f'after={fired["entry"]["history_id"]}' in seen
    assert seen.split('id="alert-count"')[1].split("</span>")[0].endswith(">1")
    assert seen.count('hx-swap-oob="afterbegin:#toasts"') == 1
    assert "Alert: fails on queue system (1; threshold 1)." in seen
    again = client.get(f"/alerts/count?after={fired['entry']['history_id']}")
    assert "hx-swap-oob" not in again.get_data(as_text=True), "a toast is shown once"
    for damaged in ("x", "1-2-3", "'><script>"):
        answer = client.get(f"/alerts/count?after={damaged}").get_data(as_text=True)
        assert "hx-swap-oob" not in answer and "<script>" not in answer


# ---- in a real browser: the toast and the count on a page left open ----
@pytest.fixture
def quick_polls(r):
    apply_env(POLL_SECONDS="1")  # before live_server starts: it reads the environment


def test_an_open_page_shows_a_toast_and_the_count_when_an_alert_fires(quick_polls, live_server,
                                                                     page, worker, r):
    from browser_support import shot
    from helpers import browser_sign_in
    from playwright.sync_api import expect

    only({"id": "fails", "kind": "failures", "queue": "system", "threshold": 2,
          "window_seconds": 60})
    browser_sign_in(page, live_server, "vera", "viewer")
    page.goto(live_server + "/dlq/analytics")  # a page whose socket carries no alerts
    count = page.locator("#alert-count")
    expect(count).to_have_text("")
    fail_jobs(worker, 2)
    evaluate()
    toast = page.locator('#toasts .toast[data-alert="fired"]')
    expect(toast).to_contain_text("Alert: fails on queue system (2; threshold 2).")
    expect(count).to_have_text("1")
    shot(page, "alerts-toast")
    toast.locator("[data-dismiss]").click()
    expect(toast).to_have_count(0)
    page.wait_for_timeout(2500)  # two more polls: a dismissed toast does not come back
    expect(toast).to_have_count(0)
    evaluate(time.time() + 130)
    expect(page.locator('#toasts .toast[data-alert="resolved"]')).to_contain_text(
        "Resolved: fails on queue system.")
    expect(count).to_have_text("")
    page.locator('#toasts .toast a[href="/alerts"]').click()
    page.wait_for_url("**/alerts")
    expect(page.locator("#alerts-history tbody tr")).to_have_count(2)
    assert page.console_errors == []


# ---- under the production ACL user ----
def test_alerts_run_under_the_acl_user(acl_restricted, sink, mailbox):
    from test_redis_acl import denied

    _url, admin = acl_restricted
    apply_env(ALERT_WEBHOOK_URLS=sink.url, WEBHOOK_ALLOW_PRIVATE="1",
              SMTP_URL=f"smtp://127.0.0.1:{mailbox.port}", ALERT_MAIL_TO="ops@backstop.test")
    producers.enqueue("email.send", {"to": ["a@example.com"], "subject": "s", "text": "t"})
    later = time.time() + 700  # the defaults: oldest-waiting and no-workers fire on email
    fired = evaluate(later)
    assert sorted(fired_pairs(fired)) == [("no-workers", "email"), ("oldest-waiting", "email")]
    assert len(sink.requests) == 2 and len(mailbox.envelopes) == 2
    app = panel_app()
    client = signed_in(app, "olga")
    assert client.get("/alerts").status_code == 200
    assert client.get("/alerts/count?after=0-0").status_code == 200
    assert post(client, "/alerts/rules", RULE_FORM).status_code == 302
    assert post(client, "/alerts/rules/email-fails/delete", {}).status_code == 302
    assert denied(admin) == []
