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
from dataclasses import dataclass
from typing import Any

from . import confirm, dlq, keys
from .connection import client
from .contracts import QUEUES, queue_config, validate_payload
from .dlq import DlqError, Filters
from .errors import PayloadError
from .hueys import huey_for
from .poison import UNREADABLE
from .producers import prepare
from .redaction import REDACTED, is_destination_name, redact, redact_text
from .registry import entry, event, script_args
from .scripts import scripts_for

MAX_REPLAYS = 5
RESEND = "dlq.resend"  # the confirmation an owner gives to send secrets to a new destination
LOCK_SECONDS = 10
REFUSALS = {
    "missing": ("no dead-letter record {id!r}", 404),
    "resolved": ("record {id!r} is resolved: its replay {detail} completed", 409),
    "busy": ("record {id!r} is being replayed: attempt {detail} has not finished", 409),
    "limit": ("record {id!r} was replayed {detail} times, the limit is 5", 409),
    "unreadable": ("record {id!r} is a queue message no worker could read: there is no job "
                   "to replay; look at it, then delete it", 409),
}


def _refuse(code: str, record_id: str, detail: str = "") -> DlqError:
    message, status = REFUSALS[code]
    return DlqError(message.format(id=record_id, detail=detail), code=code, status=status)


def _leaves(value: Any, path: tuple = ()) -> dict[tuple, Any]:
    if isinstance(value, dict):
        found: dict = {}
        for k, v in value.items():
            found.update(_leaves(v, (*path, k)))
        return found
    if isinstance(value, list):
        found = {}
        for i, v in enumerate(value):
            found.update(_leaves(v, (*path, i)))
        return found
    return {path: value}


def _dotted(path: tuple) -> str:
    return ".".join(map(str, path))


def restore_secrets(edited: Any, original: Any, restored: list[str] | None = None,
                    path: tuple = ()) -> Any:
    """The edited payload with every value left as the reader saw it put back from the
    original: "[REDACTED]" under a secret name, or text whose secrets showed as [REDACTED]
    (a URL with its password hidden). restored: collects the dotted paths put back."""
    restored = [] if restored is None else restored
    if isinstance(edited, dict) and isinstance(original, dict):
        return {k: _restore_key(k, v, original, restored, (*path, k)) for k, v in edited.items()}
    if isinstance(edited, list) and isinstance(original, list):
        return [restore_secrets(v, original[i] if i < len(original) else None, restored,
                                (*path, i)) for i, v in enumerate(edited)]
    if isinstance(edited, str) and isinstance(original, str) and edited != original \
            and edited == redact_text(original):
        restored.append(_dotted(path))
        return original
    return edited


def _restore_key(key, edited: Any, original: dict, restored: list[str], path: tuple) -> Any:
    if edited == REDACTED and redact({key: original.get(key)})[key] == REDACTED:
        restored.append(_dotted(path))
        return original[key]
    return restore_secrets(edited, original.get(key), restored, path)


def moved_destinations(original: dict, edited: dict) -> list[dict]:
    """The destination fields (redaction.is_destination_name: url, to, webhook_id...) whose
    value the edit changed, added or removed: [{path, old, new}], values redacted."""
    before, after = _leaves(original), _leaves(edited)
    paths = [p for p in set(before) | set(after)
             if any(is_destination_name(str(part)) for part in p if isinstance(part, str))]
    return [{"path": _dotted(p), "old": redact(before.get(p)), "new": redact(after.get(p))}
            for p in sorted(paths, key=str) if before.get(p, ...) != after.get(p, ...)]


@dataclass
class Edit:
    """An edited payload merged with its sealed original and validated.

    resent: the sealed secrets put back (dotted paths); moved: the destinations changed.
    Secrets go back only to where they came from: when both are non-empty, the edit needs
    the secrets entered again, or an owner's confirmation (see resend_scope).
    """

    job: str
    payload: dict
    resent: list[str]
    moved: list[dict]

    def resends_elsewhere(self) -> bool:
        return bool(self.resent and self.moved)

    def resend_scope(self, record_id: str) -> dict:
        """What an owner's confirmation is bound to: which secrets go to which destinations."""
        return {"id": record_id, "secrets": self.resent, "to": self.moved}

    def refusal(self) -> PayloadError:
        where = ", ".join(m["path"] for m in self.moved)
        return PayloadError(self.job, [
            {"field": path, "message": f"enter this secret again: the destination changed "
                                       f"({where}), so the stored one is not sent there "
                                       "(an owner may confirm re-sending it)"}
            for path in self.resent])


def merge_edit(job: str, edited: dict, original: dict) -> Edit:
    """Restore the secrets an edit left as shown, validate the result against the job's
    contract and compare its destinations with the original's. Raises PayloadError."""
    resent: list[str] = []
    merged = validate_payload(job, restore_secrets(edited, original, resent))
    return Edit(job, merged, resent, moved_destinations(original, merged))


def payload_diff(old: dict, new: dict) -> dict:
    """Old against new, as changed paths and as a unified diff of the (redacted) JSON."""
    before, after = _leaves(redact(old)), _leaves(redact(new))
    changes = [{"path": _dotted(p), "old": before.get(p), "new": after.get(p)}
               for p in sorted(set(before) | set(after), key=str)
               if before.get(p, ...) != after.get(p, ...)]
    text = difflib.unified_diff(
        json.dumps(redact(old), indent=2, sort_keys=True).splitlines(),
        json.dumps(redact(new), indent=2, sort_keys=True).splitlines(),
        "old", "new", lineterm="")
    return {"changes": changes, "unified": "\n".join(text)}


def _record_or_refuse(record_id: str) -> dict:
    raw = client().hgetall(keys.dlq_record(record_id))
    if not raw:
        raise _refuse("missing", record_id)
    return raw


def preview_edit(record_id: str, payload: dict, *, actor: str = "",
                 owner: bool = False) -> dict:
    """Validate an edited payload against the job's contract and show its diff; commits
    nothing. When the edit would send sealed secrets to a changed destination, an owner gets
    ``resend`` {secrets, to, token} (pass the token to replay within 60 s); anyone else gets
    a PayloadError naming the secrets to enter again.
    Raises DlqError (missing) or PayloadError (field errors)."""
    raw = _record_or_refuse(record_id)
    original = dlq.unseal(raw["payload_sealed"])
    edit = merge_edit(raw["job"], payload, original)
    preview = {"id": record_id, "job": raw["job"], "payload": redact(edit.payload),
               "diff": payload_diff(original, edit.payload)}
    if edit.resends_elsewhere():
        if not owner:
            raise edit.refusal()
        scope = edit.resend_scope(record_id)
        preview["resend"] = {"secrets": edit.resent, "to": edit.moved,
                             "token": confirm.issue(actor, RESEND, scope)}
    return preview


def replay(record_id: str, *, actor: str, queue: str | None = None,
           payload: dict | None = None, resend_token: str | None = None) -> dict:
    """Replay a record as a new attempt (its original queue, or ``queue``).

    payload: an edited payload, validated against the contract; values left as shown
    ("[REDACTED]") keep the original secret while every destination is unchanged; sending
    them to a changed destination needs resend_token (from an owner's preview_edit).
    Returns {id, attempt_id, queue, replay_count, diff?}.
    Raises DlqError (missing, resolved, busy, limit, locked) or PayloadError.
    """
    lock = client().lock(keys.dlq_lock(record_id), timeout=LOCK_SECONDS, blocking=False)
    if not lock.acquire():
        raise DlqError(f"record {record_id!r} is being replayed right now", code="locked")
    try:
        return _replay_locked(record_id, actor, queue, payload, resend_token)
    finally:
        lock.release()


def _edited_body(record_id: str, raw: dict, original: dict, payload: dict | None, actor: str,
                 resend_token: str | None) -> dict:
    if payload is None:
        return original
    edit = merge_edit(raw["job"], payload, original)
    if edit.resends_elsewhere() and not confirm.consume(resend_token or "", actor, RESEND,
                                                        edit.resend_scope(record_id)):
        raise edit.refusal()
    return edit.payload


def _replay_locked(record_id: str, actor: str, queue: str | None, payload: dict | None,
                   resend_token: str | None) -> dict:
    raw = _record_or_refuse(record_id)
    if raw["job"] == UNREADABLE:
        raise _refuse("unreadable", record_id)
    original = dlq.unseal(raw["payload_sealed"])
    chosen = queue or raw["queue"]
    if chosen not in QUEUES:
        raise PayloadError(raw["job"], [{"field": "queue", "message": f"unknown queue {chosen}"}])
    body = _edited_body(record_id, raw, original, payload, actor, resend_token)
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
        "payload": prepared.payload_json, "state": "waiting", "attempts": 0,
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
