"""The owner panel through Flask's test client: sign-in, sessions, roles, CSRF, limits,
headers and escaping. (Real-browser checks are in test_panel_browser.py.)"""

from __future__ import annotations

import re

import pytest
from conftest import apply_env
from helpers import PASSWORD, confirm_token_of, csrf_of, login_form_token, panel_app, signed_in

from backstop import audit, producers, queues, users


@pytest.fixture
def app(r):
    return panel_app()


def test_pages_need_a_session(app):
    client = app.test_client()
    for path in ("/overview", "/queues", "/dlq", "/system", "/audit", "/jobs/x"):
        response = client.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_a_failed_sign_in_reveals_nothing_and_is_audited(app):
    client = app.test_client()
    token = login_form_token(client)
    wrong_user = client.post("/login", data={"name": "nobody", "password": PASSWORD,
                                             "csrf_token": token}).get_data(as_text=True)
    wrong_password = client.post("/login", data={"name": "vera", "password": "nope-nope-nope",
                                                 "csrf_token": token}).get_data(as_text=True)
    assert "Wrong user name or password." in wrong_user and "Wrong user name or password." in \
        wrong_password
    results = [e["result"] for e in audit.entries(action="auth.login").items]
    assert results == ["refused", "refused"]


def test_sign_in_is_throttled_per_user_name(app):
    client = app.test_client()
    token = login_form_token(client)
    codes = [client.post("/login", data={"name": "vera", "password": "x" * 12,
                                         "csrf_token": token}).status_code for _ in range(7)]
    assert codes[:5] == [200] * 5 and codes[5] == 429
    limited = client.post("/login", data={"name": "vera", "password": "x" * 12,
                                          "csrf_token": token})
    assert int(limited.headers["Retry-After"]) > 0


def test_logout_and_password_change_revoke_sessions_on_the_server(app):
    first = signed_in(app, "oscar")
    second = signed_in(app, "oscar")
    first.post("/logout", data={"csrf_token": first.csrf})
    assert first.get("/overview").status_code == 302
    assert second.get("/overview").status_code == 200
    users.set_password("oscar", "a brand new password")
    assert second.get("/overview").status_code == 302


def test_viewer_sees_no_mutating_buttons_and_gets_403(app):
    producers.enqueue("email.send", {"to": ["a@example.com"], "subject": "s", "text": "t"})
    viewer = signed_in(app, "vera")
    page = viewer.get("/queues").get_data(as_text=True)
    assert "/pause" not in page and "Purge" not in page
    assert viewer.post("/queues/email/pause", data={"csrf_token": viewer.csrf}).status_code \
        == 403
    assert "email" not in queues.paused_queues()
    operator = signed_in(app, "oscar")
    assert "/pause" in operator.get("/queues").get_data(as_text=True)
    assert "Purge" not in operator.get("/queues/email").get_data(as_text=True)


def test_a_mutation_without_the_csrf_token_is_refused(app):
    owner = signed_in(app, "olga")
    assert owner.post("/queues/email/pause").status_code == 400
    assert owner.post("/queues/email/pause", headers={"X-CSRFToken": "forged"}).status_code \
        == 400
    assert "email" not in queues.paused_queues()
    ok = owner.post("/queues/email/pause", headers={"X-CSRFToken": owner.csrf})
    assert ok.status_code == 302 and "email" in queues.paused_queues()
    assert owner.get("/queues/email/pause").status_code == 405


def test_purge_asks_twice_and_says_how_many_jobs(app):
    for n in range(3):
        producers.enqueue("email.send", {"to": ["a@example.com"], "subject": f"s{n}",
                                         "text": "t"})
    owner = signed_in(app, "olga")
    first = owner.post("/queues/email/purge", data={"csrf_token": owner.csrf})
    page = first.get_data(as_text=True)
    assert "This touches 3 jobs." in page
    token = confirm_token_of(page)
    done = owner.post("/queues/email/purge", data={"csrf_token": owner.csrf, "confirm": token})
    assert done.status_code == 302
    assert owner.post("/queues/email/purge", data={"csrf_token": owner.csrf,
                                                   "confirm": token}).status_code == 200
    from backstop import registry

    assert registry.counts(("email",))["email"]["cancelled"] == 3


def test_security_headers_and_a_strict_csp(app):
    response = signed_in(app, "vera").get("/overview")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "<script>" not in response.get_data(as_text=True).split("</head>")[1]


def test_hostile_payloads_render_as_inert_text(app):
    hostile = '<script>alert(1)</script><b hx-get="/logout" hx-trigger="load">x</b>{{7*7}}'
    job_id = producers.enqueue("email.send", {"to": ["a@example.com"], "subject": hostile,
                                              "text": "t"})
    page = signed_in(app, "vera").get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in page and "hx-get=\"/logout\"" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "{{7*7}}" in page
    assert "</b>49" not in page, "the template syntax in the payload was not evaluated"


def test_persian_is_right_to_left(app):
    client = signed_in(app, "vera")
    client.post("/lang", data={"lang": "fa", "csrf_token": client.csrf, "next": "/overview"})
    page = client.get("/overview").get_data(as_text=True)
    assert '<html lang="fa" dir="rtl">' in page


def test_users_are_created_from_the_command_line_with_the_password_on_stdin(cli):
    made = cli("users", "create", "cli-owner", "--role", "owner", input=f"{PASSWORD}\n")
    assert made.exit_code == 0, made.output
    assert made.stdout.strip().endswith("created cli-owner (owner)")
    assert users.authenticate("cli-owner", PASSWORD)["role"] == "owner"
    assert PASSWORD not in made.output
    short = cli("users", "create", "weak", "--role", "viewer", input="short\n")
    assert short.exit_code == 1 and "at least 10 characters" in short.stderr
    assert users.get("weak") is None


def test_a_password_piped_to_a_real_process_is_read_without_echo_or_warning(r, redis_url):
    """A separate process on purpose: only there is stdin really not a terminal (the test
    runner fakes stdin), the case where a hidden prompt falls back to an echoing read."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    made = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "users", "create",
                           "piped", "--role", "viewer"], input=f"{PASSWORD}\n", cwd=ROOT,
                          capture_output=True, text=True, timeout=60, start_new_session=True,
                          env={**os.environ, "REDIS_URL": redis_url})
    assert made.returncode == 0, made.stderr
    assert PASSWORD not in made.stdout + made.stderr
    assert "Warning" not in made.stderr, made.stderr  # getpass: "input may be echoed"
    assert users.authenticate("piped", PASSWORD)["role"] == "viewer"


def test_a_redrive_is_started_confirmed_and_cancelled_from_the_panel(app):
    from dlq_helpers import make_dead

    make_dead([{"cause": 1, "n": n} for n in range(4)])
    operator = signed_in(app, "oscar")
    first = operator.post("/dlq/redrives", data={"csrf_token": operator.csrf, "rate": "2",
                                                 "filter": "{}"})
    page = first.get_data(as_text=True)
    assert "This touches 4 jobs." in page
    token = confirm_token_of(page)
    operator.post("/dlq/redrives", data={"csrf_token": operator.csrf, "rate": "2.0",
                                         "filter": "{}", "confirm": token})
    listing = operator.get("/dlq?partial=redrives").get_data(as_text=True)
    redrive_id = re.search(r'data-redrive="([^"]+)"', listing).group(1)
    assert "running" in listing and "0 / 4" in listing
    operator.post(f"/dlq/redrives/{redrive_id}/cancel", data={"csrf_token": operator.csrf})
    assert "cancelled" in operator.get("/dlq?partial=redrives").get_data(as_text=True)


def test_a_redis_outage_shows_a_page_instead_of_crashing(app):
    from backstop import connection

    viewer = signed_in(app, "vera")
    apply_env(REDIS_URL="redis://127.0.0.1:1/0")
    try:
        response = viewer.get("/overview")
        assert response.status_code == 503 and "Redis is unreachable" in \
            response.get_data(as_text=True)
        assert int(response.headers["Retry-After"]) >= 5
    finally:
        connection.reset()


def test_redis_at_maxmemory_answers_a_503_page_that_says_why(app, r):
    operator = signed_in(app, "oscar")
    r.config_set("maxmemory", 1)
    try:
        response = operator.post("/queues/email/pause", data={"csrf_token": operator.csrf})
    finally:
        r.config_set("maxmemory", 0)
    page = response.get_data(as_text=True)
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "Redis cannot take changes right now" in page and "maxmemory" in page
    assert "email" not in queues.paused_queues()


def test_rate_limits_keep_working_in_memory_while_redis_is_down(r):
    from backstop import connection

    apply_env(COOKIE_SECURE="0", REDIS_URL="redis://127.0.0.1:1/0")
    try:
        from app import create_app

        client = create_app().test_client()
        token = login_form_token(client)
        codes = [client.post("/login", data={"name": "vera", "password": "x" * 12,
                                             "csrf_token": token}).status_code
                 for _ in range(6)]
        assert codes == [503] * 5 + [429], codes
    finally:
        connection.reset()


def test_the_panel_export_streams_csv_and_is_audited(app):
    from dlq_helpers import make_dead

    make_dead([{"cause": 2, "n": n} for n in range(3)])
    viewer = signed_in(app, "vera")
    response = viewer.get("/dlq/export.csv?error_type=KeyError")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert len(response.get_data().decode("utf-8-sig").strip().splitlines()) == 4
    assert audit.entries(action="dlq.export").items[0]["actor"] == "user:vera"


def test_a_job_present_at_worker_deaths_says_so_on_its_page(app, r):
    from backstop import keys

    job_id = producers.enqueue("email.send", {"to": ["a@example.com"], "subject": "s",
                                              "text": "t"})
    viewer = signed_in(app, "vera")
    assert "Worker deaths" not in viewer.get(f"/jobs/{job_id}").get_data(as_text=True)
    r.hset(keys.job(job_id), "lost", 2)
    page = viewer.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert re.search(r"Worker deaths</dt><dd>2 <span", page)
    assert "process of its own" in page


def test_the_job_page_and_queue_search_hide_secrets(app):
    hook = {"url": "http://u:urlpass1@hooks.example/h?api_key=qkey2", "event": "order.paid",
            "secret": "signsecret3", "data": {"session_id": "sess4", "max_tokens": 800}}
    job_id = producers.enqueue("plugins.webhook.deliver", hook)
    viewer = signed_in(app, "vera")
    page = viewer.get(f"/jobs/{job_id}").get_data(as_text=True)
    for secret in ("urlpass1", "qkey2", "signsecret3", "sess4"):
        assert secret not in page
        search = viewer.get(f"/queues/plugins?state=waiting&q={secret}").get_data(as_text=True)
        assert job_id not in search, f"search finds the job by {secret}"
    assert "max_tokens" in page and "800" in page and "order.paid" in page
    assert job_id in viewer.get("/queues/plugins?state=waiting&q=order.paid").get_data(
        as_text=True)


def test_edit_replay_to_a_new_destination_names_it_and_needs_the_owner(app):
    import json
    import time

    from backstop import dlq, registry

    hook = {"url": "https://hooks.example/in", "event": "order.paid", "secret": "whsec-victim"}
    dlq.write_records([({"id": "wh-1", "queue": "plugins", "job": "plugins.webhook.deliver",
                         "payload": hook}, {"type": "WebhookError", "message": "500",
                                            "stack": "", "code": ""}, 1, time.time())])
    moved = json.dumps({**dlq.get_record("wh-1")["payload"], "url": "https://evil.example/in"})
    operator = signed_in(app, "oscar")
    refused = operator.post("/dlq/records/wh-1/edit", data={"csrf_token": operator.csrf,
                                                            "payload": moved})
    assert refused.status_code == 422 and "enter this secret again" in refused.get_data(
        as_text=True)
    owner = signed_in(app, "olga")
    page = owner.post("/dlq/records/wh-1/edit", data={"csrf_token": owner.csrf,
                                                      "payload": moved}).get_data(as_text=True)
    assert "data-resend" in page and "https://evil.example/in" in page
    assert "whsec-victim" not in page
    confirm = confirm_token_of(page)
    resend = re.search(r'name="resend_token" value="([^"]+)"', page).group(1)
    done = owner.post("/dlq/records/wh-1/edit", data={"csrf_token": owner.csrf, "payload": moved,
                                                      "confirm": confirm, "resend_token": resend})
    assert done.status_code == 302
    attempt = done.headers["Location"].rsplit("/", 1)[-1]
    assert registry.get_job(attempt)["payload"]["secret"] == "whsec-victim"


def test_a_damaged_cursor_in_a_panel_link_is_a_400_not_a_500(app):
    viewer = signed_in(app, "vera")
    for path in ("/dlq?cursor=%00%ff", "/dlq?cursor=nan:x&partial=dlq_rows",
                 "/audit?before=%00%ff"):
        response = viewer.get(path)
        assert response.status_code == 400, path
        assert "link is damaged" in response.get_data(as_text=True)


@pytest.mark.parametrize("target", ["/overview\r\nSet-Cookie: evil=1", "/\\evil.example",
                                    "//evil.example/", "/x\x00y"])
def test_the_language_switch_goes_on_only_to_a_clean_local_path(app, target):
    client = signed_in(app, "vera")
    response = client.post("/lang", data={"lang": "fa", "csrf_token": client.csrf,
                                          "next": target})
    assert response.status_code == 302 and response.headers["Location"] == "/overview"
    assert "evil" not in str(response.headers)


@pytest.mark.parametrize("path, form", [
    ("/dlq/bulk", {"action": "replay", "filter": "{not json"}),
    ("/dlq/clear", {"filter": "[1, 2]"}),
    ("/dlq/redrives", {"filter": "[" * 5000 + "]" * 5000, "rate": "1"}),
])
def test_an_unparsable_filter_in_a_panel_form_is_a_400_naming_it(app, path, form):
    owner = signed_in(app, "olga")
    response = owner.post(path, data={**form, "csrf_token": owner.csrf})
    assert response.status_code == 400 and "The filter is not valid" in \
        response.get_data(as_text=True)


def test_an_edited_payload_nested_too_deep_is_refused_with_the_form(app):
    from dlq_helpers import make_dead

    [record_id] = make_dead([{"cause": 1}])
    operator = signed_in(app, "oscar")
    response = operator.post(f"/dlq/records/{record_id}/edit", data={
        "csrf_token": operator.csrf, "payload": "[" * 100_000 + "]" * 100_000})
    assert response.status_code == 422 and "nested deeper than 64" in \
        response.get_data(as_text=True)


def test_a_session_left_to_background_polls_reaches_its_idle_timeout(app, monkeypatch):
    from test_users import HOUR, Clock

    clock = Clock()
    monkeypatch.setattr(users, "time", clock)
    used, polled = signed_in(app, "vera"), signed_in(app, "vera")
    poll = {"X-Backstop-Refresh": "poll"}
    for _ in range(3):
        clock.advance(3 * HOUR)
        assert used.get("/overview").status_code == 200
        assert polled.get("/overview?partial=health", headers=poll).status_code == 200
    clock.advance(3 * HOUR)  # 12 h since the polled session's last use by its user
    assert used.get("/overview").status_code == 200
    assert polled.get("/overview?partial=health", headers=poll).status_code == 302


def test_the_sign_in_pages_csrf_token_stops_working_at_sign_in(app):
    client = app.test_client()
    anonymous = login_form_token(client)
    client.post("/login", data={"name": "oscar", "password": PASSWORD, "csrf_token": anonymous})
    assert client.get("/overview").status_code == 200
    refused = client.post("/queues/email/pause", data={"csrf_token": anonymous})
    assert refused.status_code == 400 and "email" not in queues.paused_queues()
    fresh = csrf_of(client.get("/overview").get_data(as_text=True))
    assert fresh != anonymous
    assert client.post("/queues/email/pause", data={"csrf_token": fresh}).status_code == 302


def test_secure_cookies_carry_the_host_prefix(r):
    apply_env(COOKIE_SECURE="1")
    from app import create_app

    client = create_app().test_client()
    cookie = client.get("/login", base_url="https://localhost").headers["Set-Cookie"]
    assert cookie.startswith("__Host-session=") and "Secure" in cookie and "Path=/" in cookie
    assert "Domain" not in cookie
    apply_env(COOKIE_SECURE="0")
    plain = create_app().test_client().get("/login").headers["Set-Cookie"]
    assert plain.startswith("session=")


def entries_of(action: str) -> list[dict]:
    return audit.entries(action=action).items


def test_refused_attempts_are_audited_with_actor_address_and_target(app):
    viewer, owner = signed_in(app, "vera"), signed_in(app, "olga")
    assert viewer.post("/queues/email/pause", data={"csrf_token": viewer.csrf}).status_code \
        == 403
    assert owner.post("/queues/email/pause", data={"csrf_token": "forged"}).status_code == 400
    assert owner.post("/queues/nope/purge", data={"csrf_token": owner.csrf}).status_code == 404
    assert viewer.get("/dlq/records/missing").status_code == 404
    role, csrf = reversed(entries_of("queue.pause"))
    assert (role["actor"], role["target"], role["result"], role["ip"]) == \
        ("user:vera", "email", "refused 403", "127.0.0.1")
    assert "needs the operator role" in role["summary"]["reason"]
    assert (csrf["actor"], csrf["target"], csrf["result"]) == ("user:olga", "email",
                                                               "refused 400")
    assert "CSRF" in csrf["summary"]["reason"] and not queues.paused_queues()
    [purge] = entries_of("queue.purge")
    assert (purge["actor"], purge["target"], purge["result"]) == ("user:olga", "nope",
                                                                  "refused 404")
    [view] = entries_of("dlq.view")
    assert (view["actor"], view["target"], view["result"]) == ("user:vera", "missing",
                                                               "refused 404")


def test_a_throttled_sign_in_is_audited_once_per_window(app):
    client = app.test_client()
    token = login_form_token(client)
    codes = [client.post("/login", data={"name": "vera", "password": "x" * 12,
                                         "csrf_token": token}).status_code for _ in range(8)]
    assert codes == [200] * 5 + [429] * 3
    results = [(e["actor"], e["target"], e["result"]) for e in entries_of("auth.login")]
    assert results == [("user:vera", "vera", "refused 429")] + [
        ("user:vera", "vera", "refused")] * 5
    forged = client.post("/login", data={"name": "olga", "password": PASSWORD})
    assert forged.status_code == 400
    assert entries_of("auth.login")[0]["result"] == "refused 400"


def test_a_bad_or_underpowered_token_is_audited(app):
    from backstop import tokens

    client = app.test_client()
    bad = client.post("/api/v1/dlq/x/replay", headers={"Authorization": "Bearer bst_nope"})
    viewer = client.post("/api/v1/dlq/x/replay", headers={
        "Authorization": f"Bearer {tokens.create('dash', 'viewer')}"})
    assert (bad.status_code, viewer.status_code) == (401, 403)
    assert [(e["actor"], e["target"], e["result"]) for e in entries_of("dlq.replay")] == [
        ("token:dash", "x", "refused 403"), ("anonymous", "x", "refused 401")]
    assert client.post("/api/v1/dlq/x/replay").status_code == 401
    assert len(entries_of("dlq.replay")) == 2, "no token at all is no attempt to log"


def confirm_token(response) -> str:
    return confirm_token_of(response.get_data(as_text=True))


def test_the_log_says_what_happened_previews_failures_and_targets(app):
    from dlq_helpers import make_dead

    [first, second] = make_dead([{"cause": 1, "n": 1}, {"cause": 1, "n": 2}])
    operator = signed_in(app, "oscar")
    form = {"csrf_token": operator.csrf}
    asked = operator.post(f"/dlq/records/{first}/replay", data=form)
    operator.post(f"/dlq/records/{first}/replay", data={**form, "confirm": confirm_token(asked)})
    again = operator.post(f"/dlq/records/{first}/replay", data=form)
    operator.post(f"/dlq/records/{first}/replay", data={**form, "confirm": confirm_token(again)})
    operator.post(f"/dlq/records/{second}/edit", data={**form, "payload": '{"cause": 0}'})
    asked = operator.post("/dlq/redrives", data={**form, "rate": "2", "filter": "{}"})
    operator.post("/dlq/redrives", data={**form, "rate": "2", "filter": "{}",
                                         "confirm": confirm_token(asked)})
    redrive_id = audit.entries(action="dlq.redrive.start").items[0]["target"]
    trail = [(e["action"], e["target"], e["result"]) for e in reversed(entries_of("dlq."))
             if e["action"] != "dlq.view"]
    assert trail == [
        ("dlq.replay.preview", first, "ok"), ("dlq.replay", first, "ok"),
        ("dlq.replay.preview", first, "ok"), ("dlq.replay", first, "failed"),
        ("dlq.edit_replay.preview", second, "ok"),
        ("dlq.redrive.start.preview", "filter {}", "ok"),
        ("dlq.redrive.start", redrive_id, "ok")]
    assert re.fullmatch(r"[0-9a-f]{16}", redrive_id)
    assert "is being replayed" in entries_of("dlq.replay")[0]["summary"]["reason"]


def test_a_background_refresh_without_a_session_sends_the_whole_page_to_sign_in(app):
    client = app.test_client()
    response = client.get("/dlq?partial=dlq_rows", headers={
        "HX-Request": "true", "HX-Current-URL": "http://localhost/dlq?queue=email"})
    assert response.status_code == 401 and response.get_data() == b""
    assert response.headers["HX-Redirect"] == "/login?next=%2Fdlq%3Fqueue%3Demail"
    plain = client.get("/dlq?queue=email")
    assert plain.status_code == 302 and "/login?next=%2Fdlq%3Fqueue%3Demail" in \
        plain.headers["Location"]
