"""Queue-level controls shared by every process: pause and resume."""

from __future__ import annotations

import json
import time

from . import keys
from .config import settings
from .connection import client
from .contracts import QUEUES


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
