"""The redaction rules, one row per rule: names (by part, not substring) and free text."""

from __future__ import annotations

import pytest

from backstop.redaction import REDACTED, is_destination_name, redact, redact_text

# (name, secret?, the rule the row exercises)
NAMES = [
    # ALWAYS: secret wherever the word stands
    ("password", True, "always"), ("db_password", True, "always"),
    ("passwordHash", True, "always"), ("PASSWD", True, "always"), ("pwd", True, "always"),
    ("passphrase", True, "always"), ("passcode", True, "always"),
    ("client_secret", True, "always"), ("secret_key", True, "always"),
    ("secrets", True, "always"), ("credentials", True, "always"),
    ("Set-Cookie", True, "always"), ("authorization", True, "always"),
    ("Proxy-Authorization", True, "always"), ("bearer", True, "always"),
    ("otp", True, "always"), ("otp_code", True, "always"), ("totp", True, "always"),
    ("jwt", True, "always"), ("cvv", True, "always"), ("cvc", True, "always"),
    ("apikey", True, "one word"), ("accesskey", True, "one word"),
    ("sessionid", True, "one word"), ("authtoken", True, "one word"),
    # LAST: secret as the last word; describing in front
    ("token", True, "last"), ("api_token", True, "last"), ("accessToken", True, "last"),
    ("refresh-token", True, "last"), ("OAuth2Token", True, "last"),
    ("token_count", False, "last"), ("token_type", False, "last"),
    ("key", True, "last: bare key"), ("api_key", True, "last"), ("apiKey", True, "last"),
    ("X-Api-Key", True, "last"), ("access_key", True, "last"),
    ("AWS_ACCESS_KEY", True, "last"), ("private_key", True, "last"),
    ("signing_key", True, "last"),
    ("auth", True, "last"), ("basic_auth", True, "last"), ("auth_type", False, "last"),
    ("sig", True, "last"), ("hmac_sig", True, "last"), ("signature", True, "last"),
    ("X-Hub-Signature", True, "last"), ("signature_version", False, "last"),
    ("session", True, "last"), ("user_session", True, "last"),
    ("session_timeout", False, "last"),
    ("pass", True, "last"), ("smtp_pass", True, "last"), ("pass_count", False, "last"),
    ("pin", True, "last"), ("card_pin", True, "last"), ("pinned", False, "whole parts"),
    # PAIRS
    ("session_id", True, "pair"), ("sessionId", True, "pair"), ("SESSION-ID", True, "pair"),
    ("card_number", True, "pair"), ("order_number", False, "pair"),
    # PLURALS: secret only after a qualifier
    ("api_tokens", True, "plural"), ("access_keys", True, "plural"),
    ("max_tokens", False, "plural"), ("maxTokens", False, "plural"),
    ("max-tokens", False, "plural"), ("prompt_tokens", False, "plural"),
    ("keys", False, "plural"), ("cache_keys", False, "plural"),
    # KEY_IDENTIFIERS: a key that names something
    ("primary_key", False, "key identifier"), ("public_key", False, "key identifier"),
    ("cache_key", False, "key identifier"), ("idempotency_key", False, "key identifier"),
    ("sort_key", False, "key identifier"),
    # CARRIERS: looked through
    ("auth_header", True, "carrier"), ("token_value", True, "carrier"),
    ("api_key_b64", True, "carrier"), ("error_code", False, "carrier"),
    # whole parts, never substrings
    ("keyboard", False, "whole parts"), ("monkey", False, "whole parts"),
    ("passenger", False, "whole parts"), ("author", False, "whole parts"),
    ("keywords", False, "whole parts"), ("bypass", False, "whole parts"),
    ("tenant_id", False, "plain"), ("url", False, "plain"), ("message", False, "plain"),
]


@pytest.mark.parametrize(("name", "secret", "rule"), NAMES,
                         ids=[f"{rule}:{name}" for name, _, rule in NAMES])
def test_names_by_part(name, secret, rule):
    shown = redact({name: "v4lue-x"})[name]
    assert (shown == REDACTED) is secret, f"{name!r} ({rule})"
    in_text = redact_text(f"{name}=v4lue-x&z=1")
    assert ("v4lue-x" not in in_text) is secret, f"{name!r} in a query string ({rule})"


# (text, what must go, what must stay)
TEXTS = [
    ("webhook http://u:PASS1@hooks.example/hook answered 500", ["PASS1"], ["u:", "hooks.example"]),
    ("connect postgres://:pw2@db:5432/app failed", ["pw2"], ["db:5432"]),
    ("clone https://ghp_tok3@github.com/x", ["ghp_tok3"], ["github.com/x"]),
    ("smtp://me:p@ss4@mail.example", ["ss4", "p@"], ["mail.example"]),
    ("GET /h?token=t5&api_key=k6&sig=s7&signature=s8&key=k9&password=p10&page=2 -> 401",
     ["t5", "k6", "s7", "s8", "k9", "p10"], ["page=2", "401"]),
    ("GET /cb#access_token=t11&state=ok", ["t11"], ["state=ok"]),
    ("?max_tokens=800&token_count=3&keyboard=us", [], ["max_tokens=800", "token_count=3"]),
    ("Authorization: Bearer abcdefgh12", ["abcdefgh12"], ["Authorization"]),
    ("sent with bearer zyxwvuts13 to the hook", ["zyxwvuts13"], ["to the hook"]),
    ("Authorization: Basic dXNlcjpwYXNz", ["dXNlcjpwYXNz"], []),
    ("X-Api-Key: k14\nnext line", ["k14"], ["next line"]),
    ("password: two words15, then more", ["two", "words15"], ["then more"]),
    ("{'password': 'p 16', 'user': 'bob'}", ["p 16"], ["'user': 'bob'"]),
    ('{"secret":"s17","max_tokens":800}', ["s17"], ['"max_tokens":800']),
    ("session_id=s18 otp=o19 auth=a20 access_key=a21 bearer=b22", ["s18", "o19", "a20", "a21",
                                                                   "b22"], []),
    ("error: bad request token=t23, retrying", ["t23"], ["error: bad request", "retrying"]),
    ("KeyError: 'customer'", [], ["KeyError: 'customer'"]),
    ("ValueError: order 7 could not be charged", [], ["order 7 could not be charged"]),
]


@pytest.mark.parametrize(("text", "gone", "kept"), TEXTS, ids=[t[:30] for t, _, _ in TEXTS])
def test_text_rules(text, gone, kept):
    shown = redact_text(text)
    assert REDACTED in shown or not gone
    for secret in gone:
        assert secret not in shown, shown
    for plain in kept:
        assert plain in shown, shown
    assert redact_text(shown) == shown, "redaction is idempotent"


def test_structures_are_walked_and_strings_in_them_redacted():
    payload = {"url": "http://u:pw@h/x?token=t1", "data": {"password": "p1", "n": 1,
                                                             "items": [{"api_key": "k1"}]},
               "credentials": {"user": "bob", "pass": "p2"}, "max_tokens": 800,
               "otp_enabled": True, "secret": "", "token": None}
    shown = redact(payload)
    assert shown == {"url": "http://u:[REDACTED]@h/x?token=[REDACTED]",
                     "data": {"password": REDACTED, "n": 1, "items": [{"api_key": REDACTED}]},
                     "credentials": REDACTED, "max_tokens": 800, "otp_enabled": True,
                     "secret": "", "token": None}
    assert payload["data"]["password"] == "p1", "the original is not changed"
    assert redact(shown) == shown


@pytest.mark.parametrize(("name", "destination"), [
    ("url", True), ("webhook_url", True), ("webhook_id", True), ("to", True),
    ("reply_to", True), ("email", True), ("channels", True), ("callback", True),
    ("data", False), ("secret", False), ("event", False), ("subject", False),
])
def test_destination_names(name, destination):
    assert is_destination_name(name) is destination
