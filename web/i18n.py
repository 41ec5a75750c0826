"""Languages and time zones: which the viewer gets, and compiling the translations."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from flask import request

from backstop.dates import known_zone

LANGUAGES = {"en": "English", "fa": "فارسی"}
RTL = {"fa"}
TRANSLATIONS = Path(__file__).resolve().parent.parent / "translations"


def select_locale() -> str:
    """The language cookie when it names one we have; else the browser's best match."""
    chosen = request.cookies.get("lang")
    return chosen if chosen in LANGUAGES else request.accept_languages.best_match(
        list(LANGUAGES)) or "en"


def select_timezone() -> str:
    """The browser's zone from the tz cookie (written encoded: Asia%2FTehran); UTC if bad."""
    return known_zone(unquote(request.cookies.get("tz", "UTC")))


def compile_translations() -> None:
    """Compile each language's .po into the .mo Flask-Babel reads, when the .po is newer."""
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    for po in TRANSLATIONS.glob("*/LC_MESSAGES/messages.po"):
        mo = po.with_suffix(".mo")
        if not mo.exists() or mo.stat().st_mtime < po.stat().st_mtime:
            with po.open("rb") as source, mo.open("wb") as target:
                write_mo(target, read_po(source))
