"""Replaying and removing dead-letter records: one, many, or everything a filter selects.

Every replay runs under a Redis lock with a TTL and one script that checks the record (at most
five replays, none while one is still running), counts it, links the new attempt id and
enqueues it; so concurrent replays of one record enqueue exactly once.
"""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Iterable
from typing import Any

from . import confirm, dlq, keys
from .connection import client
from .contracts import QUEUES, queue_config, validate_payload
from .dlq import DlqError, Filters
from .errors import PayloadError
from .hueys import huey_for
from .producers import prepare
from .redaction import REDACTED
from .registry import entry, event, script_args
from .scripts import scripts_for

MAX_REPLAYS = 5
LOCK_SECONDS = 10
REFUSALS = {
    "missing": ("no dead-letter record {id!r}", 404),
    "resolved": ("record {id!r} is resolved: its replay {detail} completed", 409),
    "busy": ("record {id!r} is being replayed: attempt {detail} has not finished", 409),
    "limit": ("record {id!r} was replayed {detail} times, the limit is 5", 409),
}


def _refuse(code: str, record_id: str, detail: str = "") -> DlqError:
    message, status = REFUSALS[code]
    return DlqError(message.format(id=record_id, detail=detail), code=code, status=status)


def _secret_paths(value: Any, path: tuple = ()) -> dict[tuple, Any]:
    if isinstance(value, dict):
        found: dict = {}
        for k, v in value.items():
            found.update(_secret_paths(v, (*path, k)))
        return found
    if isinstance(value, list):
        found = {}
        for i, v in enumerate(value):
            found.update(_secret_paths(v, (*path, i)))
        return found
    return {path: value}


def restore_secrets(edited: Any, original: Any) -> Any:
    """The edited payload with every "[REDACTED]" value put back from the original."""
    if edited == REDACTED:
        return original
    if isinstance(edited, dict) and isinstance(original, dict):
        return {k: restore_secrets(v, original.get(k)) for k, v in edited.items()}
    if isinstance(edited, list) and isinstance(original, list):
        return [restore_secrets(v, original[i] if i < len(original) else None)
                for i, v in enumerate(edited)]
    return edited


def payload_diff(old: dict, new: dict) -> dict:
    """Old against new, as changed paths and as a unified diff of the (redacted) JSON."""
    before, after = _secret_paths(dlq.redact(old)), _secret_paths(dlq.redact(new))
    changes = [{"path": ".".join(map(str, p)), "old": before.get(p), "new": after.get(p)}
               for p in sorted(set(before) | set(after), key=str)
               if before.get(p, ...) != after.get(p, ...)]
    text = difflib.unified_diff(
        json.dumps(dlq.redact(old), indent=2, sort_keys=True).splitlines(),
        json.dumps(dlq.redact(new), indent=2, sort_keys=True).splitlines(),
        "old", "new", lineterm="")
    return {"changes": changes, "unified": "\n".join(text)}


def _record_or_refuse(record_id: str) -> dict:
    raw = client().hgetall(keys.dlq_record(record_id))
    if not raw:
        raise _refuse("missing", record_id)
    return raw


def preview_edit(record_id: str, payload: dict) -> dict:
    """Validate an edited payload against the job's contract and show its diff; commits
    nothing. Raises DlqError (missing) or PayloadError (field errors)."""
    raw = _record_or_refuse(record_id)
    original = dlq.unseal(raw["payload_sealed"])
    merged = validate_payload(raw["job"], restore_secrets(payload, original))
    return {"id": record_id, "job": raw["job"], "payload": dlq.redact(merged),
            "diff": payload_diff(original, merged)}


def replay(record_id: str, *, actor: str, queue: str | None = None,
           payload: dict | None = None) -> dict:
    """Replay a record as a new attempt (its original queue, or ``queue``).

    payload: an edited payload, validated against the contract; "[REDACTED]" values keep
    the original secret. Returns {id, attempt_id, queue, replay_count, diff?}.
    Raises DlqError (missing, resolved, busy, limit, locked) or PayloadError.
    """
    lock = client().lock(keys.dlq_lock(record_id), timeout=LOCK_SECONDS, blocking=False)
    if not lock.acquire():
        raise DlqError(f"record {record_id!r} is being replayed right now", code="locked")
    try:
        return _replay_locked(record_id, actor, queue, payload)
    finally:
        lock.release()


def _replay_locked(record_id: str, actor: str, queue: str | None, payload: dict | None) -> dict:
    raw = _record_or_refuse(record_id)
    original = dlq.unseal(raw["payload_sealed"])
    chosen = queue or raw["queue"]
    if chosen not in QUEUES:
        raise PayloadError(raw["job"], [{"field": "queue", "message": f"unknown queue {chosen}"}])
    body = original if payload is None else restore_secrets(payload, original)
    count = int(raw.get("replay_count") or 0)
    if count >= MAX_REPLAYS:
        raise _refuse("limit", record_id, str(count))
    attempt_id = f"{raw.get('original_job_id') or record_id}:replay{count + 1}"
    prepared = prepare(raw["job"], body, job_id=attempt_id)
    diff = payload_diff(original, prepared.payload) if payload is not None else None
    outcome, detail = _run_replay_script(record_id, prepared, chosen, actor, diff)
    if outcome != "ok":
        raise _refuse(outcome, record_id, detail)
    result = {"id": record_id, "attempt_id": attempt_id, "queue": chosen,
              "replay_count": int(detail)}
    return {**result, "diff": diff} if diff else result


def _run_replay_script(record_id: str, prepared, queue: str, actor: str,
                       diff: dict | None) -> tuple[str, str]:
    now = time.time()
    attempt_id = prepared.job_id
    fields = {
        "id": attempt_id, "queue": queue, "job": prepared.job_name,
        "payload": json.dumps(prepared.payload), "state": "waiting", "attempts": 0,
        "max_attempts": queue_config(queue).attempts, "priority": 0, "created_at": now,
        "updated_at": now, "progress": 0, "dlq_id": record_id,
    }
    link = {"attempt_id": attempt_id, "queue": queue, "actor": actor, "replayed_at": now,
            "outcome": "pending", "edited": diff is not None, "diff": diff}
    storage = huey_for(queue).storage
    flat = [item for pair in fields.items() for item in pair]
    outcome, detail = scripts_for(client()).dlq_replay(
        keys=[keys.job(attempt_id), storage.queue_key, keys.queue_stats(queue),
              keys.timeline(attempt_id)],
        args=script_args(record_id, attempt_id, queue, prepared.message, now,
                         event("replayed", attempt_id, queue, prepared.job_name, "waiting", now,
                               dlq_id=record_id, actor=actor),
                         entry("enqueued", now, detail=f"replay of dead-letter record "
                               f"{record_id} by {actor}"),
                         json.dumps(link), *flat))
    return outcome, detail


def delete(record_ids: Iterable[str]) -> int:
    """Delete records (and their index entries and counters); return how many existed."""
    deleted, batch = 0, []
    for record_id in record_ids:
        batch.append(record_id)
        if len(batch) == 500:
            deleted += scripts_for(client()).dlq_delete(args=script_args(*batch))
            batch = []
    if batch:
        deleted += scripts_for(client()).dlq_delete(args=script_args(*batch))
    return deleted


# ---- bulk ----
def bulk(action: str, *, actor: str, ids: list[str] | None = None,
         flt: Filters | None = None) -> list[dict]:
    """Replay or delete selected ids, or every record a filter selects.

    Returns [{id, outcome, detail}] per id; a missing id is reported, not fatal.
    """
    if action not in ("replay", "delete"):
        raise ValueError("bulk action is replay or delete")
    selected = ids if ids is not None else list(dlq.iter_ids(flt or Filters()))
    handler = _bulk_replay if action == "replay" else _bulk_delete
    results: list[dict] = []
    for start in range(0, len(selected), 500):
        results += handler(selected[start:start + 500], actor)
    return results


def _bulk_replay(ids: list[str], actor: str) -> list[dict]:
    results = []
    for record_id in ids:
        try:
            done = replay(record_id, actor=actor)
            results.append({"id": record_id, "outcome": "replayed",
                            "detail": done["attempt_id"]})
        except (DlqError, PayloadError) as exc:
            results.append({"id": record_id, "outcome": getattr(exc, "code", "invalid"),
                            "detail": str(exc)})
    return results


def _bulk_delete(ids: list[str], actor: str) -> list[dict]:
    pipe = client().pipeline(transaction=False)
    for record_id in ids:
        pipe.exists(keys.dlq_record(record_id))
    present = pipe.execute()
    delete([i for i, here in zip(ids, present, strict=True) if here])
    return [{"id": i, "outcome": "deleted" if here else "missing",
             "detail": "" if here else f"no dead-letter record {i!r}"}
            for i, here in zip(ids, present, strict=True)]


# ---- clear, with a double confirmation ----
def clear_preview(actor: str, flt: Filters) -> dict:
    """How many records a clear would delete, and a single-use token for 60 s bound to the
    actor and the filter; the clear itself needs the token."""
    token = confirm.issue(actor, "dlq.clear", flt.as_dict())
    return {"count": dlq.count_matching(flt), "token": token, "expires_in": confirm.SECONDS,
            "filter": flt.as_dict()}


def clear(actor: str, flt: Filters, token: str) -> dict:
    """Delete every record the filter selects, if token came from clear_preview for this actor
    and filter within 60 s. The token works once. Raises DlqError (code token)."""
    if not confirm.consume(token, actor, "dlq.clear", flt.as_dict()):
        raise DlqError("the confirmation token is missing, used, expired, or was issued for "
                       "another user or filter; ask for a new one", code="token", status=403)
    return {"deleted": delete(dlq.iter_ids(flt)), "filter": flt.as_dict()}
