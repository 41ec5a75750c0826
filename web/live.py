"""The live socket: one per open page, pushing the page registry's partials when a
matching event arrives."""

from __future__ import annotations

import time

from flask import Blueprint, abort, request
from flask_login import current_user
from werkzeug.exceptions import HTTPException

from backstop import users
from backstop.live import Topic, hub
from web.auth import audit_refusal
from web.extensions import sock
from web.pages import PAGES, Page, render_partials
from web.security import origin_allowed

bp = Blueprint("live", __name__)
SOCKET_ARGS = ("page", "last_id", "topic")


@bp.before_app_request
def check_socket_request() -> None:
    """Before the upgrade: a signed-in viewer, from an allowed Origin."""
    if request.path != "/ws":
        return
    if not current_user.is_authenticated:
        abort(401, "sign in first")
    if not origin_allowed():
        audit_refusal(403, f"origin {request.headers.get('Origin')!r} may not open the live "
                           "socket", action="live.connect")
        abort(403, "this origin may not open the live socket")


@sock.route("/ws", bp=bp)
def live_socket(ws):
    """Push the page's partials whenever a matching event arrives; ping when idle."""
    page = PAGES.get(request.args.get("page", "overview"))
    if page is None or not page.partials:
        ws.close(reason=1008, message="unknown page")
        return
    args = {k: v for k, v in request.args.items() if k not in SOCKET_ARGS}
    try:
        topic = socket_topic(page, args)
    except ValueError as exc:
        ws.close(reason=1008, message=str(exc)[:120])
        return
    subscription = hub().subscribe(topic, request.args.get("last_id"))
    watch = SessionWatch(current_user.name, current_user.session_id)
    try:
        while ws.connected and watch.alive():
            if subscription.get(timeout=1) is not None:
                drain(subscription)
                if not watch.alive(now=True):
                    break
                push(ws, page, args)
        if ws.connected:
            ws.close(reason=1008, message="the session has ended; sign in again")
    finally:
        subscription.close()


def push(ws, page: Page, args: dict) -> None:
    """Send the page's partials; nothing when the page's subject is gone (404) for now."""
    try:
        ws.send(render_partials(page, args))
    except HTTPException:
        pass


class SessionWatch:
    """Whether a socket's session is still open, asked of Redis at most every CHECK_SECONDS
    (and whenever a push is about to go out): a sign-out, password change or timeout
    closes the socket within seconds."""

    CHECK_SECONDS = 2.0

    def __init__(self, name: str, session_id: str):
        self.name, self.session_id = name, session_id
        self.checked = time.monotonic()

    def alive(self, now: bool = False) -> bool:
        if not now and time.monotonic() - self.checked < self.CHECK_SECONDS:
            return True
        self.checked = time.monotonic()
        return users.session_valid(self.name, self.session_id)


def socket_topic(page: Page, args: dict) -> Topic:
    """The events a page follows, decided by the page, not by the URL."""
    kind, _sep, value = page.topic(args).partition(":") if page.topic else ("all", "", "")
    if kind == "queue" and value:
        return Topic(queue=value)
    if kind == "job" and value:
        return Topic(job_id=value)
    return Topic()


def drain(subscription, seconds: float = 0.01) -> None:
    """Fold a burst of events into one push."""
    while subscription.get(timeout=seconds) is not None:
        pass
