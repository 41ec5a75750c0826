"""The HTTP API: bearer tokens with roles, 202 + Location, 422 field errors, job records."""

from __future__ import annotations

import os

import pytest

from backstop import keys, tokens

MAIL = {"to": ["ops@example.com"], "subject": "Hello", "text": "Body"}


def backstop_keys(r) -> set[str]:
    """Backstop's keys, leaving out the rate limiter's counters and the outbox depth that a
    process's drainer reports now and then (outbox.report)."""
    return {k for k in r.keys("*") if "backstop-limits" not in k and k != keys.outbox_hosts()}


def bearer(role: str) -> dict:
    return {"Authorization": f"Bearer {tokens.create(f'{role}-test', role)}"}


def test_enqueue_answers_202_with_location_and_the_record_reads_back(api):
    headers = bearer("operator")
    response = api.post("/api/v1/jobs", json={"job": "email.send", "payload": MAIL},
                        headers=headers)
    assert response.status_code == 202
    job_id = response.json["id"]
    assert response.headers["Location"] == f"/api/v1/jobs/{job_id}"
    record = api.get(response.headers["Location"], headers=headers).json
    assert record["state"] == "waiting" and record["payload"] == MAIL
    assert record["timeline"][0]["event"] == "enqueued"


def test_bad_payload_gets_422_naming_the_field_and_writes_nothing(api, r):
    headers = bearer("operator")
    before = backstop_keys(r)
    response = api.post("/api/v1/jobs", json={"job": "email.send",
                                              "payload": {**MAIL, "to": ["nobody"]}},
                        headers=headers)
    assert response.status_code == 422
    assert response.json["fields"][0]["field"] == "to"
    assert backstop_keys(r) == before
    unknown = api.post("/api/v1/jobs", json={"job": "nope", "payload": {}}, headers=headers)
    assert unknown.status_code == 422 and unknown.json["fields"][0]["field"] == "job"


def test_idempotency_key_returns_the_first_job(api):
    headers = {**bearer("operator"), "Idempotency-Key": "order-7"}
    first = api.post("/api/v1/jobs", json={"job": "email.send", "payload": MAIL},
                     headers=headers)
    second = api.post("/api/v1/jobs", json={"job": "email.send", "payload": MAIL},
                      headers=headers)
    assert first.json["id"] == second.json["id"] == "order-7"
    assert first.json["created"] is True and second.json["created"] is False


def test_tokens_are_checked_and_roles_enforced(api):
    body = {"job": "email.send", "payload": MAIL}
    assert api.post("/api/v1/jobs", json=body).status_code == 401
    wrong = {"Authorization": "Bearer bst_not-a-real-token"}
    assert api.post("/api/v1/jobs", json=body, headers=wrong).status_code == 401
    viewer = bearer("viewer")
    assert api.post("/api/v1/jobs", json=body, headers=viewer).status_code == 403
    assert api.get("/api/v1/jobs/missing", headers=viewer).status_code == 404
    assert api.post("/api/v1/jobs", data="not json", headers=bearer("operator"),
                    content_type="application/json").status_code == 400


def test_tokens_are_stored_hashed(r):
    token = tokens.create("ci", "operator")
    stored = " ".join(str(v) for v in r.hgetall("backstop:api:tokens").items())
    assert token not in stored and tokens.verify(token)["role"] == "operator"
    assert tokens.revoke("ci") == 1 and tokens.verify(token) is None


def test_cli_creates_a_working_token(cli):
    made = cli("tokens", "create", "deploy-bot", "--role", "operator")
    assert made.exit_code == 0, made.output
    made_token = tokens.verify(made.stdout.strip())
    assert (made_token["name"], made_token["role"]) == ("deploy-bot", "operator")


def test_redis_outage_is_a_503_not_a_crash(api):
    from conftest import apply_env

    from backstop import connection

    apply_env(REDIS_URL="redis://127.0.0.1:1/0")
    try:
        response = api.get("/api/v1/jobs/x", headers={"Authorization": "Bearer bst_x"})
        assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 5
    finally:
        connection.reset()


def test_the_root_sends_strangers_to_sign_in(api):
    response = api.get("/")
    assert response.status_code == 302 and response.headers["Location"].endswith("/login")


def test_commands_find_the_embedded_redis_that_run_started_and_never_guess_one(
        r, tmp_path, monkeypatch):
    from conftest import apply_env

    from backstop import connection

    noted = tmp_path / "redis-url"
    monkeypatch.setattr(connection, "EMBEDDED_URL_FILE", noted)
    apply_env(REDIS_URL="")
    try:
        with pytest.raises(connection.NoRedisConfigured, match="set REDIS_URL"):
            connection.redis_url()
        noted.write_text("redis://127.0.0.1:6399/0\n")
        assert connection.redis_url() == "redis://127.0.0.1:6399/0"
    finally:
        connection.reset()


HOOK = {"url": "http://u:urlpass1@hooks.example/h?token=qtok2", "event": "order.paid",
        "secret": "signsecret3", "data": {"password": "datapw4", "max_tokens": 800}}
HOOK_SECRETS = ("urlpass1", "qtok2", "signsecret3", "datapw4")


def test_a_viewer_reads_jobs_and_their_replays_with_secrets_redacted(api):
    import time

    from backstop import dlq, replay

    created = api.post("/api/v1/jobs", json={"job": "plugins.webhook.deliver", "payload": HOOK},
                       headers=bearer("operator")).json
    dlq.write_records([({"id": "wh-dead", "queue": "plugins", "job": "plugins.webhook.deliver",
                         "payload": HOOK}, {"type": "WebhookError", "message": "x", "stack": "",
                                            "code": ""}, 1, time.time())])
    attempt = replay.replay("wh-dead", actor="ops")["attempt_id"]
    viewer = bearer("viewer")
    for job_id in (created["id"], attempt):
        shown = api.get(f"/api/v1/jobs/{job_id}", headers=viewer)
        assert shown.status_code == 200
        leaked = [s for s in HOOK_SECRETS if s in shown.get_data(as_text=True)]
        assert not leaked, f"{job_id} shows {leaked}"
        payload = shown.json["payload"]
        assert payload["secret"] == "[REDACTED]" and payload["data"]["password"] == "[REDACTED]"
        assert payload["url"].startswith("http://u:[REDACTED]@hooks.example/h?token=")
        assert payload["data"]["max_tokens"] == 800 and payload["event"] == "order.paid"


@pytest.mark.parametrize("field, value", [("delay", "abc"), ("delay", [1]), ("priority", "x"),
                                          ("priority", {}), ("job_id", 123), ("job_id", ["a"])])
def test_an_option_of_the_wrong_type_is_a_400_naming_the_field(api, r, field, value):
    headers = bearer("operator")
    before = backstop_keys(r)
    response = api.post("/api/v1/jobs", json={"job": "email.send", "payload": MAIL,
                                              field: value}, headers=headers)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["fields"][0]["field"] == field and field in response.json["error"]
    assert backstop_keys(r) == before


@pytest.mark.parametrize("levels", [100, 100_000])
def test_deeply_nested_json_is_a_400_that_says_so(api, levels):
    body = '{"job": "email.send", "payload": ' + "[" * levels + "]" * levels + "}"
    response = api.post("/api/v1/jobs", data=body, content_type="application/json",
                        headers=bearer("operator"))
    assert response.status_code == 400 and "nested deeper than 64" in response.json["error"]


def test_a_body_over_the_size_limit_is_a_413_in_json_and_is_not_parsed(api):
    body = '{"job": "email.send", "payload": {"text": "' + "x" * (1024 * 1024) + '"}}'
    response = api.post("/api/v1/jobs", data=body, content_type="application/json",
                        headers=bearer("operator"))
    assert response.status_code == 413 and "MAX_CONTENT_LENGTH" in response.json["error"]


@pytest.mark.parametrize("query", ["cursor=%00%ff", "cursor=nan:x", "cursor=1:abc%0A",
                                   "limit=0", "limit=-1", "limit=%C2%B2"])
def test_a_damaged_cursor_or_limit_on_the_dlq_api_is_a_400(api, query):
    response = api.get(f"/api/v1/dlq?{query}", headers=bearer("viewer"))
    assert response.status_code == 400 and query.split("=")[0] in response.json["error"]


@pytest.mark.parametrize("path, body", [("/api/v1/dlq/clear", {"filter": 5}),
                                        ("/api/v1/dlq/redrives", {"filter": 5, "rate": 1})])
def test_a_filter_that_is_not_an_object_is_a_400_not_a_500(api, path, body):
    response = api.post(path, json=body, headers=bearer("owner"))
    assert response.status_code == 400 and "filter" in response.json["error"]


def test_a_worker_without_a_configured_redis_says_what_to_set_and_exits_2():
    import subprocess
    import sys

    from backstop import connection

    if connection.EMBEDDED_URL_FILE.exists():
        pytest.skip("./run's embedded Redis is noted in var/: the worker would use it")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run([sys.executable, "worker.py", "--queues", "system"], env=env,
                          cwd=connection.EMBEDDED_URL_FILE.parent.parent, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "set REDIS_URL" in done.stderr and "Traceback" not in done.stderr
