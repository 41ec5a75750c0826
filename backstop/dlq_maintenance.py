"""Keeping the DLQ healthy: capacity alerts, archiving past the cap or the retention age, and
rebuilding its indexes and counters from the records (a repair tool).

Nothing is removed silently: records leave only after they were appended to a JSONL archive
under DLQ_ARCHIVE_DIR (fsynced), and every archive run and alert is an event.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import dlq, keys
from .config import settings
from .connection import client
from .redaction import redact
from .registry import script_args, to_json
from .replay import delete
from .scanning import chunks, scan_prefix
from .scripts import scripts_for

ALERT_LEVELS = (95, 80)
ROOT = Path(__file__).resolve().parent.parent


def publish(kind: str, **fields) -> None:
    """An event outside any job (alerts, archives) on the stream and the channel."""
    body = to_json({"type": kind, "t": time.time(), **redact(fields)})
    xid = client().xadd(keys.events_stream(), {"e": body},
                        maxlen=settings().int("backstop_events_maxlen"), approximate=True)
    client().publish(keys.events_channel(), f"{xid} {body}")


def check_alerts() -> int:
    """Alert once when the DLQ crosses 80 % and 95 % of its cap; return the current level."""
    usage = dlq.capacity()
    level = next((lv for lv in ALERT_LEVELS if usage["percent"] >= lv), 0)
    previous = int(client().get(keys.dlq_alert_level()) or 0)
    if level != previous:
        client().set(keys.dlq_alert_level(), level)
    if level > previous:
        publish("alert", severity="critical" if level >= 95 else "warning", source="dlq",
                message=f"the dead-letter queue is {usage['percent']}% full "
                        f"({usage['count']} of {usage['cap']}); past the cap the oldest "
                        "records are archived", **usage)
    return level


def archive_path(now: float) -> Path:
    folder = Path(settings().dlq_archive_dir)
    folder = folder if folder.is_absolute() else ROOT / folder
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder / f"dlq-{time.strftime('%Y%m%d', time.gmtime(now))}.jsonl"


def _doomed(now: float, chunk: int) -> list[str]:
    """The oldest records over the cap, and those past the retention age (one chunk)."""
    over = dlq.count() - settings().int("dlq_max_records")
    cutoff = now - settings().float("dlq_retention_days") * 86400
    old = client().zrangebyscore(keys.dlq_index(), "-inf", f"({cutoff}", start=0, num=chunk)
    extra = client().zrange(keys.dlq_index(), 0, min(over, chunk) - 1) if over > 0 else []
    return list(dict.fromkeys(old + extra))


def archive_overflow(now: float | None = None, chunk: int = 1000) -> int:
    """Archive, then drop, records past the cap or the retention age; return how many."""
    now = now or time.time()
    moved = 0
    while ids := _doomed(now, chunk):
        path = archive_path(now)
        _append(path, ids)
        moved += delete(ids)
        publish("dlq.archived", count=len(ids), path=str(path), source="dlq")
    return moved


def _append(path: Path, ids: list[str]) -> None:
    pipe = client().pipeline(transaction=False)
    for record_id in ids:
        pipe.hgetall(keys.dlq_record(record_id))
    with _open_private(path) as out:
        for raw in pipe.execute():
            if raw:
                out.write(json.dumps(dlq.redact_hash(raw), ensure_ascii=False) + "\n")
        out.flush()
        os.fsync(out.fileno())


def _open_private(path: Path):
    """Open an archive for appending, readable by its owner only (0600, whatever the umask).

    Archives hold sealed payloads and error text; a day's file left 0644 by an older
    version is tightened too.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    if os.fstat(fd).st_mode & 0o077:
        os.fchmod(fd, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


def maintain() -> dict | None:
    """One maintenance pass, one at a time (the retention job runs it: backstop.retention).

    Returns {"archived": records archived, "alert_level": 0, 80 or 95}, or None when another
    pass holds the lock.
    """
    lock = client().lock(keys.dlq_lock("maintenance"), timeout=300, blocking=False)
    if not lock.acquire():
        return None
    try:
        return {"archived": archive_overflow(), "alert_level": check_alerts()}
    finally:
        lock.release()


def rebuild() -> dict:
    """Rebuild every DLQ index and counter from the records (SCAN; a repair job)."""
    r = client()
    prefix = keys.dlq_prefix()
    for derived in (f"{prefix}by:", f"{prefix}fp:"):
        for batch in chunks(scan_prefix(r, derived)):
            r.delete(*batch)
    r.delete(keys.dlq_index(), keys.dlq_counts(), keys.dlq_fingerprints())
    indexed = 0
    record_prefix = keys.dlq_record("")
    for batch in chunks(scan_prefix(r, record_prefix, "hash")):
        ids = [key[len(record_prefix):] for key in batch]
        indexed += scripts_for(r).dlq_reindex(args=script_args(*ids))
    return {"records": indexed}
