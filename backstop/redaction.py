"""What counts as a secret, in one table, and how it is hidden (SPEC section 8).

Everything a person or a token can read passes through here: job and DLQ payloads (when read),
error messages, stacks, timeline entries and events (when written), exports, archives and the
audit log. The exact payload a replay needs is kept apart, sealed (dlq.seal).

Decisions:
- Names are matched on their parts (split on ``_``, ``-``, ``.``, spaces and case changes:
  ``maxTokens``, ``max-tokens`` and ``max_tokens`` are all ``max`` + ``tokens``), never on
  substrings: ``keyboard``, ``monkey`` and ``passenger`` are not secrets.
- Some words are secret wherever they stand in a name (ALWAYS: ``password_hash``,
  ``client_secret``, ``otp_code``). Others are secret only as the name's last word (LAST):
  ``api_token``, ``basic_auth`` and ``sig`` are secrets, while ``token_count``,
  ``auth_type`` and ``signature_version`` describe one. Words that only say how a secret is
  carried (``_value``, ``_header``, ``_code``...) are looked through: ``auth_header``.
- ``key`` is a secret as the last word unless a word before it says it identifies something
  (``primary_key``, ``cache_key``, ``public_key``); a bare ``key`` is a secret (Google-style
  ``?key=`` API keys). A plural (``tokens``, ``keys``) is a secret only after a word that
  makes it one (``api_tokens``), so counts such as ``max_tokens`` stay readable.
- OWASP's logging cheat sheet lists session ids, access tokens, passwords, connection
  strings, keys and card data as never-logged: hence ``session_id``, ``cvv`` and
  ``card_number`` too. When unsure, a name is treated as secret: a value shown as
  [REDACTED] costs a click, a leaked one costs a rotation.
- Free text (errors, stacks, notes) has no names, so text rules find secrets by shape:
  URL userinfo (``scheme://user:PASS@``), ``name=value`` and ``name: value`` pairs whose
  name is a secret by the table (query strings, logfmt, JSON, headers), and
  ``Bearer <token>``. A secret the text carries with no name (a bare token) is not found.
- Redaction is idempotent: redacting redacted text changes nothing, so layers may repeat it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

REDACTED = "[REDACTED]"

# Name parts that make a name secret wherever they stand in it.
ALWAYS = frozenset({
    "password", "passwords", "passwd", "pwd", "passphrase", "passcode", "secret", "secrets",
    "credential", "credentials", "cookie", "cookies", "authorization", "bearer", "otp", "totp",
    "hotp", "jwt", "cvv", "cvc",
    # the same, written as one word
    "apikey", "apikeys", "apitoken", "accesskey", "accesstoken", "authtoken", "authkey",
    "refreshtoken", "privatekey", "secretkey", "sessionid", "sessionkey", "xapikey",
})
# Name parts that make a name secret as its last word.
LAST = frozenset({"token", "key", "auth", "sig", "signature", "session", "pass", "pin"})
# Two-word endings that are secrets although neither word is one as a last word.
PAIRS = frozenset({("session", "id"), ("card", "number")})
# Plural last words, secret only after one of QUALIFIERS: api_tokens, but max_tokens.
PLURALS = frozenset({"tokens", "keys", "sigs", "signatures", "sessions", "pins"})
QUALIFIERS = frozenset({
    "api", "access", "refresh", "auth", "bearer", "session", "id", "csrf", "oauth", "private",
    "signing", "encryption", "master", "client", "license", "ssh", "gpg", "pgp", "hmac",
})
# Words before "key" that make it an identifier, not a secret.
KEY_IDENTIFIERS = frozenset({
    "primary", "foreign", "public", "cache", "sort", "partition", "range", "hash",
    "idempotency", "dedup", "dedupe", "object", "redis", "lookup", "routing", "group",
    "unique", "natural", "composite", "shard", "row", "translation", "message",
    "storage", "index", "map", "dict", "event", "order", "ordering", "sorting",
})
# Last words that only say how a secret is carried: looked through (auth_header -> auth).
CARRIERS = frozenset({
    "value", "val", "str", "string", "text", "data", "raw", "plain", "plaintext", "b64",
    "base64", "hex", "header", "hdr", "code",
})

_PARTS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+\d*|[A-Z]+\d*")


def _word(part: str) -> str:
    part = part.lower()
    return part if part in CARRIERS else part.rstrip("0123456789")


def name_parts(name: Any) -> list[str]:
    """The lower-case words of a name: ``maxTokens``, ``max-tokens``, ``MAX_TOKENS`` ->
    ["max", "tokens"]. Digits end a word and are dropped (``password2``), except in the
    carriers that have them (``b64``)."""
    return [_word(part) for part in _PARTS.findall(str(name))]


@lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether a field, query parameter or header called ``name`` holds a secret (see the
    module's decisions and the tables above)."""
    parts = name_parts(name)
    if any(part in ALWAYS for part in parts):
        return True
    while len(parts) > 1 and parts[-1] in CARRIERS:
        parts.pop()
    if not parts:
        return False
    last, before = parts[-1], parts[-2] if len(parts) > 1 else ""
    if (before, last) in PAIRS:
        return True
    if last in PLURALS:
        return before in QUALIFIERS
    if last == "key":
        return before not in KEY_IDENTIFIERS
    return last in LAST


# ---- destinations: where a sealed secret may go back to ----
DESTINATIONS = frozenset({
    "url", "urls", "uri", "href", "endpoint", "host", "hostname", "domain", "server", "dsn",
    "webhook", "callback", "email", "emails", "to", "cc", "bcc", "recipient", "recipients",
    "reply", "address", "addresses", "phone", "channel", "channels", "destination",
    "job",  # a workflow step's job name: another handler is another destination
})


@lru_cache(maxsize=1024)
def is_destination_name(name: str) -> bool:
    """Whether a payload field called ``name`` says where a job sends things (``url``,
    ``webhook_url``, ``webhook_id``, ``to``, ``reply_to``, ``channels``)."""
    return any(part in DESTINATIONS for part in name_parts(name))


# ---- text ----
# Scanning starts from the separators and "://" and looks around them rather than trying a
# pattern at every position. Still, a 16 KB stack dense with "name=value" source lines takes
# about 3 ms: stacks are redacted when written and re-read one record at a time only.
_SEPARATOR = re.compile(r"[=:]")
_USERINFO = re.compile(r"[^/?#\s]+@")
_BEARER = re.compile(r"\b([Bb]earer\s+)(?!\[REDACTED\])[A-Za-z0-9\-._~+/]{8,}=*")
# The name before a separator, matched on the reversed text before it (anchored, so it costs
# one short match): "=" follows the name at once, ":" may follow blanks. Reversed, the name
# ends at a letter that is not preceded by a name character.
_NAME_BEFORE = {"=": re.compile(r"([\"']?)([\w.\-]*[A-Za-z])\1(?![\w.\-])"),
                ":": re.compile(r"[ \t]*([\"']?)([\w.\-]*[A-Za-z])\1(?![\w.\-])")}
_WINDOW = 80
_QUOTED = r"\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'"
# After "=": one token (query strings, logfmt). After ":": the rest of the line up to a
# delimiter (headers, YAML, "password: two words").
_VALUE = {"=": re.compile(_QUOTED + r"|(?:\[REDACTED\]|[^\s&,;'\"<>)\]}#])+"),
          ":": re.compile(_QUOTED + r"|(?:\[REDACTED\]|[^\n\r&,;<>)\]}])+")}


def _redact_userinfo(text: str) -> str:
    out, pos = [], 0
    at = text.find("://")
    while at != -1:
        info = _USERINFO.match(text, at + 3)
        if info is not None:
            user, colon, _ = info.group(0)[:-1].partition(":")
            out += [text[pos:at + 3], f"{user}:{REDACTED}@" if colon else f"{REDACTED}@"]
            pos = info.end()
        at = text.find("://", max(at + 3, pos))
    return "".join(out) + text[pos:]


def _secret_value(text: str, sep: re.Match, pos: int) -> re.Match | None:
    """The value after a separator whose name is a secret, or None."""
    kind = sep.group(0)
    before = text[max(pos, sep.start() - _WINDOW):sep.start()][::-1]
    name = _NAME_BEFORE[kind].match(before)
    if name is None or not is_secret_name(name.group(2)[::-1]):
        return None
    start = sep.end()
    if kind == ":":
        while start < len(text) and text[start] in " \t":
            start += 1
    quoted = start < len(text) and text[start] in "\"'"
    if text.startswith(REDACTED, start + quoted):
        return None
    return _VALUE[kind].match(text, start)


def _redact_pairs(text: str) -> str:
    out, pos = [], 0
    for sep in _SEPARATOR.finditer(text):
        if sep.start() < pos:
            continue
        value = _secret_value(text, sep, pos)
        if value is not None:
            quote = value.group(0)[0] if value.group(0)[0] in "\"'" else ""
            out += [text[pos:value.start()], quote, REDACTED, quote]
            pos = value.end()
    return "".join(out) + text[pos:]


def redact_text(text: str) -> str:
    """Free text with URL credentials, secret-named ``name=value`` / ``name: value`` pairs
    and bearer tokens replaced by [REDACTED]. Anything not a str is returned unchanged."""
    if not isinstance(text, str) or not text:
        return text
    if "://" in text:
        text = _redact_userinfo(text)
    if "earer" in text:
        text = _BEARER.sub(rf"\g<1>{REDACTED}", text)
    return _redact_pairs(text)


def _filled(value: Any) -> bool:
    return value is not None and not isinstance(value, bool) and value not in ("", [], {})


def redact(value: Any) -> Any:
    """A copy of a structure (a payload, a result, an error, an event) with the value of
    every secret-named key replaced by [REDACTED] and every string passed through
    redact_text. Booleans and empty values under secret names are kept (they hide
    nothing)."""
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_name(str(k)) and _filled(v) else redact(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
