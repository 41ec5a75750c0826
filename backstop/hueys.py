"""One Huey instance per queue, on a storage with reliable fetch (BLMOVE + acknowledgement).

Queue messages are signed: "<job id>\n<job name>\n<HMAC-SHA256 hex>\n<payload JSON>". The
worker makes Huey's task from the frame (message_task), so a new message is never unpickled.
Messages queued by earlier versions carry a Huey pickle instead; unpickling runs code, so a
worker unpickles only a message whose signature (keyed by SECRET_KEY) verifies: writing to
Redis is not enough to run code on the workers.
"""

from __future__ import annotations

import hmac
import json
from functools import cache

from huey import Huey
from huey.storage import RedisStorage

from . import keys
from .config import derived_key
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


SIGNATURE_LENGTH = 64  # hex digits of an HMAC-SHA256


class BadMessage(ValueError):
    """A queue message a worker must not run: not framed, or its signature does not verify."""


def _signature(signed: bytes) -> bytes:
    return hmac.digest(derived_key(b"backstop-queue-message"), signed, "sha256").hex().encode()


def frame(job_id: str, job_name: str, data: bytes) -> bytes:
    """A queue message: the job's id and name, a signature, then Huey's serialized task."""
    head = f"{job_id}\n{job_name}\n".encode()
    return head + _signature(head + data) + b"\n" + data


def unframe(message: bytes) -> tuple[str, str, bytes]:
    """(job id, job name, Huey data) of a framed message, signature NOT checked (use
    open_message before unpickling). Raises BadMessage if it is not a Backstop frame."""
    job_id, job_name, _, data = _parts(message)
    return job_id, job_name, data


def open_message(message: bytes) -> tuple[str, str, bytes]:
    """(job id, job name, Huey data) of a message whose signature verifies.

    Raises BadMessage if it is unframed or its signature does not verify (forged, altered,
    or signed with another SECRET_KEY).
    """
    job_id, job_name, signature, data = _parts(message)
    head = message[:len(message) - len(data) - SIGNATURE_LENGTH - 1]
    if not hmac.compare_digest(signature, _signature(head + data)):
        raise BadMessage("the message's signature does not verify: it was forged or altered "
                         "in Redis, or signed with another SECRET_KEY")
    return job_id, job_name, data


def _parts(message: bytes) -> tuple[str, str, bytes, bytes]:
    parts = message.split(b"\n", 3)
    if len(parts) != 4 or len(parts[2]) != SIGNATURE_LENGTH:
        raise BadMessage("not a Backstop message frame (id, job name, signature, data)")
    try:
        return parts[0].decode(), parts[1].decode(), parts[2], parts[3]
    except UnicodeDecodeError:
        raise BadMessage("the frame's id or job name is not text") from None


def task_payload(task) -> dict:
    """The payload of a deserialized task: messages carry it as JSON text (older ones as a
    dict)."""
    payload = task.args[1]
    return json.loads(payload) if isinstance(payload, str) else payload


def run_job(job_name: str, payload: dict | str):
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


def message_task(queue: str, job_id: str, job_name: str, data: bytes):
    """The Huey task of a verified message (see open_message): its data is the payload's
    JSON text, or (a message of an earlier version) Huey's pickle of the task."""
    if data[:1] == b"{":
        return task_wrapper(queue)((job_name, data.decode()), {}, id=job_id)
    return huey_for(queue).deserialize_task(data)
