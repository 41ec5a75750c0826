"""Helpers shared by test modules: the three users, an app to sign in to, a signed-in
test client, the tokens a page carries, a sign-in in a real browser, and a worker run in the
test's process. (Dead-letter records are made by dlq_helpers.make_dead.)"""

from __future__ import annotations

import re

from conftest import apply_env

from backstop import users

PASSWORD = "correct horse battery"
PANEL_USERS = (("olga", "owner"), ("oscar", "operator"), ("vera", "viewer"))


def create_panel_users(only: tuple[str, ...] = ()) -> None:
    """Create olga (owner), oscar (operator) and vera (viewer), or only the ones named."""
    for name, role in PANEL_USERS:
        if not only or name in only:
            users.create(name, role, PASSWORD)


def panel_app(only: tuple[str, ...] = ()):
    """create_app() for the test client (cookies over plain http), with the panel's users."""
    apply_env(COOKIE_SECURE="0")
    from app import create_app

    application = create_app()
    application.testing = True
    create_panel_users(only)
    return application


def csrf_of(page: str) -> str:
    """The CSRF token a signed-in page carries in its <meta name="csrf-token">."""
    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)


def form_token_of(page: str) -> str:
    """The CSRF token of the sign-in form (a WTForms hidden field)."""
    return re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)


def confirm_token_of(page: str) -> str:
    """The single-use token in a confirmation page's hidden "confirm" field."""
    return re.search(r'name="confirm" value="([^"]+)"', page).group(1)


def login_form_token(client) -> str:
    """The CSRF token of the anonymous sign-in form."""
    return form_token_of(client.get("/login").get_data(as_text=True))


def signed_in(app, name: str):
    """A test client signed in as name; client.csrf is the token for its POSTs."""
    client = app.test_client()
    token = login_form_token(client)
    response = client.post("/login", data={"name": name, "password": PASSWORD,
                                           "csrf_token": token})
    assert response.status_code == 302, response.get_data(as_text=True)[:500]
    client.csrf = csrf_of(client.get("/overview").get_data(as_text=True))
    return client


def flashes(client) -> list[tuple[str, str]]:
    """The (category, message) pairs flashed to client and not shown yet."""
    with client.session_transaction() as session:
        return list(session.get("_flashes", []))


def browser_sign_in(page, base: str, name: str, role: str) -> None:
    """Create the user and sign in through the real sign-in form; ends on the overview."""
    users.create(name, role, PASSWORD)
    browser_sign_in_as(page, base, name)


def browser_sign_in_as(page, base: str, name: str) -> None:
    """Sign an existing user in through the real sign-in form; ends on the overview."""
    page.goto(base + "/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button.primary")
    page.wait_for_url("**/overview")


def system_worker(queue_config: dict):
    """A worker process of the system queue run in this test's process (run_next, beat),
    with these queue settings (BACKSTOP_QUEUES)."""
    import json

    from backstop import keys
    from backstop.hueys import huey_for
    from backstop.runner import WorkerProcess

    apply_env(BACKSTOP_QUEUES=json.dumps(queue_config))
    process = WorkerProcess(("system",))
    huey_for("system").storage.processing_key = keys.processing(process.id, "system")
    return process


def auth(role: str) -> dict:
    """An Authorization header with a new token of this role (named "<role>-bot")."""
    from backstop import tokens

    return {"Authorization": f"Bearer {tokens.create(role + '-bot', role)}"}
