"""Enqueues that a failover cannot lose: REDIS_MIN_REPLICAS_ACK replicas confirm each one.

Redis replicates asynchronously: a primary killed right after it answered an enqueue may
take the job with it, and Sentinel promotes a replica that never saw it. WAIT n timeout
blocks until n replicas have every write made so far *on the connection it is sent on*, so
it goes on the same connection as the enqueue's scripts, after them, in the same round trip
(producers' hot path; execute_replicated for a pipeline).

When fewer replicas confirm within REDIS_REPLICA_ACK_TIMEOUT_MS, the enqueue is not
acknowledged: NotReplicated is raised, a Redis error that connection.is_try_later counts as
"unavailable for now". deliver() then does what the queue's outage policy says (by default
the job goes to this host's outbox, which pushes it again later: the id already in Redis makes
that push a no-op, and the outbox keeps the job until a push is confirmed). A direct caller
(submit, enqueue_many) gets the error; the job may or may not be in Redis, and sending it
again with the same job_id adds it at most once.
"""

from __future__ import annotations

import redis

from .config import settings


class NotReplicated(redis.ResponseError):
    """Fewer replicas than REDIS_MIN_REPLICAS_ACK confirmed a write in time. Its text starts
    with NOREPLICAS (Redis's own code for it), so is_try_later treats it as an outage."""


def min_replicas() -> int:
    """REDIS_MIN_REPLICAS_ACK: replicas that must confirm an enqueue; 0 when off."""
    return max(0, settings().int("redis_min_replicas_ack"))


def wait_command(needed: int) -> tuple:
    """The WAIT to send after an enqueue's commands, on their connection."""
    return ("WAIT", needed, settings().int("redis_replica_ack_timeout_ms"))


def require(confirmed: int, needed: int) -> None:
    """Raise NotReplicated when WAIT's answer is fewer replicas than needed."""
    if confirmed < needed:
        raise NotReplicated(
            f"NOREPLICAS {confirmed} of {needed} replicas confirmed the enqueue within "
            f"{settings().int('redis_replica_ack_timeout_ms')} ms (REDIS_MIN_REPLICAS_ACK, "
            "REDIS_REPLICA_ACK_TIMEOUT_MS): not acknowledged")


def execute_replicated(pipe: redis.client.Pipeline) -> list:
    """Execute a non-transactional pipeline, with WAIT after its commands when
    REDIS_MIN_REPLICAS_ACK is on; return the replies of its own commands.
    Raises NotReplicated, or the first redis error of a command."""
    needed = min_replicas()
    if not needed:
        return pipe.execute()
    pipe.execute_command(*wait_command(needed))
    *replies, confirmed = pipe.execute()
    require(confirmed, needed)
    return replies
