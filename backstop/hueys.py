"""One Huey instance per queue, on a storage with reliable fetch (BLMOVE + acknowledgement)."""

from __future__ import annotations

from functools import cache

from huey import Huey
from huey.storage import RedisStorage

from . import keys
from .connection import raw_pool, socket_timeout
from .execution import run_current_job

TASK_NAME = "backstop.run"


class ReliableRedisStorage(RedisStorage):
    """Huey's Redis storage, but a dequeued message moves into this worker's processing list.

    It stays there until the worker acknowledges it (LREM, in the same script that records the
    outcome), so a worker killed mid-job leaves its messages for the reaper to return.
    """

    processing_key: str | None = None

    def enqueue(self, data, priority=None):
        raise NotImplementedError("enqueue through backstop.producers, which records the job "
                                  "and frames the message")

    def dequeue(self):
        if self.processing_key is None:
            raise RuntimeError("set processing_key before dequeuing (backstop.runner does)")
        try:
            return self.conn.blmove(self.queue_key, self.processing_key,
                                    self.read_timeout, "RIGHT", "LEFT")
        except (TypeError, IndexError):
            return None


def frame(job_id: str, job_name: str, data: bytes) -> bytes:
    """A queue message: the job's id and name, then Huey's serialized task."""
    return f"{job_id}\n{job_name}\n".encode() + data


def unframe(message: bytes) -> tuple[str, str, bytes]:
    """(job id, job name, Huey data) of a framed message. Raises ValueError if unframed."""
    job_id, job_name, data = message.split(b"\n", 2)
    return job_id.decode(), job_name.decode(), data


def run_job(job_name: str, payload: dict):
    """The one Huey task of every queue: run Backstop's handler for job_name."""
    return run_current_job(job_name, payload)


@cache
def huey_for(queue: str) -> Huey:
    """The Huey instance of a queue (one per process)."""
    # The blocking pop must return well within the socket timeout, or every idle wait would
    # look like a lost connection.
    block = min(1.0, (socket_timeout() or 2.0) / 2)
    huey = Huey(name=keys.huey_name(queue), results=False, utc=True,
                storage_class=ReliableRedisStorage, connection_pool=raw_pool(),
                read_timeout=block)
    huey.task(name=TASK_NAME)(run_job)
    return huey


def task_wrapper(queue: str):
    huey = huey_for(queue)
    return huey._registry.string_to_task(f"{run_job.__module__}.{TASK_NAME}")
