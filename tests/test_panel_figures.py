"""What the panel's pages say, read as a person would: causes, counts and settings.
(The sign-in helper comes from test_panel.)"""

from __future__ import annotations

import html
import re
import time

import pytest
from conftest import apply_env
from test_panel import PASSWORD, signed_in

from backstop import PermanentFailure, dlq, users


@pytest.fixture
def app(r):
    """The panel app with olga (owner) and vera (viewer), as test_panel's fixture."""
    apply_env(COOKIE_SECURE="0")
    from app import create_app

    application = create_app()
    application.testing = True
    users.create("olga", "owner", PASSWORD)
    users.create("vera", "viewer", PASSWORD)
    return application


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
