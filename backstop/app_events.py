"""Job progress for applications: the events stream as JSON an application's own code (or its
users' browsers) can follow, who may follow what, and how many streams a token may hold open.

An application event is built from a live event (backstop.live) of one job::

    {"id": "1733000000000-0", "type": "progress", "job_id": "...", "queue": "reports",
     "job": "reports.build", "state": "active", "at": 1733000000.0, "progress": 40,
     "message": "page 4 of 10"}

"completed" events add "result" (redacted; a large one is summarised) and "progress": 100;
"retrying" and "dead" add "error" {"message"} and "attempt"; "retrying" adds "retry_at".

Scoped stream tokens let a server hand its browser a credential that sees only some jobs: an
itsdangerous signature (keyed from SECRET_KEY) over the job ids, the issuing API token's name
and an expiry. A scoped token dies with its issuer: revoking the API token ends it too.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache

from itsdangerous import BadSignature, URLSafeSerializer

from . import keys, tokens
from .config import derived_key, settings
from .connection import client
from .live import Topic
from .redaction import redact

SCOPED_PREFIX = "bse_"          # tells a scoped stream token from an API token (bst_)
MOST_SCOPED_JOBS = 100          # job ids one scoped token may name
MOST_SCOPED_SECONDS = 24 * 3600
RESULT_BYTES = 4096             # a larger result is summarised in its event
FIELDS = ("job_id", "queue", "job", "state", "progress", "message", "attempt", "retry_at")


class ScopeError(ValueError):
    """A scoped token cannot be issued as asked (too many ids, bad lifetime); field names
    the request field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Reader:
    """Who follows events: an API token (every job) or a scoped token (its job ids only).

    holder: whose stream count a stream counts against. issuer: the API token's name.
    """

    holder: str
    issuer: str
    job_ids: frozenset[str] | None = None
    expires_at: float | None = None

    def topic(self, job_ids: frozenset[str] | None, queue: str | None) -> Topic:
        """The topic for what was asked (None: all it may see), narrowed to what it may see.

        Raises PermissionError when it asks for a job or queue outside its scope, ValueError
        for an unknown queue.
        """
        if self.job_ids is not None:
            if queue is not None:
                raise PermissionError("a scoped token follows its jobs, not a queue")
            if job_ids is not None and not job_ids <= self.job_ids:
                raise PermissionError("this token may not follow "
                                      + ", ".join(sorted(job_ids - self.job_ids)[:5]))
            job_ids = job_ids or self.job_ids
        return Topic(queue=queue, job_ids=job_ids, jobs_only=True)

    def still_valid(self, now: float | None = None) -> bool:
        """Whether it may go on reading: not expired, and its issuer not revoked (a revoked
        API token is refused here within AUTH_CACHE_SECONDS)."""
        if self.expires_at is not None and (now or time.time()) >= self.expires_at:
            return False
        return self.job_ids is None or _issuer_alive(self.issuer)


def _issuer_alive(name: str) -> bool:
    return any(info["name"] == name for info in tokens.listing())


def _serializer() -> URLSafeSerializer:
    return URLSafeSerializer(derived_key(b"backstop-event-scope").hex(), salt="events")


def issue_scoped(issuer: str, job_ids: list[str], seconds: int) -> dict:
    """A scoped stream token for job_ids, valid for seconds: {"token", "job_ids",
    "expires_at"}. Raises ScopeError when asked for no ids, too many, or a bad lifetime."""
    ids = sorted(set(job_ids))
    if not ids or len(ids) > MOST_SCOPED_JOBS:
        raise ScopeError("job_ids", f"name between 1 and {MOST_SCOPED_JOBS} job ids")
    if not 1 <= seconds <= MOST_SCOPED_SECONDS:
        raise ScopeError("ttl_seconds", f"ttl_seconds must be between 1 and {MOST_SCOPED_SECONDS}")
    expires_at = int(time.time()) + seconds
    body = {"i": issuer, "j": ids, "e": expires_at, "n": secrets.token_urlsafe(8)}
    return {"token": SCOPED_PREFIX + _serializer().dumps(body), "job_ids": ids,
            "expires_at": expires_at}


def scoped_reader(token: str, now: float | None = None) -> Reader | None:
    """The reader a scoped token stands for; None when it is forged, expired or its issuer
    is revoked."""
    if not token.startswith(SCOPED_PREFIX):
        return None
    try:
        body = _serializer().loads(token.removeprefix(SCOPED_PREFIX))
    except BadSignature:
        return None
    reader = Reader(holder=f"scoped:{body['n']}", issuer=body["i"],
                    job_ids=frozenset(body["j"]), expires_at=float(body["e"]))
    return reader if reader.still_valid(now) else None


def token_reader(info: dict) -> Reader:
    """The reader a verified API token stands for (tokens.verify's answer)."""
    return Reader(holder=f"token:{info['name']}", issuer=info["name"])


# ---- how many streams a token holds open ----
LEASE_SECONDS = 60   # a stream not renewed this long (its process died) no longer counts


def open_stream(holder: str, limit: int | None = None) -> str | None:
    """Count a new stream against holder; its id, or None when holder has limit open."""
    limit = settings().int("event_streams_per_token") if limit is None else limit
    stream_id, now = secrets.token_hex(8), time.time()
    pipe = client().pipeline()  # MULTI: the count includes this stream, atomically
    pipe.zremrangebyscore(keys.event_streams(holder), "-inf", now)
    pipe.zadd(keys.event_streams(holder), {stream_id: now + LEASE_SECONDS})
    pipe.zcard(keys.event_streams(holder))
    pipe.expire(keys.event_streams(holder), LEASE_SECONDS * 2)
    if pipe.execute()[2] <= limit:
        return stream_id
    close_stream(holder, stream_id)
    return None


def renew_stream(holder: str, stream_id: str) -> None:
    """Keep an open stream counted for another LEASE_SECONDS."""
    pipe = client().pipeline()
    pipe.zadd(keys.event_streams(holder), {stream_id: time.time() + LEASE_SECONDS}, xx=True)
    pipe.expire(keys.event_streams(holder), LEASE_SECONDS * 2)
    pipe.execute()


def close_stream(holder: str, stream_id: str) -> None:
    client().zrem(keys.event_streams(holder), stream_id)


def open_streams(holder: str) -> int:
    """How many streams holder has open now."""
    return client().zcount(keys.event_streams(holder), time.time(), "+inf")


# ---- the events themselves ----
def shaped(event: dict) -> dict:
    """The application event for a live event of a job (see the module's docstring)."""
    shown = {"id": event["id"], "type": event.get("type"), "at": event.get("t")}
    shown.update((name, event[name]) for name in FIELDS if name in event)
    if event.get("error"):
        shown["error"] = {"message": event["error"]}
    if event.get("type") == "completed":
        shown["progress"] = 100
        shown["result"] = result_summary(event["job_id"])
    return shown


@lru_cache(maxsize=2048)
def result_summary(job_id: str):
    """A finished job's result, redacted; {"truncated": true, "bytes": n} when it is larger
    than RESULT_BYTES (read the job for all of it). Cached: every stream that shows the same
    completion asks once per process."""
    raw = client().hget(keys.job(job_id), "result")
    if not raw:
        return None
    if len(raw) > RESULT_BYTES:
        return {"truncated": True, "bytes": len(raw)}
    return redact(json.loads(raw))


def poll_after(job: dict, now: float | None = None) -> int | None:
    """Seconds a poller should wait before asking about this job again (Retry-After); None
    once the job has finished (nothing more will change)."""
    state = job.get("state")
    if state in ("completed", "dead", "cancelled"):
        return None
    if state == "active":
        return 1
    if state in ("delayed", "failed") and job.get("run_at"):
        return max(1, min(30, round(float(job["run_at"]) - (now or time.time()))))
    return 2
