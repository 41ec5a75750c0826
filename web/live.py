"""The live socket: one per open page, pushing the page registry's partials when a
matching event arrives."""

from __future__ import annotations

import logging
import time

import redis
from flask import Blueprint, abort, request
from flask_login import current_user
from werkzeug.exceptions import HTTPException

from backstop import live, users
from backstop.live import Topic, hub
from web.auth import audit_refusal
from web.extensions import sock
from web.pages import PAGES, Page, render_partials
from web.security import origin_allowed

log = logging.getLogger("backstop.web")
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
    """Push the page's partials for each burst of matching events; close saying why it ended."""
    page = PAGES.get(request.args.get("page", "overview"))
    if page is None or not page.partials:
        ws.close(reason=1008, message="unknown page")
        return
    args = {k: v for k, v in request.args.items() if k not in SOCKET_ARGS}
    ended = pump_page(ws, page, args)
    if ws.connected:
        ws.close(*LIVE_CLOSE[ended])


# How a socket closes for each live.ENDINGS: 1013 and 1012 make the page reconnect
# (polling meanwhile); 1008 does not.
LIVE_CLOSE = {
    "stopped": (1008, "the session has ended; sign in again"),
    "lagging": (1013, "the page fell behind the live events; reconnecting"),
    "closed": (1012, "live updates restarted; reconnecting"),
    "unavailable": (1013, "live updates unavailable: Redis did not answer; polling meanwhile"),
    "unknown": (1008, "this page has nothing to follow"),
}


def pump_page(ws, page: Page, args: dict) -> str:
    """Subscribe to the page's topic and pump its events as pushes; why it ended."""
    watch = SessionWatch(current_user.name, current_user.session_id)
    try:
        subscription = hub().subscribe(socket_topic(page, args), request.args.get("last_id"))
    except ValueError:
        return "unknown"
    except (live.Unavailable, redis.RedisError) as exc:
        log.warning("live socket: no subscription (%s)", exc)
        return "unavailable"
    with subscription:
        return live.pump(subscription, ws.send, lambda events: render_push(page, args),
                         lambda urgent: ws.connected and watch.alive(now=urgent))


def render_push(page: Page, args: dict) -> str:
    """The page's partials; nothing to push when its subject is gone (404, 400)."""
    try:
        return render_partials(page, args)
    except HTTPException:
        return ""


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
        # Asked of Redis itself: during an outage the socket closes (1013) and the page
        # shows it, rather than a socket kept open on the auth cache's word.
        return users.session_valid(self.name, self.session_id, remembered=False)


def socket_topic(page: Page, args: dict) -> Topic:
    """The events a page follows, decided by the page, not by the URL."""
    kind, _sep, value = page.topic(args).partition(":") if page.topic else ("all", "", "")
    if kind == "queue" and value:
        return Topic(queue=value)
    if kind == "job" and value:
        return Topic(job_id=value)
    if kind == "system":
        return Topic(system=True)
    return Topic()
