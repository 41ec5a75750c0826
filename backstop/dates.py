"""Dates as a reader of each panel language expects them.

Decisions:
- Persian readers get the Solar Hijri (Jalali) calendar, Iran's and Afghanistan's civil
  calendar, with Persian digits: "۹ آذر ۱۴۰۴، ۱۱:۲۰:۰۸". Babel has no Solar Hijri calendar
  (its "fa" dates are Gregorian month names with Latin digits, "30 نوامبر 2025"), so the
  conversion is jdatetime's, a small pure-Python library kept since 2010.
- Every other language gets Babel's medium date and time in its own conventions.
- Both are shown in the viewer's zone; an unknown zone name falls back to UTC rather than fail
  a page.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

import jdatetime
from babel.dates import format_date, format_datetime

EMPTY = "—"
PERSIAN_DIGITS = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")
JALALI_MONTHS = ("فروردین", "اردیبهشت", "خرداد", "تیر", "مرداد", "شهریور",
                 "مهر", "آبان", "آذر", "دی", "بهمن", "اسفند")


def format_when(ts: float | str | None, locale: str, tzname: str) -> str:
    """A unix time as a date and time in locale's calendar and digits, in the zone tzname.

    ts: seconds since the epoch (a number or its text); empty or 0 gives "—".
    locale: a panel language ("en", "fa"); tzname: an IANA zone name ("Asia/Tehran").
    """
    if not ts:
        return EMPTY
    moment = datetime.fromtimestamp(float(ts), UTC).astimezone(zone(tzname))
    if locale.split("_")[0] == "fa":
        return jalali(moment)
    return format_datetime(moment, "medium", locale=locale)


def jalali(moment: datetime) -> str:
    """moment in the Solar Hijri calendar with Persian digits: "۹ آذر ۱۴۰۴، ۱۱:۲۰:۰۸"."""
    day = jdatetime.date.fromgregorian(date=moment.date())
    text = f"{day.day} {JALALI_MONTHS[day.month - 1]} {day.year}، {moment:%H:%M:%S}"
    return text.translate(PERSIAN_DIGITS)


def known_zone(tzname: str) -> str:
    """tzname when it names a time zone, else "UTC"."""
    try:
        ZoneInfo(tzname)
    except (ValueError, KeyError, OSError):
        return "UTC"
    return tzname


def zone(tzname: str) -> tzinfo:
    """The zone named tzname, or UTC when there is no such zone."""
    return ZoneInfo(known_zone(tzname))


def format_day(ts: float, locale: str, tzname: str) -> str:
    """A unix time's day, short, in locale's calendar, in the zone tzname: "Mar 12" in
    English, "12 آذر" in Persian (Solar Hijri; Latin digits, as beside a chart's other
    labels)."""
    moment = datetime.fromtimestamp(float(ts), UTC).astimezone(zone(tzname))
    if locale.split("_")[0] == "fa":
        day = jdatetime.date.fromgregorian(date=moment.date())
        return f"{day.day} {JALALI_MONTHS[day.month - 1]}"
    return format_date(moment, "MMM d", locale=locale)
