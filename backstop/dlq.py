"""Dead-letter records: what a job's final failure leaves behind (SPEC section 4).

Records are written by the worker's finish script in the same step that marks the job dead,
so nothing falls between a final failure and its record.
"""

from __future__ import annotations

import hashlib
import json
import re
import traceback
from typing import Any

import redis

from . import keys
from .connection import client

SECRET_KEY_PATTERN = re.compile(
    r"pass(word|wd)?|secret|token|api[_-]?key|authorization|credential|private[_-]?key|cookie",
    re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.\-]*://)([^/\s:@]+):([^/\s@]+)@", re.IGNORECASE)
REDACTED = "[REDACTED]"
VOLATILE = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I), "<uuid>"),
    (re.compile(r"\b0x[0-9a-f]+\b|\b[0-9a-f]{12,}\b", re.I), "<hex>"),
    (re.compile(r"'[^']*'|\"[^\"]*\""), "<str>"),
    (re.compile(r"\d+(\.\d+)?"), "<n>"),
]


def redact(value: Any) -> Any:
    """A copy of a payload with secrets (by key name) and URL credentials replaced."""
    if isinstance(value, dict):
        return {k: REDACTED if SECRET_KEY_PATTERN.search(str(k)) and v else redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return URL_CREDENTIALS.sub(rf"\g<1>\g<2>:{REDACTED}@", value)
    return value


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
    """The error of a failed attempt: type, message, stack and code."""
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"type": type(exc).__name__, "message": str(exc)[:2000] or type(exc).__name__,
            "stack": stack[-20_000:], "code": str(getattr(exc, "code", "") or "")}


def record_fields(job: dict, error: dict, attempts: int, now: float) -> dict:
    """The DLQ hash fields for a job's final failure."""
    payload = job.get("payload") or {}
    return {
        "id": job["id"], "queue": job["queue"], "job": job["job"],
        "original_job_id": job.get("original_job_id") or job["id"],
        "payload": json.dumps(redact(payload)), "error_type": error["type"],
        "error_message": error["message"], "stack": error["stack"], "code": error["code"],
        "fingerprint": fingerprint(error["type"], error["message"], error["stack"]),
        "attempts": attempts, "last_failed_at": now, "replay_count": 0,
        "tenant_id": payload.get("tenant_id", ""), "actor_id": payload.get("actor_id", ""),
    }


def get_record(job_id: str, r: redis.Redis | None = None) -> dict | None:
    """One DLQ record as plain data, or None."""
    raw = (r or client()).hgetall(keys.dlq_record(job_id))
    if not raw:
        return None
    raw["payload"] = json.loads(raw.get("payload") or "{}")
    for name in ("attempts", "replay_count"):
        raw[name] = int(raw.get(name) or 0)
    return raw


def count(r: redis.Redis | None = None) -> int:
    return (r or client()).zcard(keys.dlq_index())


def list_ids(offset: int = 0, limit: int = 50) -> list[str]:
    """Newest DLQ record ids first."""
    return client().zrevrange(keys.dlq_index(), offset, offset + limit - 1)
