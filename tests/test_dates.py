"""Dates in each panel language: Solar Hijri with Persian digits for fa, Babel's for others."""

from __future__ import annotations

from datetime import UTC, datetime

from backstop.dates import format_when

# 2025-03-20 20:30 UTC is midnight in Tehran (UTC+3:30) at the start of Nowruz 1404.
NOWRUZ_1404 = datetime(2025, 3, 20, 20, 30, tzinfo=UTC).timestamp()


def test_persian_dates_are_solar_hijri_with_persian_digits_in_the_viewers_zone():
    assert format_when(NOWRUZ_1404, "fa", "Asia/Tehran") == "۱ فروردین ۱۴۰۴، ۰۰:۰۰:۰۰"
    assert format_when(NOWRUZ_1404, "fa", "UTC") == "۳۰ اسفند ۱۴۰۳، ۲۰:۳۰:۰۰"


def test_persian_dates_hold_no_latin_digit():
    text = format_when(1764489008.5, "fa", "Asia/Tehran")
    assert text and not any(ch.isascii() and ch.isdigit() for ch in text)


def test_english_dates_are_babels_medium_format_in_the_viewers_zone():
    assert format_when(NOWRUZ_1404, "en", "Asia/Tehran") == "Mar 21, 2025, 12:00:00\u202fAM"
    assert format_when(str(NOWRUZ_1404), "en", "UTC") == "Mar 20, 2025, 8:30:00\u202fPM"


def test_no_time_is_a_dash_and_an_unknown_zone_is_utc():
    assert format_when(None, "fa", "UTC") == format_when(0, "en", "UTC") == "—"
    assert format_when(NOWRUZ_1404, "en", "Mars/Olympus") == format_when(NOWRUZ_1404, "en", "UTC")
