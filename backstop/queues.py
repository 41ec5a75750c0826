"""Queue-level controls shared by every process: pause, resume and purge."""

from __future__ import annotations

import json
import time

from . import confirm, keys, registry
from .config import settings
from .connection import client
from .contracts import QUEUES
from .errors import Refused

PURGE = "queue.purge"  # the confirmation's action, as the panel's purge issues it


def _check(queue: str) -> None:
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; queues are {', '.join(QUEUES)}")


def _set_paused(queue: str, paused: bool, actor: str) -> None:
    _check(queue)
    event = {"type": "paused" if paused else "resumed", "queue": queue, "actor": actor,
             "t": time.time()}
    body = json.dumps(event)
    pipe = client().pipeline()
    (pipe.sadd if paused else pipe.srem)(keys.paused(), queue)
    if paused:  # the first pause counts: pausing a paused queue again changes nothing
        pipe.hsetnx(keys.paused_since(), queue, event["t"])
    else:
        pipe.hdel(keys.paused_since(), queue)
    pipe.xadd(keys.events_stream(), {"e": body},
              maxlen=settings().int("backstop_events_maxlen"), approximate=True)
    stream_id = pipe.execute()[-1]
    client().publish(keys.events_channel(), f"{stream_id} {body}")


def pause(queue: str, actor: str = "system") -> None:
    """Pause a queue: every worker stops starting its jobs; nothing is dropped."""
    _set_paused(queue, True, actor)


def resume(queue: str, actor: str = "system") -> None:
    """Resume a paused queue."""
    _set_paused(queue, False, actor)


def paused_queues() -> set[str]:
    return set(client().smembers(keys.paused()))


def state(queue: str) -> dict:
    """{"queue", "paused", "paused_since" (unix seconds, None when running)}."""
    _check(queue)
    pipe = client().pipeline(transaction=False)
    pipe.sismember(keys.paused(), queue)
    pipe.hget(keys.paused_since(), queue)
    paused, since = pipe.execute()
    return {"queue": queue, "paused": bool(paused),
            "paused_since": float(since) if paused and since else None}


def purge_preview(queue: str, actor: str) -> dict:
    """How many waiting jobs a purge would cancel, and a single-use token (60 s) bound to
    the actor and the queue: {"queue", "count", "token", "expires_in"}."""
    _check(queue)
    token = confirm.issue(actor, PURGE, {"queue": queue})
    count = registry.counts((queue,))[queue]["waiting"]
    return {"queue": queue, "count": count, "token": token, "expires_in": confirm.SECONDS}


def purge(queue: str, actor: str, token: str) -> dict:
    """Cancel every waiting job of a queue, if token came from purge_preview for this actor
    and queue within 60 s (it works once): {"queue", "cancelled"}. Raises Refused (code
    "token") otherwise, and cancels nothing."""
    _check(queue)
    if not confirm.consume(token, actor, PURGE, {"queue": queue}):
        raise Refused("the confirmation token is missing, used, expired, or was issued for "
                      "another user or queue; ask for a new one (call without a token)",
                      code="token")
    return {"queue": queue, "cancelled": registry.purge_waiting(queue, actor)}
