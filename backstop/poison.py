"""Queue messages a worker must not run, parked in the DLQ and audited; never unpickled.

- A malformed frame (no signature line, an id or job name outside the frame's alphabet) never
  touches a job record: the START script moves it to the queue's bad-message list and
  ``drain`` turns each one into a DLQ record of its own, ``poison-<digest>``.
- A well-framed message whose signature does not verify, or that cannot be decoded, is the job
  it names failing for good: the worker dead-letters it with ``describe``'s error, the payload
  taken from the job's record (JSON written when it was enqueued), so a replay re-signs it.

What a person sees of the raw bytes is the frame's header, the size and digest, and the
payload's JSON, redacted (a message of an earlier version: the text constants of its pickle,
read by ``pickletools``, which never runs the pickle).
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickletools
import time

import redis

from . import audit, dlq, keys
from .redaction import REDACTED, is_secret_name, redact, redact_text
from .registry import script_args
from .scripts import scripts_for

log = logging.getLogger("backstop.worker")

PREVIEW_STRINGS = 40
PREVIEW_BYTES = 1_000
MALFORMED = "not a Backstop message frame (id, job name, signature, data)"
UNREADABLE = "(unreadable)"  # the job name of a malformed message's record: nothing to replay


def describe(message: bytes, reason: str) -> dict:
    """The DLQ error of a refused message: what was wrong and a redacted look at its bytes."""
    head, data = _split(message)
    text = (f"{reason}. Raw message: {len(message)} bytes, sha256 "
            f"{hashlib.sha256(message).hexdigest()[:16]}, header {head!r}; "
            f"text inside: {preview(data)}")
    return {"type": "PoisonMessage", "message": redact_text(text)[:2000], "stack": "",
            "code": "poison"}


def _split(message: bytes) -> tuple[str, bytes]:
    """(the frame's id and name as text, the data) or, unframed, (its start, all of it)."""
    parts = message.split(b"\n", 3)
    if len(parts) == 4:
        return b"\n".join(parts[:2]).decode(errors="replace")[:200], parts[3]
    return message[:80].decode(errors="replace"), message


def preview(data: bytes) -> str:
    """What a refused message's data holds, secrets redacted: the payload JSON, or (an earlier
    version's message) the text constants of a pickle, in order."""
    if data[:1] == b"{":
        return _payload_preview(data)
    return _pickle_preview(data)


def _payload_preview(data: bytes) -> str:
    try:
        value = json.loads(data)
    except ValueError:
        return repr(redact_text(data[:PREVIEW_BYTES].decode(errors="replace")))
    return redact_text(json.dumps(redact(value)))[:PREVIEW_BYTES]


def _pickle_preview(data: bytes) -> str:
    """The text constants of a pickle, in order, as a list; a value that follows a
    secret-looking name is redacted. Reads opcodes only: nothing in the pickle runs."""
    strings: list[str] = []
    try:
        for _, arg, _ in pickletools.genops(data):
            if isinstance(arg, bytes | str) and len(strings) < PREVIEW_STRINGS:
                strings.append(arg if isinstance(arg, str) else arg.decode(errors="replace"))
    except Exception:  # noqa: BLE001  (a broken pickle still shows what was read before)
        strings.append("<not readable as a pickle past this point>")
    shown = [REDACTED if i and is_secret_name(strings[i - 1]) else redact_text(s)
             for i, s in enumerate(strings)]
    return repr([s[:120] for s in shown]) if shown else "(none)"


def refused(worker_id: str, queue: str, target: str, reason: str, message: bytes) -> None:
    """Log and audit a refused message (never raises: the message is parked either way)."""
    log.error("queue %s: refused a message for %s: %s", queue, target or "(no job)", reason)
    try:
        audit.record(f"worker:{worker_id}", "queue.message.refused", target,
                     summary={"queue": queue, "reason": reason, "bytes": len(message),
                              "sha256": hashlib.sha256(message).hexdigest()},
                     result="refused")
    except (redis.RedisError, audit.AuditError) as exc:
        log.error("could not audit the refused message: %s", exc)


def drain(raw: redis.Redis, worker_id: str, queue: str, limit: int = 100) -> int:
    """Move malformed messages from a queue's bad-message list into the DLQ (each with its
    record written and removed from the list in one transaction). Returns how many."""
    moved = 0
    for message in raw.lrange(keys.bad_messages(queue), -limit, -1):
        record_id = f"poison-{hashlib.sha256(message).hexdigest()[:16]}"
        job = {"id": record_id, "queue": queue, "job": UNREADABLE, "payload": {}}
        fields = dlq.record_fields(job, describe(message, MALFORMED), 1, existing=False)
        now = time.time()
        with raw.pipeline() as pipe:  # MULTI: parked in the DLQ or still in the list
            scripts_for(raw).dlq_write(
                args=script_args(record_id, now, dlq.hour_bucket(now),
                                 *[item for pair in fields.items() for item in pair]),
                client=pipe)
            pipe.lrem(keys.bad_messages(queue), 1, message)
            pipe.execute()
        refused(worker_id, queue, record_id, MALFORMED, message)
        moved += 1
    return moved
