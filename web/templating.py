"""What every template gets: filters for times and JSON, and the page globals."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from flask import Flask, url_for
from flask_babel import format_timedelta, get_locale, get_timezone
from flask_babel import gettext as _
from flask_login import current_user

from backstop import tokens
from backstop.config import settings
from backstop.dates import format_day, format_when
from web.i18n import LANGUAGES, RTL, select_locale


def register_templating(app: Flask) -> None:
    app.context_processor(page_globals)
    app.add_template_filter(when)
    app.add_template_filter(pretty_json)
    app.add_template_filter(duration)
    app.add_template_filter(hour_label)
    app.add_template_filter(clock)
    app.add_template_filter(day_label)
    app.add_template_filter(span)
    app.add_template_filter(figure)


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


def clock(ts: float) -> str:
    """A unix time as the viewer's local clock time ("14:30")."""
    return datetime.fromtimestamp(float(ts), UTC).astimezone(get_timezone()).strftime("%H:%M")


def day_label(ts: float) -> str:
    """A unix time's day in the viewer's zone, language and calendar, short ("Mar 12"); in a
    right-to-left language isolated as such, since charts draw their labels left to right."""
    text = format_day(float(ts), str(get_locale()), str(get_timezone()))
    return f"\u2067{text}\u2069" if str(get_locale()) in RTL else text


def span(seconds: float | None) -> str:
    """A length of time as exactly as a job's figures need it, in the viewer's language:
    "850 ms", "2.4 s", "3 min 5 s", "2 h 10 min", "3 d 4 h"; "—" for None."""
    if seconds is None:
        return "—"
    seconds = max(float(seconds), 0.0)
    if seconds < 1:
        return _("%(n)s ms", n=_significant(seconds * 1000))
    if seconds < 60:
        return _("%(n)s s", n=_significant(seconds))
    whole = int(seconds)
    if whole < 3600:
        return _("%(m)s min %(s)s s", m=whole // 60, s=whole % 60)
    if whole < 86400:
        return _("%(h)s h %(m)s min", h=whole // 3600, m=whole % 3600 // 60)
    return _("%(d)s d %(h)s h", d=whole // 86400, h=whole % 86400 // 3600)


def figure(value: float | None) -> str:
    """A rate or share as people read it: 43.17 as 43.2, 2.0 as 2, None as "—"."""
    if value is None:
        return "—"
    return f"{round(float(value), 1):.1f}".removesuffix(".0")


def _significant(value: float) -> str:
    """Three significant figures at most, no trailing zeros: 0.42, 12.5, 250."""
    digits = 0 if value >= 100 else 1 if value >= 10 else 2
    return f"{value:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:.0f}"


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
