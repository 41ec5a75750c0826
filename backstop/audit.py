"""The audit log: who did what to which target, chained with an HMAC (SPEC section 8).

Each entry is one stream entry (keys.audit_log()) with the fields t, actor, action, target,
summary, ip, user_agent, result, prev and mac, where

    mac = HMAC-SHA256(audit key, prev + canonical JSON of every field but mac)

and prev is the mac of the entry before it ("genesis" for the first). keys.audit_head()
holds the newest mac; it moves in the same EXEC as each append, so every writer in every
process extends one chain, and `verify` can tell an edited, removed or reordered entry,
and a removed tail, from an intact log.

The log keeps about AUDIT_MAX_ENTRIES entries: `trim` (run by the retention job) drops the
oldest and notes in keys.audit_trimmed() how many went and the mac of the newest it dropped,
which the oldest kept entry's prev must match, so `verify` checks the rest of the chain from
there. Trimming checks the entries it drops first, and a problem it finds stays in that note:
waiting for retention does not hide an edit.

What the chain cannot tell: someone with write access to Redis who deletes the newest
entries *and* resets the head to the mac of the entry now last (or the oldest entries and
the trim note with them). Catching that needs the
head copied somewhere Redis writers cannot reach. Changing SECRET_KEY makes every older
entry fail verification.

`summary` is stored as JSON: an object for a dict summary, a string otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import time
from dataclasses import dataclass, field

import redis

from . import keys
from .config import derived_key, settings
from .connection import client
from .errors import BackstopError
from .redaction import redact, redact_text

GENESIS = "genesis"
SUMMARY_LIMIT = 2000
FIELD_LIMIT = 500
APPEND_ATTEMPTS = 100
SCAN_CHUNK = 500
SCAN_LIMIT = 20_000
VERIFY_CHUNK = 1000
PUBLIC_FIELDS = ("actor", "action", "target", "ip", "user_agent", "result")
STREAM_ID = re.compile(r"\d+-\d+")  # always fullmatch

ALTERED = "entry altered"
CHAIN_BROKEN = "chain broken: an entry before this one was removed or reordered"
HEAD_MISMATCH = "head does not match the last entry: entries were removed from the end"
SEEN_WHEN_TRIMMED = "{reason} (found when retention trimmed this entry)"
TRIMMED_PROBLEMS_KEPT = 100


class AuditError(BackstopError):
    """The audit log could not be appended to."""


@dataclass
class Page:
    """One page of entries, newest first. Pass next_before as `before` for the next (older)
    page; None when the log has no older entries."""

    items: list[dict]
    next_before: str | None


@dataclass
class Verification:
    """The outcome of `verify`: ok, entries checked, problems as {id, reason}, and how many
    of the oldest entries retention trimmed before the walk (checked from the trim on)."""

    ok: bool
    checked: int
    problems: list[dict] = field(default_factory=list)
    trimmed: int = 0


def record(actor: str, action: str, target: str = "", *, summary: dict | str = "",
           ip: str = "", user_agent: str = "", result: str = "ok", r=None) -> str:
    """Append an entry to the audit log and return its id (a stream id).

    actor: who (a user name, "api:<token name>", "system"); action: what, dotted by area
    ("dlq.replay"); target: what it touched (a job id, a queue); summary: the request in
    brief, a dict (secrets redacted) or text, cut to 2,000 characters; ip, user_agent: of
    the request; result: "ok", "refused <HTTP status>" (refused before anything changed),
    "failed" (attempted; the summary's "reason" says why), "refused" (a wrong password); an
    error text is redacted. Text fields are cut to 500 characters and text that is not valid
    Unicode is replaced, so recording never fails on input. r: a Redis client (default:
    connection.client()).
    Raises redis.RedisError when Redis fails, AuditError when the head kept moving under
    100 attempts in a row.
    """
    given = {"actor": actor, "action": action, "target": target, "ip": ip,
             "user_agent": user_agent, "result": redact_text(result)}
    fields = {name: _clean(value, FIELD_LIMIT) for name, value in given.items()}
    fields.update(t=f"{time.time():.6f}", summary=_summary_field(summary))
    return _append(r or client(), fields)


def record_once(marker: str, seconds: int, actor: str, action: str, target: str = "",
                **fields) -> str | None:
    """Like record, but once per marker in `seconds`: for refusals a client can repeat at
    will (a throttled sign-in), so a flood writes one entry per window, not one per request.

    marker: what counts as the same event (hashed into its key). fields: record's keyword
    arguments. Returns the entry id, or None when an entry for marker was written within
    the window. Raises as record does.
    """
    r = fields.pop("r", None) or client()
    digest = hashlib.sha256(marker.encode("utf-8", "replace")).hexdigest()
    if not r.set(keys.audit_quiet(digest), 1, nx=True, ex=max(1, int(seconds))):
        return None
    return record(actor, action, target, r=r, **fields)


def _append(r, fields: dict) -> str:
    key = _mac_key()
    with r.pipeline() as pipe:
        for attempt in range(APPEND_ATTEMPTS):
            try:
                pipe.watch(keys.audit_head())
                chained = {**fields, "prev": _text(pipe.get(keys.audit_head())) or GENESIS}
                chained["mac"] = _mac(key, chained)
                pipe.multi()
                pipe.xadd(keys.audit_log(), chained)
                pipe.set(keys.audit_head(), chained["mac"])
                return _text(pipe.execute()[0])
            except redis.WatchError:
                # Another writer moved the head first; jitter so the losers don't collide again.
                time.sleep(random.uniform(0, 0.001 * min(attempt + 1, 20)))
    raise AuditError(f"audit entry {fields['action']!r} not written: the log's head changed "
                     f"{APPEND_ATTEMPTS} times in a row under concurrent writers; retry")


def entries(*, actor: str | None = None, action: str | None = None, target: str | None = None,
            since: float | None = None, until: float | None = None, before: str | None = None,
            limit: int = 50, r=None) -> Page:
    """Audit entries, newest first, as dicts {id, t, actor, action, target, summary, ip,
    user_agent, result}.

    actor, target: exact matches; action: exact, or a prefix when it ends with "."
    ("dlq." matches "dlq.replay"); since, until: unix times, inclusive, compared with the
    time in the entry's stream id (the Redis server's clock, to the millisecond); before:
    a stream id, exclusive (a previous Page's next_before); limit: entries per page.
    Scans at most 20,000 entries per call; a page may then hold fewer than limit entries
    and still have a next_before.
    Raises ValueError for a before that is not a stream id or a limit below 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    r = r or client()
    upper = _upper_bound(before, until)
    lower = "-" if since is None else str(int(since * 1000))
    items: list[dict] = []
    for scanned, (entry_id, fields) in enumerate(_scan_back(r, upper, lower), start=1):
        if _matches(fields, actor, action, target):
            items.append(_public(entry_id, fields))
        if len(items) == limit or scanned == SCAN_LIMIT:
            return Page(items, entry_id)
    return Page(items, None)


def _scan_back(r, upper: str, lower: str):
    """Entries from upper down to lower, read in chunks of SCAN_CHUNK."""
    while True:
        batch = _read(r, "XREVRANGE", keys.audit_log(), upper, lower, "COUNT", SCAN_CHUNK,
                      errors="replace")
        yield from batch
        if len(batch) < SCAN_CHUNK:
            return
        upper = "(" + batch[-1][0]


def _upper_bound(before: str | None, until: float | None) -> str:
    if before is not None and not STREAM_ID.fullmatch(before):
        raise ValueError(f"before must be a stream id like 1700000000000-0, not {before!r}")
    until_ms = None if until is None else int(until * 1000)
    if before is None:
        return "+" if until_ms is None else str(until_ms)
    if until_ms is not None and until_ms < int(before.split("-")[0]):
        return str(until_ms)
    return "(" + before


def _matches(fields: dict, actor: str | None, action: str | None, target: str | None) -> bool:
    if actor is not None and fields.get("actor") != actor:
        return False
    if target is not None and fields.get("target") != target:
        return False
    if action is None or fields.get("action") == action:
        return True
    return action.endswith(".") and fields.get("action", "").startswith(action)


def _public(entry_id: str, fields: dict) -> dict:
    try:
        t = float(fields.get("t", 0))
    except ValueError:
        t = 0.0
    return {"id": entry_id, "t": t, **{name: fields.get(name, "") for name in PUBLIC_FIELDS},
            "summary": _parse_summary(fields.get("summary", '""'))}


def verify(r=None) -> Verification:
    """Walk the whole audit log oldest first and check its chain.

    Every mac must match its entry, every prev the mac before it (the oldest kept entry's:
    the mac of the newest entry retention trimmed), and the head the last mac. Entries
    appended while this runs are checked too, and a trim meanwhile is followed; problems
    found in trimmed entries when they were trimmed are reported too. Reads raw bytes, so an entry a
    tamperer made invalid UTF-8 is reported, not raised. r: a Redis client (default:
    connection.client()). Raises redis.RedisError when Redis fails.
    """
    r = r or client()
    chain = _Chain(_mac_key())
    chain.start_after_trim(_trim_note(r))
    chain.walk(r)
    # A head ahead of the walk is a writer that appended meanwhile; walk on until they agree.
    while _head(r) != chain.last_mac:
        if not chain.walk(r):
            chain.problem(chain.last_id or "", HEAD_MISMATCH)
            break
    return Verification(not chain.problems, chain.checked, chain.problems, chain.trimmed)


class _Chain:
    """The state of a walk along the log: where it is and what it found."""

    def __init__(self, key: bytes):
        self.key = key
        self.last_id: str | None = None
        self.last_mac = GENESIS
        self.checked = 0
        self.trimmed = 0
        self.problems: list[dict] = []

    def start_after_trim(self, note: dict) -> None:
        """Start where retention's last trim left the log; take on what it found."""
        self.last_mac, self.trimmed = note["mac"], note["count"]
        self.problems += [{"id": p["id"], "reason": SEEN_WHEN_TRIMMED.format(reason=p["reason"])}
                          for p in note["problems"]]

    def walk(self, r) -> int:
        """Check every entry after the last one checked; return how many there were."""
        lower, count = "-" if self.last_id is None else "(" + self.last_id, 0
        while True:
            batch = _read(r, "XRANGE", keys.audit_log(), lower, "+", "COUNT", VERIFY_CHUNK,
                          errors="surrogateescape")
            for entry_id, fields in batch:
                if self.follow_trim(r, entry_id, fields.get("prev")):
                    self.check(entry_id, fields)
                else:  # trimmed since this batch was read: the trim checked it
                    self.last_id = entry_id
            count += len(batch)
            if len(batch) < VERIFY_CHUNK:
                return count
            lower = "(" + batch[-1][0]

    def check(self, entry_id: str, fields: dict) -> None:
        stored = fields.get("mac", "")
        if not hmac.compare_digest(_bytes(stored), _bytes(_mac(self.key, fields))):
            self.problem(entry_id, ALTERED)
        elif fields.get("prev") != self.last_mac:
            self.problem(entry_id, CHAIN_BROKEN)
        self.last_id, self.last_mac = entry_id, stored
        self.checked += 1

    def problem(self, entry_id: str, reason: str) -> None:
        self.problems.append({"id": entry_id, "reason": reason})

    def follow_trim(self, r, entry_id: str, prev: str | None) -> bool:
        """When an entry does not follow the last one checked, retention may have trimmed
        past this walk meanwhile. Returns False for an entry trimmed since it was read (the
        trim checked it; skip it); when the trim note ends right before this entry, go on
        from the note (taking on what the trim found). Otherwise True: check the entry."""
        if prev == self.last_mac:
            return True
        note = _trim_note(r)
        if note["count"] <= self.trimmed:
            return True  # no trim since: a real break, which check reports
        if _stream_order(entry_id) <= _stream_order(note["last_id"]):
            return False
        if note["mac"] == prev:
            seen = {p["id"] for p in self.problems}
            self.start_after_trim({**note, "problems": [
                p for p in note["problems"] if p["id"] not in seen]})
        return True


def _stream_order(entry_id: str) -> tuple[int, int]:
    """A stream id as (ms, seq), for ordering; "" (nothing trimmed) sorts first."""
    if not STREAM_ID.fullmatch(entry_id or ""):
        return (-1, -1)
    ms, seq = entry_id.split("-")
    return (int(ms), int(seq))


def trim(max_entries: int | None = None, r=None) -> int:
    """Drop the oldest entries so that at most max_entries stay; return how many went.

    max_entries: default AUDIT_MAX_ENTRIES (at least 1 is kept). Each chunk of up to 1,000
    entries is checked against the chain before it goes, then dropped in the same EXEC that
    moves keys.audit_trimmed() on (count, the newest dropped entry's id and mac, and any
    problem found), so `verify` checks the kept entries from there. Appends meanwhile are
    safe; concurrent trims do not interleave. r: a Redis client (default:
    connection.client()). Raises redis.RedisError when Redis fails.
    """
    r = r or client()
    limit = max(1, settings().int("audit_max_entries") if max_entries is None else max_entries)
    dropped = 0
    while (excess := r.xlen(keys.audit_log()) - limit) > 0:
        done = _trim_chunk(r, min(excess, VERIFY_CHUNK))
        if not done:
            break
        dropped += done
    return dropped


def _trim_chunk(r, count: int) -> int:
    """Drop the oldest count entries (fewer if fewer than count + 1 exist); how many went."""
    with r.pipeline() as pipe:
        for _ in range(APPEND_ATTEMPTS):
            try:
                pipe.watch(keys.audit_trimmed())
                note = _trim_note(pipe)
                batch = _read(pipe, "XRANGE", keys.audit_log(), "-", "+", "COUNT", count + 1,
                              errors="surrogateescape")
                doomed = batch[:-1]
                if not doomed:
                    return 0
                pipe.multi()
                pipe.xtrim(keys.audit_log(), minid=batch[-1][0], approximate=False)
                pipe.hset(keys.audit_trimmed(), mapping=_next_note(note, doomed))
                pipe.execute()
                return len(doomed)
            except redis.WatchError:
                continue
    raise AuditError("the audit log was not trimmed: other trims kept moving its start")


def _next_note(note: dict, doomed: list[tuple[str, dict]]) -> dict:
    """The trim note once doomed (the oldest entries, in order) are gone."""
    chain = _Chain(_mac_key())
    chain.last_mac = note["mac"]
    for entry_id, fields in doomed:
        chain.check(entry_id, fields)
    problems = (note["problems"] + chain.problems)[:TRIMMED_PROBLEMS_KEPT]
    return {"count": note["count"] + len(doomed), "last_id": doomed[-1][0],
            "mac": _bytes(chain.last_mac), "problems": json.dumps(problems),
            "at": f"{time.time():.3f}"}


def _trim_note(r) -> dict:
    """keys.audit_trimmed() as {count, last_id, mac, problems}; nothing trimmed yet: the
    chain starts at genesis."""
    raw = r.execute_command("HGETALL", keys.audit_trimmed(), NEVER_DECODE=True)
    note = {_text(k): _text(v, "surrogateescape") for k, v in (raw or {}).items()}
    return {"count": int(note.get("count") or 0), "last_id": note.get("last_id", ""),
            "mac": note.get("mac") or GENESIS, "problems": json.loads(note.get("problems") or "[]")}


def _mac_key() -> bytes:
    return derived_key(b"audit")


def _mac(key: bytes, fields: dict) -> str:
    body = {name: value for name, value in fields.items() if name != "mac"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, _bytes(body.get("prev", "") + canonical), hashlib.sha256).hexdigest()


def _bytes(text: str) -> bytes:
    # surrogateescape gives back the exact bytes a raw read decoded, valid UTF-8 or not.
    return text.encode("utf-8", "surrogateescape")


def _read(r, *command, errors: str) -> list[tuple[str, dict]]:
    """A stream range read as raw bytes, decoded with the given error handler."""
    rows = r.execute_command(*command, NEVER_DECODE=True)
    return [(_text(entry_id), {_text(k, errors): _text(v, errors) for k, v in fields.items()})
            for entry_id, fields in rows]


def _head(r) -> str:
    return _text(r.execute_command("GET", keys.audit_head(), NEVER_DECODE=True),
                 "surrogateescape") or GENESIS


def _text(value, errors: str = "strict") -> str:
    if value is None:
        return ""
    return value.decode("utf-8", errors) if isinstance(value, bytes) else value


def _clean(value, limit: int) -> str:
    """Text cut to limit characters, lone surrogates replaced so it encodes as UTF-8."""
    return _utf8(_clip(str(value), limit))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


def _summary_field(summary) -> str:
    value = redact(summary)
    if isinstance(value, str):
        return _dumps(_clean(value, SUMMARY_LIMIT))
    text = _utf8(_dumps(value))
    # Too long as an object: keep its first 2,000 characters as text rather than drop it.
    return text if len(text) <= SUMMARY_LIMIT else _dumps(_clip(text, SUMMARY_LIMIT))


def _dumps(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def _parse_summary(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text
