"""Live events for the panel: one Redis pub/sub subscription per process, fanned out to many.

Every event is written to the capped events stream and published on the events channel as
"<stream id> <json>" (queues.py publishes "- <json>"; the hub looks that id up in the stream).
A subscriber first gets what it missed from the stream, then live events, in stream order,
without duplicates or a gap at the seam: it joins the fan-out before the backlog is read and
drops live events whose id is not after the last stream id the backlog covered.

The websocket route hands a subscription to ``pump``, which folds each burst of events into
one push (a burst is cut at BATCH_SECONDS or BATCH_SIZE, so a steady stream still gets a push
several times a second)::

    with live.hub().subscribe(live.Topic(queue=q, job_id=j), last_id) as sub:
        ended = live.pump(sub, ws.send, render, alive)   # why it ended: one of ENDINGS

The pump ends when the subscription fell behind (``sub.lagging``: the client reconnects), the
hub closed it, ``alive`` said so, or Redis failed while rendering or checking (the socket
then closes with a reason and the page polls until it reconnects); it never spins on a
closed subscription. A dead socket raises from ``send`` and the ``with`` closes the
subscription.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import keys, registry
from .connection import client, dedicated, redis_url
from .contracts import QUEUES

logger = logging.getLogger(__name__)

LATEST = 20              # events a subscriber without a last id gets on connect
MAX_BACKLOG = 1_000      # missed events replayed to a reconnecting subscriber, at most
QUEUE_SIZE = 1_000       # live events waiting for one subscriber before it is dropped as lagging
PAGE = 500               # stream entries per XRANGE while reading a backlog
SCAN_LIMIT = 20_000      # stream entries read for one backlog or catch-up, at most
RESOLVE_WINDOW = 100     # newest stream entries searched for the id of a "- <json>" message
POLL_SECONDS = 0.25      # how often the listener thread looks at its stop flag
BACKOFF = (0.1, 5.0)     # reconnect delay: first, then doubling up to the cap
CONNECT_TIMEOUT = 5.0    # how long subscribe() waits for the hub's first subscription
BATCH_SECONDS = 0.25     # one push folds the events of at most this long (from the first)...
BATCH_SIZE = 500         # ...and at most this many, so a steady stream still gets pushes
QUIET_SECONDS = 0.01     # a burst ends earlier after this long without an event
IDLE_SECONDS = 1.0       # how often an idle pump asks whether to go on

_ID = re.compile(r"\d+(-\d+)?")

StreamKey = tuple[int, int]


class Unavailable(ConnectionError):
    """The hub has no pub/sub subscription to Redis yet; the panel should fall back to polling."""


def stream_key(xid: str) -> StreamKey:
    """A stream id ("ms-seq" or "ms") as a pair of integers that compares in stream order.

    Raises ValueError when xid is not a stream id.
    """
    if not _ID.fullmatch(xid or ""):
        raise ValueError(f"{xid!r} is not a stream id (expected <ms>-<seq>)")
    ms, _, seq = xid.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class Topic:
    """What a subscriber follows: everything (all unset), one queue, one job, a set of jobs,
    or the health log (system: only events of type "system.*", published outside the stream).

    Events without a "queue" or "job_id" field (alerts, audit) match only everything, and
    never a topic with jobs_only (an application's job-progress stream).
    Raises ValueError for an unknown queue.
    """

    queue: str | None = None
    job_id: str | None = None
    system: bool = False
    job_ids: frozenset[str] | None = None
    jobs_only: bool = False

    def __post_init__(self) -> None:
        if self.queue is not None and self.queue not in QUEUES:
            raise ValueError(f"unknown queue {self.queue!r}; queues are {', '.join(QUEUES)}")

    def matches(self, event: dict) -> bool:
        """Whether an event belongs to this topic."""
        if self.system:
            return str(event.get("type", "")).startswith("system.")
        if self.queue is not None and event.get("queue") != self.queue:
            return False
        if self.jobs_only and not event.get("job_id"):
            return False
        if self.job_ids is not None and event.get("job_id") not in self.job_ids:
            return False
        return self.job_id is None or event.get("job_id") == self.job_id


EVERYTHING = Topic()


class Subscription:
    """One subscriber: its backlog, then the live events of its topic, in a bounded buffer.

    Event dicts are shared between subscribers: treat them as read-only.
    """

    def __init__(self, hub: Hub, topic: Topic, limit: int):
        self.topic = topic
        self.lagging = False     # it overflowed and was dropped: reconnect with last_id
        self.resync = False      # the backlog could not be replayed whole: re-render the page
        self.last_id: str | None = None
        self._hub = hub
        self._limit = limit
        self._cond = threading.Condition()
        self._items: deque[dict] = deque()
        self._pending: list[tuple[dict, StreamKey | None]] | None = []
        self._boundary: StreamKey = (0, 0)
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once closed by its owner, by the hub, or for lagging."""
        return self._closed

    def get(self, timeout: float | None = None) -> dict | None:
        """The next event (a dict with its stream "id"), oldest first.

        timeout: seconds to wait (None: forever). Returns None on timeout or once closed.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed, timeout)
            if not self._items:
                return None
            event = self._items.popleft()
        self.last_id = event["id"] or self.last_id
        return event

    def events(self, timeout: float = 20.0) -> Iterator[dict | None]:
        """Events as they come, and None after each timeout seconds without one (a ping
        moment), until the subscription is closed or lagging."""
        while True:
            event = self.get(timeout)
            if event is None and self._closed:
                return
            yield event

    def close(self) -> None:
        """Stop receiving and leave the hub; calling it again does nothing."""
        self._shut()
        self._hub._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _prime(self, backlog: list[dict], boundary: StreamKey, resync: bool) -> None:
        """Queue the backlog, then the live events that came while it was read."""
        with self._cond:
            if self._closed:
                return
            self._boundary, self.resync = boundary, resync
            self._items.extend(backlog)
            self._limit += len(backlog)
            pending, self._pending = self._pending or [], None
            for event, key in pending:
                if not self._push(event, key):
                    break
            self._cond.notify_all()

    def _offer(self, event: dict, key: StreamKey | None) -> bool:
        """Take a live event (hub thread); False when this subscription can take no more."""
        with self._cond:
            if self._closed:
                return False
            if self._pending is None:
                return self._push(event, key)
            self._pending.append((event, key))
            if len(self._pending) > self._limit:
                self._overflow()
            return not self._closed

    def _push(self, event: dict, key: StreamKey | None) -> bool:
        # The backlog already held every stream entry up to the boundary.
        if key is not None and key <= self._boundary:
            return True
        if len(self._items) >= self._limit:
            self._overflow()
            return False
        self._items.append(event)
        self._cond.notify()
        return True

    def _overflow(self) -> None:
        logger.info("live subscriber on %s fell %d events behind; dropped", self.topic,
                    self._limit)
        self.lagging = True
        self._closed = True
        self._items.clear()
        self._cond.notify_all()

    def _shut(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()


class Hub:
    """The process's single pub/sub subscription to the events channel, fanned out to every
    Subscription. The listener thread starts on the first subscribe (so after a fork),
    reconnects with backoff, and after a reconnect replays from the stream what it missed.
    """

    def __init__(self, *, latest: int = LATEST, max_backlog: int = MAX_BACKLOG,
                 queue_size: int = QUEUE_SIZE, connect_timeout: float = CONNECT_TIMEOUT):
        """latest: events sent on connect without a last id. max_backlog: missed events
        replayed at most (more: the latest are sent and ``resync`` is set). queue_size: live
        events buffered per subscriber. connect_timeout: seconds subscribe() waits for Redis."""
        self.latest, self.max_backlog = latest, max_backlog
        self.queue_size, self.connect_timeout = queue_size, connect_timeout
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._subs: tuple[Subscription, ...] = ()
        self._thread: threading.Thread | None = None
        self._redis: redis.Redis | None = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._seen: str | None = None          # newest stream id fanned out
        self._seen_key: StreamKey = (0, 0)
        self._boundary: StreamKey = (0, 0)     # stream read up to here by the last catch-up
        self._failures = 0
        self._counts = {"events": 0, "delivered": 0, "lagging": 0, "reconnects": 0}

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def subscribe(self, topic: Topic = EVERYTHING, last_id: str | None = None) -> Subscription:
        """Follow a topic: first what was missed, then live events.

        last_id: the id of the last event the client got; it then receives every later
        matching event (at most max_backlog). Without it, or when it is malformed, unknown or
        too old, it receives the latest matching events and, if one was given, ``resync``.
        Raises Unavailable when Redis cannot be reached within connect_timeout,
        RuntimeError when the hub is closed, redis.RedisError when the backlog read fails.
        """
        if self.closed:
            raise RuntimeError("the live hub is closed")
        sub = Subscription(self, topic, self.queue_size)
        self._add(sub)
        try:
            if not self._connected.wait(self.connect_timeout):
                raise Unavailable(f"no live events: Redis at {redis_url()} did not answer "
                                  f"within {self.connect_timeout} s")
            sub._prime(*backlog(topic, last_id, self.latest, self.max_backlog))
        except BaseException:
            sub.close()
            raise
        return sub

    def stats(self) -> dict:
        """Subscribers now; events fanned out, deliveries, subscribers dropped for lagging and
        reconnects since start; whether the subscription is up."""
        return {"subscribers": len(self._subs), **self._counts,
                "connected": self._connected.is_set()}

    def close(self) -> None:
        """Close every subscription, stop the listener and its connection."""
        self._stop.set()
        with self._lock:
            subs, self._subs = self._subs, ()
        for sub in subs:
            sub._shut()
        if self._thread is not None:
            self._thread.join(POLL_SECONDS * 4)
        if self._redis is not None:
            self._redis.close()

    def _add(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = (*self._subs, sub)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="backstop-live-hub",
                                                daemon=True)
                self._thread.start()

    def _remove(self, *subs: Subscription) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s not in subs)

    def _run(self) -> None:
        while not self.closed:
            try:
                self._listen()
            except (redis.RedisError, OSError) as exc:
                logger.warning("live events: pub/sub connection lost (%s); reconnecting", exc)
            except Exception:
                # The listener is the process's only feed: log a bug, never let it die.
                logger.exception("live events: listener failed; restarting")
            self._connected.clear()
            if self.closed:
                return
            self._failures += 1
            self._stop.wait(min(BACKOFF[1], BACKOFF[0] * 2 ** (self._failures - 1)))

    def _listen(self) -> None:
        pubsub = self._client().pubsub()
        try:
            pubsub.subscribe(keys.events_channel())
            while not self.closed:
                message = pubsub.get_message(timeout=POLL_SECONDS)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    self._on_subscribed()
                elif message["type"] == "message":
                    self._on_message(message["data"])
        finally:
            pubsub.close()

    def _client(self) -> redis.Redis:
        # Own client: no silent retries (the hub must notice a drop to catch up), and a name
        # that shows the process's one pub/sub connection in CLIENT LIST.
        if self._redis is None:
            self._redis = dedicated(retry=Retry(NoBackoff(), 0),
                                    client_name=f"backstop-live-{self.pid}")
        return self._redis

    def _on_subscribed(self) -> None:
        """The channel is (re)subscribed: replay from the stream what came meanwhile."""
        if self._seen is None:
            self._seen = newest_id() or "0-0"
            self._seen_key = stream_key(self._seen)
        else:
            self._counts["reconnects"] += 1
            self._catch_up()
        self._boundary = self._seen_key
        self._failures = 0
        self._connected.set()

    def _catch_up(self) -> None:
        for _ in range(SCAN_LIMIT // PAGE):
            page = registry.recent_events(after=self._seen, count=PAGE)
            for event in page:
                self._fan_out(event, stream_key(event["id"]))
            if len(page) < PAGE:
                return

    def _on_message(self, data: str) -> None:
        """A message on the channel: one or more lines (a batch of enqueues), each
        "<stream id> <event JSON>", or "- <event JSON>" when the publisher knew no id."""
        for line in data.split("\n"):
            self._on_line(line)

    def _on_line(self, data: str) -> None:
        xid, _, body = data.partition(" ")
        try:
            fields = json.loads(body)
            xid = resolve_id(body) if xid == "-" else xid
            key = stream_key(xid) if xid else None
        except ValueError:
            logger.warning("live events: skipped a malformed message %.200r", data)
            return
        # Already fanned out by the catch-up that read the stream up to the boundary.
        if key is not None and key <= self._boundary:
            return
        self._fan_out({"id": xid, **fields}, key)

    def _fan_out(self, event: dict, key: StreamKey | None) -> None:
        if key is not None and key > self._seen_key:
            self._seen, self._seen_key = event["id"], key
        self._counts["events"] += 1
        dropped = []
        for sub in self._subs:
            if sub.topic.matches(event):
                if sub._offer(event, key):
                    self._counts["delivered"] += 1
                else:
                    dropped.append(sub)
        if dropped:
            self._counts["lagging"] += sum(sub.lagging for sub in dropped)
            self._remove(*dropped)


def backlog(topic: Topic, last_id: str | None, latest: int = LATEST,
            cap: int = MAX_BACKLOG) -> tuple[list[dict], StreamKey, bool]:
    """What a new subscriber missed: (matching events oldest first, the stream key the read
    covered, resync). With a usable last_id: every later matching event, if at most cap;
    otherwise the latest matching events, and resync is True when a last_id was given."""
    if topic.system:  # its events are published without the stream: nothing to replay
        return [], stream_key(newest_id() or "0-0"), False
    if last_id:
        missed = _missed(topic, last_id, cap)
        if missed is not None:
            return (*missed, False)
    return (*_latest(topic, latest), bool(last_id))


def _missed(topic: Topic, last_id: str, cap: int) -> tuple[list[dict], StreamKey] | None:
    """Matching events after last_id, or None when they cannot be replayed whole."""
    if not _replayable(last_id):
        return None
    found, cursor = [], last_id
    for _ in range(SCAN_LIMIT // PAGE):
        page = registry.recent_events(after=cursor, count=PAGE)
        found += [event for event in page if topic.matches(event)]
        if len(found) > cap:
            return None
        cursor = page[-1]["id"] if page else cursor
        if len(page) < PAGE:
            return found, stream_key(cursor)
    return None


def _replayable(last_id: str) -> bool:
    """Whether the stream still holds everything after last_id (not trimmed, not foreign)."""
    try:
        after = stream_key(last_id)
    except ValueError:
        return False
    pipe = client().pipeline(transaction=False)
    pipe.xrange(keys.events_stream(), count=1)
    pipe.xrevrange(keys.events_stream(), count=1)
    oldest, newest = pipe.execute()
    if not newest:
        return False
    return stream_key(oldest[0][0]) <= after <= stream_key(newest[0][0])


def _latest(topic: Topic, count: int) -> tuple[list[dict], StreamKey]:
    """The newest matching events, oldest first, and the stream's newest key when read."""
    size = max(1, count) if topic == EVERYTHING else PAGE
    found: list[dict] = []
    head, before = None, None
    for _ in range(max(1, SCAN_LIMIT // size)):
        page = _before(before, size)
        head = head or (page[0]["id"] if page else "0-0")
        found += [event for event in page if topic.matches(event)][:count - len(found)]
        if len(found) >= count or len(page) < size:
            break
        before = page[-1]["id"]
    return found[::-1], stream_key(head or "0-0")


def _before(before: str | None, count: int) -> list[dict]:
    """Events before a stream id (exclusive; None: the newest), newest first."""
    entries = client().xrevrange(keys.events_stream(), max=f"({before}" if before else "+",
                                 count=count)
    return [{"id": xid, **json.loads(fields["e"])} for xid, fields in entries]


def newest_id() -> str | None:
    """The id of the newest event in the stream, or None when it is empty."""
    entries = client().xrevrange(keys.events_stream(), count=1)
    return entries[0][0] if entries else None


def resolve_id(body: str) -> str | None:
    """The stream id of an event published without one ("- <json>"), found by its body among
    the newest entries; None if it is not there (then it cannot be deduplicated)."""
    for xid, fields in client().xrevrange(keys.events_stream(), count=RESOLVE_WINDOW):
        if fields.get("e") == body:
            return xid
    return None


class Feed(Protocol):
    """What pump reads: a Subscription, or anything that behaves like one."""

    @property
    def closed(self) -> bool: ...

    @property
    def lagging(self) -> bool: ...

    def get(self, timeout: float | None = None) -> dict | None: ...


ENDINGS = {
    "stopped": "alive() said to stop (the socket closed or its session ended)",
    "lagging": "the subscriber fell behind and was dropped: reconnect",
    "closed": "the hub closed the subscription (the process is stopping)",
    "unavailable": "Redis failed while rendering a push or checking the session",
}


def pump(subscription: Feed, send: Callable[[str], object],
         render: Callable[[list[dict]], str], alive: Callable[[bool], bool], *,
         idle: float = IDLE_SECONDS, batch_seconds: float = BATCH_SECONDS,
         batch_size: int = BATCH_SIZE) -> str:
    """Send render(batch) for each batch of a subscription's events until it ends.

    send: delivers one push. render: the push for a batch (events oldest first).
    alive(urgent): whether to go on; asked every idle seconds without events, and with
    urgent=True before each push. idle, batch_seconds, batch_size: see IDLE_SECONDS, BATCH_*.
    Returns why it ended, a key of ENDINGS. Raises what send raises (a dead socket).
    """
    try:
        while alive(False):
            event = subscription.get(timeout=idle)
            if event is None:
                if subscription.closed:
                    return "lagging" if subscription.lagging else "closed"
                continue
            batch = gather(subscription, event, batch_seconds, batch_size)
            if not alive(True):
                break
            send(render(batch))
    except redis.RedisError as exc:
        logger.warning("live socket: Redis failed (%s); closing the socket", exc)
        return "unavailable"
    return "stopped"


def gather(subscription: Feed, first: dict, seconds: float = BATCH_SECONDS,
           size: int = BATCH_SIZE) -> list[dict]:
    """first and the events that follow it closely: until QUIET_SECONDS pass without one,
    seconds pass since first, or size events are gathered (whichever comes first)."""
    batch, deadline = [first], time.monotonic() + seconds
    while len(batch) < size:
        left = deadline - time.monotonic()
        event = subscription.get(timeout=min(QUIET_SECONDS, left)) if left > 0 else None
        if event is None:
            return batch
        batch.append(event)
    return batch


_hub: Hub | None = None
_hub_lock = threading.Lock()


def hub() -> Hub:
    """The process's Hub, created on first use (again after a fork or close)."""
    global _hub
    with _hub_lock:
        if _hub is None or _hub.closed or _hub.pid != os.getpid():
            _hub = Hub()
        return _hub
