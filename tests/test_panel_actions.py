"""Every mutating panel route, Sidekiq-style: the state in Redis before, the POST (through
its confirmation page where it has one), the state after, where it redirects, what it
flashes and what it audits. Then the refusals: a spent confirmation token, a role too low."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import pytest
import redis
from dlq_helpers import make_dead
from helpers import flashes, panel_app, signed_in
from werkzeug.datastructures import MultiDict

from backstop import audit, dlq, keys, producers, queues, redrive, registry
from backstop.config import settings
from backstop.dlq import Filters

MAIL = {"to": ["a@example.com"], "subject": "s", "text": "t"}
VALUE_ERRORS = json.dumps({"error_type": "ValueError"})


@pytest.fixture
def app(r):
    return panel_app()


# ---- data in Redis, made and read through the core ----
def waiting_mail(n: int = 3) -> dict:
    return {"ids": [producers.enqueue("email.send", {**MAIL, "subject": f"s{i}"})
                    for i in range(n)]}


def paused_email() -> dict:
    queues.pause("email", actor="test")
    return {}


def dead(n: int = 2) -> dict:
    return {"ids": make_dead([{"cause": 1, "n": i} for i in range(n)])}


def dead_mixed() -> dict:
    """Two ValueError records (the filter VALUE_ERRORS selects them) and one KeyError."""
    ids = make_dead([{"cause": 1, "n": 1}, {"cause": 1, "n": 2}, {"cause": 2, "n": 3}])
    return {"ids": ids, "matching": ids[:2], "other": ids[2:]}


def redrive_in(status: str) -> Callable[[], dict]:
    def setup() -> dict:
        ctx = dead(2)
        ctx["id"] = redrive.start("user:oscar", Filters(), 1.0)["id"]
        if status == "paused":
            redrive.pause(ctx["id"], "user:oscar")
        return ctx
    return setup


def job_states(ids: list[str]) -> list[str | None]:
    return [(registry.get_job(i) or {}).get("state") for i in ids]


def attempts(ids: list[str]) -> list[str | None]:
    """The state of each id's first replay attempt (None: not replayed)."""
    return job_states([f"{i}:replay1" for i in ids])


def records_kept(ids: list[str]) -> list[bool]:
    return [dlq.get_record(i) is not None for i in ids]


def waiting_in(queue: str) -> int:
    return registry.counts((queue,))[queue]["waiting"]


def redrive_status(ctx: dict) -> str:
    return redrive.progress(ctx["id"])["status"]


def started_redrives(_ctx: dict) -> list[tuple[str, int]]:
    return [(d["status"], d["total"]) for d in redrive.listing()]


# ---- the table ----
@dataclass
class Action:
    """One mutating route: who posts what where, and what Redis holds before and after."""

    name: str
    user: str
    path: str  # formatted with the setup's context
    setup: Callable[[], dict]
    state: Callable[[dict], Any]
    before: Any
    after: Any  # a value, or a function of the context
    location: str
    message: str | None
    audit_action: str
    form: Callable[[dict], dict] = field(default=lambda ctx: {})
    count: int | None = None  # what the confirmation page says; None: no confirmation

    def expected_after(self, ctx: dict) -> Any:
        return self.after(ctx) if callable(self.after) else self.after


def ids_of(key: str = "ids", **extra) -> Callable[[dict], dict]:
    return lambda ctx: {"ids": ctx[key], **extra}


ACTIONS = [
    Action("pause a queue", "oscar", "/queues/email/pause", dict,
           lambda ctx: "email" in queues.paused_queues(), False, True,
           "/queues", "Queue email paused.", "queue.pause"),
    Action("resume a queue", "oscar", "/queues/email/resume", paused_email,
           lambda ctx: "email" in queues.paused_queues(), True, False,
           "/queues", "Queue email resumed.", "queue.resume"),
    Action("purge a queue", "olga", "/queues/email/purge", waiting_mail,
           lambda ctx: waiting_in("email"), 3, 0,
           "/queues/email", "3 jobs cancelled.", "queue.purge", count=3),
    Action("retry selected jobs", "oscar", "/queues/system/bulk", dead,
           lambda ctx: attempts(ctx["ids"]), [None, None], ["waiting", "waiting"],
           "/queues/system", "2 of 2 jobs done.", "job.bulk",
           form=ids_of(action="retry"), count=2),
    Action("remove selected jobs", "oscar", "/queues/email/bulk", waiting_mail,
           lambda ctx: job_states(ctx["ids"][:2]), ["waiting"] * 2, ["cancelled"] * 2,
           "/queues/email", "2 of 2 jobs done.", "job.bulk",
           form=lambda ctx: {"ids": ctx["ids"][:2], "action": "cancel"}, count=2),
    Action("cancel a job", "oscar", "/jobs/{id}/cancel", lambda: {"id": waiting_mail(1)["ids"][0]},
           lambda ctx: job_states([ctx["id"]]), ["waiting"], ["cancelled"],
           "/jobs/{id}", "Job cancelled.", "job.cancel"),
    Action("retry a job", "oscar", "/jobs/{id}/retry", lambda: {"id": dead(1)["ids"][0]},
           lambda ctx: attempts([ctx["id"]]), [None], ["waiting"],
           "/jobs/{id}", "Job retried.", "job.retry"),
    Action("replay a record", "oscar", "/dlq/records/{id}/replay",
           lambda: {"id": dead(1)["ids"][0]},
           lambda ctx: attempts([ctx["id"]]), [None], ["waiting"],
           "/jobs/{id}:replay1", "Replayed as {id}:replay1.", "dlq.replay", count=1),
    Action("delete a record", "olga", "/dlq/records/{id}/delete",
           lambda: {"id": dead(1)["ids"][0]},
           lambda ctx: records_kept([ctx["id"]]), [True], [False],
           "/dlq", "Record deleted.", "dlq.delete", count=1),
    Action("replay selected records", "oscar", "/dlq/bulk", dead,
           lambda ctx: attempts(ctx["ids"]), [None, None], ["waiting", "waiting"],
           "/dlq", "2 of 2 records done.", "dlq.bulk",
           form=ids_of(action="replay", filter="{}"), count=2),
    Action("delete selected records", "olga", "/dlq/bulk", dead,
           lambda ctx: records_kept(ctx["ids"]), [True, True], [False, False],
           "/dlq", "2 of 2 records done.", "dlq.bulk",
           form=ids_of(action="delete", filter="{}"), count=2),
    Action("replay everything matching", "oscar", "/dlq/bulk", dead_mixed,
           lambda ctx: (attempts(ctx["matching"]), attempts(ctx["other"])),
           ([None, None], [None]), (["waiting", "waiting"], [None]),
           "/dlq?error_type=ValueError", "2 of 2 records done.", "dlq.bulk",
           form=lambda ctx: {"action": "replay", "filter": VALUE_ERRORS}, count=2),
    Action("delete everything matching", "olga", "/dlq/bulk", dead_mixed,
           lambda ctx: records_kept(ctx["ids"]), [True] * 3, [False, False, True],
           "/dlq?error_type=ValueError", "2 of 2 records done.", "dlq.bulk",
           form=lambda ctx: {"action": "delete", "filter": VALUE_ERRORS}, count=2),
    Action("clear what matches", "olga", "/dlq/clear", dead_mixed,
           lambda ctx: records_kept(ctx["ids"]), [True] * 3, [False, False, True],
           "/dlq", "2 records deleted.", "dlq.clear",
           form=lambda ctx: {"filter": VALUE_ERRORS}, count=2),
    Action("start a redrive", "oscar", "/dlq/redrives", dead_mixed,
           started_redrives, [], [("running", 2)],
           "/dlq?error_type=ValueError", "Redrive {redrive} started.", "dlq.redrive.start",
           form=lambda ctx: {"filter": VALUE_ERRORS, "rate": "2"}, count=2),
    Action("pause a redrive", "oscar", "/dlq/redrives/{id}/pause", redrive_in("running"),
           redrive_status, "running", "paused", "/dlq", "Redrive {id} paused.",
           "dlq.redrive.change"),
    Action("resume a redrive", "oscar", "/dlq/redrives/{id}/resume", redrive_in("paused"),
           redrive_status, "paused", "running", "/dlq", "Redrive {id} resumed.",
           "dlq.redrive.change"),
    Action("cancel a redrive", "oscar", "/dlq/redrives/{id}/cancel", redrive_in("running"),
           redrive_status, "running", "cancelled", "/dlq", "Redrive {id} cancelled.",
           "dlq.redrive.change"),
]
CONFIRMED = [a for a in ACTIONS if a.count is not None]


# ---- posting ----
class ConfirmForm(HTMLParser):
    """The hidden inputs of the page's form that carries a "confirm" token, entities decoded."""

    def __init__(self):
        super().__init__()
        self.forms: list[list[tuple[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        found = dict(attrs)
        if tag == "form":
            self.forms.append([])
        elif tag == "input" and found.get("type") == "hidden" and self.forms:
            self.forms[-1].append((found.get("name") or "", found.get("value") or ""))


def confirm_form(page: str) -> MultiDict:
    """What the confirmation page's "Yes, do it" posts: its hidden fields, as a browser would."""
    parser = ConfirmForm()
    parser.feed(page)
    [fields] = [f for f in parser.forms if any(name == "confirm" for name, _ in f)]
    return MultiDict(fields)


def post(client, path: str, form: dict | MultiDict):
    data = MultiDict(form)
    data.setdefault("csrf_token", client.csrf)
    return client.post(path, data=data)


def first_step(client, action: Action, ctx: dict):
    """The first POST: a confirmation page saying the count, or (no confirmation) the deed."""
    return post(client, action.path.format(**ctx), action.form(ctx))


def snapshot(redis_url: str) -> dict:
    """Every key a panel action may change, dumped; not the audit log, sessions, rate-limit
    counters or confirmation tokens, which every request or preview writes, nor the outbox
    depth each process reports now and then (outbox.report)."""
    raw = redis.Redis.from_url(redis_url)
    skip = (keys.audit_log(), keys.audit_head(), keys.audit_quiet(""), keys.confirmation(""),
            keys.user_sessions(""), f"LIMITS:LIMITER/{settings().backstop_prefix}-limits/",
            keys.outbox_hosts())
    return {k: raw.dump(k) for k in sorted(raw.keys())
            if not k.decode().startswith(skip)}


def audit_results(action: str) -> list[tuple[str, str]]:
    return [(e["actor"], e["result"]) for e in audit.entries(action=action).items]


def expected_texts(action: Action, ctx: dict) -> tuple[str, str | None]:
    redrives = redrive.listing()
    fill = {**ctx, "redrive": redrives[0]["id"] if redrives else ""}
    message = action.message.format(**fill) if action.message else None
    return action.location.format(**fill), message


# ---- the tests ----
@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: a.name)
def test_each_action_changes_redis_redirects_and_says_so(app, redis_url, action):
    ctx = action.setup()
    assert action.state(ctx) == action.before
    client = signed_in(app, action.user)
    response = first_step(client, action, ctx)
    if action.count is not None:
        before = snapshot(redis_url)
        page = response.get_data(as_text=True)
        assert response.status_code == 200, page[:500]
        noun = "job" if action.count == 1 else "jobs"
        assert f"This touches {action.count} {noun}." in page
        assert action.state(ctx) == action.before and snapshot(redis_url) == before
        response = client.post(action.path.format(**ctx), data=confirm_form(page))
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    assert action.state(ctx) == action.expected_after(ctx)
    location, message = expected_texts(action, ctx)
    assert response.headers["Location"] == location
    told = flashes(client)
    assert ("error" not in dict(told)) and (message is None or ("ok", message) in told), told
    assert (f"user:{action.user}", "ok") in audit_results(action.audit_action)


@pytest.mark.parametrize("action", CONFIRMED, ids=lambda a: a.name)
def test_a_confirmation_token_works_once(app, redis_url, action):
    ctx = action.setup()
    client = signed_in(app, action.user)
    form = confirm_form(first_step(client, action, ctx).get_data(as_text=True))
    assert client.post(action.path.format(**ctx), data=form).status_code == 302
    flashes(client)
    done = snapshot(redis_url)
    again = client.post(action.path.format(**ctx), data=form)
    page = again.get_data(as_text=True)
    asked_again = again.status_code == 200 and "Are you sure?" in page \
        and form["confirm"] not in page
    told = flashes(client)
    assert asked_again or any("confirmation token" in text for _, text in told), told
    assert snapshot(redis_url) == done
    assert audit_results(action.audit_action).count((f"user:{action.user}", "ok")) == 1


def test_the_edit_is_shown_as_a_diff_then_replayed_once(app, redis_url):
    [record_id] = dead(1)["ids"]
    client = signed_in(app, "oscar")
    path = f"/dlq/records/{record_id}/edit"
    edited = json.dumps({"cause": 0, "n": 1})
    preview = post(client, path, {"payload": edited})
    page = preview.get_data(as_text=True)
    assert preview.status_code == 200 and "<code>cause</code>" in page
    assert attempts([record_id]) == [None]
    form = confirm_form(page)
    form["payload"] = edited
    done = client.post(path, data=form)
    assert done.headers["Location"] == f"/jobs/{record_id}:replay1"
    assert ("ok", f"Replayed with the edited payload as {record_id}:replay1.") in flashes(client)
    attempt = registry.get_job(f"{record_id}:replay1")
    assert attempt["state"] == "waiting" and attempt["payload"]["cause"] == 0
    assert ("user:oscar", "ok") in audit_results("dlq.edit_replay")
    before = snapshot(redis_url)
    again = client.post(path, data=form)
    assert again.status_code == 200 and form["confirm"] not in again.get_data(as_text=True)
    assert snapshot(redis_url) == before and attempts([record_id]) == ["waiting"]


def test_signing_out_ends_the_session_and_goes_to_the_sign_in_page(app):
    client = signed_in(app, "vera")
    response = post(client, "/logout", {})
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert client.get("/overview").status_code == 302
    assert ("user:vera", "ok") in audit_results("auth.logout")


def test_choosing_a_language_sets_the_cookie_and_goes_back(app):
    client = signed_in(app, "vera")
    response = post(client, "/lang", {"lang": "fa", "next": "/dlq?queue=email"})
    assert response.status_code == 302 and response.headers["Location"] == "/dlq?queue=email"
    assert client.get_cookie("lang").value == "fa"
    assert 'lang="fa"' in client.get("/dlq").get_data(as_text=True)


REFUSED = [(a, "vera") for a in ACTIONS if a.user == "oscar"] + \
    [(a, "oscar") for a in ACTIONS if a.user == "olga"]


@pytest.mark.parametrize(("action", "user"), REFUSED, ids=lambda v: getattr(v, "name", v))
def test_a_role_below_the_routes_gets_403_and_nothing_changes(app, redis_url, action, user):
    ctx = action.setup()
    client = signed_in(app, user)
    before = snapshot(redis_url)
    response = first_step(client, action, ctx)
    assert response.status_code == 403
    assert snapshot(redis_url) == before and action.state(ctx) == action.before
    assert any(e["result"] == "refused 403" for e in audit.entries(actor=f"user:{user}").items)


def test_a_viewer_cannot_edit_and_replay(app, redis_url):
    [record_id] = dead(1)["ids"]
    client = signed_in(app, "vera")
    before = snapshot(redis_url)
    response = post(client, f"/dlq/records/{record_id}/edit", {"payload": '{"cause": 0}'})
    assert response.status_code == 403 and snapshot(redis_url) == before
