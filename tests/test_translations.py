"""Every message the panel can show has its Persian translation (web/, backstop/, templates/,
as babel.cfg lists them): an untranslated string shows up in English on a Persian page."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parent.parent
KEYWORDS = {**DEFAULT_KEYWORDS, "N_": None, "lazy_gettext": None,
            "lazy_ngettext": (1, 2)}


def extracted_messages() -> set[str]:
    method_map, options_map = parse_mapping_cfg((ROOT / "babel.cfg").open())
    found = extract_from_dir(str(ROOT), method_map, options_map, keywords=KEYWORDS)
    return {message if isinstance(message, str) else message[0]
            for _file, _line, message, _comments, _context in found if message}


def test_every_panel_message_has_a_persian_translation():
    catalog = read_po((ROOT / "translations/fa/LC_MESSAGES/messages.po").open("rb"))
    untranslated = sorted(msgid for msgid in extracted_messages()
                          if msgid not in catalog or not all(
                              catalog[msgid].string if isinstance(catalog[msgid].string, tuple)
                              else [catalog[msgid].string]))
    assert not untranslated, f"no Persian for: {untranslated}"


def test_web_routes_are_extracted():
    assert "There is no queue %(queue)s." in extracted_messages(), "babel.cfg must list web/"
