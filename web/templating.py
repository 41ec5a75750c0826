"""What every template gets: filters for times and JSON, and the page globals."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from flask import Flask, url_for
from flask_babel import format_timedelta, get_locale, get_timezone
from flask_login import current_user

from backstop import tokens
from backstop.config import settings
from backstop.dates import format_when
from web.i18n import LANGUAGES, RTL, select_locale


def register_templating(app: Flask) -> None:
    app.context_processor(page_globals)
    app.add_template_filter(when)
    app.add_template_filter(pretty_json)
    app.add_template_filter(duration)
    app.add_template_filter(hour_label)


def when(ts) -> str:
    """A unix time in the viewer's zone, language, calendar and digits (the locale and zone
    are chosen once per request by Flask-Babel)."""
    return format_when(ts, str(get_locale()), str(get_timezone()))


def duration(seconds: int) -> str:
    """A length of time in the viewer's language, rounded as people say it ("3 hours")."""
    return format_timedelta(timedelta(seconds=seconds), threshold=1.1)


def hour_label(bucket: str) -> str:
    """An hour bucket ("YYYYMMDDHH", UTC) as the viewer's local clock time ("11:30")."""
    start = datetime.strptime(bucket, "%Y%m%d%H").replace(tzinfo=UTC)
    return start.astimezone(get_timezone()).strftime("%H:%M")


def pretty_json(value) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


def can(role: str) -> bool:
    """Whether the signed-in user has at least this role (templates hide what it cannot do)."""
    return current_user.is_authenticated and tokens.allows(current_user.role, role)


def live_url(**params) -> str:
    """The live socket's URL for a page and its arguments."""
    return url_for("live.live_socket", **params)


def page_globals() -> dict:
    locale = select_locale()
    return {"languages": LANGUAGES, "locale": locale, "rtl": locale in RTL,
            "poll_seconds": settings().int("poll_seconds"),
            "htmx_url": settings().htmx_url or url_for("static",
                                                        filename="vendor/htmx-2.0.11.min.js"),
            "role": getattr(current_user, "role", None), "can": can, "live_url": live_url}
