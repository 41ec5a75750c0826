"""Dead-letter records: what a job's final failure leaves behind (SPEC section 4).

Records are written by the worker's finish script in the same step that marks the job dead,
so nothing falls between a final failure and its record.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import redis
from cryptography.fernet import Fernet, InvalidToken

from . import keys
from .config import secret_key, settings
from .connection import client
from .errors import BackstopError
from .redaction import redact, redact_text
from .registry import script_args
from .scripts import scripts_for

LONE_SURROGATES = re.compile("[\ud800-\udfff]")
VOLATILE = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I), "<uuid>"),
    (re.compile(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{12,}\b", re.I), "<hex>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<str>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
]


def normalise_message(message: str) -> str:
    """An error message with ids, numbers and quoted values replaced by placeholders."""
    for pattern, placeholder in VOLATILE:
        message = pattern.sub(placeholder, message)
    return message[:300]


def top_frame(stack: str) -> str:
    """The innermost application frame of a formatted traceback ('file:function')."""
    frames = re.findall(r'File "([^"]+)", line \d+, in (\S+)', stack)
    app = [f for f in frames if "site-packages" not in f[0] and "/lib/python" not in f[0]]
    if not (app or frames):
        return ""
    path, function = (app or frames)[-1]
    return f"{path.rsplit('/', 1)[-1]}:{function}"


def fingerprint(error_type: str, message: str, stack: str) -> str:
    """Error type + normalised message + top application frame, hashed to 16 hex digits."""
    basis = "|".join((error_type, normalise_message(message), top_frame(stack)))
    return hashlib.sha1(basis.encode()).hexdigest()[:16]


def describe_exception(exc: BaseException) -> dict:
    """The error of a failed attempt: type, message, stack and code (valid UTF-8 text), with
    secrets redacted (redaction.redact_text) before anything stores or publishes it."""
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    error = {"type": type(exc).__name__, "message": redact_text(str(exc))[:2000],
             "stack": redact_text(stack)[-20_000:], "code": str(getattr(exc, "code", "") or "")}
    error["message"] = error["message"] or error["type"]
    return {k: LONE_SURROGATES.sub("\ufffd", v) for k, v in error.items()}


def reason_of(error_type: str, message: str) -> str:
    """The error reason analytics group by: type and normalised message."""
    return f"{error_type}: {normalise_message(message)}"[:160]


def hour_bucket(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d%H")


# ---- sealed payloads: shown redacted, replayed exact ----
def _fernet() -> Fernet:
    digest = hashlib.sha256(secret_key().encode() + b"backstop-dlq-payload").digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(payload: dict) -> str:
    """The exact payload, encrypted with the secret key, for replays."""
    return _fernet().encrypt(json.dumps(payload).encode()).decode()


def unseal(token: str) -> dict:
    """Decrypt a sealed payload. Raises DlqError if the secret key changed."""
    try:
        return json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken:
        raise DlqError("the stored payload cannot be decrypted: SECRET_KEY differs from the "
                       "one it was sealed with", code="sealed") from None


class DlqError(BackstopError):
    """A DLQ operation that was refused; ``code`` says why (missing, limit, busy, ...)."""

    def __init__(self, message: str, code: str = "refused", status: int = 409):
        super().__init__(message)
        self.code = code
        self.status = status


def record_fields(job: dict, error: dict, attempts: int, *, existing: bool) -> dict:
    """The DLQ hash fields for a job's final failure. error: as describe_exception makes it
    (secrets already redacted); the payload is redacted here.

    existing: the job replayed a record that already exists; keep that record's identity,
    replay count and lineage, update the rest.
    """
    payload = job.get("payload") or {}
    message, stack = error["message"], error["stack"]
    fields_ = {
        "queue": job["queue"], "job": job["job"], "payload": json.dumps(redact(payload)),
        "payload_sealed": seal(payload), "error_type": error["type"],
        "error_message": message, "stack": stack, "code": error["code"],
        "fingerprint": fingerprint(error["type"], message, stack),
        "reason": reason_of(error["type"], message), "attempts": attempts,
        "tenant_id": str(payload.get("tenant_id", "")),
        "actor_id": str(payload.get("actor_id", "")),
    }
    if not existing:
        fields_.update(id=job["id"], original_job_id=job["id"], replay_count=0,
                       current_attempt="")
    return fields_


# ---- reading ----
NUMBERS = ("attempts", "replay_count")
TIMES = ("first_failed_at", "last_failed_at", "last_replayed_at", "resolved_at")


def redact_hash(raw: dict, text_fields: tuple[str, ...] = ("error_message", "stack")) -> dict:
    """A record hash with its payload and text_fields redacted again and the sealed payload
    untouched: records written under older rules are read under the current ones (redaction
    is idempotent). Stacks are redacted when written; listings and exports, which never show
    them, leave them out of text_fields (a 20 KB stack costs milliseconds)."""
    shown = dict(raw)
    if "payload" in shown:
        shown["payload"] = json.dumps(redact(json.loads(shown["payload"] or "{}")))
    for name in text_fields:
        if name in shown:
            shown[name] = redact_text(shown[name])
    return shown


def decode(raw: dict) -> dict:
    """A record hash as plain data, payload and error message redacted again (redact_hash);
    the sealed payload is never returned."""
    raw = redact_hash(raw, ("error_message",))
    record = {k: v for k, v in raw.items() if k != "payload_sealed"}
    record["payload"] = json.loads(raw.get("payload") or "{}")
    for name in NUMBERS:
        record[name] = int(raw.get(name) or 0)
    for name in TIMES:
        record[name] = float(raw[name]) if raw.get(name) else None
    return record


def get_record(record_id: str, r: redis.Redis | None = None) -> dict | None:
    """One DLQ record as plain data, or None."""
    raw = (r or client()).hgetall(keys.dlq_record(record_id))
    return decode(raw) if raw else None


def get_records(ids: list[str]) -> list[dict | None]:
    pipe = client().pipeline(transaction=False)
    for record_id in ids:
        pipe.hgetall(keys.dlq_record(record_id))
    return [decode(raw) if raw else None for raw in pipe.execute()]


def lineage(record_id: str) -> list[dict]:
    """Every replay attempt of a record, oldest first, with its outcome and current state."""
    items = [json.loads(v) for v in client().hgetall(keys.dlq_lineage(record_id)).values()]
    items.sort(key=lambda item: item["replayed_at"])
    pipe = client().pipeline(transaction=False)
    for item in items:
        pipe.hget(keys.job(item["attempt_id"]), "state")
    for item, state in zip(items, pipe.execute(), strict=True):
        item["state"] = state
    return items


def detail(record_id: str) -> dict | None:
    """A record with its stack, payload (redacted) and lineage: the original job and every
    replay attempt with its outcome."""
    record = get_record(record_id)
    if record is not None:
        record["stack"] = redact_text(record.get("stack", ""))
        record["lineage"] = lineage(record_id)
    return record


def count(r: redis.Redis | None = None) -> int:
    return (r or client()).zcard(keys.dlq_index())


# ---- filters, paging, search ----
@dataclass(frozen=True)
class Filters:
    """What a listing, export or bulk action selects. Empty fields select everything."""

    queue: str = ""
    job: str = ""
    error_type: str = ""
    fingerprint: str = ""
    min_replays: int | None = None
    max_replays: int | None = None
    since: float | None = None
    until: float | None = None
    status: str = ""
    q: str = ""

    DIMS = {"queue": "queue", "job": "job", "error_type": "type", "fingerprint": "fp"}

    @classmethod
    def parse(cls, args: dict) -> Filters:
        """Filters from request arguments. Raises FilterError naming each bad field."""
        known = {f.name for f in fields(cls)}
        errors = [{"field": k, "message": "unknown filter"} for k in args if k not in known]
        values = {}
        for name in known & set(args):
            try:
                values[name] = _parse_filter_value(name, args[name])
            except ValueError as exc:
                errors.append({"field": name, "message": str(exc)})
        if errors:
            raise FilterError(errors)
        return cls(**values)

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in ("", None)}

    def dims(self) -> list[tuple[str, str]]:
        return [(dim, getattr(self, name)) for name, dim in self.DIMS.items()
                if getattr(self, name)]

    def needs_record(self) -> bool:
        """Whether matching needs the record's fields beyond the index it is read from."""
        return (len(self.dims()) > 1 or self.q != "" or self.status != ""
                or self.min_replays is not None or self.max_replays is not None)


class FilterError(BackstopError):
    def __init__(self, errors: list[dict]):
        super().__init__("bad filter: " + ", ".join(f"{e['field']}: {e['message']}"
                                                    for e in errors))
        self.errors = errors


def _parse_filter_value(name: str, value: Any):
    """One filter's value from a query string (text) or a JSON body (text, or a number for
    the counts and times). Raises ValueError saying what it must be."""
    if value in ("", None):
        return None if name in ("min_replays", "max_replays", "since", "until") else ""
    if name in ("min_replays", "max_replays"):
        return _replay_count(value)
    if name in ("since", "until"):
        return _parse_time(value)
    if not isinstance(value, str):
        raise ValueError("a string")
    if name == "status" and value not in ("open", "replaying", "resolved"):
        raise ValueError("one of open, replaying, resolved")
    if len(value) > 500:
        raise ValueError("at most 500 characters")
    return value


def _replay_count(value: Any) -> int:
    whole = isinstance(value, int) and not isinstance(value, bool)
    digits = isinstance(value, str) and re.fullmatch(r"[0-9]", value)
    if not (whole or digits) or not 0 <= int(value) <= 5:
        raise ValueError("a replay count from 0 to 5")
    return int(value)


def _parse_time(value: Any) -> float:
    """Unix seconds (a number, or its text) or an ISO 8601 time (UTC unless it says)."""
    wrong = ValueError("a time: unix seconds or ISO 8601 (2024-01-15T10:30:00Z)")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise wrong
    try:
        moment = float(value)
    except ValueError:
        moment = _iso_seconds(str(value))
    if not math.isfinite(moment):  # NaN or infinity: Redis takes no such score
        raise wrong
    return moment


def _iso_seconds(text: str) -> float:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("a time: unix seconds or ISO 8601 (2024-01-15T10:30:00Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def matches(record: dict, flt: Filters) -> bool:
    """Whether a decoded record passes every filter (used after an index narrowed it)."""
    checks = [
        (flt.queue, record.get("queue")), (flt.job, record.get("job")),
        (flt.error_type, record.get("error_type")), (flt.fingerprint, record.get("fingerprint")),
        (flt.status, record.get("status")),
    ]
    if any(want and want != have for want, have in checks):
        return False
    replays = record.get("replay_count") or 0
    if flt.min_replays is not None and replays < flt.min_replays:
        return False
    if flt.max_replays is not None and replays > flt.max_replays:
        return False
    return not flt.q or _search_hit(record, flt.q.lower())


def _search_hit(record: dict, needle: str) -> bool:
    haystack = (record.get("id", ""), record.get("original_job_id", ""),
                record.get("error_message", ""), record.get("error_type", ""),
                json.dumps(record.get("payload", {}), ensure_ascii=False))
    return any(needle in text.lower() for text in haystack)


def base_index(flt: Filters) -> str:
    """The index to read: the smallest of the filter's dimensions, else the main index."""
    dims = flt.dims()
    if not dims:
        return keys.dlq_index()
    pipe = client().pipeline(transaction=False)
    for dim, value in dims:
        pipe.zcard(keys.dlq_dim_index(dim, value))
    sizes = pipe.execute()
    dim, value = dims[sizes.index(min(sizes))]
    return keys.dlq_dim_index(dim, value)


@dataclass
class Page:
    items: list[dict]
    next_cursor: str | None
    scanned: int
    total: int | None = None
    complete: bool = True
    extra: dict = field(default_factory=dict)


def _score_range(flt: Filters, cursor: str | None) -> tuple[str, str, tuple | None]:
    high = f"{flt.until}" if flt.until is not None else "+inf"
    after = None
    if cursor:
        score, _, record_id = cursor.partition(":")
        high, after = score, (float(score), record_id)
    low = f"{flt.since}" if flt.since is not None else "-inf"
    return high, low, after


def _chunks(index: str, flt: Filters, cursor: str | None, size: int) -> Iterator[list]:
    """(id, score) pairs newest first, after the cursor, in chunks.

    Continues by score (O(log N) per chunk at any depth); ties at one score are ordered by id.
    """
    high, low, after = _score_range(flt, cursor)
    offset = 0
    while True:
        rows = client().zrevrangebyscore(index, high, low, start=offset, num=size,
                                         withscores=True)
        kept = [(i, s) for i, s in rows
                if after is None or s < after[0] or (s == after[0] and i < after[1])]
        if kept:
            yield kept
            after, high, offset = (kept[-1][1], kept[-1][0]), repr(kept[-1][1]), 0
        else:
            offset += len(rows)
        if len(rows) < size:
            return


def _cursor(record_id: str, score: float) -> str:
    return f"{score!r}:{record_id}"


def page(flt: Filters = Filters(), cursor: str | None = None, limit: int = 50,
         budget_seconds: float = 0.25) -> Page:
    """A page of records newest first. Filters use write-time indexes; search and combined
    filters scan within a time budget and return a cursor to continue from."""
    limit = max(1, min(limit, 500))
    index = base_index(flt)
    deadline = time.monotonic() + budget_seconds
    found, scanned, last = [], 0, None
    for rows in _chunks(index, flt, cursor, limit if not flt.needs_record() else 200):
        passed = _screen([i for i, _ in rows], flt)
        for record_id, score in rows:
            scanned += 1
            last = (record_id, score)
            if record_id in passed:
                found.append(record_id)
                if len(found) == limit:
                    return _page(found, _cursor(*last), scanned, index, flt)
        if time.monotonic() > deadline:
            return _page(found, _cursor(*last), scanned, index, flt, complete=False)
    return _page(found, None, scanned, index, flt)


def _page(ids: list[str], cursor, scanned: int, index: str, flt: Filters,
          complete: bool = True) -> Page:
    records = [record for record in get_records(ids) if record is not None]
    return Page(records, cursor, scanned, _total(index, flt), complete)


SCREEN_FIELDS = ("id", "queue", "job", "error_type", "fingerprint", "status", "replay_count")
SEARCH_FIELDS = ("original_job_id", "error_message", "payload")


def _screen(ids: list[str], flt: Filters) -> set[str]:
    """The ids that pass the filters, judged from the few fields the filters read (never the
    stacks and sealed payloads), in one round trip."""
    if not flt.needs_record():
        return set(ids)
    names = SCREEN_FIELDS + (SEARCH_FIELDS if flt.q else ())
    pipe = client().pipeline(transaction=False)
    for record_id in ids:
        pipe.hmget(keys.dlq_record(record_id), names)
    passed = set()
    for values in pipe.execute():
        light = dict(zip(names, values, strict=True))
        if light["id"] is None:
            continue
        light["replay_count"] = int(light["replay_count"] or 0)
        if flt.q:
            light["payload"] = json.loads(light["payload"] or "{}")
        if matches(light, flt):
            passed.add(light["id"])
    return passed


def _total(index: str, flt: Filters) -> int | None:
    """The number of matches when an index answers it in O(log N), else None."""
    if flt.needs_record():
        return None
    low = f"{flt.since}" if flt.since is not None else "-inf"
    high = f"{flt.until}" if flt.until is not None else "+inf"
    return client().zcount(index, low, high)


def iter_records(flt: Filters = Filters(), chunk: int = 500) -> Iterator[dict]:
    """Every matching record, newest first, read in pipelined chunks (no time budget)."""
    for rows in _chunks(base_index(flt), flt, None, chunk):
        for record in get_records([i for i, _ in rows]):
            if record is not None and matches(record, flt):
                yield record


def iter_ids(flt: Filters = Filters(), chunk: int = 500) -> Iterator[str]:
    """Every matching record id; reads records only when a filter needs them."""
    if not flt.needs_record():
        for rows in _chunks(base_index(flt), flt, None, chunk):
            yield from (i for i, _ in rows)
        return
    yield from (record["id"] for record in iter_records(flt, chunk))


def count_matching(flt: Filters = Filters()) -> int:
    """How many records a filter selects (O(log N) for one dimension, else a scan)."""
    total = _total(base_index(flt), flt)
    return total if total is not None else sum(1 for _ in iter_ids(flt))


# ---- fingerprints and analytics, from counters kept at write time ----
def _hours_back(hours: int, now: float) -> list[str]:
    return [hour_bucket(now - 3600 * n) for n in range(hours - 1, -1, -1)]


def fingerprints(limit: int = 50, hours: int = 48) -> list[dict]:
    """Failure groups, largest first: count, first and last seen, sample, counts per hour."""
    now = time.time()
    top = client().zrevrange(keys.dlq_fingerprints(), 0, limit - 1, withscores=True)
    buckets = _hours_back(hours, now)
    pipe = client().pipeline(transaction=False)
    for fp, _ in top:
        pipe.hgetall(keys.dlq_fingerprint(fp))
        pipe.hmget(keys.dlq_fingerprint_hours(fp), buckets)
    replies = pipe.execute()
    return [_group(fp, info, per_hour, buckets)
            for (fp, _), info, per_hour in zip(top, replies[::2], replies[1::2], strict=True)]


def cause_of(error_type: str, reason: str) -> str:
    """A reason without its leading error type, for showing beside that type."""
    return reason.removeprefix(f"{error_type}: ") if error_type else reason


def _group(fp: str, info: dict, per_hour: list, buckets: list[str]) -> dict:
    error_type, reason = info.get("error_type", ""), info.get("reason", "")
    return {"fingerprint": fp, "count": int(info.get("count") or 0),
            "error_type": error_type, "reason": reason, "cause": cause_of(error_type, reason),
            "queue": info.get("queue", ""), "job": info.get("job", ""),
            "sample_id": info.get("sample_id", ""),
            "first_seen": float(info.get("first_seen") or 0),
            "last_seen": float(info.get("last_seen") or 0),
            "hourly": [{"hour": h, "count": int(n or 0)}
                       for h, n in zip(buckets, per_hour, strict=True)]}


def _split_counts(raw: dict) -> dict[str, dict[str, int]]:
    groups: dict[str, dict[str, int]] = {}
    for name, value in raw.items():
        dim, sep, key = name.partition(":")
        if sep and int(value) > 0:
            groups.setdefault(dim, {})[key] = int(value)
    return groups


def analytics(top: int = 10) -> dict:
    """Totals by queue, job, error type, reason, code, status and replay status, top failing
    jobs and the average age, from counters (O(1) in the number of records)."""
    raw = client().hgetall(keys.dlq_counts())
    groups = _split_counts(raw)
    total = int(raw.get("total") or 0)
    first_sum = float(raw.get("first_failed_sum") or 0)
    ranked = sorted(groups.get("job", {}).items(), key=lambda kv: -kv[1])
    return {
        "total": total,
        "by_queue": groups.get("queue", {}), "by_job": groups.get("job", {}),
        "by_error_type": groups.get("type", {}), "by_code": groups.get("code", {}),
        "by_reason": dict(sorted(groups.get("reason", {}).items(), key=lambda kv: -kv[1])[:50]),
        "by_status": groups.get("status", {}),
        "replay_status": {b: groups.get("replays", {}).get(b, 0)
                          for b in ("never", "once", "several", "limit")},
        "top_jobs": [{"job": job, "count": n} for job, n in ranked[:top]],
        "average_age_seconds": (time.time() - first_sum / total) if total else 0.0,
        "capacity": capacity(total),
    }


TREND_WINDOWS = (1, 6, 12, 24, 48)


def trends(hours: int = 24) -> dict:
    """Failures arriving per hour over the last ``hours`` (1-48): counts, average, peak."""
    if hours not in TREND_WINDOWS:
        raise FilterError([{"field": "hours", "message": "one of 1, 6, 12, 24, 48"}])
    buckets = _hours_back(hours, time.time())
    values = [int(v or 0) for v in client().hmget(keys.dlq_hours(), buckets)]
    peak = max(range(len(values)), key=lambda i: values[i])
    return {"hours": hours, "series": [{"hour": h, "count": n}
                                       for h, n in zip(buckets, values, strict=True)],
            "total": sum(values), "average_per_hour": sum(values) / hours,
            "peak_hour": buckets[peak] if values[peak] else None, "peak_count": values[peak]}


# ---- capacity: nothing is removed silently ----
def capacity(total: int | None = None) -> dict:
    """How full the DLQ is against DLQ_MAX_RECORDS."""
    cap = settings().int("dlq_max_records")
    total = count() if total is None else total
    return {"count": total, "cap": cap, "percent": round(100.0 * total / cap, 1) if cap else 0.0,
            "retention_days": settings().float("dlq_retention_days")}


def write_records(items: list[tuple[dict, dict, int, float]]) -> int:
    """Write records as final failures would, in one pipelined round trip (imports, restores
    and benchmarks). Each item is (job {id, queue, job, payload}, error, attempts, failed_at).
    """
    r = client()
    pipe = r.pipeline(transaction=False)
    for job, error, attempts, failed_at in items:
        error = {**error, "message": redact_text(error["message"]),
                 "stack": redact_text(error["stack"])}  # given from outside: not yet redacted
        fields_ = record_fields(job, error, attempts, existing=False)
        pairs = [item for pair in fields_.items() for item in pair]
        scripts_for(r).dlq_write(args=script_args(job["id"], failed_at, hour_bucket(failed_at),
                                                  *pairs), client=pipe)
    return len(pipe.execute())
