"""Request limits: a valid API token counts against its own limit (API_TOKEN_RATE_LIMIT, or
the token's), while anonymous callers, wrong tokens, sign-in and panel sessions keep the
strict per-address limits."""

from __future__ import annotations

import secrets

import pytest
from conftest import apply_env
from helpers import PASSWORD, login_form_token, panel_app, signed_in

from backstop import tokens

MAIL = {"to": ["ops@example.com"], "subject": "Hello", "text": "Body"}
JOB = {"job": "email.send", "payload": MAIL}


@pytest.fixture
def strict(r):
    """Small limits, so a test reaches them in a few requests: 5 per address, 20 per token."""
    apply_env(RATE_LIMIT_DEFAULT="5 per minute", API_TOKEN_RATE_LIMIT="20 per minute")


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def enqueue_codes(api, count: int, headers: dict | None = None) -> list[int]:
    return [api.post("/api/v1/jobs", json=JOB, headers=headers).status_code
            for _ in range(count)]


def test_a_token_enqueues_far_more_than_the_address_limit_by_default(api):
    headers = bearer(tokens.create("producer", "operator"))
    codes = enqueue_codes(api, 700, headers)
    # 700 > the address's 600 per minute, and > the actions' 60 per minute (MUTATE): an
    # enqueue counts against neither.
    assert codes == [202] * 700
    limited = api.post("/api/v1/jobs", json=JOB, headers=headers)
    assert limited.headers["X-RateLimit-Limit"] == "6000"


def test_the_token_limit_replaces_the_address_limit(api, strict):
    assert enqueue_codes(api, 6) == [401] * 5 + [429]  # no token: the address's 5
    headers = bearer(tokens.create("producer", "operator"))
    assert enqueue_codes(api, 21, headers) == [202] * 20 + [429]
    limited = api.post("/api/v1/jobs", json=JOB, headers=headers)
    assert limited.headers["X-RateLimit-Limit"] == "20"
    assert int(limited.headers["Retry-After"]) > 0


def test_a_tokens_own_limit_wins_over_the_setting(api, strict):
    low = bearer(tokens.create("low", "operator", rate_limit="3 per minute"))
    high = bearer(tokens.create("high", "operator", rate_limit="30/minute"))
    assert enqueue_codes(api, 4, low) == [202] * 3 + [429]
    assert enqueue_codes(api, 31, high) == [202] * 30 + [429]


def test_two_tokens_count_apart(api, strict):
    first = bearer(tokens.create("producer", "operator"))
    second = bearer(tokens.create("producer", "operator"))  # a name is not the count's key
    assert enqueue_codes(api, 21, first) == [202] * 20 + [429]
    assert enqueue_codes(api, 21, second) == [202] * 20 + [429]


def test_a_wrong_or_revoked_token_gets_the_address_limit(api, strict):
    revoked = tokens.create("gone", "operator")
    tokens.revoke("gone")
    invented = [bearer(tokens.PREFIX + secrets.token_urlsafe(32)) for _ in range(5)]
    codes = [api.post("/api/v1/jobs", json=JOB, headers=h).status_code for h in invented]
    assert codes == [401] * 5
    # Each new invented bearer still counts against the one address: no way around its limit.
    assert enqueue_codes(api, 1, bearer(tokens.PREFIX + "made-up")) == [429]
    assert enqueue_codes(api, 1, bearer(revoked)) == [429]
    assert enqueue_codes(api, 1) == [429]
    # ... while a valid token from the same address has its own count.
    assert enqueue_codes(api, 1, bearer(tokens.create("ok", "operator"))) == [202]


def test_the_token_is_verified_once_per_request(api, strict, monkeypatch):
    apply_env(AUTH_CACHE_SECONDS="0")  # every verification asks Redis
    headers = bearer(tokens.create("producer", "operator"))
    calls = []
    real_verify = tokens.verify
    monkeypatch.setattr(tokens, "verify", lambda token: calls.append(token) or real_verify(token))
    assert enqueue_codes(api, 3, headers) == [202] * 3
    assert len(calls) == 3


def test_sign_in_keeps_its_address_limit_whatever_token_comes_with_it(r, strict):
    client = panel_app().test_client()
    form = login_form_token(client)
    codes = [client.post("/login", headers=bearer(tokens.create(f"bot-{n}", "owner")), data={
        "name": f"someone-{n}", "password": PASSWORD, "csrf_token": form}).status_code
        for n in range(11)]
    assert codes == [200] * 10 + [429]  # 10 per minute per address, a valid token or not


def test_a_panel_session_keeps_the_address_limit(r, strict):
    client = signed_in(panel_app(), "vera")  # has asked for /overview once
    codes = [client.get("/overview").status_code for _ in range(5)]
    assert codes == [200] * 4 + [429]


def test_a_token_lifts_no_limit_outside_the_api(api, strict):
    headers = bearer(tokens.create("producer", "operator"))
    codes = [api.get("/login", headers=headers).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]


def test_the_cli_sets_and_lists_a_tokens_limit(cli):
    assert cli("tokens", "create", "bot", "--rate-limit", "20000 per minute").exit_code == 0
    assert cli("tokens", "create", "plain").exit_code == 0
    bad = cli("tokens", "create", "bot", "--rate-limit", "lots")
    assert bad.exit_code != 0 and "is not a rate limit" in bad.output
    listing = cli("tokens", "list").output.splitlines()
    assert listing == ["bot\toperator\t20000 per minute",
                       "plain\toperator\t6000 per minute (API_TOKEN_RATE_LIMIT)"]


@pytest.mark.parametrize("limit", ["", "lots", "0 per minute", "10 per fortnight"])
def test_a_limit_that_allows_nothing_or_does_not_parse_is_refused(r, limit):
    with pytest.raises(ValueError):
        tokens.create("bot", "operator", rate_limit=limit or " ")
