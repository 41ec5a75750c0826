"""Enqueues that a failover cannot lose: REDIS_MIN_REPLICAS_ACK replicas confirm each one.

Redis replicates asynchronously: a primary killed right after it answered an enqueue may
take the job with it, and Sentinel promotes a replica that never saw it. WAIT n timeout
blocks until n replicas have every write made so far *on the connection it is sent on*, so
it goes in the same (non-transactional) pipeline as the enqueue script, after it: one round
trip, one connection.

When fewer replicas confirm within REDIS_REPLICA_ACK_TIMEOUT_MS, the enqueue is not
acknowledged: NotReplicated is raised, a Redis error that connection.is_try_later counts as
"unavailable for now". deliver() then does what the queue's outage policy says (by default
the job goes to this host's outbox, which pushes it again later: the id already in Redis makes
that push a no-op, and the outbox keeps the job until a push is confirmed). A direct caller
(submit, enqueue_many) gets the error; the job may or may not be in Redis, and sending it
again with the same job_id adds it at most once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from .config import settings
from .connection import client


class NotReplicated(redis.ResponseError):
    """Fewer replicas than REDIS_MIN_REPLICAS_ACK confirmed a write in time. Its text starts
    with NOREPLICAS (Redis's own code for it), so is_try_later treats it as an outage."""


def min_replicas() -> int:
    """REDIS_MIN_REPLICAS_ACK: replicas that must confirm an enqueue; 0 when off."""
    return max(0, settings().int("redis_min_replicas_ack"))


def acknowledged(write: Callable[[Any], Any]) -> Any:
    """Run write(target) (it sends, or queues on a pipeline, one enqueue) and return its
    reply once REDIS_MIN_REPLICAS_ACK replicas have it. Off: write(client()) as it is.
    Raises NotReplicated, or the redis error of the write."""
    if not min_replicas():
        return write(client())
    pipe = client().pipeline(transaction=False)
    write(pipe)
    # One round trip, not two: redis-py would first ask SCRIPT EXISTS for the pipeline's
    # scripts. They are loaded but on a server that never ran them (a new primary after a
    # failover): its NOSCRIPT reply makes the enqueue go again, with the check.
    pipe.scripts.clear()
    try:
        return execute_replicated(pipe)[0]
    except redis.exceptions.NoScriptError:
        pipe = client().pipeline(transaction=False)
        write(pipe)
        return execute_replicated(pipe)[0]


def execute_replicated(pipe: redis.client.Pipeline) -> list:
    """Execute a non-transactional pipeline, with WAIT after its commands when
    REDIS_MIN_REPLICAS_ACK is on; return the replies of its own commands.
    Raises NotReplicated, or the first redis error of a command."""
    needed = min_replicas()
    if not needed:
        return pipe.execute()
    timeout_ms = settings().int("redis_replica_ack_timeout_ms")
    pipe.wait(needed, timeout_ms)
    *replies, confirmed = pipe.execute()
    if confirmed < needed:
        raise NotReplicated(
            f"NOREPLICAS {confirmed} of {needed} replicas confirmed the enqueue within "
            f"{timeout_ms} ms (REDIS_MIN_REPLICAS_ACK, REDIS_REPLICA_ACK_TIMEOUT_MS): "
            "not acknowledged")
    return replies
