"""The operations API (web/api_operations.py): queues, pause/resume, two-step purge, job
listings, job retry/cancel/delete one by one and in bulk, workers and alert rules. Each test
reads Redis before and after, and checks roles, refusals and the audit log."""

from __future__ import annotations

import time

import pytest
from dlq_helpers import make_dead
from helpers import auth, system_worker

from backstop import alerts, audit, dlq, keys, producers, queues, registry

MAIL = {"to": ["a@example.com"], "subject": "s", "text": "t"}


def waiting_mail(n: int = 3) -> list[str]:
    return [producers.enqueue("email.send", {**MAIL, "subject": f"s{i}"}) for i in range(n)]


def state_of(job_id: str) -> str | None:
    return (registry.get_job(job_id) or {}).get("state")


def audited(action: str) -> list[tuple[str, str, str]]:
    """(actor, target, result) of the audit entries of an action, oldest first."""
    return [(e["actor"], e["target"], e["result"])
            for e in reversed(audit.entries(action=action).items)]


# ---- queues ----
def test_queue_list_and_one_queue_carry_counts_figures_and_config(api):
    waiting_mail(2)
    make_dead([{"cause": 1, "n": 1}, {"cause": 0, "n": 2}])
    viewer = auth("viewer")
    listing = api.get("/api/v1/queues", headers=viewer)
    assert listing.status_code == 200
    rows = {row["queue"]: row for row in listing.json["items"]}
    assert rows["email"]["counts"]["waiting"] == 2 and rows["email"]["paused"] is False
    assert rows["email"]["oldest_waiting_age"] is not None
    system = rows["system"]
    assert system["counts"]["dead"] == 1 and system["counts"]["completed"] == 1
    assert system["dead_letters"] == 1 and system["processed"] == 2
    assert system["error_rate"] == 0.5 and system["runtime_ms"]["count"] == 2
    assert set(system["wait_ms"]) >= {"p50", "p95", "p99"} and "per_minute" in system
    assert system["totals"]["enqueued"] == 2 and "workers" in system
    one = api.get("/api/v1/queues/email", headers=viewer).json
    assert one["counts"]["waiting"] == 2 and one["paused_since"] is None
    assert {"concurrency", "timeout", "attempts", "rate_limit", "outage"} <= set(one["config"])
    missing = api.get("/api/v1/queues/nope", headers=viewer)
    assert missing.status_code == 404 and "nope" in missing.json["error"]
    assert api.get("/api/v1/queues").status_code == 401


def test_pause_and_resume_need_an_operator_and_are_audited(api, r):
    viewer, operator = auth("viewer"), auth("operator")
    assert api.get("/api/v1/queues", headers=viewer).status_code == 200  # figures cached
    refused = api.post("/api/v1/queues/email/pause", headers=viewer)
    assert refused.status_code == 403 and "email" not in queues.paused_queues()
    paused = api.post("/api/v1/queues/email/pause", headers=operator)
    assert paused.status_code == 200 and paused.json["paused"] is True
    assert paused.json["paused_since"] and r.sismember(keys.paused(), "email")
    shown = api.get("/api/v1/queues", headers=viewer).json["items"]
    assert next(q for q in shown if q["queue"] == "email")["paused"] is True
    resumed = api.post("/api/v1/queues/email/resume", headers=operator)
    assert resumed.json == {"queue": "email", "paused": False, "paused_since": None}
    assert not r.sismember(keys.paused(), "email")
    assert api.post("/api/v1/queues/nope/pause", headers=operator).status_code == 404
    assert audited("queue.pause") == [("token:viewer-bot", "email", "refused 403"),
                                      ("token:operator-bot", "email", "ok"),
                                      ("token:operator-bot", "nope", "refused 404")]
    assert audited("queue.resume") == [("token:operator-bot", "email", "ok")]


def test_purge_takes_a_count_then_a_single_use_token(api):
    ids = waiting_mail(3)
    owner = auth("owner")
    refused = api.post("/api/v1/queues/email/purge", headers=auth("operator"))
    assert refused.status_code == 403
    first = api.post("/api/v1/queues/email/purge", headers=owner)
    assert first.status_code == 200 and first.json["count"] == 3
    assert first.json["token"] and first.json["expires_in"] == 60
    assert [state_of(i) for i in ids] == ["waiting"] * 3
    wrong = api.post("/api/v1/queues/email/purge", json={"token": "guess"}, headers=owner)
    assert wrong.status_code == 409 and wrong.json["code"] == "token"
    other = api.post("/api/v1/queues/ai/purge", json={"token": first.json["token"]},
                     headers=owner)
    assert other.status_code == 409 and other.json["code"] == "token"
    assert registry.counts(("email",))["email"]["waiting"] == 3
    token = api.post("/api/v1/queues/email/purge", headers=owner).json["token"]
    done = api.post("/api/v1/queues/email/purge", json={"token": token}, headers=owner)
    assert done.status_code == 200 and done.json == {"queue": "email", "cancelled": 3}
    assert registry.counts(("email",))["email"]["waiting"] == 0
    assert [state_of(i) for i in ids] == ["cancelled"] * 3
    reused = api.post("/api/v1/queues/email/purge", json={"token": token}, headers=owner)
    assert reused.status_code == 409 and reused.json["code"] == "token"
    bad = api.post("/api/v1/queues/email/purge", json={"token": 5}, headers=owner)
    assert bad.status_code == 422 and bad.json["fields"][0]["field"] == "token"
    assert [a for _, _, a in audited("queue.purge")] == [
        "refused 403", "refused 409", "refused 409", "ok", "refused 409", "refused 422"]
    assert len(audited("queue.purge.preview")) == 2


def test_purge_is_rate_limited_as_a_destructive_action(api):
    owner = auth("owner")
    codes = [api.post("/api/v1/queues/email/purge", headers=owner) for _ in range(11)]
    assert [c.status_code for c in codes] == [200] * 10 + [429]
    assert int(codes[-1].headers["Retry-After"]) > 0


# ---- job listings ----
def test_jobs_of_a_state_page_by_cursor_newest_first(api, r):
    ids = waiting_mail(7)
    viewer = auth("viewer")
    seen, cursor, pages = [], None, 0
    while True:
        query = f"?state=waiting&limit=3{f'&cursor={cursor}' if cursor else ''}"
        page = api.get(f"/api/v1/queues/email/jobs{query}", headers=viewer).json
        assert page["total"] == 7 + pages and page["state"] == "waiting"
        seen += [job["id"] for job in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        producers.enqueue("email.send", {**MAIL, "subject": "late"})  # lands before page 1
    assert pages == 3 and seen == ids[::-1]
    assert all("timeline" not in job for job in page["items"])
    bad_state = api.get("/api/v1/queues/email/jobs?state=sleeping", headers=viewer)
    assert bad_state.status_code == 422 and bad_state.json["fields"][0]["field"] == "state"
    bad_cursor = api.get("/api/v1/queues/email/jobs?cursor=nonsense", headers=viewer)
    assert bad_cursor.status_code == 400 and bad_cursor.json["fields"][0]["field"] == "cursor"
    assert api.get("/api/v1/queues/email/jobs?limit=0", headers=viewer).status_code == 400
    assert api.get("/api/v1/queues/nope/jobs", headers=viewer).status_code == 404


def test_a_listing_shows_errors_without_stacks_and_secrets_redacted(api):
    [dead_id] = make_dead([{"cause": 1, "n": 1, "api_token": "s3cret-value"}])
    page = api.get("/api/v1/queues/system/jobs?state=dead", headers=auth("viewer")).json
    [job] = page["items"]
    assert job["id"] == dead_id and job["error"]["type"] == "ValueError"
    assert "stack" not in job["error"] and "s3cret-value" not in str(job)


def test_paging_skips_a_job_that_left_the_state_without_repeats(api):
    ids = waiting_mail(6)
    viewer = auth("viewer")
    first = api.get("/api/v1/queues/email/jobs?limit=3", headers=viewer).json
    registry.cancel_job(first["items"][-1]["id"])  # the cursor's own job leaves the state
    second = api.get(f"/api/v1/queues/email/jobs?limit=3&cursor={first['next_cursor']}",
                     headers=viewer).json
    assert [j["id"] for j in first["items"] + second["items"]] == ids[::-1]
    assert second["next_cursor"] is None


def test_jobs_of_one_score_page_by_id_without_repeats(api, r):
    ids = waiting_mail(5)
    r.zadd(keys.state_index("email", "waiting"), dict.fromkeys(ids, 1700000000.5))
    viewer = auth("viewer")
    seen, cursor = [], ""
    for _ in range(3):
        page = api.get(f"/api/v1/queues/email/jobs?limit=2&cursor={cursor}",
                       headers=viewer).json
        seen += [job["id"] for job in page["items"]]
        cursor = page["next_cursor"]
    assert seen == sorted(ids, reverse=True) and cursor is None


# ---- one job ----
def test_retry_replays_a_dead_job_through_its_dlq_record(api):
    [dead_id] = make_dead([{"cause": 1, "n": 1}])
    [waiting_id] = waiting_mail(1)
    viewer, operator = auth("viewer"), auth("operator")
    assert api.post(f"/api/v1/jobs/{dead_id}/retry", headers=viewer).status_code == 403
    done = api.post(f"/api/v1/jobs/{dead_id}/retry", headers=operator)
    assert done.status_code == 202 and done.json["attempt_id"] == f"{dead_id}:replay1"
    assert state_of(f"{dead_id}:replay1") == "waiting"
    assert dlq.get_record(dead_id)["status"] == "replaying"
    busy = api.post(f"/api/v1/jobs/{dead_id}/retry", headers=operator)
    assert busy.status_code == 409 and busy.json["code"] == "busy"
    not_dead = api.post(f"/api/v1/jobs/{waiting_id}/retry", headers=operator)
    assert not_dead.status_code == 409 and not_dead.json["code"] == "not_dead"
    assert "waiting" in not_dead.json["error"] and state_of(waiting_id) == "waiting"
    missing = api.post("/api/v1/jobs/ghost/retry", headers=operator)
    assert missing.status_code == 404 and missing.json["code"] == "missing"
    assert [a for _, _, a in audited("job.retry")] == [
        "refused 403", "ok", "refused 409", "refused 409", "refused 404"]


def test_cancel_removes_a_job_that_has_not_started(api):
    [waiting_id] = waiting_mail(1)
    [done_id] = make_dead([{"cause": 0, "n": 1}])
    operator = auth("operator")
    assert api.post(f"/api/v1/jobs/{waiting_id}/cancel", headers=auth("viewer")).status_code \
        == 403
    done = api.post(f"/api/v1/jobs/{waiting_id}/cancel", headers=operator)
    assert done.status_code == 200 and done.json == {"id": waiting_id, "outcome": "cancelled"}
    assert state_of(waiting_id) == "cancelled"
    again = api.post(f"/api/v1/jobs/{waiting_id}/cancel", headers=operator)
    assert again.status_code == 409 and again.json["code"] == "state"
    finished = api.post(f"/api/v1/jobs/{done_id}/cancel", headers=operator)
    assert finished.status_code == 409 and "completed" in finished.json["error"]
    assert state_of(done_id) == "completed"
    assert api.post("/api/v1/jobs/ghost/cancel", headers=operator).status_code == 404
    assert [a for _, _, a in audited("job.cancel")] == [
        "refused 403", "ok", "refused 409", "refused 409", "refused 404"]


def test_delete_removes_a_finished_jobs_record_and_keeps_its_dlq_record(api, r):
    [done_id, dead_id] = make_dead([{"cause": 0, "n": 1}, {"cause": 1, "n": 2}])
    [waiting_id] = waiting_mail(1)
    owner = auth("owner")
    assert api.delete(f"/api/v1/jobs/{done_id}", headers=auth("operator")).status_code == 403
    assert r.exists(keys.job(done_id), keys.timeline(done_id)) == 2
    assert api.delete(f"/api/v1/jobs/{done_id}", headers=owner).json["outcome"] == "deleted"
    assert r.exists(keys.job(done_id), keys.timeline(done_id)) == 0
    assert r.zscore(keys.state_index("system", "completed"), done_id) is None
    assert api.delete(f"/api/v1/jobs/{dead_id}", headers=owner).status_code == 200
    assert registry.get_job(dead_id) is None and dlq.get_record(dead_id) is not None
    assert registry.counts(("system",))["system"]["dead"] == 0
    refused = api.delete(f"/api/v1/jobs/{waiting_id}", headers=owner)
    assert refused.status_code == 409 and refused.json["code"] == "state"
    assert state_of(waiting_id) == "waiting"
    missing = api.delete(f"/api/v1/jobs/{done_id}", headers=owner)
    assert missing.status_code == 404 and missing.json["code"] == "missing"
    assert [a for _, _, a in audited("job.delete")] == [
        "refused 403", "ok", "ok", "refused 409", "refused 404"]


def test_a_cancelled_job_is_deleted_only_once_its_queue_holds_no_message(api, r):
    [cancelled, other] = waiting_mail(2)
    registry.cancel_job(cancelled)
    owner = auth("owner")
    queued = api.delete(f"/api/v1/jobs/{cancelled}", headers=owner)
    assert queued.status_code == 409 and queued.json["code"] == "queued"
    assert state_of(cancelled) == "cancelled"
    from backstop.hueys import huey_for

    huey_for("email").storage.flush_queue()  # as if a worker had skipped both messages
    assert api.delete(f"/api/v1/jobs/{cancelled}", headers=owner).status_code == 200
    assert not r.exists(keys.job(cancelled)) and state_of(other) == "waiting"


# ---- bulk ----
def test_bulk_answers_per_id_and_deleting_needs_an_owner(api):
    dead_ids = make_dead([{"cause": 1, "n": 1}, {"cause": 1, "n": 2}])
    waiting = waiting_mail(2)
    operator, owner = auth("operator"), auth("owner")
    retried = api.post("/api/v1/jobs/bulk/retry", json={"ids": [*dead_ids, waiting[0], "ghost"]},
                       headers=operator).json
    assert [x["outcome"] for x in retried["results"]] == [
        "retried", "retried", "not_dead", "missing"]
    assert retried["count"] == 4 and retried["done"] == 2
    assert [state_of(f"{i}:replay1") for i in dead_ids] == ["waiting", "waiting"]
    cancelled = api.post("/api/v1/jobs/bulk/cancel", json={"ids": waiting + waiting},
                         headers=operator).json
    assert cancelled["count"] == 2 and cancelled["done"] == 2
    assert [state_of(i) for i in waiting] == ["cancelled", "cancelled"]
    denied = api.post("/api/v1/jobs/bulk/delete", json={"ids": dead_ids}, headers=operator)
    assert denied.status_code == 403 and all(registry.get_job(i) for i in dead_ids)
    deleted = api.post("/api/v1/jobs/bulk/delete", json={"ids": dead_ids}, headers=owner).json
    assert deleted["done"] == 2 and not any(registry.get_job(i) for i in dead_ids)
    assert [(a, result) for a, _, result in audited("job.bulk")] == [
        ("token:operator-bot", "ok"), ("token:operator-bot", "ok"),
        ("token:operator-bot", "refused 403"), ("token:owner-bot", "ok")]
    assert audit.entries(action="job.bulk").items[0]["target"] == ",".join(dead_ids)


@pytest.mark.parametrize("body, status, field", [
    ({"ids": "a"}, 422, "ids"), ({"ids": [1, 2]}, 422, "ids.0"), ({"ids": []}, 422, "ids"),
    ({"ids": ["x"] * 1001}, 422, "ids"), ({"ids": ["x" * 201]}, 422, "ids.0"),
    ({"ids": ["a"], "also": 1}, 422, "also"),
    ({}, 422, "ids"), ("[1]", 400, None)])
def test_bulk_refuses_a_malformed_body(api, body, status, field):
    options = {"data": body, "content_type": "application/json"} if isinstance(body, str) \
        else {"json": body}
    answer = api.post("/api/v1/jobs/bulk/cancel", headers=auth("operator"), **options)
    assert answer.status_code == status
    if field:
        assert answer.json["fields"][0]["field"] == field


def test_bulk_with_an_unknown_verb_is_not_found(api):
    answer = api.post("/api/v1/jobs/bulk/explode", json={"ids": ["a"]}, headers=auth("owner"))
    assert answer.status_code == 404


# ---- workers ----
def test_workers_lists_live_workers_with_their_jobs_and_counts(api, r):
    worker = system_worker({"system": {"attempts": 1, "rate_limit": 0}})
    viewer = auth("viewer")
    assert api.get("/api/v1/workers", headers=viewer).json == {"items": []}
    worker.beat()
    r.zadd(keys.workers(), {"gone-worker": time.time() - 60})  # listed, its heartbeat expired
    [shown] = api.get("/api/v1/workers", headers=viewer).json["items"]
    assert shown["id"] == worker.id and shown["queues"] == ["system"] and shown["alive"]
    assert shown["pid"] and shown["host"] and shown["threads"]["system"] >= 1
    assert shown["current"] == [] and shown["processed"] == 0 and shown["last_beat"]


# ---- alert rules ----
def test_alert_rules_are_read_by_viewers_and_changed_by_owners(api, r):
    viewer, operator, owner = auth("viewer"), auth("operator"), auth("owner")
    listed = api.get("/api/v1/alerts/rules", headers=viewer).json["items"]
    assert {rule["id"] for rule in listed} >= {"failures", "no-workers"}
    rule = {"kind": "dlq_growth", "queue": "email", "threshold": 5,
            "webhooks": ["https://hooks.example/secret-path"]}
    assert api.post("/api/v1/alerts/rules", json=rule, headers=operator).status_code == 403
    created = api.post("/api/v1/alerts/rules", json=rule, headers=owner)
    assert created.status_code == 201 and created.json["id"] == "dlq-growth-email"
    assert created.json["webhooks"] == ["https://hooks.example/…"]
    assert alerts.get_rule("dlq-growth-email").webhooks == ["https://hooks.example/secret-path"]
    taken = api.post("/api/v1/alerts/rules", json=rule, headers=owner)
    assert taken.status_code == 422 and taken.json["fields"][0]["field"] == "id"
    bad = api.post("/api/v1/alerts/rules", json={**rule, "id": "x2", "threshold": -1},
                   headers=owner)
    assert bad.status_code == 422 and bad.json["fields"][0]["field"] == "threshold"
    shown = api.get("/api/v1/alerts/rules/dlq-growth-email", headers=viewer).json
    assert shown["threshold"] == 5
    changed = api.put("/api/v1/alerts/rules/dlq-growth-email",
                      json={"threshold": 9, "enabled": False}, headers=owner)
    assert changed.status_code == 200 and changed.json["threshold"] == 9
    kept = alerts.get_rule("dlq-growth-email")
    assert kept.enabled is False and kept.webhooks == ["https://hooks.example/secret-path"]
    elided = api.put("/api/v1/alerts/rules/dlq-growth-email", json=shown, headers=owner)
    assert elided.status_code == 422 and elided.json["fields"][0]["field"] == "webhooks"
    kind = api.put("/api/v1/alerts/rules/dlq-growth-email", json={"kind": "failures"},
                   headers=owner)
    assert kind.status_code == 422 and kind.json["fields"][0]["field"] == "kind"
    assert api.put("/api/v1/alerts/rules/ghost", json={"threshold": 2},
                   headers=owner).status_code == 404
    assert api.delete("/api/v1/alerts/rules/dlq-growth-email", headers=operator).status_code \
        == 403
    assert api.delete("/api/v1/alerts/rules/dlq-growth-email", headers=owner).status_code == 200
    assert alerts.get_rule("dlq-growth-email") is None
    assert api.get("/api/v1/alerts/rules/dlq-growth-email", headers=viewer).status_code == 404
    assert api.delete("/api/v1/alerts/rules/dlq-growth-email", headers=owner).status_code == 404
    assert [a for _, _, a in audited("alert.rule.create")] == [
        "refused 403", "ok", "refused 422", "refused 422"]
    assert [a for _, _, a in audited("alert.rule.update")] == [
        "ok", "refused 422", "refused 422", "refused 404"]
    assert [a for _, _, a in audited("alert.rule.delete")] == [
        "refused 403", "ok", "refused 404"]
    by_owner = [e for e in audit.entries(action="alert.rule.").items
                if e["actor"] == "token:owner-bot"]
    assert "secret-path" not in str(by_owner) and "hooks.example" in str(by_owner)


def test_alerts_show_firing_incidents_and_history(api):
    answer = api.get("/api/v1/alerts", headers=auth("viewer"))
    assert answer.status_code == 200
    assert answer.json["firing"] == [] and answer.json["history"] == []
    assert answer.json["evaluated"] is None and answer.json["evaluation_stale"] is True


def test_answers_match_their_documented_models(api):
    """The models in web/operations_models.py describe what the endpoints answer (an OpenAPI
    document is generated from them)."""
    from web import operations_models as m

    make_dead([{"cause": 1, "n": 1}, {"cause": 0, "n": 2}])
    waiting = waiting_mail(2)
    system_worker({"system": {"attempts": 1, "rate_limit": 0}}).beat()
    viewer, owner = auth("viewer"), auth("owner")
    reads = {"/api/v1/queues": m.QueueList, "/api/v1/queues/system": m.QueueDetail,
             "/api/v1/queues/system/jobs?state=dead": m.JobPage,
             "/api/v1/queues/email/jobs?limit=1": m.JobPage,
             "/api/v1/workers": m.WorkerList, "/api/v1/alerts/rules": m.AlertRuleList,
             "/api/v1/alerts/rules/failures": m.AlertRuleShown, "/api/v1/alerts": m.Alerts}
    for path, model in reads.items():
        model.model_validate(api.get(path, headers=viewer).json)
    writes = [("/api/v1/queues/email/pause", {}, m.QueueState),
              ("/api/v1/queues/email/purge", {}, m.PurgePreview),
              ("/api/v1/jobs/bulk/cancel", {"ids": [waiting[0], "ghost"]}, m.BulkAnswer),
              (f"/api/v1/jobs/{waiting[1]}/cancel", {}, m.JobOutcome),
              ("/api/v1/queues/email/purge", {"token": "x"}, m.ErrorAnswer)]
    for path, body, model in writes:
        model.model_validate(api.post(path, json=body, headers=owner).json)
