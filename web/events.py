"""Job progress for applications: Server-Sent Events at /api/v1/events, the same over a
WebSocket at /api/v1/events/ws, and scoped stream tokens for browsers.

Who: a bearer API token (any role sees every job's events), or a scoped stream token
(``?token=bse_...``: only its job ids) that a server got from POST /api/v1/events/tokens and
handed to its browser, since EventSource cannot send headers. API tokens never go in a URL.

What: ``?job_id=`` (repeatable), ``?queue=``, or everything the token may see. A stream
starts with a "snapshot" of each followed job's record (job ids only), then live events; a
client that reconnects with Last-Event-ID (or ``?last_event_id=``) gets exactly the events
it missed, or a "resync" event when they are no longer kept.

How many: EVENT_STREAMS_PER_TOKEN streams per token across every web process (one more
gets 429). Each stream holds one server thread: size the web role's threads for them.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import redis
from flask import Blueprint, Response, abort, g, jsonify, request, stream_with_context
from pydantic import BaseModel, ConfigDict, Field

from backstop import app_events, live, registry, tokens
from backstop.app_events import Reader, ScopeError
from backstop.config import settings
from backstop.live import Subscription, Topic
from web.api_models import Queue
from web.auth import (
    audit_note,
    audit_refusal,
    audited,
    bearer_token,
    require_token,
    verified_scoped,
    verified_token,
)
from web.extensions import csrf, sock
from web.openapi import documented, documented_socket
from web.params import json_body, parsed, refuse, refuse_field

log = logging.getLogger("backstop.web")
bp = Blueprint("events", __name__, url_prefix="/api/v1")
csrf.exempt(bp)  # bearer and scoped tokens, never cookies
RECONNECT_MS = 2000      # what an EventSource waits before it reconnects
MOST_JOB_IDS = app_events.MOST_SCOPED_JOBS
DRAIN = 200              # events written in one chunk when they arrive together
SOCKET_ENDPOINT = "events.event_socket"
CONNECT = "events.connect"  # the audit action of a refused stream
PING = json.dumps({"type": "ping"})


JobIdText = Annotated[str, Field(min_length=1, max_length=200)]


class EventsQuery(BaseModel):
    """What a stream follows, and from where."""

    job_id: list[JobIdText] = Field(
        default=[], max_length=MOST_JOB_IDS,
        description="follow these jobs (repeat the argument); none: every job the token sees")
    queue: Queue | Literal[""] | None = Field(None, description="follow one queue's jobs")
    token: str | None = Field(None, pattern=r"^bse_", description="a scoped stream token, for "
                              "browsers (POST /api/v1/events/tokens); never an API token")
    last_event_id: str | None = Field(None, description="resume after this event (as the "
                                      "Last-Event-ID header does)")


class ScopedTokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    job_ids: list[JobIdText] = Field(min_length=1, max_length=app_events.MOST_SCOPED_JOBS)
    ttl_seconds: int = Field(600, ge=1, le=app_events.MOST_SCOPED_SECONDS)


class ScopedToken(BaseModel):
    token: str = Field(description="bse_...: give it to the browser; it sees only job_ids")
    job_ids: list[str]
    expires_at: int = Field(description="unix seconds")


@dataclass
class EventStream:
    """One open stream: who reads, its subscription, its lease on the token's stream count."""

    reader: Reader
    bearer: str
    topic: Topic
    subscription: Subscription
    lease: str
    snapshot: list[dict] = field(default_factory=list)
    closed: bool = False

    def still_valid(self) -> bool:
        """Its token still verifies (a revoked API token within AUTH_CACHE_SECONDS; a scoped
        token until it expires or its issuer is revoked), and its lease is renewed."""
        if self.reader.job_ids is None:
            if tokens.verify(self.bearer) is None:
                return False
        elif not self.reader.still_valid():
            return False
        app_events.renew_stream(self.reader.holder, self.lease)
        return True

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.subscription.close()
        try:
            app_events.close_stream(self.reader.holder, self.lease)
        except redis.RedisError:
            pass  # the lease runs out by itself (app_events.LEASE_SECONDS)


# ---- opening a stream: who, what, how many ----
def stream_reader() -> tuple[Reader, str]:
    """The reader this request stands for and its bearer token; a 400, 401 or 403 otherwise."""
    bearer = bearer_token()
    in_url = request.args.get("token", "")
    if in_url and not in_url.startswith(app_events.SCOPED_PREFIX):
        abort(400, "only a scoped stream token (bse_...) may go in the URL; send an API "
                   "token in the Authorization header")
    scoped = in_url or (bearer if bearer.startswith(app_events.SCOPED_PREFIX) else "")
    if scoped:
        return verified_scoped(scoped, action=CONNECT), ""
    return app_events.token_reader(verified_token(action=CONNECT)), bearer


def requested_topic(reader: Reader) -> Topic:
    """What the request asks to follow, within what the reader may see."""
    job_ids = request.args.getlist("job_id")
    if len(job_ids) > MOST_JOB_IDS or any(not i or len(i) > 200 for i in job_ids):
        refuse_field("job_id", f"give 1 to {MOST_JOB_IDS} job ids of at most 200 characters")
    try:
        return reader.topic(frozenset(job_ids) or None, request.args.get("queue") or None)
    except PermissionError as exc:
        audit_refusal(403, str(exc), action=CONNECT)
        abort(403, str(exc))
    except ValueError as exc:
        refuse_field("queue", str(exc))


def open_event_stream() -> EventStream:
    """Authenticate, decide the topic, take a lease and subscribe; the HTTP refusal else."""
    reader, bearer = stream_reader()
    topic = requested_topic(reader)
    lease = app_events.open_stream(reader.holder)
    if lease is None:
        limit = settings().int("event_streams_per_token")
        refuse(429, f"this token has {limit} event streams open already (the most "
                    "EVENT_STREAMS_PER_TOKEN allows); close one first", {"Retry-After": "5"})
    try:
        return subscribed(reader, bearer, topic, lease)
    except BaseException:
        app_events.close_stream(reader.holder, lease)
        raise


def subscribed(reader: Reader, bearer: str, topic: Topic, lease: str) -> EventStream:
    """Subscribe from Last-Event-ID, or from now after a snapshot of the followed jobs."""
    last_id = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    snapshot: list[dict] = []
    if not last_id:
        last_id = live.newest_id()  # from now on; the snapshot says where each job stands
        snapshot = job_snapshot(topic.job_ids, last_id)
    try:
        subscription = live.hub().subscribe(topic, last_id)
    except live.Unavailable as exc:
        raise redis.ConnectionError(str(exc)) from exc  # web/errors: 503 with Retry-After
    if subscription.resync:
        snapshot = [{"id": last_id, "type": "resync"}, *job_snapshot(topic.job_ids, None)]
    return EventStream(reader, bearer, topic, subscription, lease, snapshot)


def job_snapshot(job_ids: frozenset[str] | None, head: str | None) -> list[dict]:
    """Where each followed job stands now, as "snapshot" events (none without job ids)."""
    if not job_ids:
        return []
    ordered = sorted(job_ids)
    records = registry.get_jobs(ordered)
    return [snapshot_event(job_id, record, head) for job_id, record in zip(
        ordered, records, strict=True)]


def snapshot_event(job_id: str, record: dict | None, head: str | None) -> dict:
    event: dict[str, Any] = {"id": head, "type": "snapshot", "job_id": job_id}
    if record is None:
        return {**event, "state": "unknown"}
    shown = registry.redacted(record)
    event.update(queue=shown.get("queue"), job=shown.get("job"), state=shown.get("state"),
                 progress=shown.get("progress", 0), message=shown.get("progress_message", ""),
                 attempt=shown.get("attempts", 0), at=shown.get("updated_at"))
    if shown.get("state") == "completed":
        event["result"] = app_events.result_summary(job_id)
    if shown.get("error"):
        event["error"] = {"message": (shown["error"] or {}).get("message")}
    return event


# ---- Server-Sent Events ----
@bp.get("/events")
@documented(200, refusals=(400, 403, 422), query=EventsQuery, non_json="text/event-stream",
            role="viewer", tags=("events",))
def event_source():
    """Job events as text/event-stream (see the module's docstring)."""
    stream = open_event_stream()
    response = Response(stream_with_context(sse_chunks(stream)), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    # Called when the server closes the response: the stream ended, the client went away
    # (noticed at the next write), or it never started.
    response.call_on_close(stream.close)
    return response


def sse_chunks(stream: EventStream) -> Iterator[str]:
    """The stream as SSE: retry, the snapshot, then events (several in one chunk when they
    come together), a comment every EVENTS_PING_SECONDS while idle."""
    yield f"retry: {RECONNECT_MS}\n\n" + "".join(sse_event(e) for e in stream.snapshot)
    for batch in batches(stream):
        yield "".join(shared_text(e, sse_event) for e in batch) if batch else ": ping\n\n"


_texts: dict[tuple[str, object], str] = {}  # (event id, formatter) -> text, newest last
_texts_lock = threading.Lock()
SHARED_TEXTS = 1024


def shared_text(event: dict, formatter) -> str:
    """formatter(shaped event), made once per process for every stream that sends it (200
    streams following one job would otherwise shape and encode each event 200 times)."""
    if not event.get("id"):
        return formatter(app_events.shaped(event))
    key = (event["id"], formatter)
    text = _texts.get(key)
    if text is None:
        text = formatter(app_events.shaped(event))
        with _texts_lock:
            _texts[key] = text
            while len(_texts) > SHARED_TEXTS:
                del _texts[next(iter(_texts))]
    return text


def ws_text(event: dict) -> str:
    return json.dumps(event)


def sse_event(event: dict) -> str:
    kind = event.get("type")
    name = f"event: {kind}\n" if kind in ("resync", "snapshot") else ""
    head = f"id: {event['id']}\n" if event.get("id") else ""
    return f"{head}{name}data: {json.dumps(event, separators=(',', ':'))}\n\n"


def batches(stream: EventStream) -> Iterator[list[dict]]:
    """Lists of events as they arrive, and [] at each idle ping moment, until the stream
    ends: subscription closed or lagging (the client reconnects with its last id), token no
    longer valid, or Redis failing the check."""
    ping = settings().int("events_ping_seconds")
    check_at = time.monotonic() + ping
    subscription = stream.subscription
    while True:
        event = subscription.get(timeout=max(0.0, check_at - time.monotonic()))
        if event is None and subscription.closed:
            return
        if time.monotonic() >= check_at:
            if not checked(stream):
                return
            check_at = time.monotonic() + ping
        if event is None:
            yield []
            continue
        batch = [event]
        while len(batch) < DRAIN and (more := subscription.get(timeout=0)) is not None:
            batch.append(more)
        yield batch


def checked(stream: EventStream) -> bool:
    try:
        return stream.still_valid()
    except redis.RedisError as exc:
        log.warning("event stream: Redis failed checking its token (%s); closing", exc)
        return False


# ---- the WebSocket ----
@bp.before_request
def check_socket_request() -> None:
    """Before the upgrade: the same refusals as the SSE route, as plain HTTP answers."""
    if request.endpoint == SOCKET_ENDPOINT:
        g.event_stream = open_event_stream()


@bp.teardown_request
def close_event_socket(_exc) -> None:
    """A socket's stream ends with its request (the handler runs inside it)."""
    stream = g.pop("event_stream", None)
    if stream is not None:
        stream.close()


@sock.route("/events/ws", bp=bp)
@documented_socket(like="/api/v1/events")
def event_socket(ws):
    """Job events as WebSocket text messages, one JSON event each; {"type": "ping"} while
    idle. Closes 1008 when the token ends, 1013 when the client fell behind (reconnect
    with ?last_event_id=)."""
    stream: EventStream = g.event_stream
    for event in stream.snapshot:
        ws.send(json.dumps(event))
    for batch in batches(stream):
        for event in batch:
            ws.send(shared_text(event, ws_text))
        if not batch:
            ws.send(PING)
        if not ws.connected:
            return
    if ws.connected:
        ending = (1013, "fell behind: reconnect with last_event_id") if (
            stream.subscription.lagging) else (1008, "the stream ended")
        ws.close(*ending)


# ---- scoped stream tokens, for browsers ----
@bp.post("/events/tokens")
@documented(201, ScopedToken, refusals=(422,), body=ScopedTokenBody, tags=("events",))
@require_token("viewer")
@audited("events.token")
def issue_scoped_token():
    """A scoped stream token: {"job_ids": [...], "ttl_seconds"?: 600} -> {"token",
    "job_ids", "expires_at"}. It sees only those jobs, until it expires or the API token
    that asked for it is revoked."""
    asked = parsed(ScopedTokenBody, json_body())
    try:
        issued = app_events.issue_scoped(g.token["name"], asked.job_ids, asked.ttl_seconds)
    except ScopeError as exc:
        refuse_field(exc.field, str(exc))
    audit_note(target=",".join(issued["job_ids"])[:200], expires_at=issued["expires_at"])
    return jsonify(issued), 201


def end_streams_on_shutdown() -> None:
    """Under gunicorn, a worker told to stop (SIGTERM) closes the live hub first, so its open
    streams and sockets end at once (clients reconnect elsewhere, resuming from their last
    event) instead of holding the graceful stop for its whole timeout. Called where the app
    is made: gunicorn installs its signal handlers before it loads the app."""
    if "gunicorn" not in sys.modules or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous) or getattr(previous, "ends_streams", False):
        return

    def close_hub_then(signum, frame):
        live.hub().close()
        previous(signum, frame)

    close_hub_then.ends_streams = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, close_hub_then)
